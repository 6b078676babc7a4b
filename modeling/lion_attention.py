"""The LION operator: bidirectional linear attention under a decay mask, in three equivalent forms.

For one head, with queries ``q_i``, keys ``k_j``, values ``v_j`` and a decay ``a_t`` in (0, 1] per token,

    Y = (Q K^T * M) V,   M_ij = a_j ... a_(i-1) (i > j),   M_ii = 1,   M_ij = a_(i+1) ... a_j (i < j).

``a_t = 1`` everywhere is LION-LIT, a constant per head is LION-D, one value per token and head is LION-S.
Decays are passed as log-decays (``log a_t <= 0``). A token order (a permutation, e.g. the snake orders of
the vision models) builds the mask along that order instead of the natural one; several orders ("paths")
average their masks: ``M = mean_p M_p``.

Forms (all compute the same function):

- ``parallel``: the mask materialised as an N x N matrix; the training form, the only one with score dropout.
- ``chunk``: exact masked attention inside chunks of ``chunk_size`` tokens plus a forward and a backward state
  carried between chunks; memory O(N * chunk_size + N / chunk_size * D^2).
- ``recurrent``: a forward and a backward RNN over the tokens with a D x D state each (the bidirectional RNN
  of the paper).

Row normalisation (``normalize=True``: ``Y = (A V) / (rowsum(A) + eps)``) is computed by every form by carrying a
column of ones next to the values, so the normaliser sees exactly the same mask as the numerator.

Numerics: masks are exponentials of segment sums of log-decays. Segment sums are differences of prefix sums;
for long sequences those prefix sums grow large and their float32 differences lose the small values that
matter, so prefix sums are accumulated in float64 and carried as a float32 (high, low) pair. Only values
``<= 0`` are ever exponentiated, so nothing overflows and no gradient meets ``inf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ATTENTION_FORMS = ("parallel", "chunk", "recurrent")


def lion_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decays: Sequence[torch.Tensor] | None = None,
    orders: Sequence[torch.Tensor] | None = None,
    *,
    form: str = "parallel",
    chunk_size: int = 64,
    normalize: bool = False,
    eps: float = 1e-6,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Masked bidirectional linear attention.

    Args:
        q, k: ``(B, H, N, D)`` feature-mapped and (for ``q``) scaled queries and keys.
        v: ``(B, H, N, Dv)`` values.
        log_decays: ``None`` for no decay (LION-LIT), else one tensor per path of shape ``(B or 1, H, N)``
            holding ``log a_t`` of every token, indexed in token order.
        orders: ``None`` for the natural order, else one ``LongTensor`` ``(N,)`` per path: ``orders[p][l]`` is
            the token visited at step ``l`` of path ``p``.
        form: one of ``ATTENTION_FORMS``.
        chunk_size: tokens per chunk for the ``chunk`` form (any positive size; the last chunk may be shorter).
        normalize: divide by the row sums of the masked scores plus ``eps``.
        key_padding_mask: ``(B, N)``, true/1 for real tokens; padded keys contribute nothing.
        dropout_p: dropout on the masked scores; only the ``parallel`` form materialises them.

    Returns:
        ``(B, H, N, Dv)``.
    """
    _check_inputs(q, k, v, log_decays, orders, form, chunk_size, key_padding_mask)
    if key_padding_mask is not None:
        k = k * key_padding_mask[:, None, :, None].to(k.dtype)
    if normalize:
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)

    if log_decays is None:
        paths = [(None, None)]
    else:
        paths = list(zip(log_decays, orders if orders is not None else [None] * len(log_decays)))

    if form == "parallel":
        out = _parallel(q, k, v, paths, dropout_p if training else 0.0)
    else:
        path_form = _chunk_path if form == "chunk" else _recurrent_path
        out = None
        for log_decay, order in paths:
            y = _along(order, q, k, v, log_decay, lambda *t: path_form(*t, chunk_size=chunk_size))
            out = y if out is None else out + y
        if len(paths) > 1:
            out = out / len(paths)

    if normalize:
        out = out[..., :-1] / (out[..., -1:] + eps)
    return out


