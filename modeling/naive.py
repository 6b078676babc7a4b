"""The LION operator written plainly from its definition, in float64: the oracle every fast form is tested against.

Nothing in the model imports this file, so it does not ship inside checkpoints. It is deliberately slow and
shares no code and no numerical trick (running sums of log-decays, closed forms, chunking, folding) with
``lion_attention.py``:

- ``naive_lion_attention``: the mask built entry by entry as the product of decays between two tokens along
  each path, ``Y = (Q K^T * mean_p M_p) V``, optionally divided by the row sums plus ``eps``;
- ``naive_recurrent_lion_attention``: the bidirectional RNN of the paper, one token per step, a forward and a
  backward state per path, the doubly counted diagonal removed.

Both take the arguments of ``lion_attention`` (``log_decays``: one ``(B or 1, H, N)`` tensor per path in token
order; ``orders``: one permutation per path, ``orders[p][l]`` the token visited at step ``l``).
"""

from __future__ import annotations

import torch


def _real_keys(k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None):
    """Keys and values of padded tokens replaced by zeros (selected away, so a NaN there cannot leak)."""
    if key_padding_mask is None:
        return k, v
    real = key_padding_mask.bool()[:, None, :, None]
    return torch.where(real, k, 0.0), torch.where(real, v, 0.0)


def _paths(log_decays, orders, length: int):
    if log_decays is None:
        return [(None, None)]
    orders = orders if orders is not None else [None] * len(log_decays)
    natural = torch.arange(length)
    return [(log_decay, natural if order is None else order.cpu()) for log_decay, order in zip(log_decays, orders)]


def naive_decay_mask(log_decay: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``M[..., i, j]``: the product of the decays between tokens ``i`` and ``j`` along the path ``order``.

    With ``a`` the decays in path order and ``s(i)`` the step of token ``i``: ``a[s(j)] ... a[s(i) - 1]`` when
    ``i`` comes after ``j``, ``a[s(i) + 1] ... a[s(j)]`` when it comes before, and ``1`` when ``i = j``.
    """
    length = log_decay.shape[-1]
    decay = log_decay.double().exp()[..., order]
    by_step = torch.ones(*decay.shape[:-1], length, length, dtype=torch.float64, device=decay.device)
    for s in range(length):
        # Row s, by growing distance: a[s-1], a[s-1] a[s-2], ... to the left; a[s+1], a[s+1] a[s+2], ... to the right.
        by_step[..., s, :s] = decay[..., :s].flip(-1).cumprod(-1).flip(-1)
        by_step[..., s, s + 1 :] = decay[..., s + 1 :].cumprod(-1)
    step = torch.argsort(order)
    return by_step[..., step[:, None], step[None, :]]


def naive_lion_attention(
    q, k, v, log_decays=None, orders=None, *, normalize=False, eps=1e-6, key_padding_mask=None
) -> torch.Tensor:
    """``(Q K^T * M) V`` in float64 with the mask from :func:`naive_decay_mask`, averaged over the paths."""
    q, k, v = q.double(), k.double(), v.double()
    k, v = _real_keys(k, v, key_padding_mask)
    scores = q @ k.transpose(-1, -2)
    if log_decays is not None:
        masks = [naive_decay_mask(log_decay, order) for log_decay, order in _paths(log_decays, orders, q.shape[2])]
        scores = scores * (sum(masks) / len(masks))
    out = scores @ v
    if normalize:
        out = out / (scores.sum(-1, keepdim=True) + eps)
    return out


def naive_attention_weights(q, k, log_decays=None, orders=None, *, normalize=False, eps=1e-6, key_padding_mask=None):
    """The masked score matrix ``(B, H, N, N)`` that :func:`naive_lion_attention` multiplies the values with."""
    eye = torch.eye(q.shape[2], dtype=torch.float64).expand(*q.shape[:2], -1, -1)
    return naive_lion_attention(
        q, k, eye, log_decays, orders, normalize=normalize, eps=eps, key_padding_mask=key_padding_mask
    )


def naive_recurrent_lion_attention(
    q, k, v, log_decays=None, orders=None, *, normalize=False, eps=1e-6, key_padding_mask=None
) -> torch.Tensor:
    """The bidirectional RNN, one token per step, in float64.

    Along a path with decays ``a`` (path order): ``S_f[l] = a[l-1] S_f[l-1] + k_l v_l^T`` forwards,
    ``S_b[l] = a[l+1] S_b[l+1] + k_l v_l^T`` backwards, ``y_l = q_l (S_f[l] + S_b[l] - k_l v_l^T)``; the
    normaliser runs the same scans with a column of ones in place of the values.
    """
    q, k, v = q.double(), k.double(), v.double()
    k, v = _real_keys(k, v, key_padding_mask)
    if normalize:
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    batch, heads, length, _ = q.shape
    total = torch.zeros(batch, heads, length, v.shape[-1], dtype=torch.float64)
    paths = _paths(log_decays, orders, length)
    for log_decay, order in paths:
        if log_decay is None:
            decay = torch.ones(1, 1, length, dtype=torch.float64)
        else:
            decay = log_decay.double().exp()[..., order]
        qp, kp, vp = (t[:, :, order] for t in (q, k, v)) if order is not None else (q, k, v)
        forward, backward = [None] * length, [None] * length
        state = torch.zeros(batch, heads, k.shape[-1], v.shape[-1], dtype=torch.float64)
        for step in range(length):
            if step > 0:
                state = decay[..., step - 1, None, None] * state
            state = state + kp[:, :, step, :, None] * vp[:, :, step, None, :]
            forward[step] = state
        state = torch.zeros_like(state)
        for step in reversed(range(length)):
            if step < length - 1:
                state = decay[..., step + 1, None, None] * state
            state = state + kp[:, :, step, :, None] * vp[:, :, step, None, :]
            backward[step] = state
        for step in range(length):
            own = kp[:, :, step, :, None] * vp[:, :, step, None, :]
            states = forward[step] + backward[step] - own
            token = step if order is None else order[step]
            total[:, :, token] += (qp[:, :, step, None, :] @ states)[:, :, 0]
    out = total / len(paths)
    if normalize:
        out = out[..., :-1] / (out[..., -1:] + eps)
    return out
