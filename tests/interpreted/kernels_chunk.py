"""The fused chunk and recurrent kernels (modeling/lion_triton_chunk.py) on the CPU, under Triton's interpreter.

Outputs and every gradient against the float64 naive oracle and the PyTorch forms: LIT, D, S, one and two paths
with random orders, normalised and not, key padding, lengths that are not a multiple of the chunk, chunk sizes
16, 32 and 128 (the last walked in two sub-blocks). The interpreter computes float32 products in float32 (its
bf16 matrix products are wrong in Triton 3.9, so bf16 is checked on a GPU: tests/gpu/check_chunk_kernels.py).

Like kernels_parallel.py, these run in a process of their own started with TRITON_INTERPRET=1 by
tests/test_kernels.py (Triton builds its interpreter only when the variable is set before its first import).
"""

from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1":
    if "triton" in sys.modules:
        raise RuntimeError("Triton was imported without TRITON_INTERPRET=1: run these tests with the variable set.")
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from helpers import (  # noqa: E402
    assert_close,
    build,
    relative_error,
    right_padded_mask,
    run_in_form,
    tiny_text_config,
    token_ids,
)

from lion_hf import LionForMaskedLM, lion_attention  # noqa: E402
from lion_hf.modeling import lion_attention as operator  # noqa: E402
from lion_hf.modeling import lion_triton_chunk as kernels  # noqa: E402
from lion_hf.modeling.naive import naive_lion_attention  # noqa: E402

# float32 products against float64: rounding of sums over ~70 terms.
TOLERANCE = 2e-5


assert kernels._INTERPRETED, "the kernels were not built for Triton's interpreter"


@pytest.fixture(autouse=True)
def no_forced_backend(monkeypatch):
    monkeypatch.delenv(operator.BACKEND_ENVIRONMENT_VARIABLE, raising=False)


