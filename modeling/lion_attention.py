"""The LION operator: bidirectional linear attention under a decay mask, in three equivalent forms.

For one head, with queries ``q_i``, keys ``k_j``, values ``v_j`` and a decay ``a_t`` in (0, 1] per token,

    Y = (Q K^T * M) V,   M_ij = a_j ... a_(i-1) (i > j),   M_ii = 1,   M_ij = a_(i+1) ... a_j (i < j).

``a_t = 1`` everywhere is LION-LIT, a constant per head is LION-D, one value per token and head is LION-S.
Decays are passed as log-decays (``log a_t <= 0``). A token order (a permutation, e.g. the snake orders of
the vision models) builds the mask along that order instead of the natural one; several orders ("paths")
average their masks: ``M = mean_p M_p``.

Forms (all compute the same function):

- ``parallel``: the masked score matrix materialised, N x N; the training form, the only one with score dropout.
- ``chunk``: exact masked attention inside chunks of ``chunk_size`` tokens plus the states carried between
  chunks, all chunks at once (the states of every chunk from one small chunk-to-chunk transfer product);
  memory O(N * chunk_size + N / chunk_size * D^2).
- ``recurrent``: the bidirectional RNN of the paper, ``S_(c+1) = (decay over chunk c) S_c + (chunk c's keys and
  values)`` forwards and its mirror image backwards, one step per chunk of ``chunk_size`` tokens
  (``chunk_size=1``: one step per token); inside a step, the chunk's own tokens are exact masked attention.

Without a decay (LION-LIT) the mask is all ones and every form reduces to ``Q (K^T V)``, which is what they
compute (the parallel form keeps ``(Q K^T) V`` when the sequence is no longer than the head dimension, or when
score dropout needs the matrix).

Queries and keys enter raw: ``lion_attention`` applies the feature map (``feature_map=``, one of
``FEATURE_MAP_FUNCTIONS``) to both and multiplies the queries by ``scale``, so that an implementation may fuse
both into its own kernels (the parallel kernels do, in eager mode: one autograd node for the whole layer's mixing).

Row normalisation (``normalize=True``: ``Y = (A V) / (rowsum(A) + eps)``) is computed by every form by carrying a
column of ones next to the values, so the normaliser sees exactly the same mask as the numerator.

Dispatch. ``lion_attention`` checks its arguments once and hands them to the first entry of ``IMPLEMENTATIONS``
(backend, form, run, why-not) that can run them: fused kernels sit in front of the PyTorch forms of this file,
which run anywhere. ``attention_backend`` (``backend=``) or ``$LION_HF_ATTENTION_BACKEND`` names one backend.
The first entry takes a ``parallel`` call of ``CHUNK_KERNELS_FROM_LENGTH`` tokens or more without score dropout to
the fused chunk kernels where they can run it: the forms are the same function, and there the chunk kernels are
the faster one. The float64 oracle every implementation is tested against is ``naive.py``
beside this file.

Mask construction. With ``m`` the running sum of log-decays along the path minus half the token's own
log-decay, and ``h`` half the token's log-decay, every mask entry is

    log M_ij = sign(pos_i - pos_j) * (m_i - m_j) + h_j - h_i,

one subtraction of two per-token numbers per entry (``pos``: the step of the path that visits the token).
LION-D (a log-decay constant along the tokens, recognised by a zero stride along the length, as
``x.expand(..., N)`` gives) uses the closed form ``log M_ij = log a * |pos_i - pos_j|``: no running sums at all.
The masked product runs in one autograd node that keeps the mask for the backward pass and recomputes the
scores, instead of autograd's chain of N x N temporaries.

Checks. ``lion_attention`` checks shapes and switches on every call (no host sync). With ``check_values=True``
(the default) it also checks the values: log-decays ``<= 0`` and not NaN, each order a permutation (once per order
tensor: the result is cached by identity and version), a non-bool ``key_padding_mask`` 0/1. In eager mode each of
those reads one boolean on the host; under ``torch.compile`` they are asynchronous assertions in the graph (a
``RuntimeError`` when the graph runs; on CUDA a device-side assert). The models pass ``check_values=False``: their
log-decays come from ``logsigmoid`` / ``log(1 - sigmoid + eps)``, their orders from ``snake_orders`` and their masks
are checked once per forward by the model (0/1, one contiguous run of real tokens per row, so that a row's padding
is exactly what lies outside that run: with ``check_values=False`` the operator takes the mask as that run).

Padding. Keys and values of padded tokens are selected away, never multiplied by 0, and a non-finite log-decay of a
token outside the row's run of real tokens is replaced by 0, so that NaN or inf there reaches no real token (no
real token's mask uses those decays; finite ones are kept, so padded rows give what they always gave). Log-decays
below ``-1000`` (decays that are 0 in every float dtype) are taken as ``-1000``: ``-inf`` (a decay of 0) cuts the
mask exactly, and the running sums stay free of cancellation. Empty inputs (no batch, no tokens) give an empty
result in every form.

Numerics. Inputs in float32 or float64 compute exactly: running sums and the subtraction above in float64 (the
sums grow with the length and their float32 differences would lose the small values that matter), masks
exponentiated from values ``<= 0`` and rounded once to the compute dtype. Under bfloat16 (autocast, or bf16
inputs) the relaxations are: running sums and their differences in float32, an absolute error of about
``1.2e-7 * |running sum|`` in a log-mask entry, below bf16's resolution (``2**-9``) while the running sum stays
under ~1.6e4 (per head: e.g. 4096 tokens of decay ``exp(-4)``); a single path's ``h`` is moved into the queries
and keys (``q_i e^(-h_i)``, ``k_j e^(h_j)``: one more bf16 rounding of each), for which log-decays are clamped at
-60 (decays under 1e-26, which bf16 cannot tell from 0 next to the diagonal's 1). Chunk-local sums, the chunk
transfer (always float64: it is tiny) and the weights of the carried states stay as precise as in float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

ATTENTION_FORMS = ("parallel", "chunk", "recurrent")
# "auto" takes the first implementation of the form in IMPLEMENTATIONS that can run the inputs.
ATTENTION_BACKENDS = ("auto", "pytorch", "triton")
# Overrides an "auto" backend for every call, e.g. LION_HF_ATTENTION_BACKEND=pytorch to rule out kernels.
BACKEND_ENVIRONMENT_VARIABLE = "LION_HF_ATTENTION_BACKEND"

# bf16 only: a single path's h is folded into q and k as exp(-h) and exp(h); this keeps both finite.
_FOLD_MIN_LOG_DECAY = -60.0
# exp underflows to 0 below about -745 even in float64: a log-decay under this bound is the same decay (0) in every
# dtype, and bounding it keeps the running sums of log-decays free of cancellation (-1e30 next to -1 loses the -1).
MIN_LOG_DECAY = -1000.0
# From this many tokens on, a call of the parallel form without score dropout runs the fused chunk kernels (the
# same function) where they can: they are faster from between 2048 and 4096 tokens (H200, bf16, B 4, H 12, D 64,
# forward + backward: benchmarks/NOTES.md) and their memory is linear in the length.
CHUNK_KERNELS_FROM_LENGTH = 3072
# Orders already found to be permutations, with the tensor version they were checked at.
_CHECKED_ORDERS = WeakIdKeyDictionary()
_ORDER_STEPS = WeakIdKeyDictionary()


def _elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1


def _silu_shift_l2(x: torch.Tensor) -> torch.Tensor:
    x = F.silu(x) + 0.5
    # Autocast computes the norm in float32; dividing by it in x's dtype keeps bf16 queries and keys bf16.
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).to(x.dtype)


FEATURE_MAP_FUNCTIONS = {"identity": lambda x: x, "elu_plus_one": _elu_plus_one, "silu_shift_l2": _silu_shift_l2}


def is_compiling() -> bool:
    """Under torch.compile, torch.export or torch.jit.trace: data-dependent Python branches are not allowed."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def check_choice(name: str, value, allowed) -> None:
    """A ``ValueError`` naming ``value`` and the allowed ones unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}.")


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_that(condition: torch.Tensor, message: str, details: Callable[[], str] | None = None) -> None:
    """Unless the boolean tensor ``condition`` holds: a ``ValueError`` with ``details()`` (or ``message``).

    Eager, this reads the condition on the host (one sync; ``details`` runs only on failure). Under torch.compile
    it is an asynchronous assertion in the graph with ``message``: no graph break and no sync, and a
    ``RuntimeError`` when the graph runs (on CUDA a device-side assert).
    """
    if is_compiling():
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise ValueError(details() if details is not None else message)


def check_attention_settings(form: str, chunk_size: int, backend: str = "auto") -> None:
    """The one check of the operator's switches, shared by ``LionConfig``, the models and ``lion_attention``."""
    check_choice("attention_form", form, ATTENTION_FORMS)
    check_positive_int("chunk_size", chunk_size)
    check_choice("attention_backend", backend, ATTENTION_BACKENDS)


