"""The operator's fast paths against a float64 reference built from products of decays.

Covers what the fast implementation adds: the one-node masked product and its hand-written backward, the
closed form of constant decays, the bf16 path (folded decays, float32 running sums), score dropout, and
``torch.compile`` tracing the models without graph breaks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lion_hf import LionConfig, LionForImageClassification, LionForMaskedLM, lion_attention

FORMS = [("parallel", 64), ("chunk", 4), ("chunk", 7), ("recurrent", 4), ("recurrent", 1)]


def reference_mask(log_decay: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """``M_ij`` from its definition: the product of the decays between i and j along the path."""
    length = log_decay.shape[-1]
    order = torch.arange(length) if order is None else order
    decay = log_decay.double().exp()[..., order]  # path order
    steps = torch.ones(*decay.shape[:-1], length, length, dtype=torch.float64)
    for s in range(length):
        # Step s before step t: a_(s+1) ... a_t; after step t: a_t ... a_(s-1).
        steps[..., s, s + 1 :] = decay[..., s + 1 :].cumprod(-1)
        steps[..., s, :s] = decay[..., :s].flip(-1).cumprod(-1).flip(-1)
    step = torch.argsort(order)
    return steps[..., step[:, None], step[None, :]]


def reference(q, k, v, log_decays, orders, normalize, eps=1e-6, key_padding_mask=None, keep=None, p=0.0):
    q, k, v = q.double(), k.double(), v.double()
    if key_padding_mask is not None:
        k = k * key_padding_mask[:, None, :, None].double()
    scores = q @ k.transpose(-1, -2)
    if log_decays is not None:
        orders = orders if orders is not None else [None] * len(log_decays)
        masks = [reference_mask(ld.expand(-1, -1, q.shape[2]), o) for ld, o in zip(log_decays, orders)]
        scores = scores * (sum(masks) / len(masks))
    dropped = scores if keep is None else scores * keep / (1 - p)
    out = dropped @ v
    return out / (scores.sum(-1, keepdim=True) + eps) if normalize else out


def make_inputs(variant, paths, batch=2, heads=2, length=19, dim=5, dtype=torch.float64, batch_decay=True):
    q = (torch.rand(batch, heads, length, dim, dtype=dtype) + 0.1).requires_grad_()
    k = (torch.rand(batch, heads, length, dim, dtype=dtype) + 0.1).requires_grad_()
    v = torch.randn(batch, heads, length, dim, dtype=dtype, requires_grad=True)
    params = [q, k, v]
    if variant == "lit":
        return params, (lambda: None), None
    if variant == "d":
        logits = torch.randn(paths, heads, dtype=dtype, requires_grad=True)

        def decays():
            return [F.logsigmoid(logits[p]).view(1, heads, 1).expand(1, heads, length) for p in range(paths)]
    else:
        logits = torch.randn(paths, batch if batch_decay else 1, heads, length, dtype=dtype, requires_grad=True)

        def decays():
            return [F.logsigmoid(logits[p]) for p in range(paths)]

    orders = None if paths == 1 else [torch.randperm(length) for _ in range(paths)]
    return params + [logits], decays, orders


def relative_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


CASES = [("lit", 1), ("d", 1), ("d", 2), ("s", 1), ("s", 2)]


@pytest.mark.parametrize("variant,paths", CASES)
@pytest.mark.parametrize("normalize", [False, True])
def test_outputs_and_gradients_match_reference_in_float64(variant, paths, normalize):
    torch.manual_seed(0)
    params, decays, orders = make_inputs(variant, paths)
    key_padding_mask = None if normalize else torch.arange(19).expand(2, 19) < torch.tensor([[19], [13]])
    grad = torch.randn(2, 2, 19, 5, dtype=torch.float64)
    expected = reference(*params[:3], decays(), orders, normalize, key_padding_mask=key_padding_mask)
    expected_grads = torch.autograd.grad(expected, params, grad)
    for form, chunk_size in FORMS:
        out = lion_attention(
            *params[:3], decays(), orders, form=form, chunk_size=chunk_size, normalize=normalize,
            key_padding_mask=key_padding_mask,
        )
        assert out.dtype == torch.float64
        assert relative_error(out, expected) < 1e-12, form
        for got, want in zip(torch.autograd.grad(out, params, grad), expected_grads):
            assert relative_error(got, want) < 1e-11, (form, chunk_size)


def test_gradients_of_a_decay_shared_across_the_batch():
    torch.manual_seed(1)
    params, decays, orders = make_inputs("s", 2, batch_decay=False)
    grad = torch.randn(2, 2, 19, 5, dtype=torch.float64)
    expected = torch.autograd.grad(reference(*params[:3], decays(), orders, True), params, grad)
    for form, chunk_size in FORMS:
        out = lion_attention(*params[:3], decays(), orders, form=form, chunk_size=chunk_size, normalize=True)
        for got, want in zip(torch.autograd.grad(out, params, grad), expected):
            assert relative_error(got, want) < 1e-11, form


def test_constant_decay_closed_form_equals_the_general_path():
    """A stride-0 (expanded) log-decay takes the closed form; the same values materialised take running sums."""
    torch.manual_seed(2)
    q, k, v = (torch.rand(2, 3, 40, 8, dtype=torch.float64) for _ in range(3))
    log_a = F.logsigmoid(torch.randn(1, 3, 1, dtype=torch.float64))
    order = torch.randperm(40)
    for form, chunk_size in FORMS:
        closed = lion_attention(q, k, v, [log_a.expand(1, 3, 40)], [order], form=form, chunk_size=chunk_size)
        general = lion_attention(q, k, v, [log_a.expand(1, 3, 40).clone()], [order], form=form, chunk_size=chunk_size)
        assert relative_error(closed, general) < 1e-13, form


def test_score_dropout_uses_one_mask_for_forward_and_backward():
    torch.manual_seed(3)
    params, decays, _ = make_inputs("s", 1, length=11, dtype=torch.float32)
    grad = torch.randn(2, 2, 11, 5)
    p = 0.3
    torch.manual_seed(7)
    out = lion_attention(*params[:3], decays(), dropout_p=p, training=True)
    got = torch.autograd.grad(out, params, grad)
    # The operator draws exactly one mask of the scores' shape and dtype, the length padded to a multiple of 8.
    torch.manual_seed(7)
    _, keep = torch.native_dropout(torch.ones(2, 2, 16, 16), p, True)
    keep = keep[..., :11, :11]
    expected = reference(*params[:3], decays(), None, False, keep=keep.double(), p=p)
    assert relative_error(out, expected) < 1e-6
    for g, e in zip(got, torch.autograd.grad(expected, params, grad.double())):
        assert relative_error(g, e) < 1e-5
    assert (keep == 0).any() and (keep == 1).any()


@pytest.mark.parametrize("variant,paths", CASES)
def test_bfloat16_autocast_path_stays_within_bf16_rounding(variant, paths):
    torch.manual_seed(4)
    params, decays, orders = make_inputs(variant, paths, length=100, dim=16, dtype=torch.float32)
    expected = reference(*params[:3], decays(), orders, True)
    grad = torch.randn(2, 2, 100, 16)
    expected_grads = torch.autograd.grad(expected, params, grad.double())
    for form, chunk_size in [("parallel", 64), ("chunk", 16), ("recurrent", 16)]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lion_attention(*params[:3], decays(), orders, form=form, chunk_size=chunk_size, normalize=True)
        assert out.dtype == torch.bfloat16
        assert relative_error(out, expected) < 2e-2, form
        for got, want in zip(torch.autograd.grad(out.float(), params, grad), expected_grads):
            assert relative_error(got, want) < 5e-2, form


def test_bfloat16_long_sequence_with_gates_near_zero_and_one():
    """4096 tokens whose running sums reach ~-2e4: float32 sums in the bf16 path stay below bf16 rounding."""
    torch.manual_seed(5)
    length = 4096
    q, k = (torch.rand(1, 1, length, 8) + 0.1 for _ in range(2))
    v = torch.randn(1, 1, length, 8)
    log_a = torch.empty(1, 1, length)
    log_a[..., : length // 2] = -torch.rand(length // 2) * 10  # gates near 0: sums grow large
    log_a[..., length // 2 :] = -torch.rand(length // 2) * 1e-4  # gates near 1: the values that matter are small
    expected = lion_attention(q.double(), k.double(), v.double(), [log_a.double()], normalize=True)
    for form in ATTENTION_FORMS_TO_CHECK:
        out = lion_attention(
            q.bfloat16(), k.bfloat16(), v.bfloat16(), [log_a.bfloat16().float()], form=form, normalize=True
        )
        assert torch.isfinite(out).all()
        assert relative_error(out, expected) < 2e-2, form


ATTENTION_FORMS_TO_CHECK = ("parallel", "chunk", "recurrent")


def test_float64_path_agrees_with_dense_reference_on_long_sequences():
    torch.manual_seed(6)
    length = 600
    q, k = (torch.rand(1, 1, length, 4, dtype=torch.float64) + 0.1 for _ in range(2))
    v = torch.randn(1, 1, length, 4, dtype=torch.float64)
    log_a = -torch.rand(1, 1, length, dtype=torch.float64) * 8
    log_a[..., 300:] *= 1e-5
    cumulative = torch.cat([torch.zeros(1, 1, 1, dtype=torch.float64), log_a.cumsum(-1)], -1)[0, 0]
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    # Dense mask from differences of float64 running sums (exact at this length and these magnitudes).
    mask = torch.where(i >= j, cumulative[i] - cumulative[j], cumulative[j + 1] - cumulative[i + 1]).exp()
    expected = ((q @ k.transpose(-1, -2)) * mask) @ v
    for form in ATTENTION_FORMS_TO_CHECK:
        out = lion_attention(q, k, v, [log_a], form=form, chunk_size=64)
        assert relative_error(out, expected) < 1e-12, form


def _explain(model, **inputs):
    import torch._dynamo as dynamo

    dynamo.reset()
    return dynamo.explain(model)(**inputs)


@pytest.mark.parametrize("form", ["parallel", "chunk", "recurrent"])
def test_models_trace_without_graph_breaks(form):
    torch.manual_seed(7)
    for variant, order in (("lit", "raster"), ("s", "snake")):
        config = LionConfig(
            modality="vision", variant=variant, patch_order=order, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, num_labels=10,
            attention_form=form, chunk_size=8,
        )
        pixels, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
        explanation = _explain(LionForImageClassification(config), pixel_values=pixels, labels=labels)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    config = LionConfig(
        variant="d", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=32, attention_form=form, chunk_size=8,
    )
    ids = torch.randint(1, 100, (2, 16))
    explanation = _explain(
        LionForMaskedLM(config).train(), input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons
