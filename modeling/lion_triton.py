"""Fused Triton kernels for the parallel form of the LION operator: forward and backward, no N x N tensor in memory.

FlashAttention-style tiling without a softmax (so without a running maximum). One program of the forward takes a
block of queries of one (batch, head) and walks the blocks of keys: the scores ``q k^T`` of the tile, the decay
mask of the tile from per-token numbers of every path (computed in registers), the key padding, the score dropout,
then ``A v`` and the row sums ``A 1`` accumulated in float32. The backward recomputes the tiles twice: one kernel
per block of keys (``dk``, ``dv`` and the column sums of the decay gradient), one per block of queries (``dq`` and
the row sums), after a small kernel for the normaliser's share of the gradient.

The mask of a path with per-token steps ``pos`` (where the path visits the token), ``M_ij``:

- LION-D (a log-decay ``log a`` constant per head): ``log M_ij = log a * |pos_i - pos_j|``;
- LION-S: with ``u`` and ``w`` the exclusive and inclusive running sums of the log-decays along the path (in token
  order), ``log M_ij = u_i - u_j`` when the path visits ``i`` after ``j`` and ``w_j - w_i`` when before (the
  ``sign(pos_i - pos_j) (m_i - m_j) + h_j - h_i`` of ``lion_attention``, with ``u = m - h`` and ``w = m + h``);

several paths average their masks. The running sums are taken in PyTorch (so autograd carries their gradients to
the log-decays, the S gate's included); the kernels return ``d loss / d u`` and ``d loss / d w`` per token: with
``G = dA * S * M_p / paths`` (``d loss / d log M_p``), row sums of ``G`` over the keys a query comes after, minus
column sums over the queries that come after a key, and so on. LION-D returns ``sum_j |pos_i - pos_j| G_ij`` per
query, summed to the head's gradient.

Numerics: float32 inputs use exact ("ieee") float32 dot products and the running sums in float64, passed as a
float32 pair (high part, low part) so that ``u_i - u_j`` keeps its small values on long sequences; bfloat16 and
float16 inputs use float32 accumulation and float32 running sums, as the PyTorch path does. The normaliser is the
row sum of the dropped-out scores, as the PyTorch path's column of ones next to the values gives.

The operators are registered with ``torch.library`` (forward and backward), so that ``torch.compile`` keeps them in
its graph. Triton is optional: this module raises ``ImportError`` without it and ``lion_attention`` falls back to
PyTorch. Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors through
Triton's interpreter, which is how the tests exercise them without a GPU.
"""

import math
import re
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError as error:  # lion_attention catches this and runs the PyTorch path
    raise ImportError("the fused LION kernels need Triton (pip install triton)") from error

HEAD_DIMS = (16, 128)  # smallest and largest head dim (queries and values); any size in between
MAX_PATHS = 2
# Dropout numbers its random draws by (query * length + key) in 32 bits.
MAX_DROPOUT_LENGTH = 65535
# The second grid axis holds batch x heads.
MAX_BATCH_HEADS = 65535

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


def is_interpreted() -> bool:
    """Whether the kernels were built for Triton's interpreter (``TRITON_INTERPRET=1`` when this module loaded)."""
    return not isinstance(_forward_kernel, triton.runtime.JITFunction)


# ------------------------------------------------------------------------------------------------ kernels


