"""The fused parallel-form kernels (modeling/lion_triton.py), run on the CPU through Triton's interpreter.

Outputs and every gradient (q, k, v, the decay parameters) against the float64 oracle (modeling/naive.py) and the
PyTorch path, on tiny shapes: lengths that are not multiples of the interpreter's 16-token tiles, odd head dims,
LIT / D / S with one path and two paths in random orders, row-normalised (positive features) and un-normalised with
padded keys, dropout, the float32 running sums on long sequences, the dispatch, ``torch.compile`` and ``lion-hf info``.

Triton builds its interpreter only when ``TRITON_INTERPRET=1`` is set before it is first imported, and
``import lion_hf`` imports it (through transformers and torch._dynamo). So these tests run in a process of their own,
started with the variable by tests/test_kernels.py (or by hand: ``TRITON_INTERPRET=1 pytest
tests/interpreted/kernels_parallel.py``); in the main test session CPU tensors keep going to the PyTorch forms.
The interpreter computes ``tl.dot`` on bfloat16 as integers (its numpy arrays hold their bits), so the
low-precision kernels are tested here in float16 and in bfloat16 by tests/gpu/check_kernels.py on a GPU.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

if os.environ.get("TRITON_INTERPRET") != "1":
    if "triton" in sys.modules:
        raise RuntimeError("Triton was imported without TRITON_INTERPRET=1: run these tests with the variable set.")
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lion_hf import LionConfig, LionForImageClassification, LionForMaskedLM, lion_attention  # noqa: E402
from lion_hf.modeling import lion_triton  # noqa: E402
from lion_hf.modeling.lion_attention import (  # noqa: E402
    BACKEND_ENVIRONMENT_VARIABLE,
    CHUNK_KERNELS_FROM_LENGTH,
    select_implementation,
)
from lion_hf.modeling.naive import naive_attention_weights, naive_lion_attention  # noqa: E402

assert lion_triton.is_interpreted()


@pytest.fixture(autouse=True)
def no_forced_backend(monkeypatch):
    monkeypatch.delenv(BACKEND_ENVIRONMENT_VARIABLE, raising=False)


def relative_error(got, want) -> float:
    """``||got - want|| / ||want||``, or ``||got||`` where ``want`` is 0 (a decay that no mask entry uses)."""
    scale = want.double().norm()
    return ((got.double() - want.double()).norm() / (scale if scale > 0 else 1.0)).item()


def make_inputs(variant, paths, length, dim, value_dim, normalize, batch=2, heads=2, shared_decay=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    low = 0.1 if normalize else -0.5  # positive features keep the normaliser away from zero
    q = (torch.rand(batch, heads, length, dim, generator=generator) + low).requires_grad_()
    k = (torch.rand(batch, heads, length, dim, generator=generator) + low).requires_grad_()
    v = torch.randn(batch, heads, length, value_dim, generator=generator).requires_grad_()
    params = [q, k, v]
    if variant == "d":
        params.append(torch.randn(paths, heads, generator=generator).add_(1).requires_grad_())
    elif variant == "s":
        rows = 1 if shared_decay else batch
        params.append(torch.randn(paths, rows, heads, length, generator=generator).add_(1).requires_grad_())
    orders = None if paths == 1 else [torch.randperm(length, generator=generator) for _ in range(paths)]
    mask = None
    if not normalize:
        lengths = torch.randint(1, length + 1, (batch, 1), generator=generator)
        mask = torch.arange(length) < lengths
        mask[0] = True  # one full row, one padded
    return params, orders, mask


def decays(variant, params, length):
    if variant == "lit":
        return None
    if variant == "d":
        return [F.logsigmoid(x).view(1, -1, 1).expand(1, x.shape[0], length) for x in params[3]]
    return [F.logsigmoid(x) for x in params[3]]


def forward_and_gradients(fn, params, variant, orders, normalize, mask, grad, **options):
    length = params[0].shape[2]
    out = fn(*params[:3], decays(variant, params, length), orders, normalize=normalize, key_padding_mask=mask, **options)
    return [out, *torch.autograd.grad(out, params, grad.to(out.dtype))]


# variant, paths, length, head dim, value dim: lengths 1 to 40, not multiples of the 16-token tiles among them.
CASES = [
    ("lit", 1, 23, 24, 16),
    ("d", 1, 17, 16, 32),
    ("d", 2, 40, 16, 16),
    ("s", 1, 16, 32, 16),
    ("s", 1, 37, 16, 16),
    ("s", 1, 5, 16, 24),
    ("s", 2, 33, 16, 16),
]
# One token: row normalisation makes the output that token's value whatever q and k are (gradients ~eps), so
# only the un-normalised style has gradients to compare there.
PADDED_ONLY = [("s", 1, 1, 16, 16), ("lit", 1, 2, 16, 16)]


@pytest.mark.parametrize(
    "variant,paths,length,dim,value_dim,normalize",
    [(*case, style) for case in CASES for style in (True, False)] + [(*case, False) for case in PADDED_ONLY],
    ids=lambda value: {True: "normalised", False: "padded"}.get(value) if isinstance(value, bool) else str(value),
)
def test_float32_kernels_match_the_float64_oracle_and_the_pytorch_path(variant, paths, length, dim, value_dim, normalize):
    params, orders, mask = make_inputs(variant, paths, length, dim, value_dim, normalize)
    grad = torch.randn(2, 2, length, value_dim)
    assert select_implementation(
        "parallel", "auto", *(p.detach() for p in params[:3]), decays(variant, params, length),
        orders or ([None] * paths if variant != "lit" else None), chunk_size=64, normalize=normalize, eps=1e-6,
        key_padding_mask=mask, dropout_p=0.0,
    ).backend == "triton"  # fmt: skip
    got = forward_and_gradients(lion_attention, params, variant, orders, normalize, mask, grad)
    oracle = forward_and_gradients(naive_lion_attention, params, variant, orders, normalize, mask, grad.double())
    pytorch = forward_and_gradients(
        lion_attention, params, variant, orders, normalize, mask, grad, backend="pytorch"
    )
    assert got[0].dtype == torch.float32
    for name, g, want, other in zip(["out", "dq", "dk", "dv", "ddecay"], got, oracle, pytorch):
        # A decay's gradient sums N^2 signed terms in float32: relative to a sum that may nearly cancel, its
        # rounding reaches ~5e-6 for some output gradients (seen on D at 17 tokens).
        tolerance = 1e-5 if name == "ddecay" else 2e-6
        assert torch.isfinite(g).all(), name
        assert relative_error(g, want) < tolerance, name
        assert relative_error(g, other) < tolerance, name


@pytest.mark.parametrize("variant,paths", [("d", 1), ("s", 2)])
def test_steps_kept_from_an_inference_call_serve_a_training_step(variant, paths):
    """The kernels keep the steps of each order (and of the natural order) between calls; kept from a call under
    torch.inference_mode, they must still be savable for a later training step's backward."""
    params, orders, _ = make_inputs(variant, paths, 21, 16, 16, True, seed=3)
    grad = torch.randn(2, 2, 21, 16)
    detached = [p.detach() for p in params]
    with torch.inference_mode():
        lion_attention(*detached[:3], decays(variant, detached, 21), orders, normalize=True)
    got = forward_and_gradients(lion_attention, params, variant, orders, True, None, grad)
    want = forward_and_gradients(naive_lion_attention, params, variant, orders, True, None, grad.double())
    for g, w in zip(got, want):
        assert relative_error(g, w) < 2e-6


