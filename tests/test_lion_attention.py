"""The LION operator against a float64 reference written here from the formulas (DESIGN.md section 3).

The reference builds every mask entry as an explicit product of decays along the path, so it shares no code
and no numerical trick (prefix sums, chunking, scans) with the operator.
"""

from __future__ import annotations

import random
import re

import pytest
import torch
import torch.nn.functional as F

from lion_hf import lion_attention

FORMS = ("parallel", "chunk", "recurrent")
VARIANTS = ("lit", "d", "s")
STYLES = ("normalized", "padded")


# ------------------------------------------------------------------------------------------- reference


def reference_mask(log_decay: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """``M[..., i, j]`` for log-decays ``(..., N)`` in token order, walking the tokens in ``order``.

    With ``step`` the position of a token on the path and ``a`` the decays in path order:
    ``M_ij = a[step_j] ... a[step_i - 1]`` if ``i`` comes after ``j``, ``a[step_i + 1] ... a[step_j]`` if before,
    and ``1`` on the diagonal.
    """
    length = log_decay.shape[-1]
    order = list(range(length)) if order is None else order.tolist()
    step = {token: s for s, token in enumerate(order)}
    along_path = log_decay.double().exp()[..., order]
    ones = torch.ones_like(along_path[..., 0])
    rows = []
    for i in range(length):
        row = []
        for j in range(length):
            si, sj = step[i], step[j]
            if si > sj:
                entry = along_path[..., sj:si].prod(-1)
            elif si < sj:
                entry = along_path[..., si + 1 : sj + 1].prod(-1)
            else:
                entry = ones
            row.append(entry)
        rows.append(torch.stack(row, dim=-1))
    return torch.stack(rows, dim=-2)


def reference_attention(q, k, v, log_decays=None, orders=None, normalize=False, eps=1e-6, key_padding_mask=None):
    """``Y = (Q K^T * M) V`` (optionally divided by the row sums plus ``eps``) in float64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2)
    if key_padding_mask is not None:
        scores = scores * key_padding_mask[:, None, None, :].double()
    if log_decays is not None:
        orders = orders if orders is not None else [None] * len(log_decays)
        masks = [reference_mask(log_decay, order) for log_decay, order in zip(log_decays, orders)]
        scores = scores * (sum(masks) / len(masks))
    out = scores @ v
    if normalize:
        out = out / (scores.sum(-1, keepdim=True) + eps)
    return out


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, floor: float = 1e-6) -> None:
    """Elementwise within ``rtol`` relative, and absolutely within ``rtol`` of the largest expected entry.

    ``floor`` bounds the absolute tolerance from below: a gradient that is zero in exact arithmetic (the
    normalised output of one key does not depend on its query) is float32 rounding noise of O(1) terms.
    """
    expected = expected.detach().double()
    atol = max(rtol * expected.abs().max().item(), floor)
    torch.testing.assert_close(actual.detach().double(), expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------- cases


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

    def reference(self):
        leaves, (q, k, v), kwargs = self.inputs(torch.float64)
        out = reference_attention(q, k, v, **kwargs)
        (out * self.weights.double()).sum().backward()
        return out, gradients(leaves)


def check_against_reference(case: Case, form: str, chunk_size: int = 64) -> None:
    out, grads = case.run(form, chunk_size)
    expected, expected_grads = case.reference()
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert_close(out, expected, rtol=1e-5)
    assert set(grads) == set(expected_grads)
    for name, grad in grads.items():
        assert_close(grad, expected_grads[name], rtol=1e-4)


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_float64_reference(variant, form, style, seed):
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
    with_orders, _ = case.run("parallel")
    case.orders = [torch.arange(case.length)] * 2
    natural, _ = case.run("parallel")
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


@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_inputs_stay_float64(variant):
    case = Case(31, variant, "padded", length=12)
    leaves, (q, k, v), kwargs = case.inputs(torch.float64)
    expected = reference_attention(q, k, v, **kwargs)
    for form in FORMS:
        out = lion_attention(q, k, v, form=form, chunk_size=5, **kwargs)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_score_dropout_acts_only_in_training():
    case = Case(41, "s", "padded", length=10)
    _, (q, k, v), kwargs = case.inputs(torch.float32)
    plain = lion_attention(q, k, v, **kwargs)
    assert torch.equal(lion_attention(q, k, v, dropout_p=0.5, training=False, **kwargs), plain)
    # With identity values the output is the score matrix: each masked score is zeroed or doubled.
    identity = torch.eye(case.length).expand(case.batch, case.heads, -1, -1)
    scores = reference_attention(q, k, identity, **kwargs)
    dropped = lion_attention(q, k, identity, dropout_p=0.5, training=True, **kwargs)
    real = scores != 0
    kept = dropped[real] != 0
    assert 0 < kept.sum() < kept.numel()
    assert_close(dropped[real][kept], 2 * scores[real][kept], rtol=1e-5)


# ------------------------------------------------------------------------------------ long sequences


def dense_mask_float64(log_decay: torch.Tensor) -> torch.Tensor:
    """The natural-order mask from float64 prefix sums (the loops of ``reference_mask`` are too slow here)."""
    inclusive = log_decay.double().cumsum(-1)
    exclusive = inclusive - log_decay.double()
    after = exclusive[..., :, None] - exclusive[..., None, :]  # i >= j: a_j ... a_(i-1)
    before = inclusive[..., None, :] - inclusive[..., :, None]  # i < j: a_(i+1) ... a_j
    length = log_decay.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool).tril()
    return torch.where(lower, after, before).exp()


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
    mask = dense_mask_float64(log_a)
    for normalize in (False, True):
        if normalize:
            q, k = F.elu(q) + 1, F.elu(k) + 1
        scores = (q.double() @ k.double().transpose(-1, -2)) * mask
        expected = scores @ v.double()
        if normalize:
            expected = expected / (scores.sum(-1, keepdim=True) + 1e-6)
        outputs, grads = {}, {}
        for form in FORMS:
            decay = log_a.clone().requires_grad_(form != "recurrent")
            out = lion_attention(q, k, v, [decay], form=form, chunk_size=128, normalize=normalize)
            assert torch.isfinite(out).all(), (form, normalize)
            assert_close(out, expected, rtol=1e-5)
            outputs[form] = out.detach()
            if decay.requires_grad:
                out.sum().backward()
                assert torch.isfinite(decay.grad).all(), (form, normalize)
                grads[form] = decay.grad
        assert_close(outputs["chunk"], outputs["parallel"], rtol=1e-5)
        assert_close(outputs["recurrent"], outputs["parallel"], rtol=1e-5)
        assert_close(grads["chunk"], grads["parallel"], rtol=1e-4)


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
    expected = ((q.double() @ k.double().transpose(-1, -2)) * dense_mask_float64(log_a)) @ v.double()
    for form in FORMS:
        out = lion_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), [log_a], form=form, chunk_size=64)
        assert out.dtype == torch.bfloat16
        error = (out.double() - expected).abs().max() / expected.abs().max()
        assert error < 0.02, (form, error.item())


# ------------------------------------------------------------------------------------------ bad input


def _tensors(batch=2, heads=3, length=5, dim=4):
    return torch.randn(batch, heads, length, dim), torch.randn(batch, heads, length, dim), torch.randn(batch, heads, length, dim)


def test_unknown_form():
    q, k, v = _tensors()
    with pytest.raises(ValueError, match=r"Unknown attention form 'scan'.*parallel, chunk, recurrent"):
        lion_attention(q, k, v, form="scan")


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True, "8"])
def test_bad_chunk_size(chunk_size):
    q, k, v = _tensors()
    with pytest.raises(ValueError, match=rf"chunk_size must be a positive integer, got {chunk_size!r}"):
        lion_attention(q, k, v, form="chunk", chunk_size=chunk_size)


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