@triton.jit
def _path_log2_mask(
    path, b, h, qi, kj, N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
    DISTANCE: tl.constexpr, HAS_LO: tl.constexpr,
):
    """``log2 M_p`` and ``pos_i - pos_j`` for query indices ``qi`` and key indices ``kj`` (broadcastable)."""
    pos_q = tl.load(POS + path * N + qi, mask=qi < N, other=0.0)
    pos_k = tl.load(POS + path * N + kj, mask=kj < N, other=0.0)
    delta = pos_q - pos_k
    if DISTANCE:
        log_a = tl.load(DECAY + path * path_stride + b * batch_stride + h)
        x = (log_a * _LOG2E) * tl.abs(delta)
    else:
        base = path * path_stride + b * batch_stride + h * N
        u_q = tl.load(U + base + qi, mask=qi < N, other=0.0)
        u_k = tl.load(U + base + kj, mask=kj < N, other=0.0)
        w_q = tl.load(W + base + qi, mask=qi < N, other=0.0)
        w_k = tl.load(W + base + kj, mask=kj < N, other=0.0)
        after = delta > 0
        x = tl.where(after, u_q - u_k, w_k - w_q)
        if HAS_LO:
            lo_uq = tl.load(U_LO + base + qi, mask=qi < N, other=0.0)
            lo_uk = tl.load(U_LO + base + kj, mask=kj < N, other=0.0)
            lo_wq = tl.load(W_LO + base + qi, mask=qi < N, other=0.0)
            lo_wk = tl.load(W_LO + base + kj, mask=kj < N, other=0.0)
            x += tl.where(after, lo_uq - lo_uk, lo_wk - lo_wq)
        # log M <= 0 always; the clamp also keeps tiles past the end (loaded as zeros) finite.
        x = tl.minimum(x, 0.0)
    return x, delta


@triton.jit
def _decay_mask(
    b, h, qi, kj, N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
    NUM_PATHS: tl.constexpr, DISTANCE: tl.constexpr, HAS_LO: tl.constexpr,
):
    """The mean over paths of ``M_p``, each path's ``M_p / paths``, and each path's ``pos_i - pos_j`` (two paths
    at most; with one, the second path's entries repeat the first's)."""
    x0, delta0 = _path_log2_mask(
        0, b, h, qi, kj, N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride, DISTANCE, HAS_LO
    )
    if NUM_PATHS == 2:
        x1, delta1 = _path_log2_mask(
            1, b, h, qi, kj, N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride, DISTANCE, HAS_LO
        )
        m0 = tl.exp2(x0) * 0.5
        m1 = tl.exp2(x1) * 0.5
        return m0 + m1, m0, m1, delta0, delta1
    m0 = tl.exp2(x0)
    return m0, m0, m0, delta0, delta0


@triton.jit
def _keep(seed, bh, qi, kj, N, threshold):
    """Counter-based dropout: entry (i, j) of head ``bh`` is kept when its Philox draw is at least ``threshold``
    (out of 2**24). The same (seed, bh, i, j) gives the same draw in every kernel and for any tiling."""
    counter = (qi * N + kj).to(tl.uint32)
    zero = counter * 0
    draw, _, _, _ = tl.philox(seed, counter, zero + bh.to(tl.uint32), zero, zero)
    return (draw >> 8).to(tl.int32) >= threshold


@triton.jit
def _forward_kernel(
    Q, K, V, OUT, Z, PAD, POS, DECAY, U, W, U_LO, W_LO, SEED,
    H, N, D, DV, path_stride, batch_stride, eps, drop_threshold, drop_scale,
    NUM_PATHS: tl.constexpr, DISTANCE: tl.constexpr, HAS_LO: tl.constexpr, HAS_PAD: tl.constexpr,
    DROPOUT: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows_ok = offs_m < N
    qk_base = bh.to(tl.int64) * N * D
    v_base = bh.to(tl.int64) * N * DV
    q = tl.load(
        Q + qk_base + offs_m[:, None] * D + offs_d[None, :], mask=rows_ok[:, None] & (offs_d[None, :] < D), other=0.0
    )
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    z = tl.zeros((BLOCK_M,), dtype=tl.float32)
    seed = 0
    if DROPOUT:
        seed = tl.load(SEED)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keys_ok = offs_n < N
        if HAS_PAD:
            keys_ok = keys_ok & (tl.load(PAD + b * N + offs_n, mask=offs_n < N, other=0) != 0)
        # Padded keys and values load as zeros: their scores are 0 whatever they hold (NaN included).
        k = tl.load(
            K + qk_base + offs_n[:, None] * D + offs_d[None, :], mask=keys_ok[:, None] & (offs_d[None, :] < D), other=0.0
        )
        v = tl.load(
            V + v_base + offs_n[:, None] * DV + offs_dv[None, :],
            mask=keys_ok[:, None] & (offs_dv[None, :] < DV),
            other=0.0,
        )
        a = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if NUM_PATHS > 0:
            mask, _, _, _, _ = _decay_mask(
                b, h, offs_m[:, None], offs_n[None, :], N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
                NUM_PATHS, DISTANCE, HAS_LO,
            )
            a = a * mask
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], N, drop_threshold)
            a = tl.where(keep, a * drop_scale, 0.0)
        if NORMALIZE:
            z += tl.sum(a, 1)
        acc = tl.dot(a.to(v.dtype), v, acc, input_precision=PRECISION)
    if NORMALIZE:
        acc = acc / (z + eps)[:, None]
        tl.store(Z + bh * N + offs_m, z, mask=rows_ok)
    tl.store(
        OUT + v_base + offs_m[:, None] * DV + offs_dv[None, :],
        acc.to(OUT.dtype.element_ty),
        mask=rows_ok[:, None] & (offs_dv[None, :] < DV),
    )


