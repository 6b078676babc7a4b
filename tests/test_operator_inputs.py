"""The operator's switches and bad input: one check of form, chunk size and backend; the dispatch table."""

from __future__ import annotations

import re

import pytest
import torch

from lion_hf import lion_attention
from lion_hf.modeling import lion_attention as operator
from lion_hf.modeling.naive import naive_lion_attention


def _tensors(batch=2, heads=3, length=5, dim=4):
    return torch.randn(batch, heads, length, dim), torch.randn(batch, heads, length, dim), torch.randn(batch, heads, length, dim)


def test_unknown_form():
    q, k, v = _tensors()
    with pytest.raises(ValueError, match=re.escape("Unknown attention_form 'scan'; allowed: 'parallel', 'chunk', 'recurrent'")):
        lion_attention(q, k, v, form="scan")


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True, "8"])
def test_bad_chunk_size(chunk_size):
    q, k, v = _tensors()
    with pytest.raises(ValueError, match=re.escape(f"chunk_size must be a positive integer, got {chunk_size!r}")):
        lion_attention(q, k, v, form="chunk", chunk_size=chunk_size)


def test_unknown_backend():
    q, k, v = _tensors()
    with pytest.raises(ValueError, match=re.escape("Unknown attention_backend 'cuda'; allowed: 'auto', 'pytorch', 'triton'")):
        lion_attention(q, k, v, backend="cuda")


def test_wrong_shapes():
    q, k, v = _tensors()
    with pytest.raises(ValueError, match=r"q, k must be \(B, H, N, D\).*q \(3, 5, 4\)"):
        lion_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match=r"k \(2, 3, 5, 2\)"):
        lion_attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match=r"v \(2, 3, 4, 4\)"):
        lion_attention(q, k, v[:, :, :4])
    for bad in (torch.zeros(2, 3, 4), torch.zeros(3, 3, 5), torch.zeros(1, 2, 5), torch.zeros(3, 5)):
        with pytest.raises(ValueError, match="log-decay must have shape .*got " + re.escape(str(tuple(bad.shape)))):
            lion_attention(q, k, v, [bad])
    with pytest.raises(ValueError, match="one tensor per path"):
        lion_attention(q, k, v, [])


@pytest.mark.parametrize("shape", [(2, 4), (1, 5), (2, 5, 1), (5,)])
def test_wrong_key_padding_mask_shape(shape):
    q, k, v = _tensors()
    message = f"key_padding_mask must have shape (batch, length) = (2, 5), got {shape}."
    with pytest.raises(ValueError, match=re.escape(message)):
        lion_attention(q, k, v, key_padding_mask=torch.ones(shape, dtype=torch.bool))


def test_orders_must_match_paths():
    q, k, v = _tensors()
    log_a = torch.zeros(1, 3, 5)
    order = torch.arange(5)
    with pytest.raises(ValueError, match="got 1 orders for 2 log-decay paths"):
        lion_attention(q, k, v, [log_a, log_a], [order])
    with pytest.raises(ValueError, match="2 log-decay paths need as many orders, got none"):
        lion_attention(q, k, v, [log_a, log_a])
    with pytest.raises(ValueError, match=r"order must be a permutation of shape \(5,\), got \(4,\)"):
        lion_attention(q, k, v, [log_a], [torch.arange(4)])


# -------------------------------------------------------------------------------------------- dispatch


def test_every_form_has_a_pytorch_implementation_that_runs_anywhere():
    q, k, v = _tensors()
    for form in operator.ATTENTION_FORMS:
        chosen = operator.select_implementation(form, "pytorch", q, k, v, None, None, chunk_size=4, normalize=False,
                                                eps=1e-6, key_padding_mask=None, dropout_p=0.0)  # fmt: skip
        assert (chosen.backend, chosen.form) == ("pytorch", form)


def _recording(backend, form, reason, calls):
    def run(q, k, v, log_decays, orders, **options):
        calls.append((backend, sorted(options)))
        return naive_lion_attention(q, k, v, log_decays, orders, normalize=options["normalize"],
                                    eps=options["eps"], key_padding_mask=options["key_padding_mask"]).to(q.dtype)  # fmt: skip

    return operator.AttentionImplementation(backend, form, run, lambda *args, **options: reason)


def test_auto_takes_the_first_implementation_that_can_run_the_inputs(monkeypatch):
    """A kernel drops in as a table entry in front of the PyTorch forms, without touching the models."""
    calls = []
    monkeypatch.setattr(operator, "ATTENTION_BACKENDS", ("auto", "pytorch", "unavailable", "fused"))
    table = (
        _recording("unavailable", "chunk", "needs a GPU", calls),
        _recording("fused", "chunk", None, calls),
        *operator.IMPLEMENTATIONS,
    )
    monkeypatch.setattr(operator, "IMPLEMENTATIONS", table)
    q, k, v = _tensors()
    log_a = [torch.nn.functional.logsigmoid(torch.randn(2, 3, 5))]
    expected = naive_lion_attention(q, k, v, log_a)
    torch.testing.assert_close(lion_attention(q, k, v, log_a, form="chunk").double(), expected, rtol=1e-6, atol=1e-7)
    assert calls == [("fused", ["chunk_size", "dropout_p", "eps", "key_padding_mask", "normalize"])]
    # The parallel form has no such entry: PyTorch computes it.
    torch.testing.assert_close(lion_attention(q, k, v, log_a, form="parallel").double(), expected, rtol=1e-5, atol=1e-6)
    assert len(calls) == 1
    # Asked for by name, an implementation that cannot run the inputs says why.
    with pytest.raises(ValueError, match=re.escape("No 'unavailable' implementation of the 'chunk' form can run these inputs (unavailable: needs a GPU)")):
        lion_attention(q, k, v, log_a, form="chunk", backend="unavailable")
    # The environment variable overrides "auto" only.
    monkeypatch.setenv(operator.BACKEND_ENVIRONMENT_VARIABLE, "pytorch")
    lion_attention(q, k, v, log_a, form="chunk")
    assert len(calls) == 1
    lion_attention(q, k, v, log_a, form="chunk", backend="fused")
    assert len(calls) == 2


def test_the_choice_is_kept_for_inputs_alike_and_made_again_for_others(monkeypatch):
    """The rules are asked once per kind of inputs (device, dtype, shapes, paths, options), not on every call."""
    asked = []

    def rule(q, k, v, log_decays, orders, **options):
        asked.append((q.dtype, tuple(q.shape), options["chunk_size"]))
        return None if q.dtype == torch.float32 else "float32 only"

    fused = operator.AttentionImplementation("fused", "chunk", _recording("fused", "chunk", None, []).run, rule)
    monkeypatch.setattr(operator, "ATTENTION_BACKENDS", ("auto", "pytorch", "fused"))
    monkeypatch.setattr(operator, "IMPLEMENTATIONS", (fused, *operator.IMPLEMENTATIONS))
    q, k, v = _tensors()

    def chosen(q, chunk_size=4):
        options = dict(chunk_size=chunk_size, normalize=False, eps=1e-6, key_padding_mask=None, dropout_p=0.0)
        return operator.select_implementation("chunk", "auto", q, q, q, None, None, **options).backend

    assert [chosen(q), chosen(q + 1), chosen(q.double()), chosen(q.double())] == ["fused", "fused", "pytorch", "pytorch"]
    assert asked == [(torch.float32, (2, 3, 5, 4), 4), (torch.float64, (2, 3, 5, 4), 4)]
    assert [chosen(q[:1]), chosen(q, chunk_size=2)] == ["fused", "fused"]
    assert asked[2:] == [(torch.float32, (1, 3, 5, 4), 4), (torch.float32, (2, 3, 5, 4), 2)]
    monkeypatch.setenv(operator.BACKEND_ENVIRONMENT_VARIABLE, "pytorch")
    assert chosen(q) == "pytorch"
    # A new table (as the tests above install) is asked afresh.
    monkeypatch.setattr(operator, "IMPLEMENTATIONS", operator.IMPLEMENTATIONS[1:])
    monkeypatch.delenv(operator.BACKEND_ENVIRONMENT_VARIABLE)
    assert chosen(q) == "pytorch" and len(asked) == 4


def test_a_bad_backend_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv(operator.BACKEND_ENVIRONMENT_VARIABLE, "magic")
    q, k, v = _tensors()
    with pytest.raises(ValueError, match=re.escape("Unknown $LION_HF_ATTENTION_BACKEND 'magic'; allowed: 'auto', 'pytorch', 'triton'")):
        lion_attention(q, k, v)


def test_lion_hf_info_says_what_computes_each_form(monkeypatch, capsys):
    from lion_hf.cli import main

    calls = []
    monkeypatch.setattr(operator, "IMPLEMENTATIONS", (
        _recording("unavailable", "chunk", "needs a GPU", calls), _recording("fused", "chunk", None, calls),
        *operator.IMPLEMENTATIONS,
    ))  # fmt: skip
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    cpu = out[out.index("  on cpu float32:") : out.index("  on cuda bfloat16")]
    lines = [line.split(None, 2) for line in cpu.splitlines() if line.startswith("    ")]
    reason = "cannot run: cpu tensors (the kernels run on CUDA, or on the CPU through TRITON_INTERPRET=1)"
    assert lines == [
        ["chunk", "unavailable", "cannot run: needs a GPU"],
        ["chunk", "fused", "runs"],
        ["parallel", "triton", f"cannot run: 16 tokens (this entry runs the chunk kernels from "
                               f"{operator.CHUNK_KERNELS_FROM_LENGTH} tokens on)"],
        ["parallel", "triton", reason],
        ["parallel", "pytorch", "runs"],
        ["chunk", "triton", reason],
        ["chunk", "pytorch", "can run (with attention_backend='pytorch')"],
        ["recurrent", "triton", reason],
        ["recurrent", "pytorch", "runs"],
        ["features", "triton", reason],
        ["features", "pytorch", "runs"],
    ]
    # CUDA inputs as well, from fake tensors where there is no GPU (tests/test_kernels.py checks the
    # kernels' own lines with Triton installed).
    for dtype in ("bfloat16", "float16", "float32"):
        assert f"  on cuda {dtype}" in out
