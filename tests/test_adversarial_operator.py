"""The operator under bad and extreme input: every refusal by its message, every accepted edge case against the
naive float64 reference (modeling/naive.py) on clean inputs."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from helpers import FORMS, assert_close_to_scale

from lion_hf import lion_attention, lion_attention_weights
from lion_hf.modeling import lion_attention as operator
from lion_hf.modeling.naive import naive_attention_weights, naive_lion_attention


def _inputs(batch=2, heads=3, length=7, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3))
    gates = [F.logsigmoid(torch.randn(batch, heads, length, generator=generator) + 1)]
    return q, k, v, gates


def _assert_matches_naive(out, expected, rows=None):
    """``out`` against the float64 reference, on all rows or only ``rows`` (a (B, N) boolean mask)."""
    if rows is not None:
        out, expected = out.transpose(1, 2)[rows], expected.transpose(1, 2)[rows]
    assert torch.isfinite(out).all()
    assert_close_to_scale(out, expected, rtol=1e-5)


# ------------------------------------------------------------------------- orders that are not permutations


@pytest.mark.parametrize(
    "order, found",
    [
        ([0, 0, 1, 2, 3, 4, 5], "repeated: [0]; missing: [6]"),
        ([0, 1, 2, 3, 4, 5, 7], "out of range: [7]; missing: [6]"),
        ([-1, 1, 2, 3, 4, 5, 6], "out of range: [-1]; missing: [0]"),
    ],
)
def test_an_order_that_is_not_a_permutation_is_refused(order, found):
    """Regression: only the shape was checked, and the forms then disagreed by 6-9."""
    q, k, v, gates = _inputs()
    message = f"orders[1] must be a permutation of 0..6 (the token visited at each step); {found}."
    for form in FORMS:
        with pytest.raises(ValueError, match=re.escape(message)):
            lion_attention(q, k, v, gates * 2, [torch.arange(7), torch.tensor(order)], form=form)
    with pytest.raises(ValueError, match=re.escape(message)):
        lion_attention_weights(q, k, gates * 2, [torch.arange(7), torch.tensor(order)])


def test_an_order_is_checked_once_and_again_after_an_in_place_change():
    q, k, v, gates = _inputs()
    order = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    expected = naive_lion_attention(q, k, v, gates, [order])
    _assert_matches_naive(lion_attention(q, k, v, gates, [order], form="chunk", chunk_size=3), expected)
    assert operator._CHECKED_ORDERS.get(order) == order._version
    order[0] = order[1]  # no longer a permutation: the version counter moved, so it is checked again
    with pytest.raises(ValueError, match=r"orders\[0\] must be a permutation of 0\.\.6"):
        lion_attention(q, k, v, gates, [order])
    with torch.inference_mode():  # inference tensors have no version counter: checked at every call
        frozen = torch.tensor([0, 0, 1, 2, 3, 4, 5])
        for _ in range(2):
            with pytest.raises(ValueError, match="repeated: \\[0\\]"):
                lion_attention(q, k, v, gates, [frozen])


@pytest.mark.parametrize(
    "order, message",
    [
        (torch.arange(7.0), "each order must be an integer tensor (token indices), got torch.float32."),
        (torch.ones(7, dtype=torch.bool), "each order must be an integer tensor (token indices), got torch.bool."),
    ],
)
def test_orders_must_hold_token_indices(order, message):
    q, k, v, gates = _inputs()
    with pytest.raises(ValueError, match=re.escape(message)):
        lion_attention(q, k, v, gates, [order])


def test_a_tensor_where_a_list_of_paths_belongs_is_named():
    q, k, v, gates = _inputs()
    message = "{} must be a list with one tensor per path, got a tensor; pass [{}]."
    with pytest.raises(ValueError, match=re.escape(message.format("log_decays", "log_decay"))):
        lion_attention(q, k, v, gates[0])
    with pytest.raises(ValueError, match=re.escape(message.format("orders", "order"))):
        lion_attention(q, k, v, gates, torch.arange(7))


# ------------------------------------------------------------------------------------------- log-decays


@pytest.mark.parametrize("value, shown", [(0.5, "0.5"), (float("inf"), "inf"), (float("nan"), "nan")])
def test_log_decays_outside_the_domain_are_refused(value, shown):
    """Positive log-decays (decays above 1) gave inf/NaN silently; NaN on a real token is refused too."""
    q, k, v, gates = _inputs()
    gates[0][1, 2, 4] = value
    message = f"log_decays[0] must hold log-decays <= 0 (decays in (0, 1]), not NaN; found {shown} at (batch, head, token) (1, 2, 4)."
    for form in FORMS:
        with pytest.raises(ValueError, match=re.escape(message)):
            lion_attention(q, k, v, gates, form=form)
    # The same decay on a LION-D path (constant along the tokens).
    constant = torch.full((1, 3, 1), value).expand(1, 3, 7)
    with pytest.raises(ValueError, match=r"log_decays\[0\] must hold log-decays <= 0"):
        lion_attention(q, k, v, [constant])


def test_check_values_false_leaves_the_values_to_the_caller():
    """The models pass check_values=False (their decays and orders are valid by construction): no host read."""
    q, k, v, gates = _inputs()
    gates[0][0, 0, 0] = 0.1
    out = lion_attention(q, k, v, gates, [torch.arange(7)], check_values=False)
    _assert_matches_naive(out, naive_lion_attention(q, k, v, gates))


@pytest.mark.parametrize("value", [float("-inf"), -1e30, -1e5])
def test_vanishing_decays_cut_the_mask_exactly(value):
    """Decays of 0 (log -inf) or far below float64's smallest number: the forms gave NaN or lost the other decays
    of the row to cancellation (-1e30 next to -1); now every form matches the products of the reference."""
    q, k, v, gates = _inputs(length=9)
    gates[0][:, :, 4] = value
    expected = naive_lion_attention(q, k, v, gates)
    constant = [torch.full((1, 3, 1), value).expand(1, 3, 9)]
    for form in FORMS:
        _assert_matches_naive(lion_attention(q, k, v, gates, form=form, chunk_size=2), expected)
        _assert_matches_naive(lion_attention(q, k, v, constant, form=form, chunk_size=2), naive_lion_attention(q, k, v, constant))
    _assert_matches_naive(lion_attention_weights(q, k, gates), naive_attention_weights(q, k, gates))


# ------------------------------------------------------------------------------- NaN at padded positions


@pytest.mark.parametrize("where", ["left", "right", "both"])
@pytest.mark.parametrize("normalize", [False, True])
def test_nan_and_inf_at_padded_positions_reach_no_real_token(where, normalize):
    """Padded keys were multiplied by 0 (NaN * 0 is NaN), and a padded LION-S decay sits in the running sums
    before the real tokens of a left-padded row: both are selected away now."""
    q, k, v, gates = _inputs(batch=3, length=9)
    real = torch.ones(3, 9, dtype=torch.bool)
    if where in ("left", "both"):
        real[0, :3] = False
    if where in ("right", "both"):
        real[1, 6:] = False
    real[2, 1:] = where == "both"  # a single real token first (or a full row)
    q = q.abs() if normalize else q
    expected = naive_lion_attention(q, k.abs() if normalize else k, v, gates, normalize=normalize, key_padding_mask=real)
    poisoned = [t.clone() for t in (q, k.abs() if normalize else k, v, gates[0])]
    for t, value in zip(poisoned, (float("nan"), float("inf"), float("-inf"), float("nan"))):
        t.transpose(1, 2)[~real] = value
    q_bad, k_bad, v_bad, gate_bad = poisoned
    for form in FORMS:
        out = lion_attention(q_bad, k_bad, v_bad, [gate_bad], form=form, chunk_size=2, normalize=normalize,
                             key_padding_mask=real)  # fmt: skip
        _assert_matches_naive(out, expected, rows=real)
    weights = lion_attention_weights(q_bad, k_bad, [gate_bad], normalize=normalize, key_padding_mask=real)
    expected_weights = naive_attention_weights(q, k.abs() if normalize else k, gates, normalize=normalize, key_padding_mask=real)
    _assert_matches_naive(weights, expected_weights, rows=real)


def test_finite_padded_decays_keep_the_padded_rows_unchanged():
    """Only non-finite padded decays are replaced: padded rows give what they gave before (and what the original
    models give there), so that converted checkpoints still match their reference outputs on every position."""
    q, k, v, gates = _inputs(length=8)
    real = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0], [1] * 8]).bool()
    expected = naive_lion_attention(q, k, v, gates, key_padding_mask=real)
    for form in FORMS:
        _assert_matches_naive(lion_attention(q, k, v, gates, form=form, chunk_size=3, key_padding_mask=real), expected)


# ------------------------------------------------------------------------------------------ padding masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.uint8])
def test_a_zero_one_key_padding_mask_of_any_dtype_equals_the_boolean_one(dtype):
    q, k, v, gates = _inputs()
    real = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]])
    expected = naive_lion_attention(q, k, v, gates, key_padding_mask=real.bool())
    _assert_matches_naive(lion_attention(q, k, v, gates, key_padding_mask=real.to(dtype)), expected)


@pytest.mark.parametrize("values, found", [([0.0, -1e4], "[-10000.0]"), ([0.0, float("-inf")], "[-inf]"), ([1, 2], "[2]")])
def test_a_key_padding_mask_that_is_not_zero_one_is_refused(values, found):
    """An additive mask read as .bool() would swap real tokens and padding."""
    q, k, v, gates = _inputs()
    mask = torch.tensor([values[0]] * 5 + [values[1]] * 2).expand(2, 7)
    message = f"key_padding_mask must hold 1/true for real tokens and 0/false for padding; found {found}."
    with pytest.raises(ValueError, match=re.escape(message)):
        lion_attention(q, k, v, gates, key_padding_mask=mask)


# ---------------------------------------------------------------------------------- empty and degenerate


@pytest.mark.parametrize("shape", [(0, 3, 7, 4), (2, 3, 0, 4), (0, 3, 0, 4)])
@pytest.mark.parametrize("variant", ["lit", "d", "s"])
def test_empty_inputs_give_an_empty_result_in_every_form(shape, variant):
    """The chunk and recurrent forms crashed (cannot reshape 0 elements, integer modulo by zero)."""
    batch, heads, length, dim = shape
    q, k = torch.randn(shape, requires_grad=True), torch.randn(shape)
    v = torch.randn(batch, heads, length, 5)
    log_decays = {
        "lit": None,
        "d": [torch.full((1, heads, 1), -0.5).expand(1, heads, length)],
        "s": [torch.full((batch, heads, length), -0.5)],
    }[variant]
    mask = torch.ones(batch, length, dtype=torch.bool)
    for form in FORMS:
        for normalize in (False, True):
            out = lion_attention(q, k, v, log_decays, form=form, normalize=normalize, key_padding_mask=mask)
            assert out.shape == (batch, heads, length, 5) and out.dtype == torch.float32
            out.sum().backward()  # connected to the inputs, as a non-empty result is
    assert lion_attention_weights(q, k, log_decays, key_padding_mask=mask).shape == (batch, heads, length, length)


def test_zero_width_heads():
    q, k, v, gates = _inputs()
    for form in FORMS:
        out = lion_attention(q[..., :0], k[..., :0], v, gates, form=form, chunk_size=3)
        assert torch.equal(out, torch.zeros_like(out))  # no features: every score is 0
        assert lion_attention(q, k, v[..., :0], gates, form=form, normalize=True).shape == (2, 3, 7, 0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(q=torch.zeros(2, 3, 7, 4, dtype=torch.long)), "q must be a floating-point tensor, got torch.int64."),
        (dict(v=[[0.0]]), "v must be a floating-point tensor, got list."),
        (dict(v=torch.zeros(2, 3, 7)), "q, k must be (B, H, N, D) of the same shape and v (B, H, N, Dv)"),
        (dict(dropout_p=1.0, training=True), "dropout_p must be in [0, 1), got 1.0."),
        (dict(dropout_p=-0.1), "dropout_p must be in [0, 1), got -0.1."),
    ],
)
def test_bad_tensors_and_options_are_named(change, message):
    q, k, v, gates = _inputs()
    arguments = {**dict(q=q, k=k, v=v, log_decays=gates), **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        lion_attention(**arguments)


# ---------------------------------------------------------------------------------------- torch.compile


def test_value_checks_hold_under_torch_compile():
    """Compiled, the checks are assertions in the graph: no graph break, an error when the graph runs."""
    import torch._dynamo as dynamo

    q, k, v, gates = _inputs()

    def attention(q, k, v, log_decay, order):
        return lion_attention(q, k, v, [log_decay], [order], form="chunk", chunk_size=3)

    dynamo.reset()
    assert dynamo.explain(attention)(q, k, v, gates[0], torch.arange(7)).graph_break_count == 0
    # aot_eager: the assertion as traced into the graph, without C++ code generation (the models' compile test runs
    # the default inductor backend).
    compiled = torch.compile(attention, backend="aot_eager", fullgraph=True, dynamic=False)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    _assert_matches_naive(compiled(q, k, v, gates[0], order), naive_lion_attention(q, k, v, gates, [order]))
    with pytest.raises(RuntimeError, match=re.escape("orders[0] must be a permutation of 0..6.")):
        compiled(q, k, v, gates[0], torch.tensor([0, 0, 1, 2, 3, 4, 5]))
    with pytest.raises(RuntimeError, match=re.escape("log_decays[0] must hold log-decays <= 0")):
        compiled(q, k, v, gates[0].abs(), order)