@triton.jit
def _normaliser_backward_kernel(
    DY, OUT, Z, INV, DELTA, BH_N, DV, eps, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr
):
    """``Y = N / (Z + eps)``: ``dN = dY / (Z + eps)`` (kept as ``1 / (Z + eps)``) and ``dZ = -(dY . Y) / (Z + eps)``."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_DV)
    ok = rows < BH_N
    both = ok[:, None] & (cols[None, :] < DV)
    dy = tl.load(DY + rows.to(tl.int64)[:, None] * DV + cols[None, :], mask=both, other=0.0).to(tl.float32)
    y = tl.load(OUT + rows.to(tl.int64)[:, None] * DV + cols[None, :], mask=both, other=0.0).to(tl.float32)
    inv = 1.0 / (tl.load(Z + rows, mask=ok, other=0.0) + eps)
    tl.store(INV + rows, inv, mask=ok)
    tl.store(DELTA + rows, -tl.sum(dy * y, 1) * inv, mask=ok)


@triton.jit
def _backward_kv_kernel(
    Q, K, V, DY, INV, DELTA, DK, DVAL, GRAD_U, GRAD_W, PAD, POS, DECAY, U, W, U_LO, W_LO, SEED,
    H, N, D, DV, path_stride, batch_stride, drop_threshold, drop_scale,
    NUM_PATHS: tl.constexpr, DISTANCE: tl.constexpr, HAS_LO: tl.constexpr, HAS_PAD: tl.constexpr,
    DROPOUT: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One block of keys against every query: ``dk``, ``dv`` and (LION-S) the column sums of each path's ``G``.

    Tiles are (keys, queries), the transpose of the forward's, so that ``dk`` and ``dv`` are plain products."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_range = offs_n < N
    keys_ok = in_range
    if HAS_PAD:
        keys_ok = keys_ok & (tl.load(PAD + b * N + offs_n, mask=in_range, other=0) != 0)
    qk_base = bh.to(tl.int64) * N * D
    v_base = bh.to(tl.int64) * N * DV
    k = tl.load(
        K + qk_base + offs_n[:, None] * D + offs_d[None, :], mask=keys_ok[:, None] & (offs_d[None, :] < D), other=0.0
    )
    v = tl.load(
        V + v_base + offs_n[:, None] * DV + offs_dv[None, :], mask=keys_ok[:, None] & (offs_dv[None, :] < DV), other=0.0
    )
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    after0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    before0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    after1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    before1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    seed = 0
    if DROPOUT:
        seed = tl.load(SEED)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows_ok = offs_m < N
        q_t = tl.load(
            Q + qk_base + offs_m[None, :] * D + offs_d[:, None], mask=rows_ok[None, :] & (offs_d[:, None] < D), other=0.0
        )
        dy = tl.load(
            DY + v_base + offs_m[:, None] * DV + offs_dv[None, :],
            mask=rows_ok[:, None] & (offs_dv[None, :] < DV),
            other=0.0,
        )
        if NORMALIZE:
            inv = tl.load(INV + bh * N + offs_m, mask=rows_ok, other=0.0)
            dy = (dy.to(tl.float32) * inv[:, None]).to(q_t.dtype)
        s_t = tl.dot(k, q_t, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(dy), input_precision=PRECISION)
        if NORMALIZE:
            dp_t += tl.load(DELTA + bh * N + offs_m, mask=rows_ok, other=0.0)[None, :]
        a_t = s_t
        if NUM_PATHS > 0:
            mask, m0, m1, delta0, delta1 = _decay_mask(
                b, h, offs_m[None, :], offs_n[:, None], N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
                NUM_PATHS, DISTANCE, HAS_LO,
            )
            a_t = s_t * mask
        da_t = dp_t
        p_t = a_t
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[None, :], offs_n[:, None], N, drop_threshold)
            p_t = tl.where(keep, a_t * drop_scale, 0.0)
            da_t = tl.where(keep, dp_t * drop_scale, 0.0)
        dv = tl.dot(p_t.to(dy.dtype), dy, dv, input_precision=PRECISION)
        ds_t = da_t
        if NUM_PATHS > 0:
            ds_t = da_t * mask
        dk = tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), dk, input_precision=PRECISION)
        if NUM_PATHS > 0 and not DISTANCE:
            g_t = da_t * s_t
            g0 = g_t * m0
            after0 += tl.sum(tl.where(delta0 > 0, g0, 0.0), 1)
            before0 += tl.sum(tl.where(delta0 < 0, g0, 0.0), 1)
            if NUM_PATHS == 2:
                g1 = g_t * m1
                after1 += tl.sum(tl.where(delta1 > 0, g1, 0.0), 1)
                before1 += tl.sum(tl.where(delta1 < 0, g1, 0.0), 1)
    tl.store(
        DK + qk_base + offs_n[:, None] * D + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=in_range[:, None] & (offs_d[None, :] < D),
    )
    tl.store(
        DVAL + v_base + offs_n[:, None] * DV + offs_dv[None, :],
        dv.to(DVAL.dtype.element_ty),
        mask=in_range[:, None] & (offs_dv[None, :] < DV),
    )
    if NUM_PATHS > 0 and not DISTANCE:
        # Column parts of d/du and d/dw; the query kernel adds the row parts in place.
        tl.store(GRAD_U + bh * N + offs_n, after0, mask=in_range)
        tl.store(GRAD_W + bh * N + offs_n, before0, mask=in_range)
        if NUM_PATHS == 2:
            path_size = tl.num_programs(1) * N
            tl.store(GRAD_U + path_size + bh * N + offs_n, after1, mask=in_range)
            tl.store(GRAD_W + path_size + bh * N + offs_n, before1, mask=in_range)


@triton.jit
def _backward_q_kernel(
    Q, K, V, DY, INV, DELTA, DQ, GRAD_U, GRAD_W, PAD, POS, DECAY, U, W, U_LO, W_LO, SEED,
    H, N, D, DV, path_stride, batch_stride, drop_threshold, drop_scale,
    NUM_PATHS: tl.constexpr, DISTANCE: tl.constexpr, HAS_LO: tl.constexpr, HAS_PAD: tl.constexpr,
    DROPOUT: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One block of queries against every key: ``dq`` and the decay gradients' row sums.

    LION-S: ``GRAD_U``/``GRAD_W`` hold the key kernel's column sums and leave holding ``d/du``, ``d/dw`` (log2
    units). LION-D: ``GRAD_U`` receives ``sum_j |pos_i - pos_j| G_ij`` per query."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows_ok = offs_m < N
    qk_base = bh.to(tl.int64) * N * D
    v_base = bh.to(tl.int64) * N * DV
    q = tl.load(
        Q + qk_base + offs_m[:, None] * D + offs_d[None, :], mask=rows_ok[:, None] & (offs_d[None, :] < D), other=0.0
    )
    dy = tl.load(
        DY + v_base + offs_m[:, None] * DV + offs_dv[None, :], mask=rows_ok[:, None] & (offs_dv[None, :] < DV), other=0.0
    )
    if NORMALIZE:
        inv = tl.load(INV + bh * N + offs_m, mask=rows_ok, other=0.0)
        dy = (dy.to(tl.float32) * inv[:, None]).to(q.dtype)
        delta = tl.load(DELTA + bh * N + offs_m, mask=rows_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    after0 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    before0 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    after1 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    before1 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    seed = 0
    if DROPOUT:
        seed = tl.load(SEED)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keys_ok = offs_n < N
        if HAS_PAD:
            keys_ok = keys_ok & (tl.load(PAD + b * N + offs_n, mask=offs_n < N, other=0) != 0)
        k = tl.load(
            K + qk_base + offs_n[:, None] * D + offs_d[None, :], mask=keys_ok[:, None] & (offs_d[None, :] < D), other=0.0
        )
        v = tl.load(
            V + v_base + offs_n[:, None] * DV + offs_dv[None, :],
            mask=keys_ok[:, None] & (offs_dv[None, :] < DV),
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        dp = tl.dot(dy, tl.trans(v), input_precision=PRECISION)
        if NORMALIZE:
            dp += delta[:, None]
        da = dp
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], N, drop_threshold)
            da = tl.where(keep, dp * drop_scale, 0.0)
        ds = da
        if NUM_PATHS > 0:
            mask, m0, m1, delta0, delta1 = _decay_mask(
                b, h, offs_m[:, None], offs_n[None, :], N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
                NUM_PATHS, DISTANCE, HAS_LO,
            )
            ds = da * mask
            g = da * s
            g0 = g * m0
            if DISTANCE:
                after0 += tl.sum(g0 * tl.abs(delta0), 1)
            else:
                after0 += tl.sum(tl.where(delta0 > 0, g0, 0.0), 1)
                before0 += tl.sum(tl.where(delta0 < 0, g0, 0.0), 1)
            if NUM_PATHS == 2:
                g1 = g * m1
                if DISTANCE:
                    after1 += tl.sum(g1 * tl.abs(delta1), 1)
                else:
                    after1 += tl.sum(tl.where(delta1 > 0, g1, 0.0), 1)
                    before1 += tl.sum(tl.where(delta1 < 0, g1, 0.0), 1)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    tl.store(
        DQ + qk_base + offs_m[:, None] * D + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=rows_ok[:, None] & (offs_d[None, :] < D),
    )
    if NUM_PATHS > 0:
        path_size = tl.num_programs(1) * N
        _store_decay_gradient(GRAD_U, GRAD_W, bh * N + offs_m, rows_ok, after0, before0, DISTANCE)
        if NUM_PATHS == 2:
            _store_decay_gradient(GRAD_U, GRAD_W, path_size + bh * N + offs_m, rows_ok, after1, before1, DISTANCE)


@triton.jit
def _store_decay_gradient(GRAD_U, GRAD_W, index, ok, after, before, DISTANCE: tl.constexpr):
    if DISTANCE:
        tl.store(GRAD_U + index, after, mask=ok)
    else:
        # log M = ln 2 (u2_i - u2_j) (after) or ln 2 (w2_j - w2_i) (before): rows minus columns, columns minus rows.
        column_after = tl.load(GRAD_U + index, mask=ok, other=0.0)
        column_before = tl.load(GRAD_W + index, mask=ok, other=0.0)
        tl.store(GRAD_U + index, (after - column_after) * _LN2, mask=ok)
        tl.store(GRAD_W + index, (column_before - before) * _LN2, mask=ok)


# ------------------------------------------------------------------------------------------------ launches


def _blocks(kernel: str, length: int, dim: int, value_dim: int, dtype: torch.dtype) -> dict:
    """Tile sizes and launch settings of ``kernel`` ("forward", "backward_kv", "backward_q"), measured on an H200
    (benchmarks/NOTES.md)."""
    if is_interpreted():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2)
    wide = max(dim, value_dim) > 64
    return dict(BLOCK_M=64, BLOCK_N=64, num_warps=8 if wide else 4, num_stages=2)


def _flags(q, v, positions, distance, u_lo, padding, dropout_p, normalize) -> dict:
    return dict(
        NUM_PATHS=0 if positions is None else positions.shape[0],
        DISTANCE=distance is not None,
        HAS_LO=u_lo is not None,
        HAS_PAD=padding is not None,
        DROPOUT=dropout_p > 0.0,
        NORMALIZE=normalize,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_D=max(16, triton.next_power_of_2(q.shape[-1])),
        BLOCK_DV=max(16, triton.next_power_of_2(v.shape[-1])),
    )


def _decay_strides(distance, u) -> tuple[int, int]:
    """Strides of a path and of a batch element in the decay tensors; a batch stride of 0 shares one over the batch."""
    decay = distance if distance is not None else u
    if decay is None:
        return 0, 0
    per_batch = decay[0, 0].numel()
    return decay[0].numel(), per_batch if decay.shape[1] > 1 else 0


def _dropout_arguments(dropout_p: float) -> tuple[int, float]:
    """The keep threshold out of 2**24 and the scale of kept scores."""
    if dropout_p <= 0.0:
        return 0, 1.0
    return round(dropout_p * 2**24), 1.0 / (1.0 - dropout_p)


def _forward(q, k, v, padding, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps):
    batch, heads, length, dim = q.shape
    value_dim = v.shape[-1]
    out = torch.empty(batch, heads, length, value_dim, device=q.device, dtype=q.dtype)
    z = torch.empty(batch, heads, length if normalize else 0, device=q.device, dtype=torch.float32)
    config = _blocks("forward", length, dim, value_dim, q.dtype)
    path_stride, batch_stride = _decay_strides(distance, u)
    threshold, scale = _dropout_arguments(dropout_p)
    grid = (triton.cdiv(length, config["BLOCK_M"]), batch * heads)
    _forward_kernel[grid](
        q, k, v, out, z if normalize else q, *_pointers(q, padding, positions, distance, u, w, u_lo, w_lo, seed),
        heads, length, dim, value_dim, path_stride, batch_stride, eps, threshold, scale,
        **_flags(q, v, positions, distance, u_lo, padding, dropout_p, normalize), **config,
    )  # fmt: skip
    return out, z


def _backward(grad_out, q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps):
    batch, heads, length, dim = q.shape
    value_dim = v.shape[-1]
    dy = grad_out.contiguous().to(q.dtype)
    inv = delta = None
    if normalize:
        inv = torch.empty(batch, heads, length, device=q.device, dtype=torch.float32)
        delta = torch.empty_like(inv)
        rows = batch * heads * length
        block_dv = max(16, triton.next_power_of_2(value_dim))
        block_m = 16 if is_interpreted() else max(1, 4096 // block_dv)
        _normaliser_backward_kernel[(triton.cdiv(rows, block_m),)](
            dy, out, z, inv, delta, rows, value_dim, eps, BLOCK_M=block_m, BLOCK_DV=block_dv
        )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    paths = 0 if positions is None else positions.shape[0]
    grad_u = torch.empty(max(paths, 1), batch, heads, length, device=q.device, dtype=torch.float32)
    grad_w = torch.empty_like(grad_u) if u is not None else grad_u
    path_stride, batch_stride = _decay_strides(distance, u)
    threshold, scale = _dropout_arguments(dropout_p)
    flags = _flags(q, v, positions, distance, u_lo, padding, dropout_p, normalize)
    pointers = _pointers(q, padding, positions, distance, u, w, u_lo, w_lo, seed)
    shape = (heads, length, dim, value_dim, path_stride, batch_stride, threshold, scale)
    normaliser = (inv, delta) if normalize else (q, q)
    config = _blocks("backward_kv", length, dim, value_dim, q.dtype)
    _backward_kv_kernel[(triton.cdiv(length, config["BLOCK_N"]), batch * heads)](
        q, k, v, dy, *normaliser, dk, dv, grad_u, grad_w, *pointers, *shape, **flags, **config
    )
    # After the key kernel on the same stream: it reads the column sums that kernel left in grad_u, grad_w.
    config = _blocks("backward_q", length, dim, value_dim, q.dtype)
    _backward_q_kernel[(triton.cdiv(length, config["BLOCK_M"]), batch * heads)](
        q, k, v, dy, *normaliser, dq, grad_u, grad_w, *pointers, *shape, **flags, **config
    )
    def none():  # a fresh empty tensor each: an operator's outputs may not alias each other
        return q.new_empty(0)

    if distance is not None:
        return dq, dk, dv, _sum_to(grad_u.sum(-1), distance), none(), none()
    if u is not None:
        return dq, dk, dv, none(), _sum_to(grad_u, u), _sum_to(grad_w, w)
    return dq, dk, dv, none(), none(), none()


def _sum_to(grad: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """A per-batch-element gradient summed over the batch when the decay is shared by it."""
    return grad.sum(1, keepdim=True) if decay.shape[1] == 1 and grad.shape[1] != 1 else grad


def _pointers(q, padding, positions, distance, u, w, u_lo, w_lo, seed) -> list[torch.Tensor]:
    """Tensor arguments in kernel order; an absent one is replaced by ``q``, which its kernel never reads."""
    padding = None if padding is None else padding.view(torch.uint8)
    tensors = (padding, positions, distance, u, w, u_lo, w_lo, seed)
    return [q if t is None else t for t in tensors]


# ------------------------------------------------------------------------------------- torch.library operators

# One namespace entry per copy of this file: a checkpoint's remote code imports its own copy next to lion_hf's.
_OP_PREFIX = "lion_hf::" + re.sub(r"\W", "_", __name__)


@torch.library.custom_op(_OP_PREFIX + "_parallel_forward", mutates_args=())
def _forward_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding: Optional[torch.Tensor],
    positions: Optional[torch.Tensor],
    distance: Optional[torch.Tensor],
    u: Optional[torch.Tensor],
    w: Optional[torch.Tensor],
    u_lo: Optional[torch.Tensor],
    w_lo: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    dropout_p: float,
    normalize: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Y, Z)``: the output and, when ``normalize``, the row sums ``(B, H, N)`` float32 (else empty)."""
    return _forward(q, k, v, padding, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps)


