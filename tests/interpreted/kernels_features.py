"""The fused feature-map kernels (modeling/lion_triton_features.py), run on the CPU through Triton's interpreter.

Maps (queries scaled) and gradients against float64 PyTorch and the PyTorch functions, read from strided views as
the models pass them, on row counts that are not multiples of the interpreter's 16-row blocks and head dims that
are not powers of two; the dispatch (fused where it can run, PyTorch for a forced PyTorch backend, mismatched
strides and float64); the map inside the parallel kernels' autograd node (the map's gradient applied by the
attention kernels); and a vision model whose eager forward and backward through every kernel match the PyTorch
path. Runs in a process of its own (see
kernels_parallel.py), started by tests/test_kernels.py.
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

from benchmarks.op_count import autograd_graph  # noqa: E402
from lion_hf import LionConfig, LionForImageClassification  # noqa: E402
from lion_hf.modeling import lion_triton, lion_triton_features  # noqa: E402
from lion_hf.modeling.lion_attention import (  # noqa: E402
    BACKEND_ENVIRONMENT_VARIABLE,
    FEATURE_MAP_FUNCTIONS,
    feature_maps,
    lion_attention,
)
from lion_hf.modeling.naive import naive_lion_attention  # noqa: E402

KINDS = ("elu_plus_one", "silu_shift_l2")


@pytest.fixture(autouse=True)
def no_forced_backend(monkeypatch):
    monkeypatch.delenv(BACKEND_ENVIRONMENT_VARIABLE, raising=False)


def pair_and_gradients(fn, q, k, grads):
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    out = fn(q, k)
    return (*out, *torch.autograd.grad(out, (q, k), [g.to(o.dtype) for g, o in zip(grads, out)]))


def reference(kind, scale):
    function = FEATURE_MAP_FUNCTIONS[kind]
    return lambda q, k: (function(q) * scale, function(k))


def qkv_views(batch, length, heads, dim, generator, dtype=torch.float32):
    """Queries and keys as the vision models pass them: transposed views of one fused projection's output."""
    qkv = torch.randn(batch, length, 3, heads, dim, generator=generator) * 3
    return [t.transpose(1, 2).to(dtype) for t in qkv.unbind(2)[:2]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(2, 7, 3, 24), (1, 37, 1, 64), (1, 1, 1, 5)])
def test_fused_maps_match_float64_and_the_pytorch_functions(kind, shape):
    generator = torch.Generator().manual_seed(0)
    q, k = qkv_views(*shape, generator)
    grads = [torch.randn(q.shape, generator=generator) for _ in range(2)]
    scale = shape[-1] ** -0.5
    got = pair_and_gradients(lambda a, b: lion_triton_features.feature_maps(kind, a, b, scale), q, k, grads)
    want = pair_and_gradients(reference(kind, scale), q.double(), k.double(), grads)
    pytorch = pair_and_gradients(reference(kind, scale), q, k, grads)
    for g, w, p in zip(got, want, pytorch):
        assert g.dtype == torch.float32 and g.shape == q.shape
        assert torch.allclose(g.double(), w, rtol=1e-5, atol=1e-6)
        assert torch.allclose(g, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_maps_round_once(kind):
    generator = torch.Generator().manual_seed(1)
    q, k = qkv_views(3, 20, 2, 32, generator)
    grads = [torch.randn(q.shape, generator=generator) for _ in range(2)]
    got = pair_and_gradients(
        lambda a, b: lion_triton_features.feature_maps(kind, a, b, 0.5), q.half(), k.half(), grads
    )  # fmt: skip
    want = pair_and_gradients(reference(kind, 0.5), q.double(), k.double(), grads)
    for g, w in zip(got, want):
        assert g.dtype == torch.float16
        # float32 inside, one rounding to half precision at the end (relative 2**-11).
        assert torch.allclose(g.double(), w, rtol=2e-3, atol=2e-3)


def test_dispatch_takes_the_kernel_only_where_it_may(monkeypatch):
    calls = []
    fused = lion_triton_features.feature_maps
    monkeypatch.setattr(lion_triton_features, "feature_maps", lambda *a: calls.append(a[0]) or fused(*a))
    q, k = qkv_views(2, 9, 4, 16, torch.Generator().manual_seed(3))
    want = reference("silu_shift_l2", 0.25)(q, k)

    def check(got, reason):
        for g, w in zip(got, want):
            assert torch.allclose(g.double(), w.double(), atol=1e-6), reason

    check(feature_maps("silu_shift_l2", q, k, 0.25), "fused")
    assert calls == ["silu_shift_l2"]
    check(feature_maps("silu_shift_l2", q, k, 0.25, backend="pytorch"), "forced PyTorch")
    check(feature_maps("silu_shift_l2", q, k.contiguous(), 0.25), "different strides")
    check(feature_maps("silu_shift_l2", q.double(), k.double(), 0.25), "float64")
    assert calls == ["silu_shift_l2"]
    assert lion_triton_features.unsupported("identity", q, k).startswith("feature map 'identity'")
    assert lion_triton_features.unsupported("silu_shift_l2", q, k.contiguous()).startswith("strides ")
    assert lion_triton_features.unsupported("silu_shift_l2", q, k.double()).startswith("dtypes ")
    monkeypatch.setenv(BACKEND_ENVIRONMENT_VARIABLE, "pytorch")
    feature_maps("silu_shift_l2", q, k)
    assert calls == ["silu_shift_l2"]


@pytest.mark.parametrize("kind", ["identity", *KINDS])
def test_parallel_kernels_take_raw_features_in_one_autograd_node(kind):
    """Raw strided queries, keys and values into the parallel kernels' node (the map, the scale and the map's
    gradient inside): the output and gradients of the float64 oracle (the map applied in float64) and of the
    PyTorch path, and the output laid out (B, N, H, D) so that merging the heads is a view."""
    generator = torch.Generator().manual_seed(4)
    qkv = torch.randn(2, 21, 3, 2, 16, generator=generator)
    log_decays = [torch.nn.functional.logsigmoid(torch.randn(2, 2, 21, generator=generator))]
    grad = torch.randn(2, 2, 21, 16, generator=generator)
    # Normalised where the map is positive, as the models are (identity's row sums may come near 0).
    normalize = kind != "identity"
    results = []
    for backend in ("triton", "pytorch", "float64"):
        q, k, v = (t.transpose(1, 2) for t in (qkv.double() if backend == "float64" else qkv).unbind(2))
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        if backend == "float64":
            function = FEATURE_MAP_FUNCTIONS[kind]
            decays = [d.double() for d in log_decays]
            out = naive_lion_attention(function(q) * 0.25, function(k), v, decays, normalize=normalize)
        else:
            out = lion_attention(q, k, v, log_decays, feature_map=kind, scale=0.25, normalize=normalize, backend=backend)
        if backend == "triton":
            assert type(out.grad_fn).__name__ == "_EagerAttentionBackward"
            assert out.transpose(1, 2).is_contiguous()
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))))
    fused, pytorch, oracle = results
    for got, want, exact in zip(fused, pytorch, oracle):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
        assert torch.allclose(got.double(), exact, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant,order", [("lit", "raster"), ("d", "snake"), ("s", "snake")])
def test_vision_model_through_the_kernels_matches_the_pytorch_path(variant, order, monkeypatch):
    """Feature maps, attention and the decays' gradients all through the attention kernels, in one autograd node
    per layer without copies, against the forced PyTorch path."""
    calls = []
    tracked = [(lion_triton, "parallel_attention")] + [(lion_triton_features, n) for n in ("map_pair", "map_pair_backward")]
    for module, name in tracked:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    config = LionConfig(
        modality="vision", variant=variant, patch_order=order, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, image_size=16, patch_size=4, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LionForImageClassification(config).train()
    pixels, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 2])
    results = []
    for backend in ("auto", "pytorch"):
        model.config.attention_backend = backend
        model.zero_grad()
        loss = model(pixel_values=pixels, labels=labels).loss
        if backend == "auto":
            # Feature map, scale and attention in one node per layer, the heads read and merged as views.
            names = [type(node).__name__ for node in autograd_graph(loss)]
            assert names.count("_EagerAttentionBackward") == 2
            assert not [n for n in names if n.startswith(("Clone", "Mul", "_FeatureMap", "Elu", "Silu", "Div"))]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    # Two layers through the kernels with "auto" (the map again in each backward, whose gradient the attention
    # kernels apply themselves), none with "pytorch".
    assert calls == ["parallel_attention", "map_pair"] * 2 + ["map_pair"] * 2
    (loss, grads), (want_loss, want_grads) = results
    assert torch.allclose(loss, want_loss, rtol=1e-5)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, want_grads[name], rtol=1e-4, atol=1e-6), name
