"""The LION operator, every form and path of it, against the naive float64 reference (modeling/naive.py).

The reference builds every mask entry as a product of decays along the path (or runs the per-token RNN), so it
shares no code and no numerical trick (running sums, closed forms, chunking, folding) with the operator.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from helpers import FORMS, VARIANTS, assert_close_to_scale, relative_error

from lion_hf import lion_attention
from lion_hf.modeling.naive import naive_decay_mask, naive_lion_attention, naive_recurrent_lion_attention

STYLES = ("normalized", "padded")


def gradients(leaves: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A decay that no product uses (a single token) gets no gradient at all: it is zero.
    return {name: torch.zeros_like(t) if t.grad is None else t.grad for name, t in leaves.items()}


class Case:
    """Random inputs for one call: leaves of the inputs and of the decay parameters, in float32."""

    def __init__(self, seed: int, variant: str, style: str, num_paths: int = 1, length: int | None = None):
        rng = random.Random(seed)
        torch.manual_seed(seed)
        self.batch, self.heads = rng.randint(1, 3), rng.randint(1, 3)
        self.length = length if length is not None else rng.randint(1, 17)
        self.dim, self.value_dim = rng.randint(1, 6), rng.randint(1, 6)
        self.variant, self.style, self.num_paths = variant, style, num_paths
        shape = (self.batch, self.heads, self.length)
        self.leaves = {
            "q": torch.randn(*shape, self.dim),
            "k": torch.randn(*shape, self.dim),
            "v": torch.randn(*shape, self.value_dim),
        }
        if variant == "d":
            # a = sigmoid(w): one decay per path and head.
            self.leaves["decay"] = torch.randn(num_paths, self.heads) * 2
        elif variant == "s":
            # a_t = sigmoid(z_t): one decay per path, sample, head and token.
            self.leaves["decay"] = torch.randn(num_paths, *shape) * 2 + 1
        self.orders = None
        if num_paths > 1:
            self.orders = [torch.randperm(self.length) for _ in range(num_paths)]
        self.key_padding_mask = None
        if style == "padded":
            lengths = torch.tensor([rng.randint(1, self.length) for _ in range(self.batch)])
            lengths[rng.randrange(self.batch)] = self.length
            self.key_padding_mask = torch.arange(self.length)[None, :] < lengths[:, None]
        self.weights = torch.randn(*shape, self.value_dim)

    def inputs(self, dtype):
        """Fresh leaves in ``dtype`` and the operator's arguments built from them."""
        leaves = {name: t.detach().to(dtype, copy=True).requires_grad_() for name, t in self.leaves.items()}
        q, k = leaves["q"], leaves["k"]
        if self.style == "normalized":
            # Positive features, as the vision models feed the normalised form.
            q, k = F.elu(q) + 1, F.elu(k) + 1
        log_decays = None
        if self.variant == "d":
            log_a = F.logsigmoid(leaves["decay"])
            log_decays = [log_a[p].view(1, self.heads, 1).expand(1, self.heads, self.length) for p in range(self.num_paths)]
        elif self.variant == "s":
            log_decays = list(F.logsigmoid(leaves["decay"]).unbind(0))
        kwargs = dict(
            log_decays=log_decays,
            orders=self.orders,
            normalize=self.style == "normalized",
            eps=1e-6,
            key_padding_mask=self.key_padding_mask,
        )
        return leaves, (q, k, leaves["v"]), kwargs

    def run(self, form, chunk_size=64):
        leaves, (q, k, v), kwargs = self.inputs(torch.float32)
        out = lion_attention(q, k, v, form=form, chunk_size=chunk_size, **kwargs)
        (out * self.weights).sum().backward()
        return out, gradients(leaves)

    def reference(self, naive=naive_lion_attention):
        leaves, (q, k, v), kwargs = self.inputs(torch.float64)
        out = naive(q, k, v, **kwargs)
        (out * self.weights.double()).sum().backward()
        return out, gradients(leaves)


def check_against_reference(case: Case, form: str, chunk_size: int = 64) -> None:
    out, grads = case.run(form, chunk_size)
    expected, expected_grads = case.reference()
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert_close_to_scale(out, expected, rtol=1e-5)
    assert set(grads) == set(expected_grads)
    for name, grad in grads.items():
        assert_close_to_scale(grad, expected_grads[name], rtol=1e-4)


