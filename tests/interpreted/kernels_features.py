"""The fused feature-map kernels (modeling/lion_triton_features.py), run on the CPU through Triton's interpreter.

Maps and gradients against float64 PyTorch and the models' PyTorch functions, on row counts that are not
multiples of the interpreter's 16-row blocks and head dims that are not powers of two; the dispatch (fused where it
can run, PyTorch for a forced PyTorch backend, non-contiguous inputs and under torch.compile); and a vision model
whose eager forward and backward through every kernel match the PyTorch path. Runs in a process of its own (see
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

from lion_hf import LionConfig, LionForImageClassification  # noqa: E402
from lion_hf.modeling import lion_triton, lion_triton_features  # noqa: E402
from lion_hf.modeling.lion_attention import BACKEND_ENVIRONMENT_VARIABLE  # noqa: E402
from lion_hf.modeling.modeling_lion import FEATURE_MAP_FUNCTIONS, apply_feature_map  # noqa: E402

KINDS = ("elu_plus_one", "silu_shift_l2")


@pytest.fixture(autouse=True)
def no_forced_backend(monkeypatch):
    monkeypatch.delenv(BACKEND_ENVIRONMENT_VARIABLE, raising=False)


def map_and_gradient(fn, x, grad):
    x = x.detach().requires_grad_()
    y = fn(x)
    return y, torch.autograd.grad(y, x, grad.to(y.dtype))[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(2, 3, 7, 24), (37, 64), (1, 5)])
def test_fused_maps_match_float64_and_the_pytorch_functions(kind, shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator) * 3
    grad = torch.randn(*shape, generator=generator)
    got = map_and_gradient(lambda t: lion_triton_features.feature_map(kind, t), x, grad)
    want = map_and_gradient(FEATURE_MAP_FUNCTIONS[kind], x.double(), grad.double())
    pytorch = map_and_gradient(FEATURE_MAP_FUNCTIONS[kind], x, grad)
    for g, w, p in zip(got, want, pytorch):
        assert g.dtype == torch.float32
        assert torch.allclose(g.double(), w, rtol=1e-5, atol=1e-6)
        assert torch.allclose(g, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_maps_round_once(kind):
    x = torch.randn(3, 20, 32, generator=torch.Generator().manual_seed(1))
    grad = torch.randn(3, 20, 32, generator=torch.Generator().manual_seed(2))
    got = map_and_gradient(lambda t: lion_triton_features.feature_map(kind, t), x.half(), grad.half())
    want = map_and_gradient(FEATURE_MAP_FUNCTIONS[kind], x.double(), grad.double())
    for g, w in zip(got, want):
        assert g.dtype == torch.float16
        # float32 inside, one rounding to half precision at the end (relative 2**-11).
        assert torch.allclose(g.double(), w, rtol=2e-3, atol=2e-3)


def test_dispatch_takes_the_kernel_only_where_it_may(monkeypatch):
    calls = []
    fused = lion_triton_features.feature_map
    monkeypatch.setattr(lion_triton_features, "feature_map", lambda *a: calls.append(a[0]) or fused(*a))
    x = torch.rand(2, 4, 9, 16) - 0.5
    want = FEATURE_MAP_FUNCTIONS["silu_shift_l2"](x)
    assert torch.allclose(apply_feature_map("silu_shift_l2", x), want, atol=1e-6)
    assert calls == ["silu_shift_l2"]
    for reason, got in [
        ("forced PyTorch", apply_feature_map("silu_shift_l2", x, backend="pytorch")),
        ("non-contiguous", apply_feature_map("silu_shift_l2", x.transpose(1, 2)).transpose(1, 2)),
        ("float64", apply_feature_map("silu_shift_l2", x.double())),
    ]:
        assert torch.allclose(got.double(), want.double(), atol=1e-6), reason
    assert calls == ["silu_shift_l2"]
    assert lion_triton_features.unsupported("identity", x).startswith("feature map 'identity'")
    assert lion_triton_features.unsupported("silu_shift_l2", x.transpose(1, 2)) == "a non-contiguous input"
    monkeypatch.setenv(BACKEND_ENVIRONMENT_VARIABLE, "pytorch")
    apply_feature_map("silu_shift_l2", x)
    assert calls == ["silu_shift_l2"]


@pytest.mark.parametrize("variant,order", [("lit", "raster"), ("d", "snake"), ("s", "snake")])
def test_vision_model_through_the_kernels_matches_the_pytorch_path(variant, order, monkeypatch):
    """Feature maps, attention and the decays' gradients all through kernels, against the forced PyTorch path."""
    calls = []
    for module, name in ((lion_triton, "parallel_attention"), (lion_triton_features, "feature_map")):
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
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    # Two layers through the kernels with "auto", none with "pytorch".
    assert calls == ["feature_map", "parallel_attention"] * 2
    (loss, grads), (want_loss, want_grads) = results
    assert torch.allclose(loss, want_loss, rtol=1e-5)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, want_grads[name], rtol=1e-4, atol=1e-6), name