def test_decays_shared_across_the_batch_get_the_summed_gradient():
    params, orders, _ = make_inputs("s", 2, 19, 16, 16, True, shared_decay=True, seed=1)
    grad = torch.randn(2, 2, 19, 16)
    got = forward_and_gradients(lion_attention, params, "s", orders, True, None, grad)
    want = forward_and_gradients(naive_lion_attention, params, "s", orders, True, None, grad.double())
    assert got[4].shape == params[3].shape
    for g, w in zip(got, want):
        assert relative_error(g, w) < 2e-6


def test_float16_kernels_stay_within_half_precision_rounding():
    params, orders, mask = make_inputs("s", 2, 37, 24, 32, True, seed=2)
    grad = torch.randn(2, 2, 37, 32)
    got = forward_and_gradients(
        lambda q, k, v, *a, **o: lion_attention(q.half(), k.half(), v.half(), *a, **o),
        params, "s", orders, True, mask, grad,
    )  # fmt: skip
    want = forward_and_gradients(naive_lion_attention, params, "s", orders, True, mask, grad.double())
    assert got[0].dtype == torch.float16
    for name, g, w in zip(["out", "dq", "dk", "dv", "ddecay"], got, want):
        assert relative_error(g, w) < 3e-3, name


def test_padded_keys_holding_nan_reach_no_real_token():
    params, _, mask = make_inputs("s", 1, 21, 16, 16, False, seed=3)
    q, k, v, logits = (p.detach() for p in params)
    k, v = k.clone(), v.clone()
    k[~mask[:, None, :, None].expand_as(k)] = float("nan")
    v[~mask[:, None, :, None].expand_as(v)] = float("nan")
    k.requires_grad_(), v.requires_grad_()
    out = lion_attention(q, k, v, [F.logsigmoid(logits[0])], key_padding_mask=mask)
    grad_k, grad_v = torch.autograd.grad(out, (k, v), torch.ones_like(out))
    assert torch.isfinite(out).all() and torch.isfinite(grad_k).all() and torch.isfinite(grad_v).all()
    clean = [torch.where(mask[:, None, :, None], t, 0.0) for t in (k, v)]
    expected = naive_lion_attention(q, *clean, [F.logsigmoid(logits[0])], key_padding_mask=mask)
    assert relative_error(out, expected) < 2e-6