def lion_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decays: Sequence[torch.Tensor] | None = None,
    orders: Sequence[torch.Tensor] | None = None,
    *,
    feature_map: str = "identity",
    scale: float = 1.0,
    form: str = "parallel",
    chunk_size: int = 64,
    normalize: bool = False,
    eps: float = 1e-6,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str = "auto",
    check_values: bool = True,
) -> torch.Tensor:
    """Masked bidirectional linear attention.

    Args:
        q, k: ``(B, H, N, D)`` queries and keys before the feature map (any strides).
        v: ``(B, H, N, Dv)`` values (any strides).
        log_decays: ``None`` for no decay (LION-LIT), else one tensor per path of shape ``(B or 1, H, N)``
            holding ``log a_t <= 0`` of every token, indexed in token order. One that is constant along the tokens
            and expanded to the length (stride 0, e.g. ``logsigmoid(w).view(1, H, 1).expand(1, H, N)``) is LION-D
            and takes the closed form.
        orders: ``None`` for the natural order, else one ``LongTensor`` ``(N,)`` per path: ``orders[p][l]`` is
            the token visited at step ``l`` of path ``p``.
        feature_map: applied to ``q`` and ``k``, one of ``FEATURE_MAP_FUNCTIONS``.
        scale: what the feature-mapped queries are multiplied by (e.g. ``D ** -0.5``).
        form: one of ``ATTENTION_FORMS``.
        chunk_size: tokens per chunk for the ``chunk`` form and per step of the ``recurrent`` form (any
            positive size; the last chunk may be shorter).
        normalize: divide by the row sums of the masked scores plus ``eps``.
        key_padding_mask: ``(B, N)``, true/1 for real tokens, false/0 for padding; padded keys contribute nothing.
        dropout_p: dropout on the masked scores; only the ``parallel`` form materialises them.
        backend: ``"auto"`` (the first implementation in ``IMPLEMENTATIONS`` that can run the inputs, unless
            ``$LION_HF_ATTENTION_BACKEND`` names one) or the name of one backend.
        check_values: check the values of ``log_decays``, ``orders`` and a non-bool ``key_padding_mask`` (see
            "Checks" in the module docstring); ``False`` for inputs that are valid by construction, a
            ``key_padding_mask`` included (one contiguous run of real tokens per row).

    Returns:
        ``(B, H, N, Dv)`` in the compute dtype: the autocast dtype under autocast, else the dtype of ``q``; not
        necessarily contiguous (the fused kernels write it as ``(B, N, H, Dv)``, the layout of the heads' merge).
    """
    check_attention_settings(form, chunk_size, backend)
    check_choice("feature_map", feature_map, FEATURE_MAP_FUNCTIONS)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}.")
    _check_shapes(q, k, v, log_decays, orders, key_padding_mask)
    key_padding_mask = _boolean_mask(key_padding_mask, check_values)
    dtype = compute_dtype(q)
    q, k, v = (as_dtype(t, dtype) for t in (q, k, v))
    if orders is None and log_decays is not None:
        orders = [None] * len(log_decays)
    options = dict(
        chunk_size=chunk_size,
        normalize=normalize,
        eps=eps,
        key_padding_mask=key_padding_mask,
        dropout_p=dropout_p if training and form == "parallel" else 0.0,
    )
    if q.shape[0] == 0 or q.shape[2] == 0:
        if log_decays is not None and check_values:
            _checked_log_decays(log_decays, orders, key_padding_mask, check_values)
        # No sample or no token: the empty product (every implementation may assume at least one of each).
        return q @ k.transpose(-1, -2) @ v
    implementation = select_implementation(form, backend, q, k, v, log_decays, orders, **options)
    if log_decays is not None and (check_values or not implementation.bounds_decays):
        log_decays = _checked_log_decays(log_decays, orders, key_padding_mask, check_values)
    if implementation.maps_features:
        return implementation.run(q, k, v, log_decays, orders, feature_map=feature_map, scale=scale, **options)
    q, k = feature_maps(feature_map, q, k, scale, backend)
    # Contiguous heads: batched matrix products would otherwise copy them again at every use.
    q, k, v = (t.contiguous() for t in (q, k, v))
    return implementation.run(q, k, v, log_decays, orders, **options)