def make_inputs(variant, paths, length, batch=2, heads=2, dim=8, value_dim=6, shared_decay=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = (torch.rand(batch, heads, length, dim, generator=generator) + 0.1).requires_grad_()
    k = (torch.rand(batch, heads, length, dim, generator=generator) + 0.1).requires_grad_()
    v = torch.randn(batch, heads, length, value_dim, generator=generator).requires_grad_()
    params = [q, k, v]
    if variant == "lit":
        return params, (lambda: None), None
    if variant == "d":
        logits = torch.randn(paths, heads, generator=generator).requires_grad_()

        def decays():
            return [F.logsigmoid(logits[p]).view(1, heads, 1).expand(1, heads, length) for p in range(paths)]
    else:
        logits = torch.randn(paths, 1 if shared_decay else batch, heads, length, generator=generator).requires_grad_()

        def decays():
            return [F.logsigmoid(logits[p]) for p in range(paths)]

    orders = None if paths == 1 else [torch.randperm(length, generator=generator) for _ in range(paths)]
    return params + [logits], decays, orders


def padding(length, batch=2):
    return torch.arange(length)[None, :] < torch.tensor([length, length - 11])[:batch, None]


def check_against_naive(variant, paths, length, chunk, normalize, padded, form="chunk", **kwargs):
    params, decays, orders = make_inputs(variant, paths, length, **kwargs)
    kpm = padding(length) if padded else None
    expected = naive_lion_attention(*params[:3], decays(), orders, normalize=normalize, key_padding_mask=kpm)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = lion_attention(*params[:3], decays(), orders, form=form, chunk_size=chunk, normalize=normalize,
                         key_padding_mask=kpm, backend="triton")  # fmt: skip
    assert out.dtype == torch.float32
    assert relative_error(out, expected) < TOLERANCE
    for got, want in zip(torch.autograd.grad(out, params, grad.float()), torch.autograd.grad(expected, params, grad)):
        assert relative_error(got, want) < TOLERANCE


@pytest.mark.parametrize(
    "variant,paths,length,chunk,normalize,padded",
    [
        ("lit", 1, 45, 16, True, True),
        ("lit", 1, 37, 32, False, False),
        ("d", 1, 37, 32, False, True),
        ("d", 2, 70, 16, True, False),
        ("s", 1, 45, 16, True, True),
        ("s", 2, 70, 32, False, True),
        ("s", 1, 150, 128, True, False),
    ],
)
def test_chunk_kernels_match_the_naive_oracle(variant, paths, length, chunk, normalize, padded):
    check_against_naive(variant, paths, length, chunk, normalize, padded)


def test_the_states_of_a_value_dim_over_64_are_carried_in_blocks_of_64_columns():
    """A value dim of 80: two programs of _states per sweep, the second with 16 real columns."""
    check_against_naive("d", 1, 37, 16, True, True, value_dim=80)


def test_the_sweeps_over_the_chunks_split_into_runs(monkeypatch):
    """Seven chunks swept as runs of three, three and one: each run first summed alone, then swept again from what
    the earlier runs add up to (normalised, so the vector states too, and both sides' states of the backward
    pass)."""
    monkeypatch.setattr(kernels, "_MIN_RUN_CHUNKS", 2)
    monkeypatch.setattr(kernels, "_STATE_PROGRAMS", 10**6)
    launches = []
    real_launch = kernels.launch

    def counting(kernel, grid, *args, **meta):
        if kernel is kernels._states:
            launches.append((meta["STORE_ALL"], grid[2]))
        real_launch(kernel, grid, *args, **meta)

    monkeypatch.setattr(kernels, "launch", counting)
    check_against_naive("s", 1, 100, 16, True, True)
    assert (False, 4) in launches and (True, 6) in launches


def test_a_decay_shared_across_the_batch_gets_its_gradient_summed():
    check_against_naive("s", 1, 40, 16, True, True, shared_decay=True)


@torch.no_grad()
@pytest.mark.parametrize(
    "variant,paths,length,chunk,normalize,padded",
    [("d", 1, 37, 16, False, True), ("s", 2, 70, 32, True, True), ("s", 1, 150, 128, False, False)],
)
def test_recurrent_kernel_matches_the_naive_oracle_and_the_pytorch_forms(variant, paths, length, chunk, normalize, padded):
    params, decays, orders = make_inputs(variant, paths, length)
    options = dict(normalize=normalize, key_padding_mask=padding(length) if padded else None)
    expected = naive_lion_attention(*params[:3], decays(), orders, **options)
    out = lion_attention(*params[:3], decays(), orders, form="recurrent", chunk_size=chunk, backend="triton", **options)
    assert relative_error(out, expected) < TOLERANCE
    # The three forms agree through the kernels and with PyTorch's.
    chunked = lion_attention(*params[:3], decays(), orders, form="chunk", chunk_size=chunk, backend="triton", **options)
    assert relative_error(out, chunked) < TOLERANCE
    for form in ("parallel", "recurrent"):
        pytorch = lion_attention(*params[:3], decays(), orders, form=form, chunk_size=chunk, backend="pytorch", **options)
        assert relative_error(out, pytorch) < TOLERANCE


def test_unchecked_decays_are_bounded_inside_one_autograd_node():
    """With check_values=False (as the models call it) the eager node bounds the log-decays itself: decays of 0
    (log -inf) and below the kernels' clamp among the real tokens, NaN and inf in the padding; output and every
    gradient as the PyTorch form gives them, and no autograd node between the decays' own and the kernels'."""
    params, decays, orders = make_inputs("s", 2, 70)
    kpm = padding(70)
    pad = ~kpm[:, None, :]

    def extreme():
        bent = []
        for p, log_decay in enumerate(decays()):
            log_decay = torch.where(pad, float("nan") if p == 0 else float("inf"), log_decay)
            log_decay = torch.where(torch.arange(70) == 20, float("-inf"), log_decay)
            bent.append(torch.where(torch.arange(70) == 33, log_decay * 80.0, log_decay))
        return bent

    options = dict(form="chunk", chunk_size=16, normalize=True, key_padding_mask=kpm, check_values=False)
    out = lion_attention(*params[:3], extreme(), orders, backend="triton", **options)
    assert type(out.grad_fn).__name__ == "_EagerChunkAttentionBackward"
    assert {type(node).__name__ for node, _ in out.grad_fn.next_functions if node is not None} >= {"WhereBackward0"}
    expected = lion_attention(*params[:3], extreme(), orders, backend="pytorch", **options)
    assert relative_error(out, expected) < TOLERANCE
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    for got, want in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, params, grad)):
        assert got.isfinite().all() and relative_error(got, want) < TOLERANCE


def test_recurrent_form_with_gradients_runs_the_chunk_kernels():
    check_against_naive("s", 2, 40, 16, True, True, form="recurrent")


def test_long_inference_in_the_chunk_form_keeps_the_states_on_chip(monkeypatch):
    """From ON_CHIP_STATES_FROM_LENGTH tokens on (lowered here) and without gradients, the chunk form runs the
    kernel that keeps its states in registers, with the chunk kernels' output; shorter inputs and training still
    store the states."""
    stored = []
    states_of = kernels._states_of
    monkeypatch.setattr(kernels, "_states_of", lambda *a, **k: stored.append(a[0].shape[2]) or states_of(*a, **k))
    params, decays, orders = make_inputs("s", 2, 70)
    options = dict(form="chunk", chunk_size=16, normalize=True, key_padding_mask=padding(70), backend="triton")
    expected = naive_lion_attention(*params[:3], decays(), orders, normalize=True, key_padding_mask=padding(70))
    with torch.no_grad():
        monkeypatch.setattr(kernels, "ON_CHIP_STATES_FROM_LENGTH", 71)
        stored_states = lion_attention(*params[:3], decays(), orders, **options)
        assert stored == [70, 70]  # one call per path
        monkeypatch.setattr(kernels, "ON_CHIP_STATES_FROM_LENGTH", 70)
        on_chip = lion_attention(*params[:3], decays(), orders, **options)
        assert stored == [70, 70]
    assert relative_error(on_chip, expected) < TOLERANCE
    assert relative_error(on_chip, stored_states) < TOLERANCE
    trained = lion_attention(*params[:3], decays(), orders, **options)
    assert stored == [70, 70, 70, 70]
    assert relative_error(trained, on_chip) < TOLERANCE