def _check_inputs(q, k, v, log_decays, orders, form, chunk_size, key_padding_mask):
    if form not in ATTENTION_FORMS:
        raise ValueError(f"Unknown attention form {form!r}; allowed: {', '.join(ATTENTION_FORMS)}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3]:
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
            if order is not None and tuple(order.shape) != (length,):
                raise ValueError(f"each order must be a permutation of shape ({length},), got {tuple(order.shape)}.")
    elif len(log_decays) != 1:
        raise ValueError(f"{len(log_decays)} log-decay paths need as many orders, got none.")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _split(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 tensor as a (high, low) pair in ``dtype`` whose sum keeps float64's precision."""
    if dtype == torch.float64:
        return x, torch.zeros_like(x)
    high = x.to(dtype)
    return high, (x - high.double()).to(dtype)


def _differences(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a[..., i] - b[..., j]`` for all i, j, for float64 prefix sums, computed in ``dtype`` without cancellation."""
    a_high, a_low = _split(a, dtype)
    b_high, b_low = _split(b, dtype)
    return (a_high[..., :, None] - b_high[..., None, :]) + (a_low[..., :, None] - b_low[..., None, :])


def log_decay_matrix(log_decay: torch.Tensor, position: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
    """``log M`` for log-decays ``(..., N)`` given in path order.

    ``position[r]`` is the path step of token ``r`` (``None``: the natural order); the result is indexed by
    tokens, ``(..., N, N)``, with ``0`` on the diagonal and ``<= 0`` everywhere.
    """
    inclusive = log_decay.double().cumsum(-1)
    exclusive = inclusive - log_decay.double()
    length = log_decay.shape[-1]
    if position is None:
        position = torch.arange(length, device=log_decay.device)
    else:
        inclusive, exclusive = inclusive[..., position], exclusive[..., position]
    # i after j on the path: a_j ... a_(i-1); i before j: a_(i+1) ... a_j.
    forward = _differences(exclusive, exclusive, dtype)
    backward = _differences(inclusive, inclusive, dtype).transpose(-1, -2)
    return torch.where(position[:, None] >= position[None, :], forward, backward)


def _parallel(q, k, v, paths, dropout_p):
    scores = q @ k.transpose(-1, -2)
    if paths[0][0] is not None:
        dtype = _work_dtype(q)
        mask = None
        for log_decay, order in paths:
            if order is None:
                path_mask = log_decay_matrix(log_decay, dtype=dtype).exp()
            else:
                path_mask = log_decay_matrix(log_decay[..., order], torch.argsort(order), dtype).exp()
            mask = path_mask if mask is None else mask + path_mask
        if len(paths) > 1:
            mask = mask / len(paths)
        scores = scores * mask.to(scores.dtype)
    if dropout_p > 0.0:
        scores = F.dropout(scores, p=dropout_p, training=True)
    return scores @ v


def _along(order, q, k, v, log_decay, path_form):
    """Run ``path_form`` on the tokens visited in ``order`` and return its output in token order."""
    if log_decay is None:
        log_decay = q.new_zeros((1, q.shape[1], q.shape[2]), dtype=_work_dtype(q))
    if order is None:
        return path_form(q, k, v, log_decay)
    out = path_form(q[:, :, order], k[:, :, order], v[:, :, order], log_decay[..., order])
    return out[:, :, torch.argsort(order)]


def _chunk_path(q, k, v, log_decay, *, chunk_size):
    batch, heads, length, _ = q.shape
    pad = (-length) % chunk_size
    if pad:
        # Padded tokens carry no key or value and decay 1, so they change nothing.
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_decay = F.pad(log_decay, (0, pad))
    chunks = (length + pad) // chunk_size
    dtype = _work_dtype(q)

    def blocks(t):
        return t.reshape(t.shape[0], heads, chunks, chunk_size, *t.shape[3:])

    qc, kc, vc = blocks(q), blocks(k), blocks(v)
    log_a = blocks(log_decay).double()
    inclusive = log_a.cumsum(-1)  # a_s ... a_i inside the chunk (s: its first token)
    exclusive = inclusive - log_a  # a_s ... a_(i-1)
    suffix = log_a.flip(-1).cumsum(-1).flip(-1)  # a_i ... a_e (e: its last token)

    intra_mask = log_decay_matrix(blocks(log_decay), dtype=dtype).exp()
    out = ((qc @ kc.transpose(-1, -2)) * intra_mask.to(q.dtype)) @ vc
    if chunks == 1:
        return out.reshape(batch, heads, length + pad, -1)[:, :, :length]

    # Chunk-level transfer: the state leaving chunk c' reaches chunk c > c' through the chunks between.
    total = inclusive[..., -1]
    total_inclusive = total.cumsum(-1)
    between = _differences(total_inclusive - total, total_inclusive, dtype)
    later = torch.ones(chunks, chunks, dtype=torch.bool, device=q.device).tril(-1)
    transfer = torch.where(later, between, torch.full_like(between, float("-inf"))).exp().to(q.dtype)

    def weighted(t, log_weight):
        return t * log_weight.to(dtype).exp().to(t.dtype)[..., None]

    def carried(transfer_matrix, contributions):
        flat = contributions.flatten(-2)
        return (transfer_matrix @ flat).view(contributions.shape)

    forward_states = carried(transfer, weighted(kc, suffix).transpose(-1, -2) @ vc)
    backward_states = carried(transfer.transpose(-1, -2), weighted(kc, inclusive).transpose(-1, -2) @ vc)
    out = out + weighted(qc, exclusive) @ forward_states + weighted(qc, suffix - log_a) @ backward_states
    return out.reshape(batch, heads, length + pad, -1)[:, :, :length]


def _recurrent_path(q, k, v, log_decay, *, chunk_size):
    del chunk_size  # one token per step
    length, dtype = q.shape[2], q.dtype
    # A half-precision state drifts: bfloat16 rounds a decay of 0.999 to 1 and drops small updates. Scan in float32.
    q, k, v = (t.to(_work_dtype(q)) for t in (q, k, v))
    decay = log_decay.to(q.dtype).exp()[..., None, None]
    state = q.new_zeros(q.shape[0], q.shape[1], q.shape[3], v.shape[3])
    forward = []
    for i in range(length):
        update = k[:, :, i, :, None] * v[:, :, i, None, :]
        state = update if i == 0 else decay[:, :, i - 1] * state + update
        forward.append((q[:, :, i, None, :] @ state).squeeze(-2))
    state = torch.zeros_like(state)
    backward = [None] * length
    for i in reversed(range(length)):
        update = k[:, :, i, :, None] * v[:, :, i, None, :]
        state = update if i == length - 1 else decay[:, :, i + 1] * state + update
        backward[i] = (q[:, :, i, None, :] @ state).squeeze(-2)
    both_counted = (q * k).sum(-1, keepdim=True) * v
    return (torch.stack(forward, dim=2) + torch.stack(backward, dim=2) - both_counted).to(dtype)