def feature_maps(name: str, q: torch.Tensor, k: torch.Tensor, scale: float = 1.0, backend: str = "auto"):
    """``(map(q) * scale, map(k))`` for feature map ``name``: one fused kernel each way for both where the backend
    allows it and the kernels can take them (eager, CUDA or the interpreter), else in PyTorch."""
    if (
        name != "identity"
        and not is_compiling()
        and resolved_backend(backend) != "pytorch"
        and fused_feature_maps_unsupported(name, q, k) is None
    ):
        from .lion_triton_features import feature_maps as fused

        return fused(name, q, k, scale)
    function = FEATURE_MAP_FUNCTIONS[name]
    q = function(q)
    return (q if scale == 1.0 else q * scale), function(k)


def fused_feature_maps_unsupported(name: str, q: torch.Tensor, k: torch.Tensor) -> str | None:
    """Why the fused kernels cannot apply feature map ``name`` to ``q`` and ``k``, or ``None``."""
    reason = kernel_device_reason(q)
    if reason is not None:
        return reason
    try:
        # A literal relative import (not importlib): saved checkpoints carry the file, and torch.compile traces it.
        from .lion_triton_features import unsupported
    except ImportError:
        return "triton is not installed"
    return unsupported(name, q, k)


def lion_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    log_decays: Sequence[torch.Tensor] | None = None,
    orders: Sequence[torch.Tensor] | None = None,
    *,
    feature_map: str = "identity",
    scale: float = 1.0,
    normalize: bool = False,
    eps: float = 1e-6,
    key_padding_mask: torch.Tensor | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """The ``(B, H, N, N)`` matrix that every form of :func:`lion_attention` multiplies the values with.

    ``(q k^T) * M`` with the decay mask of the same arguments, padded keys' columns zero, and with ``normalize``
    divided by its row sums plus ``eps``; no dropout. It is materialised, so its memory grows as ``N^2``.
    """
    check_choice("feature_map", feature_map, FEATURE_MAP_FUNCTIONS)
    log_decays, key_padding_mask = _checked_inputs(q, k, k, log_decays, orders, key_padding_mask, check_values)
    dtype = compute_dtype(q)
    mask_dtype = _mask_dtype(dtype)
    q, k = feature_maps(feature_map, q.to(dtype), k.to(dtype), scale, backend="pytorch")
    scores = q.to(mask_dtype) @ k.to(mask_dtype).transpose(-1, -2)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], 0.0)
    if log_decays is not None:
        orders = orders if orders is not None else [None] * len(log_decays)
        paths = [_path_mask_terms(q, d, o, mask_dtype, fold=False)[0] for d, o in zip(log_decays, orders)]
        scores = scores * _decay_mask(paths, mask_dtype)
    if normalize:
        scores = scores / (scores.sum(-1, keepdim=True) + eps)
    return scores.to(dtype)


# ------------------------------------------------------------------------------------------- dispatch


@dataclass(frozen=True)
class AttentionImplementation:
    """One way to compute one form.

    ``run(q, k, v, log_decays, orders, *, chunk_size, normalize, eps, key_padding_mask, dropout_p)`` gets
    contiguous inputs in the compute dtype with at least one sample and one token, log-decays no lower than
    -1000 and finite outside each row's run of real tokens (see "Padding" in the module docstring), ``orders`` as
    one entry (a permutation or ``None``) per path, a boolean ``key_padding_mask`` or ``None``, and a
    ``dropout_p`` that is already 0 outside training.
    ``unsupported`` takes the same arguments and returns why it cannot run them, or ``None`` when it can; it may
    read only what ``_selection_key`` holds (the device, dtype and shapes of the inputs, the number of paths, the
    options, ``$TRITON_INTERPRET``, ``CHUNK_KERNELS_FROM_LENGTH``), since the choice is kept for inputs alike in
    these.
    With ``maps_features``, ``run`` gets ``q``, ``k`` and ``v`` as given (any strides), ``q`` and ``k`` before the
    feature map, and the keyword arguments ``feature_map`` and ``scale`` too. With ``bounds_decays``, it gets the
    log-decays unbounded when the caller passed ``check_values=False`` (a valid ``key_padding_mask`` is then its
    own span) and bounds them itself, as ``bounded_log_decays`` does, gradients included.
    """

    backend: str
    form: str
    run: Callable[..., torch.Tensor]
    unsupported: Callable[..., str | None]
    maps_features: bool = False
    bounds_decays: bool = False


def select_implementation(form: str, backend: str, *args, **options) -> AttentionImplementation:
    """The implementation that runs ``form`` for these inputs (the arguments of ``AttentionImplementation.run``).

    The choice is kept per kind of inputs (``_selection_key``): a model asks for the same one in every layer and
    step, and asking every implementation again took several microseconds of host time per call. (Not while
    torch.compile traces, which asks once per graph.)
    """
    backend = resolved_backend(backend)
    if is_compiling():
        return _first_that_runs(form, backend, *args, **options)
    key = _selection_key(form, backend, *args, **options)
    table, implementation = _SELECTED.get(key, (None, None))
    if table is not IMPLEMENTATIONS:  # also when the table was replaced (tests do)
        implementation = _first_that_runs(form, backend, *args, **options)
        if len(_SELECTED) >= _MAX_SELECTED:
            _SELECTED.clear()
        _SELECTED[key] = IMPLEMENTATIONS, implementation
    return implementation