def test_auto_chooses_the_kernels_and_says_why_not(monkeypatch):
    q = torch.rand(1, 2, 20, 8)
    log_a = [F.logsigmoid(torch.randn(1, 2, 20))]

    def chosen(form, q=q, chunk_size=16):
        return operator.select_implementation(form, "auto", q, q, q, log_a, [None], chunk_size=chunk_size,
                                              normalize=False, eps=1e-6, key_padding_mask=None, dropout_p=0.0).backend  # fmt: skip

    assert [chosen(form) for form in ("parallel", "chunk", "recurrent")] == ["pytorch", "triton", "triton"]
    assert chosen("chunk", q=q.double()) == "pytorch"
    assert chosen("chunk", chunk_size=48) == "pytorch"
    options = dict(chunk_size=16, normalize=False, eps=1e-6, key_padding_mask=None, dropout_p=0.0)
    assert kernels.unsupported(q.double(), q, q, log_a, [None], **options) == (
        "dtype torch.float64 (supported: float32, bfloat16)"
    )
    assert kernels.unsupported(q, q, q, log_a, [None], **{**options, "chunk_size": 48}) == (
        "chunk_size 48 (supported: 16, 32, 64, 128, 256)"
    )
    wide = torch.rand(1, 2, 20, 160)
    assert kernels.unsupported(wide, wide, wide, log_a, [None], **options) == "head dims 160/160 (supported: up to 128)"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert kernels.unsupported(q, q, q, log_a, [None], **options).startswith("CPU tensors")
    assert chosen("chunk") == "pytorch"


def test_models_run_the_kernels_and_agree_with_the_parallel_form():
    model = build(LionForMaskedLM, tiny_text_config("s", chunk_size=16, max_position_embeddings=40))
    ids, mask = token_ids(2, 37), right_padded_mask([37, 25], 37)
    reference = run_in_form(model, "parallel", input_ids=ids, attention_mask=mask).logits
    for form in ("chunk", "recurrent"):
        assert_close(run_in_form(model, form, input_ids=ids, attention_mask=mask).logits, reference)


def test_the_custom_operators_trace_without_graph_breaks():
    import torch._dynamo as dynamo

    params, decays, orders = make_inputs("s", 2, 40)

    def step(q, k, v, logits):
        out = lion_attention(q, k, v, [F.logsigmoid(logits[p]) for p in range(2)], orders, form="chunk",
                             chunk_size=16, normalize=True, key_padding_mask=padding(40))  # fmt: skip
        return out.square().sum()

    dynamo.reset()
    explanation = dynamo.explain(step)(*params)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    # The mask reaches the operator as it is: Inductor (torch 2.11) fails to lower an int8 view of it in the graph.
    nodes = [node for graph in explanation.graphs for node in graph.graph.nodes]
    assert not [node for node in nodes if torch.int8 in (*node.args, *node.kwargs.values())]
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(*params), params)
    want = torch.autograd.grad(step(*params), params)
    for g, w in zip(got, want):
        assert_close(g, w)



def test_long_parallel_calls_take_the_chunk_kernels(monkeypatch):
    """From CHUNK_KERNELS_FROM_LENGTH tokens on (lowered here), the parallel form runs the fused chunk kernels and
    gives what the parallel kernels give; not with score dropout in training, not below the length, not on the
    forced PyTorch backend."""
    from lion_hf.modeling import lion_triton

    calls = []
    chunk_entry, parallel_entry = kernels.ENTRIES["chunk"], lion_triton.parallel_attention
    monkeypatch.setitem(kernels.ENTRIES, "chunk", lambda *a, **k: calls.append("chunk") or chunk_entry(*a, **k))
    monkeypatch.setattr(
        lion_triton, "parallel_attention", lambda *a, **k: calls.append("parallel") or parallel_entry(*a, **k)
    )  # fmt: skip
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.rand(2, 2, 21, 16, generator=generator).requires_grad_() for _ in range(3))
    log_decay = F.logsigmoid(torch.randn(2, 2, 21, generator=generator) + 2)

    def run(length, threshold, **extra):
        monkeypatch.setattr(operator, "CHUNK_KERNELS_FROM_LENGTH", threshold)
        prefix = [t[:, :, :length] for t in (q, k, v)]
        out = lion_attention(*prefix, [log_decay[..., :length]], feature_map="elu_plus_one", scale=0.25,
                             normalize=True, chunk_size=16, **extra)  # fmt: skip
        return [out, *torch.autograd.grad(out.sum(), (q, k, v))]

    through_chunk = run(21, threshold=20)
    assert calls == ["chunk"]
    through_parallel = run(21, threshold=22)
    assert calls == ["chunk", "parallel"]
    for got, want in zip(through_chunk, through_parallel):
        assert relative_error(got, want) < TOLERANCE
    run(21, threshold=20, dropout_p=0.1, training=True)
    run(19, threshold=20)
    run(21, threshold=20, backend="pytorch")
    assert calls == ["chunk", "parallel", "parallel", "parallel"]