@pytest.mark.parametrize("variant", ["d", "s"])
def test_unchecked_decays_are_bounded_inside_the_kernels_node_with_their_gradient(variant):
    """With ``check_values=False`` the eager kernel path bounds the log-decays itself, outside autograd: decays
    below -1000 and -inf count as -1000 and pass no gradient, a NaN outside a row's real tokens counts as 0; the
    output and every gradient equal those of the PyTorch path, which bounds them in autograd. (LION-D's gradient
    is 0 beyond the bound with or without the mask: there its test is the bound itself.)"""
    params, _, mask = make_inputs(variant, 1, 21, 16, 16, False, seed=6)
    q, k, v, raw = (p.detach() for p in params)
    if variant == "d":
        # The second head a decay of 0: unbounded, its closed form would meet -inf * 0 on the diagonal.
        raw = torch.tensor([[-0.7, float("-inf")]])
    else:
        raw = -F.softplus(raw[0]).clone()
        raw[0, 0, 3], raw[0, 1, 7], raw[1, 0, 2] = -1e4, float("-inf"), -1000.0
        raw[1, 1, ~mask[1]] = float("nan")  # the padding of the padded row
    results = []
    for backend in ("triton", "pytorch"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, raw)]
        decay = leaves[3].view(1, 2, 1).expand(1, 2, 21) if variant == "d" else leaves[3]
        out = lion_attention(*leaves[:3], [decay], key_padding_mask=mask, backend=backend, check_values=False)
        results.append([out, *torch.autograd.grad(out, leaves, torch.ones_like(out))])
    for name, got, want in zip(["out", "dq", "dk", "dv", "ddecay"], *results):
        assert torch.isfinite(got).all() and torch.isfinite(want).all(), name
        assert relative_error(got, want) < 2e-6, name
    grad = results[0][4]
    if variant == "d":
        assert grad[0, 0] != 0 and grad[0, 1] == 0
    else:
        assert grad[0, 0, 3] == grad[0, 1, 7] == 0 and grad[1, 0, 2] != 0


@pytest.mark.parametrize("form", ["parallel", "chunk"])
def test_a_non_contiguous_padding_mask_reads_as_its_values(form):
    """A (B, N) mask that is the transpose of an (N, B) one has other strides; the kernels must see its values."""
    params, _, mask = make_inputs("s", 1, 21, 16, 16, False, seed=4)
    q, k, v, logits = (p.detach() for p in params)
    transposed = mask.t().contiguous().t()
    assert not transposed.is_contiguous() and torch.equal(transposed, mask)
    decays_ = [F.logsigmoid(logits[0])]
    got = lion_attention(q, k, v, decays_, key_padding_mask=transposed.long(), form=form, chunk_size=16)
    want = naive_lion_attention(q, k, v, decays_, key_padding_mask=mask)
    assert relative_error(got, want) < 2e-6