def _selection_key(form, backend, q, k, v, log_decays, orders, **options) -> tuple:
    return (
        form, backend, q.device.type, q.dtype, q.shape, v.shape, 0 if log_decays is None else len(log_decays),
        options["chunk_size"], options["dropout_p"] > 0.0, os.environ.get("TRITON_INTERPRET"),
        CHUNK_KERNELS_FROM_LENGTH,
    )  # fmt: skip


_SELECTED: dict = {}
_MAX_SELECTED = 1024


def _first_that_runs(form: str, backend: str, *args, **options) -> AttentionImplementation:
    reasons = []
    for implementation in IMPLEMENTATIONS:
        if implementation.form != form or backend not in ("auto", implementation.backend):
            continue
        reason = implementation.unsupported(*args, **options)
        if reason is None:
            return implementation
        reasons.append(f"{implementation.backend}: {reason}")
    raise ValueError(f"No {backend!r} implementation of the {form!r} form can run these inputs ({'; '.join(reasons)}).")


def resolved_backend(backend: str) -> str:
    """``backend``, or for ``"auto"`` the one ``$LION_HF_ATTENTION_BACKEND`` names (``"auto"`` when unset)."""
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENVIRONMENT_VARIABLE, "auto") or "auto"
        check_choice(f"${BACKEND_ENVIRONMENT_VARIABLE}", backend, ATTENTION_BACKENDS)
    return backend


def _runs_anywhere(*args, **options) -> None:
    return None


def _checked_inputs(q, k, v, log_decays, orders, key_padding_mask, check_values):
    """The checked ``log_decays`` (bounded, see "Padding") and ``key_padding_mask`` (boolean) for the forms."""
    _check_shapes(q, k, v, log_decays, orders, key_padding_mask)
    key_padding_mask = _boolean_mask(key_padding_mask, check_values)
    if log_decays is None:
        return None, key_padding_mask
    return _checked_log_decays(log_decays, orders, key_padding_mask, check_values), key_padding_mask


def _boolean_mask(key_padding_mask, check_values):
    if key_padding_mask is None:
        return None
    if check_values and key_padding_mask.dtype != torch.bool:
        _check_binary(key_padding_mask)
    # Contiguous: the kernels index the mask as a plain (B, N) array (a no-op for the usual mask).
    return key_padding_mask.bool().contiguous()


def _checked_log_decays(log_decays, orders, key_padding_mask, check_values) -> list[torch.Tensor]:
    """``log_decays`` bounded (see "Padding") and, with ``check_values``, checked, as are the ``orders``."""
    # A valid mask marks one run per row, which is then its own span: no need to find the span on every call.
    spanned = key_padding_mask
    if check_values and key_padding_mask is not None:
        spanned = _spanned_by_real_tokens(key_padding_mask)
    log_decays = bounded_log_decays(log_decays, spanned)
    if check_values:
        for index, log_decay in enumerate(log_decays):
            _check_log_decay(index, log_decay)
        for index, order in enumerate(orders or ()):
            if order is not None:
                _check_permutation(index, order)
    return log_decays


def _check_shapes(q, k, v, log_decays, orders, key_padding_mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a floating-point tensor, got {kind}.")
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k must be (B, H, N, D) of the same shape and v (B, H, N, Dv); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}."
        )
    batch, heads, length = q.shape[:3]
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, length):
        raise ValueError(
            f"key_padding_mask must have shape (batch, length) = {(batch, length)}, got {tuple(key_padding_mask.shape)}."
        )
    if log_decays is None:
        return
    for name, paths in (("log_decays", log_decays), ("orders", orders)):
        if isinstance(paths, torch.Tensor):
            raise ValueError(f"{name} must be a list with one tensor per path, got a tensor; pass [{name[:-1]}].")
    if len(log_decays) == 0:
        raise ValueError("log_decays must hold one tensor per path, or be None for no decay.")
    for log_decay in log_decays:
        if log_decay.dim() != 3 or log_decay.shape[0] not in (1, batch) or tuple(log_decay.shape[1:]) != (heads, length):
            raise ValueError(
                f"each log-decay must have shape (batch or 1, heads, length) = ({batch} or 1, {heads}, {length}), "
                f"got {tuple(log_decay.shape)}."
            )
    if orders is not None:
        if len(orders) != len(log_decays):
            raise ValueError(f"got {len(orders)} orders for {len(log_decays)} log-decay paths; give one order per path.")
        for order in orders:
            if order is None:
                continue
            if tuple(order.shape) != (length,):
                raise ValueError(f"each order must be a permutation of shape ({length},), got {tuple(order.shape)}.")
            if order.is_floating_point() or order.is_complex() or order.dtype == torch.bool:
                raise ValueError(f"each order must be an integer tensor (token indices), got {order.dtype}.")
    elif len(log_decays) != 1:
        raise ValueError(f"{len(log_decays)} log-decay paths need as many orders, got none.")


def _check_binary(key_padding_mask: torch.Tensor) -> None:
    def found() -> str:
        values = key_padding_mask.unique()
        odd = values[(values != 0) & (values != 1)]
        return f"key_padding_mask must hold 1/true for real tokens and 0/false for padding; found {odd.tolist()[:8]}."

    binary = ((key_padding_mask == 0) | (key_padding_mask == 1)).all()
    check_that(binary, "key_padding_mask must hold 1/true for real tokens and 0/false for padding.", found)


def _check_log_decay(index: int, log_decay: torch.Tensor) -> None:
    def found() -> str:
        bad = (~(log_decay <= 0)).nonzero()[0].tolist()
        return (
            f"log_decays[{index}] must hold log-decays <= 0 (decays in (0, 1]), not NaN; found "
            f"{log_decay[tuple(bad)].item()} at (batch, head, token) {tuple(bad)}."
        )

    values = log_decay[..., :1] if is_constant_along_length(log_decay) else log_decay
    check_that((values <= 0).all(), f"log_decays[{index}] must hold log-decays <= 0 (decays in (0, 1]), not NaN.", found)