# ------------------------------------------------------------------------------- the oracle itself


@pytest.mark.parametrize("num_paths", [1, 2])
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_two_naive_definitions_agree(variant, style, num_paths):
    """The dense mask of products and the per-token RNN are two independent readings of the paper."""
    if variant == "lit" and num_paths > 1:
        num_paths = 1
    case = Case(50 + num_paths, variant, style, num_paths=num_paths, length=9)
    dense, dense_grads = case.reference(naive_lion_attention)
    scan, scan_grads = case.reference(naive_recurrent_lion_attention)
    torch.testing.assert_close(scan, dense, rtol=1e-12, atol=1e-12)
    for name in dense_grads:
        torch.testing.assert_close(scan_grads[name], dense_grads[name], rtol=1e-10, atol=1e-12)


def test_naive_mask_by_hand():
    """Three tokens visited in the order 2, 0, 1 with decays a0, a1, a2 (in token order)."""
    a = torch.tensor([0.5, 0.25, 0.8], dtype=torch.float64)
    mask = naive_decay_mask(a.log(), torch.tensor([2, 0, 1]))
    # Path steps: token 2 first (decay .8), then token 0 (.5), then token 1 (.25).
    expected = torch.tensor(
        [
            [1.0, 0.25, 0.8],  # token 0 (step 1): token 1 one step later (a of token 1); token 2 before (a of 2)
            [0.5, 1.0, 0.5 * 0.8],  # token 1 (step 2): back to 0 (a0), to 2 (a0 a2)
            [0.5, 0.5 * 0.25, 1.0],  # token 2 (step 0): ahead to 0 (a0), to 1 (a0 a1)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(mask, expected, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------- float32 inputs


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_naive_reference(variant, form, style, seed):
    case_seed = seed * 100 + FORMS.index(form) * 10 + VARIANTS.index(variant)
    case = Case(case_seed, variant, style)
    chunk_size = random.Random(case_seed).randint(1, case.length + 2)
    check_against_reference(case, form, chunk_size)


@pytest.mark.parametrize("num_paths", [2, 3])
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", ("d", "s"))
def test_several_orders_average_their_masks(variant, form, style, num_paths):
    case = Case(7 + num_paths, variant, style, num_paths=num_paths, length=11)
    check_against_reference(case, form, chunk_size=4)


def test_orders_change_the_result():
    """The reference is sensitive to the order, so the tests above would catch an ignored order."""
    case = Case(3, "s", "padded", num_paths=2, length=9)
    with_orders, _ = case.reference()
    case.orders = [torch.arange(case.length)] * 2
    natural, _ = case.reference()
    assert (with_orders - natural).abs().max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 13, 14, 40])
def test_chunk_sizes(variant, chunk_size):
    # 13 tokens: sizes that divide (1, 13), that do not (3, 5), and that exceed the length (14, 40).
    case = Case(21, variant, "padded", length=13)
    check_against_reference(case, "chunk", chunk_size)


@pytest.mark.parametrize("style", STYLES)
def test_single_token(style):
    case = Case(5, "s", style, length=1)
    for form in FORMS:
        check_against_reference(case, form, chunk_size=1)


# ------------------------------------------------------------------------------------- float64 inputs


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


FAST_FORMS = [("parallel", 64), ("chunk", 4), ("chunk", 7), ("recurrent", 4), ("recurrent", 1)]
CASES = [("lit", 1), ("d", 1), ("d", 2), ("s", 1), ("s", 2)]


@pytest.mark.parametrize("variant,paths", CASES)
@pytest.mark.parametrize("normalize", [False, True])
def test_float64_inputs_are_exact(variant, paths, normalize):
    torch.manual_seed(0)
    params, decays, orders = make_inputs(variant, paths)
    key_padding_mask = None if normalize else torch.arange(19).expand(2, 19) < torch.tensor([[19], [13]])
    grad = torch.randn(2, 2, 19, 5, dtype=torch.float64)
    expected = naive_lion_attention(
        *params[:3], decays(), orders, normalize=normalize, key_padding_mask=key_padding_mask
    )
    expected_grads = torch.autograd.grad(expected, params, grad)
    for form, chunk_size in FAST_FORMS:
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
    expected = torch.autograd.grad(naive_lion_attention(*params[:3], decays(), orders, normalize=True), params, grad)
    for form, chunk_size in FAST_FORMS:
        out = lion_attention(*params[:3], decays(), orders, form=form, chunk_size=chunk_size, normalize=True)
        for got, want in zip(torch.autograd.grad(out, params, grad), expected):
            assert relative_error(got, want) < 1e-11, form