def test_float32_running_sums_keep_small_decays_on_long_sequences():
    """Gates near 0 then near 1: running sums reach ~-1e3 while the differences that matter are ~1e-4. A float32
    sum alone would err by ~1e-4 in those masks; the (high, low) pair keeps the output exact to float32."""
    length = 160
    generator = torch.Generator().manual_seed(4)
    q, k = (torch.rand(1, 1, length, 16, generator=generator) + 0.1 for _ in range(2))
    v = torch.randn(1, 1, length, 16, generator=generator)
    log_a = torch.empty(1, 1, length, dtype=torch.float64)
    log_a[..., : length // 2] = -torch.rand(length // 2, generator=generator, dtype=torch.float64) * 30
    log_a[..., length // 2 :] = -torch.rand(length // 2, generator=generator, dtype=torch.float64) * 1e-4
    out = lion_attention(q, k, v, [log_a], normalize=True)
    expected = naive_lion_attention(q, k, v, [log_a], normalize=True)
    assert relative_error(out, expected) < 1e-6


def kernel_dropout(batch, heads, length, p, seed):
    """The kernel's dropout under ``torch.manual_seed(seed)``, read back through the kernel: scores of 1 everywhere
    (``q k^T = 1``) times identity values return each score's factor, 0 where dropped and the kept scale elsewhere."""
    q = torch.ones(batch, heads, length, 16)
    k = torch.zeros(batch, heads, length, 16)
    k[..., 0] = 1
    v = torch.eye(length).expand(batch, heads, length, length).contiguous()
    torch.manual_seed(seed)
    return lion_attention(q, k, v, None, dropout_p=p, training=True)


def test_dropout_draws_one_mask_per_seed_with_the_asked_rate():
    p = 0.3
    factors = kernel_dropout(3, 4, 32, p, seed=5)
    dropped, kept = factors.unique().tolist()
    # The draws have 16 bits: the rate they drop is p to within 2**-16, and the kept scale is its own.
    assert dropped == 0.0 and kept == pytest.approx(1 / (1 - p), rel=2**-15)
    keep = factors > 0
    assert abs((1 - keep.double().mean()).item() - p) < 0.03  # 12288 draws: 7 standard deviations
    assert torch.equal(factors, kernel_dropout(3, 4, 32, p, seed=5))
    assert not torch.equal(factors, kernel_dropout(3, 4, 32, p, seed=6))
    # Every (batch, head) gets its own mask.
    flat = keep.flatten(0, 1)
    assert all(not torch.equal(flat[0], flat[i]) for i in range(1, flat.shape[0]))


# Tiles of (BLOCK_M, BLOCK_N) per kernel unlike the interpreter's 16 x 16 and unlike each other: each kernel meets
# the keys and queries in blocks that start elsewhere, so a draw that depended on the tile would differ between them.
MIXED_TILES = {"forward": (16, 32), "backward_q": (32, 16), "backward_kv": (32, 16)}


@contextlib.contextmanager
def mixed_tiles():
    def blocks(kernel, length, dtype):
        block_m, block_n = MIXED_TILES[kernel]
        return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=1, num_stages=1)

    default = lion_triton._blocks
    lion_triton._blocks = blocks
    lion_triton._meta_of.cache_clear()  # it keeps what _blocks gave
    try:
        yield
    finally:
        lion_triton._blocks = default
        lion_triton._meta_of.cache_clear()


# Lengths that are not multiples of 8 (the keys one Philox call draws for) nor of any tile.
@pytest.mark.parametrize("variant,paths,normalize,length", [("s", 2, True, 37), ("d", 1, False, 45)])
def test_dropout_uses_the_same_mask_in_every_kernel_and_tiling(variant, paths, normalize, length):
    """Outputs and gradients, each kernel with tiles of its own, equal the float64 oracle given the dropout factors
    read back through the forward kernel at the interpreter's default tiles."""
    p = 0.3
    factors = kernel_dropout(2, 2, length, p, seed=7).double()
    params, orders, mask = make_inputs(variant, paths, length, 16, 16, normalize, seed=8)
    grad = torch.randn(2, 2, length, 16)
    torch.manual_seed(7)
    with mixed_tiles():
        got = forward_and_gradients(
            lion_attention, params, variant, orders, normalize, mask, grad, dropout_p=p, training=True
        )

    def oracle(q, k, v, log_decays, orders, *, normalize, key_padding_mask):
        weights = naive_attention_weights(q, k, log_decays, orders, key_padding_mask=key_padding_mask)
        dropped = weights * factors
        out = dropped @ v.double()
        return out / (dropped.sum(-1, keepdim=True) + 1e-6) if normalize else out

    want = forward_and_gradients(oracle, params, variant, orders, normalize, mask, grad.double())
    for name, g, w in zip(["out", "dq", "dk", "dv", "ddecay"], got, want):
        assert relative_error(g, w) < 2e-6, name


def test_dispatch_reasons_and_forced_backends(monkeypatch):
    params, _, _ = make_inputs("d", 1, 9, 16, 16, True)
    q, k, v = (p.detach() for p in params[:3])
    args = (q, k, v, decays("d", params, 9), [None])
    options = dict(chunk_size=64, normalize=True, eps=1e-6, key_padding_mask=None, dropout_p=0.0)
    assert select_implementation("parallel", "auto", *args, **options).backend == "triton"
    assert select_implementation("parallel", "pytorch", *args, **options).backend == "pytorch"
    monkeypatch.setenv(BACKEND_ENVIRONMENT_VARIABLE, "pytorch")
    assert select_implementation("parallel", "auto", *args, **options).backend == "pytorch"
    monkeypatch.delenv(BACKEND_ENVIRONMENT_VARIABLE)
    # Inputs the kernels do not take fall back to PyTorch under "auto" and name the reason when forced.
    double = (q.double(), k.double(), v.double(), *args[3:])
    assert select_implementation("parallel", "auto", *double, **options).backend == "pytorch"
    with pytest.raises(ValueError, match="triton: dtype torch.float64"):
        select_implementation("parallel", "triton", *double, **options)
    wide = (q, k, torch.zeros(1, 2, 9, 256), *args[3:])
    with pytest.raises(ValueError, match="head dims 16 .queries. and 256 .values."):
        select_implementation("parallel", "triton", *wide, **options)
    empty = (q[:, :, :0], k[:, :, :0], v[:, :, :0], None, None)
    with pytest.raises(ValueError, match=re.escape("triton: empty inputs (q (2, 2, 0, 16), v (2, 2, 0, 16))")):
        select_implementation("parallel", "triton", *empty, **options)
    # The chunk form has kernels of its own (lion_triton_chunk.py), for some chunk sizes.
    assert select_implementation("chunk", "triton", *args, **options).backend == "triton"
    with pytest.raises(ValueError, match="No 'triton' implementation of the 'chunk' form.*chunk_size 7"):
        select_implementation("chunk", "triton", *args, **{**options, "chunk_size": 7})
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="cpu tensors"):
        select_implementation("parallel", "triton", *args, **options)