def _check_permutation(index: int, order: torch.Tensor) -> None:
    """Once per order tensor (and again after an in-place change): a permutation of the token indices."""
    # Inference tensors have no version counter to notice an in-place change by: they are checked every time.
    cached = not is_compiling() and not order.is_inference()
    if cached and _CHECKED_ORDERS.get(order) == order._version:
        return
    length = order.shape[0]

    def found() -> str:
        inside = (order >= 0) & (order < length)
        counts = torch.bincount(order[inside], minlength=length)
        outside = order[~inside].tolist()
        twice = (counts > 1).nonzero().flatten().tolist()
        missing = (counts == 0).nonzero().flatten().tolist()
        problems = [(outside, "out of range"), (twice, "repeated"), (missing, "missing")]
        found = "; ".join(f"{what}: {indices[:8]}" for indices, what in problems if indices)
        return f"orders[{index}] must be a permutation of 0..{length - 1} (the token visited at each step); {found}."

    steps = torch.arange(length, device=order.device)
    check_that((order.sort().values == steps).all(), f"orders[{index}] must be a permutation of 0..{length - 1}.", found)
    if cached:
        _CHECKED_ORDERS[order] = order._version


def bounded_log_decays(log_decays, spanned, minimum: float = MIN_LOG_DECAY) -> list[torch.Tensor]:
    """Log-decays at or above ``minimum``, and 0 where non-finite outside ``spanned`` ``(B, N)``: the tokens
    from each row's first real token to its last (``None``: no padding)."""
    spanned = None if spanned is None else spanned[:, None, :]
    bounded = []
    for log_decay in log_decays:
        if is_constant_along_length(log_decay):
            # Still stride 0 along the tokens, so that it keeps the closed form.
            bounded.append(log_decay[..., :1].clamp(min=minimum).expand(log_decay.shape))
            continue
        log_decay = log_decay.clamp(min=minimum)
        if spanned is not None:
            log_decay = torch.where(spanned | log_decay.isfinite(), log_decay, 0.0)
        bounded.append(log_decay)
    return bounded


def bounds_passing(log_decays, spanned, minimum: float = MIN_LOG_DECAY) -> list[torch.Tensor]:
    """Where ``bounded_log_decays(log_decays, spanned, minimum)`` leaves each log-decay as it is, i.e. where its
    gradient passes: ``(B or 1, H, 1)`` for one constant along the tokens, else ``(B or 1, H, N)``."""
    passing = []
    for log_decay in log_decays:
        if is_constant_along_length(log_decay):
            passing.append(log_decay[..., :1] >= minimum)
            continue
        passed = log_decay >= minimum
        if spanned is not None:
            passed = passed & (spanned[:, None, :] | log_decay.isfinite())
        passing.append(passed)
    return passing


def _spanned_by_real_tokens(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """``(B, N)``: the tokens from a row's first real token to its last, the only ones whose decays a real token's
    mask uses."""
    return key_padding_mask.cummax(1).values & key_padding_mask.flip(1).cummax(1).values.flip(1)


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the call when ``t`` already has it: an eager step makes many such calls, and each
    costs the host a dispatch even when it returns ``t``."""
    return t if t.dtype == dtype else t.to(dtype)


def compute_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype ``q`` is computed in: autocast's where autocast would cast it (float64 it leaves alone)."""
    if q.dtype == torch.float64:
        return q.dtype
    if torch.is_autocast_enabled(q.device.type):
        return torch.get_autocast_dtype(q.device.type)
    return q.dtype


def _mask_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where log-masks are formed: float64 for exact (float32/64) compute, float32 under bf16/fp16."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def order_steps(order: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``argsort(order)`` in ``dtype``: the step at which the path visits each token. Kept per order tensor (and
    its version), since every layer of a model gets the same orders; computed afresh under torch.compile and for
    inference tensors (no version counter)."""
    if is_compiling() or order.is_inference():
        return torch.argsort(order).to(dtype)
    cached = _ORDER_STEPS.get(order)
    if cached is None or cached[0] != order._version:
        # Normal tensors even under inference mode: a later training step saves them for its backward.
        with torch.inference_mode(False):
            steps = torch.argsort(order)
            cached = _ORDER_STEPS[order] = (order._version, {torch.int64: steps})
    if dtype not in cached[1]:
        with torch.inference_mode(False):
            cached[1][dtype] = cached[1][torch.int64].to(dtype)
    return cached[1][dtype]


def is_constant_along_length(log_decay: torch.Tensor) -> bool:
    return log_decay.shape[-1] == 1 or log_decay.stride(-1) == 0


# ------------------------------------------------------------------------------ the PyTorch forms


def _pytorch_form(compute: Callable) -> Callable[..., torch.Tensor]:
    """A PyTorch form with what they all share around it: padded keys removed, the normaliser carried.

    Padded keys and values are selected away (not multiplied by 0, so that a NaN there cannot reach a real
    token). Row normalisation carries a column of ones next to the values, so the normaliser sees exactly the
    mask of the numerator.
    """

    def run(q, k, v, log_decays, orders, *, chunk_size, normalize, eps, key_padding_mask, dropout_p):
        if key_padding_mask is not None:
            real = key_padding_mask[:, None, :, None]
            k, v = torch.where(real, k, 0.0), torch.where(real, v, 0.0)
        value_dim = v.shape[-1]
        if normalize:
            v = _with_ones_column(v)
        out = compute(q, k, v, log_decays, orders, chunk_size=chunk_size, dropout_p=dropout_p)
        if normalize:
            out = out[..., :value_dim] / (out[..., value_dim : value_dim + 1] + eps)
        return out

    return run


def _with_ones_column(v: torch.Tensor) -> torch.Tensor:
    # Padded with zeros to a multiple of 8 columns, the width at which bf16 matrix products stay on fast kernels.
    width = -(-(v.shape[-1] + 1) // 8) * 8
    extra = v.new_zeros(width - v.shape[-1])
    extra[0] = 1
    return torch.cat([v, extra.expand(*v.shape[:-1], -1)], dim=-1)


def _parallel_form(q, k, v, log_decays, orders, *, chunk_size, dropout_p):
    if log_decays is None:
        if dropout_p > 0.0 or q.shape[-2] <= q.shape[-1]:
            return _masked_attention(q, k, v, [], dropout_p)
        return q @ (k.transpose(-1, -2) @ v)
    return _parallel(*_padded_to_8(q, k, v, log_decays, orders), dropout_p)[:, :, : q.shape[2]]


def _chunk_form(q, k, v, log_decays, orders, *, chunk_size, dropout_p):
    return _average_over_paths(q, k, v, log_decays, orders, chunk_size, _carried_by_transfer)


def _recurrent_form(q, k, v, log_decays, orders, *, chunk_size, dropout_p):
    return _average_over_paths(q, k, v, log_decays, orders, chunk_size, _carried_by_scan)


# ------------------------------------------------------------------------------------ the masked product


def _pairwise(position: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``pos_i - pos_j`` for the steps ``pos`` of a path."""
    return (position[:, None] - position[None, :]).to(dtype)