def test_constant_decay_closed_form_equals_the_general_path():
    """A stride-0 (expanded) log-decay takes the closed form; the same values materialised take running sums."""
    torch.manual_seed(2)
    q, k, v = (torch.rand(2, 3, 40, 8, dtype=torch.float64) for _ in range(3))
    log_a = F.logsigmoid(torch.randn(1, 3, 1, dtype=torch.float64))
    order = torch.randperm(40)
    expected = naive_lion_attention(q, k, v, [log_a.expand(1, 3, 40)], [order])
    for form, chunk_size in FAST_FORMS:
        closed = lion_attention(q, k, v, [log_a.expand(1, 3, 40)], [order], form=form, chunk_size=chunk_size)
        general = lion_attention(q, k, v, [log_a.expand(1, 3, 40).clone()], [order], form=form, chunk_size=chunk_size)
        assert relative_error(closed, expected) < 1e-12, form
        assert relative_error(general, expected) < 1e-12, form


# ------------------------------------------------------------------------------------- score dropout


def test_score_dropout_acts_only_in_training():
    case = Case(41, "s", "padded", length=10)
    _, (q, k, v), kwargs = case.inputs(torch.float32)
    plain = lion_attention(q, k, v, **kwargs)
    assert torch.equal(lion_attention(q, k, v, dropout_p=0.5, training=False, **kwargs), plain)
    # With identity values the output is the score matrix: each masked score is zeroed or doubled.
    identity = torch.eye(case.length).expand(case.batch, case.heads, -1, -1)
    scores = naive_lion_attention(q, k, identity, **kwargs)
    dropped = lion_attention(q, k, identity, dropout_p=0.5, training=True, **kwargs)
    real = scores != 0
    kept = dropped[real] != 0
    assert 0 < kept.sum() < kept.numel()
    assert_close_to_scale(dropped[real][kept], 2 * scores[real][kept], rtol=1e-5)


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
    keep = keep[..., :11, :11].double()
    # Dropout on the masked scores: the naive matrix times the keep mask, rescaled, times the values.
    eye = torch.eye(11, dtype=torch.float64).expand(2, 2, 11, 11)
    masked = naive_lion_attention(*params[:2], eye, decays())
    expected = (masked * keep / (1 - p)) @ params[2].double()
    assert relative_error(out, expected) < 1e-6
    for g, e in zip(got, torch.autograd.grad(expected, params, grad.double())):
        assert relative_error(g, e) < 1e-5
    assert (keep == 0).any() and (keep == 1).any()


# ------------------------------------------------------------------------------------ long sequences