@_forward_op.register_fake
def _(q, k, v, padding, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps):
    batch, heads, length, _ = q.shape
    out = q.new_empty(batch, heads, length, v.shape[-1])
    return out, q.new_empty(batch, heads, length if normalize else 0, dtype=torch.float32)


@torch.library.custom_op(_OP_PREFIX + "_parallel_backward", mutates_args=())
def _backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    z: torch.Tensor,
    padding: Optional[torch.Tensor],
    positions: Optional[torch.Tensor],
    distance: Optional[torch.Tensor],
    u: Optional[torch.Tensor],
    w: Optional[torch.Tensor],
    u_lo: Optional[torch.Tensor],
    w_lo: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    dropout_p: float,
    normalize: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, d distance, d u, d w)``; the decay gradients of absent decays are empty."""
    return _backward(
        grad_out, q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps
    )


@_backward_op.register_fake
def _(grad_out, q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps):
    def like(decay):
        return q.new_empty(0) if decay is None else torch.empty_like(decay)

    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), like(distance), like(u), like(w)


def _setup_context(ctx, inputs, output):
    q, k, v, padding, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps = inputs
    out, z = output
    ctx.save_for_backward(q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed)
    ctx.options = (dropout_p, normalize, eps)


def _backward_of_forward(ctx, grad_out, grad_z):
    q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed = ctx.saved_tensors
    dq, dk, dv, grad_distance, grad_u, grad_w = _backward_op(
        grad_out, q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed, *ctx.options
    )
    grad_distance = grad_distance if distance is not None else None
    grad_u, grad_w = (grad_u, grad_w) if u is not None else (None, None)
    # The low parts of the running sums carry no gradient of their own (see _segment_sums).
    return dq, dk, dv, None, None, grad_distance, grad_u, grad_w, None, None, None, None, None, None


_forward_op.register_autograd(_backward_of_forward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------- the entry point


def unsupported(q, k, v, log_decays, orders, *, chunk_size, normalize, eps, key_padding_mask, dropout_p) -> str | None:
    """Why the kernels cannot run these inputs (``lion_attention``'s dispatch), or ``None``."""
    device = q.device.type
    if device != "cuda" and not (device == "cpu" and is_interpreted()):
        return f"{device} tensors (the kernels run on CUDA, or on the CPU through TRITON_INTERPRET=1)"
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"dtype {q.dtype} (the kernels take bfloat16, float16 and float32)"
    low, high = HEAD_DIMS
    if not (low <= q.shape[-1] <= high and low <= v.shape[-1] <= high):
        return f"head dims {q.shape[-1]} (queries) and {v.shape[-1]} (values); the kernels take {low} to {high}"
    if log_decays is not None and len(log_decays) > MAX_PATHS:
        return f"{len(log_decays)} paths (the kernels take at most {MAX_PATHS})"
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return f"batch x heads = {q.shape[0] * q.shape[1]} (the kernels take at most {MAX_BATCH_HEADS})"
    if dropout_p > 0.0 and q.shape[2] > MAX_DROPOUT_LENGTH:
        return f"score dropout on {q.shape[2]} tokens (the kernels' dropout takes at most {MAX_DROPOUT_LENGTH})"
    return None


def parallel_attention(q, k, v, log_decays, orders, *, chunk_size, normalize, eps, key_padding_mask, dropout_p):
    """The parallel form through the fused kernels (``AttentionImplementation.run`` of ``lion_attention``)."""
    positions, distance, u, w, u_lo, w_lo = _decay_terms(q, log_decays, orders)
    seed = None
    if dropout_p > 0.0:
        # Drawn from torch's generator: torch.manual_seed reproduces the dropout, and recomputation under
        # activation checkpointing (which restores the generator) draws the same mask.
        seed = torch.randint(0, 2**62, (1,), device=q.device, dtype=torch.int64)
    out, _ = _forward_op(q, k, v, key_padding_mask, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps)
    return out


def _decay_terms(q, log_decays, orders):
    """``(positions, distance, u, w, u_lo, w_lo)`` of the paths; absent ones ``None``.

    ``positions``: ``(P, N)`` float32, the step at which each path visits each token. LION-D (every path constant
    along the tokens): ``distance`` ``(P, B or 1, H)``, the log-decays. Otherwise ``u``, ``w`` ``(P, B or 1, H, N)``:
    the exclusive and inclusive running sums along each path, in token order, in log2 units; for float32 inputs
    summed in float64 and split into a float32 high part and a low part (``u_lo``, ``w_lo``).
    """
    if log_decays is None:
        return None, None, None, None, None, None
    length = q.shape[2]
    steps = [None if order is None else torch.argsort(order) for order in orders]
    natural = torch.arange(length, device=q.device)
    positions = torch.stack([natural if s is None else s for s in steps]).to(torch.float32)
    batch = max(ld.shape[0] for ld in log_decays)
    if all(ld.shape[-1] == 1 or ld.stride(-1) == 0 for ld in log_decays):
        distance = torch.stack([ld[..., 0].expand(batch, -1) for ld in log_decays]).to(torch.float32)
        return positions, distance, None, None, None, None
    exact = q.dtype == torch.float32
    sums = [_segment_sums(ld, order, step, torch.float64 if exact else torch.float32) for ld, order, step in
            zip(log_decays, orders, steps)]  # fmt: skip
    u = torch.stack([s[0].expand(batch, -1, -1) for s in sums])
    w = torch.stack([s[1].expand(batch, -1, -1) for s in sums])
    if not exact:
        return positions, None, u, w, None, None
    u_hi, w_hi = u.to(torch.float32), w.to(torch.float32)
    with torch.no_grad():
        u_lo, w_lo = (u - u_hi.double()).to(torch.float32), (w - w_hi.double()).to(torch.float32)
    return positions, None, u_hi, w_hi, u_lo, w_lo


def _segment_sums(log_decay, order, step, dtype):
    """Exclusive and inclusive running sums of the log-decays along the path, in token order, in log2 units."""
    log_a = log_decay.to(dtype)
    along = log_a if order is None else log_a[..., order]
    inclusive = along.cumsum(-1)
    exclusive = inclusive - along
    if step is not None:
        inclusive, exclusive = inclusive[..., step], exclusive[..., step]
    return exclusive * math.log2(math.e), inclusive * math.log2(math.e)