def test_models_compile_with_the_kernels_in_the_graph():
    """No graph break around the operators, and the compiled model (fake tensors through register_fake, the
    backward through register_autograd) trains to the eager model's gradients."""
    import torch._dynamo as dynamo

    torch.manual_seed(9)
    config = LionConfig(
        modality="vision", variant="s", patch_order="snake", hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, num_labels=10,
    )  # fmt: skip
    model = LionForImageClassification(config)
    pixels, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    dynamo.reset()
    explanation = dynamo.explain(model)(pixel_values=pixels, labels=labels)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    ops = [node.target for graph in explanation.graphs for node in graph.graph.nodes if node.op == "call_function"]
    assert sum("parallel_forward" in str(op) for op in ops) == 1

    eager = torch.autograd.grad(model(pixel_values=pixels, labels=labels).loss, list(model.parameters()))
    dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = compiled(pixel_values=pixels, labels=labels).loss
    for got, want in zip(torch.autograd.grad(loss, list(model.parameters())), eager):
        assert relative_error(got, want) < 1e-5

    text = LionConfig(
        variant="d", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=32, attention_probs_dropout_prob=0.1,
    )  # fmt: skip
    ids = torch.randint(1, 100, (2, 16))
    dynamo.reset()
    explanation = dynamo.explain(LionForMaskedLM(text).train())(
        input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_info_names_the_implementation_of_each_form(capsys):
    from lion_hf.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    # Under the interpreter the kernels take CPU tensors too; CUDA inputs are judged from (fake) tensors' metadata.
    for where in ("cpu float32", "cuda bfloat16", "cuda float16", "cuda float32"):
        block = out[out.index(f"  on {where}") :].split("\n  on ")[0]
        lines = [line.split(None, 2) for line in block.splitlines() if line.startswith("    ")]
        long_inputs = f"cannot run: 16 tokens (this entry runs the chunk kernels from {CHUNK_KERNELS_FROM_LENGTH} tokens on)"
        assert lines[:3] == [
            ["parallel", "triton", long_inputs], ["parallel", "triton", "runs"],
            ["parallel", "pytorch", "can run (with attention_backend='pytorch')"],
        ], block  # fmt: skip
        assert lines[-2:] == [
            ["features", "triton", "runs"], ["features", "pytorch", "can run (with attention_backend='pytorch')"]
        ], block