def long_log_decays(heads: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """LION-S log-decays mixing gates close to 1 (long memory) and close to 0 (log-decay near -16).

    The first third only holds gates close to 1, so products over a thousand tokens stay of order one and an
    imprecise long prefix sum shows; a block of gates close to 0 follows; the rest mixes both at random.
    """
    log_a = -1e-3 * torch.rand(1, heads, length, generator=generator)
    strong = torch.rand(1, heads, length, generator=generator) < 0.02
    strong[..., : length // 3] = False
    strong[..., length // 3 : length // 3 + 50] = True
    return torch.where(strong, -16 + torch.rand(1, heads, length, generator=generator), log_a)


def test_long_sequence_is_stable_and_exact():
    length, heads, dim = 4096, 1, 8
    generator = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, heads, length, dim, generator=generator) for _ in range(3))
    log_a = long_log_decays(heads, length, generator)
    # Long-range products must matter, or the test would not see imprecise prefix sums.
    assert log_a[..., : length // 3].sum(-1).max() > -2.0
    eye = torch.eye(length, dtype=torch.float64)[None, None]
    for normalize in (False, True):
        if normalize:
            q, k = F.elu(q) + 1, F.elu(k) + 1
        scores = naive_lion_attention(q, k, eye, [log_a])  # the masked score matrix
        expected = scores @ v.double()
        if normalize:
            expected = expected / (scores.sum(-1, keepdim=True) + 1e-6)
        outputs, grads = {}, {}
        for form in FORMS:
            decay = log_a.clone().requires_grad_(form != "recurrent")
            out = lion_attention(q, k, v, [decay], form=form, chunk_size=128, normalize=normalize)
            assert torch.isfinite(out).all(), (form, normalize)
            assert_close_to_scale(out, expected, rtol=1e-5)
            outputs[form] = out.detach()
            if decay.requires_grad:
                out.sum().backward()
                assert torch.isfinite(decay.grad).all(), (form, normalize)
                grads[form] = decay.grad
        assert_close_to_scale(outputs["chunk"], outputs["parallel"], rtol=1e-5)
        assert_close_to_scale(outputs["recurrent"], outputs["parallel"], rtol=1e-5)
        assert_close_to_scale(grads["chunk"], grads["parallel"], rtol=1e-4)


def test_float64_long_sequence_with_strong_and_weak_decays():
    torch.manual_seed(6)
    length = 600
    q, k = (torch.rand(1, 1, length, 4, dtype=torch.float64) + 0.1 for _ in range(2))
    v = torch.randn(1, 1, length, 4, dtype=torch.float64)
    log_a = -torch.rand(1, 1, length, dtype=torch.float64) * 8
    log_a[..., 300:] *= 1e-5
    expected = naive_lion_attention(q, k, v, [log_a])
    for form in FORMS:
        out = lion_attention(q, k, v, [log_a], form=form, chunk_size=64)
        assert relative_error(out, expected) < 1e-12, form


# ------------------------------------------------------------------------------------------ bfloat16


@pytest.mark.parametrize("scale", [1e-3, 1e-1])
def test_bfloat16_forms_stay_close_to_float64(scale):
    """bfloat16 inputs, decays close to 1: every form within bfloat16's precision of the exact result.

    A scan whose state and decays are bfloat16 is off by about 15% here (0.999 rounds to 1).
    """
    length, heads, dim = 512, 2, 16
    generator = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, heads, length, dim, generator=generator) for _ in range(3))
    q = q * dim**-0.5
    log_a = -scale * torch.rand(1, heads, length, generator=generator)
    expected = naive_lion_attention(q, k, v, [log_a])
    for form in FORMS:
        out = lion_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), [log_a], form=form, chunk_size=64)
        assert out.dtype == torch.bfloat16
        error = (out.double() - expected).abs().max() / expected.abs().max()
        assert error < 0.02, (form, error.item())


@pytest.mark.parametrize("variant,paths", CASES)
def test_bfloat16_autocast_path_stays_within_bf16_rounding(variant, paths):
    torch.manual_seed(4)
    params, decays, orders = make_inputs(variant, paths, length=100, dim=16, dtype=torch.float32)
    expected = naive_lion_attention(*params[:3], decays(), orders, normalize=True)
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
    log_a = log_a.bfloat16().float()  # the decays a bf16 model would hand over
    expected = naive_lion_attention(q, k, v, [log_a], normalize=True)
    for form in FORMS:
        out = lion_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), [log_a], form=form, normalize=True)
        assert torch.isfinite(out).all()
        assert relative_error(out, expected) < 2e-2, form


# ------------------------------------------------------------------------------- attention weights


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_weights_are_the_matrix_every_form_applies(variant, style):
    from lion_hf import lion_attention_weights
    from lion_hf.modeling.naive import naive_attention_weights

    case = Case(61, variant, style, num_paths=1 if variant == "lit" else 2, length=10)
    _, (q, k, v), kwargs = case.inputs(torch.float32)
    weights = lion_attention_weights(q, k, **kwargs)
    assert weights.shape == (case.batch, case.heads, 10, 10) and weights.dtype == torch.float32
    assert_close_to_scale(weights, naive_attention_weights(q, k, **kwargs), rtol=1e-5)
    # Normalised rows (with their eps) times the values give the forms' output.
    if style == "normalized":
        assert_close_to_scale(weights @ v, lion_attention(q, k, v, **kwargs), rtol=1e-5)
    if case.key_padding_mask is not None:
        padded_columns = ~case.key_padding_mask[:, None, None, :].expand_as(weights)
        assert (weights[padded_columns] == 0).all()