def _log_mask(kind: str, static: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """One path's ``log M`` (``(..., N, N)``, in the dtype of ``a``).

    ``distance``: ``static`` holds ``|pos_i - pos_j|`` and ``a`` the log-decay ``(..., 1, 1)``.
    ``segments``: ``static`` holds ``sign(pos_i - pos_j)``, ``a`` is ``m (..., N)`` and ``b`` is ``h (..., N)``
    or ``None`` when it was folded into the queries and keys.
    """
    if kind == "distance":
        return static * a
    log_mask = (a[..., :, None] - a[..., None, :]).mul_(static)
    if b is not None:
        log_mask.add_(b[..., None, :]).sub_(b[..., :, None])
    return log_mask


def _decay_mask(paths, dtype) -> torch.Tensor | None:
    """The mean over paths of ``exp(log M_p)``, in ``dtype``."""
    total = None
    for path in paths:
        mask = _log_mask(*path).exp_()
        total = mask if total is None else total.add_(mask)
    if total is None:
        return None
    if len(paths) > 1:
        total.div_(len(paths))
    return total.to(dtype)


def _decay_gradients(paths, grad_log_mask) -> list[torch.Tensor | None]:
    """Gradients of ``(a, b)`` of every path, from the gradient ``G`` of each path's ``log M``."""
    grads = []
    for index, (kind, static, a, b) in enumerate(paths):
        g = grad_log_mask(index)
        if kind == "distance":
            dims = [d for d in range(g.dim() - 2) if a.shape[d] == 1 and g.shape[d] != 1]
            reduced = g.sum(dims, keepdim=True, dtype=a.dtype) if dims else g.to(a.dtype)
            grads += [(reduced * static).sum((-2, -1), keepdim=True), None]
            continue
        grad_b = None
        if b is not None:
            grad_b = (g.sum(-2, dtype=b.dtype) - g.sum(-1, dtype=b.dtype)).sum_to_size(b.shape)
        signed = g.mul_(static.to(g.dtype))  # g is this path's own temporary
        grad_a = (signed.sum(-1, dtype=a.dtype) - signed.sum(-2, dtype=a.dtype)).sum_to_size(a.shape)
        grads += [grad_a, grad_b]
    return grads


def _pack(paths) -> tuple[tuple, list[torch.Tensor]]:
    """Paths as a constant spec plus a flat list of tensors: all that torch.compile lets cross ``apply``."""
    spec = tuple((kind, b is not None) for kind, _, _, b in paths)
    tensors = [t for _, static, a, b in paths for t in (static, a, b) if t is not None]
    return spec, tensors


def _unpack(spec, tensors) -> list[tuple]:
    paths, it = [], iter(tensors)
    for kind, has_b in spec:
        paths.append((kind, next(it), next(it), next(it) if has_b else None))
    return paths


class _MaskedAttention(torch.autograd.Function):
    """``(dropout((q k^T) * M)) v`` with ``M`` built from per-path decay tensors, in one autograd node.

    Forward keeps ``q, k, v``, the mask and the dropout mask; backward recomputes the scores (one matrix
    product) instead of keeping them, and forms the decay gradients from row and column sums.
    """

    @staticmethod
    def forward(ctx, q, k, v, dropout_p, spec, *path_tensors):
        paths = _unpack(spec, path_tensors)
        mask = _decay_mask(paths, q.dtype)
        probs = q @ k.transpose(-1, -2)
        if mask is not None:
            probs.mul_(mask)
        keep = None
        if dropout_p > 0.0:
            probs, keep = torch.native_dropout(probs, dropout_p, True)
        ctx.dropout_p, ctx.spec = dropout_p, spec
        ctx.save_for_backward(q, k, v, mask, keep, *path_tensors)
        return probs @ v

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask, keep, *path_tensors = ctx.saved_tensors
        paths = _unpack(ctx.spec, path_tensors)
        scale = 1.0 / (1.0 - ctx.dropout_p)
        scores = q @ k.transpose(-1, -2)
        probs = scores if mask is None else (scores * mask if len(paths) > 1 else scores.mul_(mask))
        dropped = probs if keep is None else torch.ops.aten.native_dropout_backward(probs, keep, scale)
        grad_v = dropped.transpose(-1, -2) @ grad_out
        grad_probs = grad_out @ v.transpose(-1, -2)
        if keep is not None:
            grad_probs = torch.ops.aten.native_dropout_backward(grad_probs, keep, scale)

        decay_grads = [None] * (2 * len(paths))
        if any(ctx.needs_input_grad[5:]):
            if len(paths) == 1:
                shared = grad_probs * probs  # d loss / d log M of the only path

                def grad_log_mask(index):
                    return shared
            else:
                grad_mask = grad_probs * scores

                def grad_log_mask(index):
                    path_mask = _log_mask(*paths[index]).exp_().div_(len(paths))
                    return grad_mask * path_mask.to(grad_mask.dtype)

            decay_grads = _decay_gradients(paths, grad_log_mask)

        grad_scores = grad_probs if mask is None else grad_probs.mul_(mask)
        grad_q = grad_scores @ k
        grad_k = grad_scores.transpose(-1, -2) @ q
        # One gradient per packed tensor: none for the static tables, none for an absent b.
        path_grads = []
        for (kind, static, a, b), grad_a, grad_b in zip(paths, decay_grads[::2], decay_grads[1::2]):
            path_grads += [None, grad_a] + ([grad_b] if b is not None else [])
        return (grad_q, grad_k, grad_v, None, None, *path_grads)


def _masked_attention(q, k, v, paths, dropout_p=0.0) -> torch.Tensor:
    """``paths``: ``(kind, static, a, b)`` per path (see ``_log_mask``); empty for no mask."""
    spec, tensors = _pack(paths)
    return _MaskedAttention.apply(q, k, v, dropout_p, spec, *tensors)


def _segment_terms(log_decay, order, position, mask_dtype):
    """``m`` and ``h`` (token order, ``mask_dtype``) of a path whose log-decays vary along the tokens."""
    log_a = log_decay.to(mask_dtype)
    along = log_a if order is None else log_a[..., order]
    m = along.cumsum(-1) - 0.5 * along
    if position is not None:
        m = m[..., position]
    return m, 0.5 * log_a


def _path_mask_terms(q, log_decay, order, mask_dtype, fold: bool):
    """One path as ``(kind, static, a, b)`` plus the ``(q, k)`` scaling it asks for when ``fold``."""
    length = q.shape[-2]
    position = None if order is None else order_steps(order)
    steps = torch.arange(length, device=q.device) if position is None else position
    if is_constant_along_length(log_decay):
        a = log_decay[..., :1, None].to(mask_dtype)
        return ("distance", _pairwise(steps, mask_dtype).abs_(), a, None), None
    if fold:
        log_decay = log_decay.clamp(min=_FOLD_MIN_LOG_DECAY)
    m, h = _segment_terms(log_decay, order, position, mask_dtype)
    signs = _pairwise(steps, mask_dtype).sign_()
    if fold:
        return ("segments", signs, m, None), h
    return ("segments", signs, m, h), None


def _padded_to_8(q, k, v, log_decays, orders):
    """The inputs with the length padded to a multiple of 8 by tokens that change nothing.

    An N x N score matrix whose rows are not 16-byte aligned pushes cuBLAS onto slow generic kernels. Padded
    tokens have no query, key or value, decay 1, and come last on every path.
    """
    length = q.shape[2]
    pad = (-length) % 8
    if not pad:
        return q, k, v, log_decays, orders
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    padded_decays = []
    for log_decay in log_decays:
        if is_constant_along_length(log_decay):
            padded_decays.append(log_decay[..., :1].expand(*log_decay.shape[:-1], length + pad))
        else:
            padded_decays.append(F.pad(log_decay, (0, pad)))
    tail = torch.arange(length, length + pad, device=q.device)
    orders = [None if order is None else torch.cat([order, tail]) for order in orders]
    return q, k, v, padded_decays, orders


def _parallel(q, k, v, log_decays, orders, dropout_p):
    mask_dtype = _mask_dtype(q.dtype)
    fold = q.dtype == torch.bfloat16 and len(log_decays) == 1
    paths = []
    for log_decay, order in zip(log_decays, orders):
        path, h = _path_mask_terms(q, log_decay, order, mask_dtype, fold)
        if h is not None:
            scale = h.exp()[..., None]
            q, k = q / scale.to(q.dtype), k * scale.to(k.dtype)
        paths.append(path)
    return _masked_attention(q, k, v, paths, dropout_p)


# ---------------------------------------------------------------------------------- chunk and recurrent


def _average_over_paths(q, k, v, log_decays, orders, chunk_size, carried):
    if log_decays is None:
        # No mask: every chunk sees every other one undecayed, so the whole sum is one state.
        return q @ (k.transpose(-1, -2) @ v)
    out = None
    for log_decay, order in zip(log_decays, orders):
        y = _chunkwise_along(order, q, k, v, log_decay, chunk_size, carried)
        out = y if out is None else out + y
    return out / len(log_decays) if len(log_decays) > 1 else out


def _chunkwise_along(order, q, k, v, log_decay, chunk_size, carried):
    """Run the chunked algorithm on the tokens visited in ``order``; return its output in token order."""
    if order is None:
        return _chunkwise(q, k, v, log_decay, chunk_size, carried)
    if not is_constant_along_length(log_decay):
        log_decay = log_decay[..., order]
    out = _chunkwise(q[:, :, order], k[:, :, order], v[:, :, order], log_decay, chunk_size, carried)
    return out[:, :, order_steps(order)]


def _chunkwise(q, k, v, log_decay, chunk_size, carried):
    """Masked attention in chunks: exact inside each chunk, plus what ``carried`` brings from the other chunks."""
    batch, heads, length, _ = q.shape
    size = min(chunk_size, length)
    pad = (-length) % size
    chunks = (length + pad) // size
    mask_dtype = _mask_dtype(q.dtype)
    constant = is_constant_along_length(log_decay)
    if pad:
        # Padded tokens come last and carry no query, key or value: nothing reaches a real token through them.
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        if not constant:
            log_decay = F.pad(log_decay, (0, pad))

    def blocks(t):
        return t.reshape(t.shape[0], heads, chunks, size, *t.shape[3:])

    qc, kc, vc = blocks(q), blocks(k), blocks(v)
    if constant:
        # The same within-chunk decays in every chunk: one (1, size) row broadcast over the chunks.
        log_a = log_decay[..., :1, None].to(mask_dtype).expand(-1, -1, 1, size)
    else:
        log_a = blocks(log_decay).to(mask_dtype)

    positions = torch.arange(size, device=q.device)
    q_intra, k_intra = qc, kc
    if constant:
        path = ("distance", _pairwise(positions, mask_dtype).abs_(), log_a[..., :1, None], None)
    else:
        fold = qc.dtype == torch.bfloat16
        if fold:
            log_a = log_a.clamp(min=_FOLD_MIN_LOG_DECAY)
        m, h = _segment_terms(log_a, None, None, mask_dtype)
        path = ("segments", _pairwise(positions, mask_dtype).sign_(), m, None if fold else h)
        if fold:
            scale = h.exp()[..., None]
            q_intra, k_intra = qc / scale.to(qc.dtype), kc * scale.to(kc.dtype)
    out = _masked_attention(q_intra, k_intra, vc, [path])
    if chunks > 1:
        out = out + _from_other_chunks(qc, kc, vc, log_a, carried)
    return out.reshape(batch, heads, length + pad, -1)[:, :, :length]


def _from_other_chunks(qc, kc, vc, log_a, carried):
    """What reaches each chunk from the chunks before it (forward state) and after it (backward state)."""
    dtype = qc.dtype
    inclusive = log_a.cumsum(-1)  # a_s ... a_i inside the chunk (s: its first token)
    exclusive = inclusive - log_a  # a_s ... a_(i-1)
    total = inclusive[..., -1:]  # the whole chunk

    def weighted(t, log_weight):
        return t * log_weight.exp().to(dtype)[..., None]

    # A chunk's keys and values as they leave it forwards (decayed to its end) and backwards (to its start).
    leaving_forward = weighted(kc, total - exclusive).transpose(-1, -2) @ vc
    leaving_backward = weighted(kc, inclusive).transpose(-1, -2) @ vc
    forward_states, backward_states = carried(leaving_forward, leaving_backward, total)
    # A token meets the forward state decayed from its chunk's start, the backward one from its chunk's end.
    return weighted(qc, exclusive) @ forward_states + weighted(qc, total - inclusive) @ backward_states


def _carried_by_transfer(leaving_forward, leaving_backward, total):
    """The chunk form: every chunk's entering states at once, through one chunk-to-chunk transfer product."""
    transfer = _transfer(total[..., 0], leaving_forward.shape[2]).to(leaving_forward.dtype)
    return _apply_transfer(transfer, leaving_forward), _apply_transfer(transfer.transpose(-1, -2), leaving_backward)


def _carried_by_scan(leaving_forward, leaving_backward, total):
    """The recurrent form: the states passed chunk by chunk, forwards and backwards, as an RNN."""
    chunks = leaving_forward.shape[2]
    decay = total.exp().to(leaving_forward.dtype)[..., None].expand(*leaving_forward.shape[:2], chunks, 1, 1)
    return _scan(leaving_forward, decay, reverse=False), _scan(leaving_backward, decay, reverse=True)


def _transfer(total: torch.Tensor, chunks: int) -> torch.Tensor:
    """``T[c, c']``: how much of what leaves chunk ``c' < c`` forwards reaches chunk ``c`` (float64: tiny)."""
    total = total.double().expand(*total.shape[:-1], chunks) if total.shape[-1] == 1 else total.double()
    after = total.cumsum(-1)
    before = after - total
    log_transfer = before[..., :, None] - after[..., None, :]
    later = torch.ones(chunks, chunks, dtype=torch.bool, device=total.device).tril(-1)
    return log_transfer.masked_fill(~later, float("-inf")).exp()


def _apply_transfer(transfer: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    flat = states.flatten(-2)
    return (transfer @ flat).view(states.shape)


def _scan(leaving: torch.Tensor, decay: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The RNN over chunks: the state entering each chunk, ``S_(c+1) = decay_c S_c + leaving_c``."""
    chunks = leaving.shape[2]
    steps = range(chunks - 1, -1, -1) if reverse else range(chunks)
    state = torch.zeros_like(leaving[:, :, 0])
    entering = [None] * chunks
    for c in steps:
        entering[c] = state
        state = torch.addcmul(leaving[:, :, c], state, decay[:, :, c])
    return torch.stack(entering, dim=2)


# ------------------------------------------------------------------------------------------ fused kernels
# Imported at first use, by a literal relative import (so that saved checkpoints carry the files): they need
# Triton, which a checkpoint must load without.


def kernel_device_reason(q: torch.Tensor) -> str | None:
    # Checked before importing: a CPU run without the interpreter never loads Triton.
    if q.device.type != "cuda" and not (q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return f"{q.device.type} tensors (the kernels run on CUDA, or on the CPU through TRITON_INTERPRET=1)"
    return None


def _triton_parallel(*args, **options) -> torch.Tensor:
    from .lion_triton import parallel_attention

    return parallel_attention(*args, **options)


def _triton_parallel_unsupported(q, *args, **options) -> str | None:
    reason = kernel_device_reason(q)
    if reason is not None:
        return reason
    try:
        from .lion_triton import unsupported
    except ImportError:
        return "triton is not installed"
    return unsupported(q, *args, **options)


def _triton_chunk(name: str) -> Callable:
    """An entry of lion_triton_chunk.py: the chunk or recurrent form, or the check of what they can run."""

    def call(q, *args, **options):
        if name == "unsupported" and (reason := kernel_device_reason(q)) is not None:
            return reason
        from .lion_triton_chunk import ENTRIES

        return ENTRIES[name](q, *args, **options)

    return call


def _long_parallel_unsupported(q, *args, **options) -> str | None:
    """Why a parallel-form call is not one for the chunk kernels (see ``CHUNK_KERNELS_FROM_LENGTH``), or ``None``."""
    if q.shape[2] < CHUNK_KERNELS_FROM_LENGTH:
        return f"{q.shape[2]} tokens (this entry runs the chunk kernels from {CHUNK_KERNELS_FROM_LENGTH} tokens on)"
    if options["dropout_p"] > 0.0:
        return "score dropout (the chunk kernels have none)"
    return _triton_chunk("unsupported")(q, *args, **options)


# Tried in this order by the "auto" backend; fused kernels go before the PyTorch forms they replace.
IMPLEMENTATIONS: tuple[AttentionImplementation, ...] = (
    AttentionImplementation(
        "triton", "parallel", _triton_chunk("chunk"), _long_parallel_unsupported, bounds_decays=True
    ),
    AttentionImplementation(
        "triton", "parallel", _triton_parallel, _triton_parallel_unsupported, maps_features=True, bounds_decays=True
    ),
    AttentionImplementation("pytorch", "parallel", _pytorch_form(_parallel_form), _runs_anywhere),
    AttentionImplementation(
        "triton", "chunk", _triton_chunk("chunk"), _triton_chunk("unsupported"), bounds_decays=True
    ),
    AttentionImplementation("pytorch", "chunk", _pytorch_form(_chunk_form), _runs_anywhere),
    AttentionImplementation(
        "triton", "recurrent", _triton_chunk("recurrent"), _triton_chunk("unsupported"), bounds_decays=True
    ),
    AttentionImplementation("pytorch", "recurrent", _pytorch_form(_recurrent_form), _runs_anywhere),
)
