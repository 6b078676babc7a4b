"""Fused Triton kernels for the parallel form of the LION operator: forward and backward, no N x N tensor in memory.

FlashAttention-style tiling without a softmax (so without a running maximum). One program of the forward takes a
block of queries of one (batch, head) and walks the blocks of keys: the scores ``q k^T`` of the tile, the decay
mask of the tile from per-token numbers of every path (computed in registers), the key padding, the score dropout,
then ``A v`` and the row sums ``A 1`` accumulated in float32. The backward recomputes the tiles twice, in two
launches: one program per block of queries (``dq``, the normaliser's share of the gradient, the row sums of the
decay gradient), then one per block of keys (``dk``, ``dv``, the column sums, and the decay gradient's last step).

The mask of a path with per-token steps ``pos`` (where the path visits the token), ``M_ij``:

- LION-D (a log-decay ``log a`` constant per head): ``log M_ij = log a * |pos_i - pos_j|``;
- LION-S: with ``u`` and ``w`` the exclusive and inclusive running sums of the log-decays along the path (in token
  order), ``log M_ij = u_i - u_j`` when the path visits ``i`` after ``j`` and ``w_j - w_i`` when before (the
  ``sign(pos_i - pos_j) (m_i - m_j) + h_j - h_i`` of ``lion_attention``, with ``u = m - h`` and ``w = m + h``);

several paths average their masks. The running sums are formed outside the kernels (in PyTorch under
torch.compile, where autograd carries their gradients to the log-decays; inside the eager Function, which turns the
sums' gradients into the log-decays' itself); the kernels return ``d loss / d u`` and ``d loss / d w`` per token: with
``G = dA * S * M_p / paths`` (``d loss / d log M_p``), row sums of ``G`` over the keys a query comes after, minus
column sums over the queries that come after a key, and so on. LION-D returns ``sum_j |pos_i - pos_j| G_ij`` per
query, summed to the head's gradient.

Numerics: float32 inputs use exact ("ieee") float32 dot products and the running sums in float64, passed as a
float32 pair (high part, low part) so that ``u_i - u_j`` keeps its small values on long sequences; bfloat16 and
float16 inputs use float32 accumulation and float32 running sums, as the PyTorch path does. The normaliser is the
row sum of the dropped-out scores, as the PyTorch path's column of ones next to the values gives.

The forward and backward are registered as ``torch.library`` operators, which ``torch.compile`` keeps in its graph;
eager calls take an ``autograd.Function`` around the same launches (less host time). The queries and keys are read
with any strides (the same for both), so that views of a fused projection's output need no copy; the scale
multiplies the score tiles (not the queries); the backward kernels turn the gradients of the feature-mapped queries
and keys into those of the raw ones (``FEATURE``) before storing them, so the map's own backward needs no launch.
(Mapping the streamed tiles inside the loops instead took more GPU time than the map's own launch: the loaded
tiles then reach the matrix units through registers; benchmarks/NOTES.md.) The values are read with any strides;
outputs are written as (B, N, H, Dv). Triton is optional: this module raises ``ImportError`` without it and ``lion_attention``
falls back to PyTorch. Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU
tensors through Triton's interpreter, which is how the tests exercise them without a GPU.
"""

import functools
import re

import torch
import torch.nn.functional as F

from .lion_attention import (
    MIN_LOG_DECAY,
    as_dtype,
    bounded_log_decays,
    bounds_passing,
    feature_maps,
    is_constant_along_length,
    order_steps,
)

try:
    import triton
    import triton.language as tl
except ImportError as error:  # lion_attention catches this and runs the PyTorch path
    raise ImportError("the fused LION kernels need Triton (pip install triton)") from error

HEAD_DIMS = (16, 128)  # smallest and largest head dim (queries and values); any size in between
MAX_PATHS = 2
# Dropout numbers its random draws by query * ceil(length / 8) + key // 8, in 32-bit integers that must not overflow.
MAX_DROPOUT_LENGTH = 131072
# The second grid axis holds batch x heads.
MAX_BATCH_HEADS = 65535

_LOG2E = tl.constexpr(1.4426950408889634)

# The feature maps (lion_attention's FEATURE_MAP_FUNCTIONS) by their code in the kernels' FEATURE and KIND arguments.
FEATURE_MAPS = {"identity": 0, "elu_plus_one": 1, "silu_shift_l2": 2}


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` in plain Python: ``triton.cdiv`` is a constexpr function whose wrapper costs microseconds
    per call on the host, and a training step makes hundreds of these calls."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (>= 1), in plain Python (see ``cdiv``)."""
    return 1 << max(n - 1, 0).bit_length()


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """``kernel[grid](*args, **meta)``, through the compiled kernel itself once Triton has compiled ``kernel`` for
    arguments like these (``args``: every argument that is not a ``tl.constexpr``, in order; ``meta``: the
    constexprs by name and the launch options).

    ``JITFunction``'s launch path (binding, specialisation, cache lookup, option handling) took 43-50 us of host
    time per launch on an H200 machine (Triton 3.6), the compiled kernel's launcher 8-12 us (benchmarks/NOTES.md);
    an eager training step makes dozens of launches. The cache key is finer than Triton's: each tensor's dtype and
    16-byte alignment (what Triton specialises a tensor on), every other argument's value, the constexprs, the
    options and the device, so a key seen before always names the kernel Triton would pick. Launch hooks (a
    profiler's) get the launch metadata Triton would give them. The interpreter (and anything not a
    ``JITFunction``) launches as usual."""
    if not isinstance(kernel, triton.runtime.JITFunction):
        kernel[grid](*args, **meta)
        return
    driver = triton.runtime.driver.active
    device = driver.get_current_device()
    key = (
        kernel, device, *meta.items(),
        *[(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else a for a in args],
    )  # fmt: skip
    entry = _COMPILED.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **meta)
        if len(_COMPILED) >= _MAX_COMPILED:
            _COMPILED.clear()  # many shapes (the key holds the lengths): start again rather than grow
        # The compiled kernel's launcher takes the constexprs too, in signature order, after the others.
        _COMPILED[key] = compiled, [meta[name] for name in kernel.arg_names[len(args):]]
        return
    compiled, constexprs = entry
    stream = driver.get_current_stream(device)
    # Both Triton versions read three grid dims here (JITFunction pads them itself).
    grid = (*grid, 1, 1)
    hooks = triton.knobs.runtime
    if hooks.launch_enter_hook.calls or hooks.launch_exit_hook.calls:
        compiled[grid[:3]](*args, *constexprs, stream=stream)  # the runner builds the metadata the hooks read
    else:
        compiled.run(
            grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None, None,
            *args, *constexprs,
        )  # fmt: skip


_COMPILED: dict = {}
_MAX_COMPILED = 4096


def is_interpreted() -> bool:
    """Whether the kernels were built for Triton's interpreter (``TRITON_INTERPRET=1`` when this module loaded)."""
    return not isinstance(_forward_kernel, triton.runtime.JITFunction)


# ------------------------------------------------------------------------------------------------ kernels


@triton.jit
def _silu_shifted(x, ok):
    """``silu(x) + 1/2`` (positive: silu is above -0.28) and ``sigmoid(x)``; zeros outside ``ok``."""
    sigmoid = tl.sigmoid(x)
    return tl.where(ok, x * sigmoid + 0.5, 0.0), sigmoid


@triton.jit
def _row_norm(s, row_ok):
    """``|s|`` of each row as a column; 1 on rows outside ``row_ok`` (all zeros there), which are not stored."""
    return tl.where(row_ok, tl.sqrt(tl.sum(s * s, 1)), 1.0)[:, None]


@triton.jit
def _feature_map(x, ok, row_ok, FEATURE: tl.constexpr):
    """Feature map ``FEATURE`` (1: ``elu_plus_one``, 2: ``silu_shift_l2``; the identity needs no kernel) of a float32
    tile of rows (the whole head dim in each; ``ok`` its valid entries, ``row_ok`` its valid rows)."""
    if FEATURE == 1:
        y = tl.where(x > 0, x + 1.0, tl.exp(x))
    else:
        s, _ = _silu_shifted(x, ok)
        y = s / _row_norm(s, row_ok)
    return y


@triton.jit
def _feature_map_gradient(x, dy, ok, row_ok, FEATURE: tl.constexpr):
    """``dx`` from ``dy``, the gradient of ``_feature_map(x)`` (float32 tiles). ``elu + 1``: ``dx = dy`` where
    ``x > 0``, else ``dy exp(x)``. ``silu_shift_l2``, ``y = s / |s|``: ``ds = (dy - y (y . dy)) / |s|`` and
    ``dx = ds silu'(x)``, ``silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x)))``."""
    if FEATURE == 1:
        dx = tl.where(x > 0, dy, dy * tl.exp(x))
    else:
        s, sigmoid = _silu_shifted(x, ok)
        norm = _row_norm(s, row_ok)
        y = s / norm
        ds = (dy - y * tl.sum(y * dy, 1)[:, None]) / norm
        dx = ds * (sigmoid * (1.0 + x * (1.0 - sigmoid)))
    return dx


@triton.jit
def _path_log2_mask(
    path, b, h, qi, kj, N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
    DISTANCE: tl.constexpr, HAS_LO: tl.constexpr, NATURAL: tl.constexpr,
):
    """``log2 M_p`` and ``pos_i - pos_j`` for query indices ``qi`` and key indices ``kj`` (broadcastable). NATURAL:
    every path visits the tokens in order, so a token's step is its index (no positions to load)."""
    if NATURAL:
        delta = (qi - kj).to(tl.float32)
    else:
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
        if HAS_LO:
            lo_uq = tl.load(U_LO + base + qi, mask=qi < N, other=0.0)
            lo_uk = tl.load(U_LO + base + kj, mask=kj < N, other=0.0)
            lo_wq = tl.load(W_LO + base + qi, mask=qi < N, other=0.0)
            lo_wk = tl.load(W_LO + base + kj, mask=kj < N, other=0.0)
            # Differences of the high parts first (small where it matters), then the low parts, then to log2.
            x = tl.where(after, (u_q - u_k) + (lo_uq - lo_uk), (w_k - w_q) + (lo_wk - lo_wq)) * _LOG2E
        else:
            # In log2 units per token (a multiply per row and column, not per entry), as float32 allows anyway.
            x = tl.where(after, u_q * _LOG2E - u_k * _LOG2E, w_k * _LOG2E - w_q * _LOG2E)
        # log M <= 0 always; the clamp also keeps tiles past the end (loaded as zeros) finite.
        x = tl.minimum(x, 0.0)
    return x, delta


@triton.jit
def _decay_mask(
    b, h, qi, kj, N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
    NUM_PATHS: tl.constexpr, DISTANCE: tl.constexpr, HAS_LO: tl.constexpr, NATURAL: tl.constexpr,
):
    """The mean over paths of ``M_p``, each path's ``M_p / paths``, and each path's ``pos_i - pos_j`` (two paths
    at most; with one, the second path's entries repeat the first's)."""
    x0, delta0 = _path_log2_mask(
        0, b, h, qi, kj, N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride, DISTANCE, HAS_LO, NATURAL
    )
    if NUM_PATHS == 2:
        x1, delta1 = _path_log2_mask(
            1, b, h, qi, kj, N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride, DISTANCE, HAS_LO, NATURAL
        )
        m0 = tl.exp2(x0) * 0.5
        m1 = tl.exp2(x1) * 0.5
        return m0 + m1, m0, m1, delta0, delta1
    m0 = tl.exp2(x0)
    return m0, m0, m0, delta0, delta0


@triton.jit
def _keep(seed, bh, offs_m, start_n, N, threshold, BLOCK_N: tl.constexpr):
    """Counter-based dropout of the tile of head ``bh`` that pairs queries ``offs_m`` with keys ``start_n`` to
    ``start_n + BLOCK_N``: an entry is kept when its 16-bit draw is at least ``threshold``. One Philox call gives four
    32-bit numbers, the draws of 8 neighbouring keys (counter ``query * ceil(N / 8) + key // 8``), so the same
    (seed, bh, query, key) draws the same number in every kernel and for any tiling whose key blocks start at
    multiples of 8 (all of them), with an eighth of the Philox rounds of one call per entry."""
    groups = (N + 7) // 8
    cols = start_n // 8 + tl.arange(0, BLOCK_N // 8)
    counter = (offs_m[:, None] * groups + cols[None, :]).to(tl.uint32)
    zero = counter * 0
    r0, r1, r2, r3 = tl.philox(seed, counter, zero + bh.to(tl.uint32), zero, zero)
    # (M, G, 2, 2, 2) with [m, g, x, y, z] = half z of r_(2x + y): flattened, the draws of keys 8g to 8g + 7.
    quads = tl.join(tl.join(r0, r2), tl.join(r1, r3))
    draws = tl.join(quads & 0xFFFF, quads >> 16)
    return tl.reshape(draws >= threshold.to(tl.uint32), (offs_m.shape[0], BLOCK_N))


@triton.jit
def _program(H, N, D, sqb, sqh, srb, srh, svb, svh, sob, soh, BLOCK: tl.constexpr):
    """This program's batch x head index, batch, head, block of tokens (grid axis 0), and where its head starts
    in the queries and keys that are multiplied (batch and head strides ``sqb``, ``sqh``, shared by both), in the
    raw ones (``srb``, ``srh``), in their gradients (contiguous (B, H, N, D)), in the values (``svb``, ``svh``)
    and in the outputs and their gradients (``sob``, ``soh``)."""
    bh = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    qk_base = b * sqb + h * sqh
    raw_base = b * srb + h * srh
    return bh, bh // H, bh % H, offs, qk_base, raw_base, bh.to(tl.int64) * N * D, b * svb + h * svh, b * sob + h * soh


@triton.jit
def _rows(PTR, base, rows, rows_ok, width, cols, stride):
    """Rows ``rows`` of the (tokens, ``width``) matrix at ``PTR + base`` with row stride ``stride``; zeros where
    ``rows_ok`` is false and past the width."""
    return tl.load(
        PTR + base + rows[:, None].to(tl.int64) * stride + cols[None, :],
        mask=rows_ok[:, None] & (cols[None, :] < width),
        other=0.0,
    )


@triton.jit
def _store_rows(PTR, base, rows, rows_ok, width, cols, stride, value):
    tl.store(
        PTR + base + rows[:, None].to(tl.int64) * stride + cols[None, :],
        value.to(PTR.dtype.element_ty),
        mask=rows_ok[:, None] & (cols[None, :] < width),
    )


@triton.jit
def _raw_gradient(GRAD, RAW, raw_base, grad_base, rows, rows_ok, width, cols, stride, dy, FEATURE: tl.constexpr):
    """Stores the gradient of the raw rows ``rows`` (at ``RAW + raw_base``, row stride ``stride``) given ``dy``,
    that of their feature map (float32), into the contiguous ``GRAD``."""
    if FEATURE == 0:
        dx = dy
    else:
        x = _rows(RAW, raw_base, rows, rows_ok, width, cols, stride).to(tl.float32)
        ok = rows_ok[:, None] & (cols[None, :] < width)
        dx = _feature_map_gradient(x, dy, ok, rows_ok, FEATURE)
    _store_rows(GRAD, grad_base, rows, rows_ok, width, cols, width, dx)


@triton.jit
def _real_keys(PAD, b, offs_n, N, HAS_PAD: tl.constexpr):
    """Keys inside the sequence and, with a padding mask, not padded. Loaded through this mask, padded keys and
    values are zeros: their scores are 0 whatever they hold (NaN included)."""
    ok = offs_n < N
    if HAS_PAD:
        ok = ok & (tl.load(PAD + b * N + offs_n, mask=offs_n < N, other=0) != 0)
    return ok


@triton.jit
def _forward_kernel(
    Q, K, V, OUT, Z, PAD, POS, DECAY, U, W, U_LO, W_LO, SEED,
    H, N, D, DV, sqb, sqh, sqn, svb, svh, svn, sob, soh, son, path_stride, batch_stride, eps, scale,
    drop_threshold, drop_scale,
    NUM_PATHS: tl.constexpr, DISTANCE: tl.constexpr, HAS_LO: tl.constexpr, NATURAL: tl.constexpr,
    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bh, b, h, offs_m, qk_base, raw_base, grad_base, v_base, o_base = _program(
        H, N, D, sqb, sqh, 0, 0, svb, svh, sob, soh, BLOCK_M
    )
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows_ok = offs_m < N
    q = _rows(Q, qk_base, offs_m, rows_ok, D, offs_d, sqn)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    z = tl.zeros((BLOCK_M,), dtype=tl.float32)
    seed = 0
    if DROPOUT:
        seed = tl.load(SEED)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keys_ok = _real_keys(PAD, b, offs_n, N, HAS_PAD)
        k = _rows(K, qk_base, offs_n, keys_ok, D, offs_d, sqn)
        v = _rows(V, v_base, offs_n, keys_ok, DV, offs_dv, svn)
        a = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        if NUM_PATHS > 0:
            mask, _, _, _, _ = _decay_mask(
                b, h, offs_m[:, None], offs_n[None, :], N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
                NUM_PATHS, DISTANCE, HAS_LO, NATURAL,
            )
            a = a * mask
        if DROPOUT:
            keep = _keep(seed, bh, offs_m, start_n, N, drop_threshold, BLOCK_N)
            a = tl.where(keep, a * drop_scale, 0.0)
        if NORMALIZE:
            z += tl.sum(a, 1)
        acc = tl.dot(a.to(v.dtype), v, acc, input_precision=PRECISION)
    if NORMALIZE:
        acc = acc / (z + eps)[:, None]
        tl.store(Z + bh * N + offs_m, z, mask=rows_ok)
    _store_rows(OUT, o_base, offs_m, rows_ok, DV, offs_dv, son, acc)


@triton.jit
def _backward_q_kernel(
    Q, K, QR, V, OUT, Z, DY, INV, DELTA, DQ, GRAD_U, GRAD_W, PAD, POS, DECAY, U, W, U_LO, W_LO, SEED,
    H, N, D, DV, sqb, sqh, sqn, srb, srh, srn, svb, svh, svn, sob, soh, son, path_stride, batch_stride, eps, scale,
    drop_threshold, drop_scale,
    FEATURE: tl.constexpr, NUM_PATHS: tl.constexpr, DISTANCE: tl.constexpr, HAS_LO: tl.constexpr,
    NATURAL: tl.constexpr, HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, NORMALIZE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One block of queries against every key: ``dq``, the normaliser's share and the decay gradients' row sums.

    ``Y = N / (Z + eps)``: ``dN = dY / (Z + eps)`` and ``dZ = -(dY . Y) / (Z + eps)``, so that
    ``dP_ij = dN_i . v_j + dZ_i``; ``1 / (Z + eps)`` and ``dZ`` are left in ``INV`` and ``DELTA`` for the key
    kernel. LION-S: ``GRAD_U``/``GRAD_W`` receive the row sums of ``G`` over the keys each query comes after /
    before; LION-D: ``GRAD_U`` receives ``sum_j |pos_i - pos_j| G_ij``, its final gradient."""
    bh, b, h, offs_m, qk_base, raw_base, grad_base, v_base, o_base = _program(
        H, N, D, sqb, sqh, srb, srh, svb, svh, sob, soh, BLOCK_M
    )
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows_ok = offs_m < N
    q = _rows(Q, qk_base, offs_m, rows_ok, D, offs_d, sqn)
    dy = _rows(DY, o_base, offs_m, rows_ok, DV, offs_dv, son)
    if NORMALIZE:
        inv = 1.0 / (tl.load(Z + bh * N + offs_m, mask=rows_ok, other=0.0) + eps)
        y = _rows(OUT, o_base, offs_m, rows_ok, DV, offs_dv, son).to(tl.float32)
        delta = -tl.sum(dy.to(tl.float32) * y, 1) * inv
        tl.store(INV + bh * N + offs_m, inv, mask=rows_ok)
        tl.store(DELTA + bh * N + offs_m, delta, mask=rows_ok)
        dy = (dy.to(tl.float32) * inv[:, None]).to(q.dtype)
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
        keys_ok = _real_keys(PAD, b, offs_n, N, HAS_PAD)
        k = _rows(K, qk_base, offs_n, keys_ok, D, offs_d, sqn)
        v = _rows(V, v_base, offs_n, keys_ok, DV, offs_dv, svn)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        dp = tl.dot(dy, tl.trans(v), input_precision=PRECISION)
        if NORMALIZE:
            dp += delta[:, None]
        da = dp
        if DROPOUT:
            keep = _keep(seed, bh, offs_m, start_n, N, drop_threshold, BLOCK_N)
            da = tl.where(keep, dp * drop_scale, 0.0)
        ds = da
        if NUM_PATHS > 0:
            mask, m0, m1, delta0, delta1 = _decay_mask(
                b, h, offs_m[:, None], offs_n[None, :], N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
                NUM_PATHS, DISTANCE, HAS_LO, NATURAL,
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
    _raw_gradient(DQ, QR, raw_base, grad_base, offs_m, rows_ok, D, offs_d, srn, dq * scale, FEATURE)
    if NUM_PATHS > 0:
        path_size = tl.num_programs(1) * N
        tl.store(GRAD_U + bh * N + offs_m, after0, mask=rows_ok)
        if not DISTANCE:
            tl.store(GRAD_W + bh * N + offs_m, before0, mask=rows_ok)
        if NUM_PATHS == 2:
            tl.store(GRAD_U + path_size + bh * N + offs_m, after1, mask=rows_ok)
            if not DISTANCE:
                tl.store(GRAD_W + path_size + bh * N + offs_m, before1, mask=rows_ok)


@triton.jit
def _backward_kv_kernel(
    Q, K, KR, V, DY, INV, DELTA, DK, DVAL, GRAD_U, GRAD_W, PAD, POS, DECAY, U, W, U_LO, W_LO, SEED,
    H, N, D, DV, sqb, sqh, sqn, srb, srh, srn, svb, svh, svn, sob, soh, son, path_stride, batch_stride, scale, drop_threshold,
    drop_scale,
    FEATURE: tl.constexpr, NUM_PATHS: tl.constexpr, DISTANCE: tl.constexpr, HAS_LO: tl.constexpr,
    NATURAL: tl.constexpr, HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, NORMALIZE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One block of keys against every query: ``dk``, ``dv`` and, LION-S, ``d/du`` and ``d/dw`` of its tokens
    (the query kernel's row sums, in ``GRAD_U``/``GRAD_W``, combined with this kernel's column sums in place).

    Tiles are (keys, queries), the transpose of the forward's, so that ``dk`` and ``dv`` are plain products."""
    bh, b, h, offs_n, qk_base, raw_base, grad_base, v_base, o_base = _program(
        H, N, D, sqb, sqh, srb, srh, svb, svh, sob, soh, BLOCK_N
    )
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_range = offs_n < N
    keys_ok = _real_keys(PAD, b, offs_n, N, HAS_PAD)
    k = _rows(K, qk_base, offs_n, keys_ok, D, offs_d, sqn)
    v = _rows(V, v_base, offs_n, keys_ok, DV, offs_dv, svn)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    after0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    before0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    after1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    before1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    seed = 0
    if DROPOUT:
        seed = tl.load(SEED)
    start_n = tl.program_id(0) * BLOCK_N
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows_ok = offs_m < N
        q = _rows(Q, qk_base, offs_m, rows_ok, D, offs_d, sqn)
        dy = _rows(DY, o_base, offs_m, rows_ok, DV, offs_dv, son)
        if NORMALIZE:
            inv = tl.load(INV + bh * N + offs_m, mask=rows_ok, other=0.0)
            dy = (dy.to(tl.float32) * inv[:, None]).to(q.dtype)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale
        dp_t = tl.dot(v, tl.trans(dy), input_precision=PRECISION)
        if NORMALIZE:
            dp_t += tl.load(DELTA + bh * N + offs_m, mask=rows_ok, other=0.0)[None, :]
        a_t = s_t
        if NUM_PATHS > 0:
            mask, m0, m1, delta0, delta1 = _decay_mask(
                b, h, offs_m[None, :], offs_n[:, None], N, POS, DECAY, U, W, U_LO, W_LO, path_stride, batch_stride,
                NUM_PATHS, DISTANCE, HAS_LO, NATURAL,
            )
            a_t = s_t * mask
        da_t = dp_t
        p_t = a_t
        if DROPOUT:
            keep = tl.trans(_keep(seed, bh, offs_m, start_n, N, drop_threshold, BLOCK_N))
            p_t = tl.where(keep, a_t * drop_scale, 0.0)
            da_t = tl.where(keep, dp_t * drop_scale, 0.0)
        dv = tl.dot(p_t.to(dy.dtype), dy, dv, input_precision=PRECISION)
        ds_t = da_t
        if NUM_PATHS > 0:
            ds_t = da_t * mask
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
        if NUM_PATHS > 0 and not DISTANCE:
            g_t = da_t * s_t
            g0 = g_t * m0
            after0 += tl.sum(tl.where(delta0 > 0, g0, 0.0), 1)
            before0 += tl.sum(tl.where(delta0 < 0, g0, 0.0), 1)
            if NUM_PATHS == 2:
                g1 = g_t * m1
                after1 += tl.sum(tl.where(delta1 > 0, g1, 0.0), 1)
                before1 += tl.sum(tl.where(delta1 < 0, g1, 0.0), 1)
    # dv first: its registers are free again for the feature map's gradient.
    _store_rows(DVAL, o_base, offs_n, in_range, DV, offs_dv, son, dv)
    _raw_gradient(DK, KR, raw_base, grad_base, offs_n, in_range, D, offs_d, srn, dk * scale, FEATURE)
    if NUM_PATHS > 0 and not DISTANCE:
        _finish_segment_gradient(GRAD_U, GRAD_W, bh * N + offs_n, in_range, after0, before0)
        if NUM_PATHS == 2:
            path_size = tl.num_programs(1) * N
            _finish_segment_gradient(GRAD_U, GRAD_W, path_size + bh * N + offs_n, in_range, after1, before1)


@triton.jit
def _finish_segment_gradient(GRAD_U, GRAD_W, index, ok, column_after, column_before):
    """``log M_ij = u_i - u_j`` (i after j) or ``w_j - w_i`` (i before j): ``d/du`` is the row sums minus the
    column sums over "after", ``d/dw`` the column sums minus the row sums over "before"."""
    row_after = tl.load(GRAD_U + index, mask=ok, other=0.0)
    row_before = tl.load(GRAD_W + index, mask=ok, other=0.0)
    tl.store(GRAD_U + index, row_after - column_after, mask=ok)
    tl.store(GRAD_W + index, column_before - row_before, mask=ok)


# ------------------------------------------------------------------------------------------------ launches


def _blocks(kernel: str, length: int, dtype: torch.dtype) -> dict:
    """Tile sizes and launch settings of ``kernel`` ("forward", "backward_q", "backward_kv").

    bf16/fp16: the fastest of a sweep on an H200 at ViT-B (197 tokens) and BERT-512 shapes, LION-S
    (benchmarks/NOTES.md, benchmarks/results/kernels/time.log). float32 takes smaller tiles: its exact products
    run on the CUDA cores and hold twice the registers.
    """
    if is_interpreted():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2)
    if kernel == "forward":
        return dict(BLOCK_M=64, BLOCK_N=128 if length >= 384 else 64, num_warps=4, num_stages=2)
    if kernel == "backward_q":
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)


def _meta(kernel: str, q, v, positions, distance, u_lo, padding, dropout_p, normalize) -> dict:
    """The constexprs and launch settings of ``kernel`` for these inputs (see ``_blocks``)."""
    return _meta_of(
        kernel, q.shape[2], q.dtype, q.shape[-1], v.shape[-1], 0 if positions is None else positions.shape[0],
        distance is not None, u_lo is not None, _in_token_order(positions), padding is not None, dropout_p > 0.0,
        normalize,
    )  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _meta_of(
    kernel, length, dtype, dim, value_dim, paths, distance, low_parts, natural, padding, dropout, normalize
) -> dict:
    # Kept per kind of call (shared, never changed by the callers): a step asks for the same few in every layer.
    return dict(
        NUM_PATHS=paths,
        DISTANCE=distance,
        HAS_LO=low_parts,
        NATURAL=natural,
        HAS_PAD=padding,
        DROPOUT=dropout,
        NORMALIZE=normalize,
        PRECISION="ieee" if dtype == torch.float32 else "tf32",
        BLOCK_D=max(16, next_power_of_2(dim)),
        BLOCK_DV=max(16, next_power_of_2(value_dim)),
        **_blocks(kernel, length, dtype),
    )


def _decay_strides(distance, u) -> tuple[int, int]:
    """Strides of a path and of a batch element in the decay tensors; a batch stride of 0 shares one over the batch."""
    decay = distance if distance is not None else u
    if decay is None:
        return 0, 0
    return decay[0].numel(), decay[0, 0].numel() if decay.shape[1] > 1 else 0


def _dropout_arguments(dropout_p: float) -> tuple[int, float]:
    """The keep threshold out of 2**16 (the draws' range) and the scale of kept scores, from the rate that threshold
    drops: the expected dropped scores equal the undropped ones exactly, and it differs from ``dropout_p`` by less
    than 2**-16."""
    if dropout_p <= 0.0:
        return 0, 1.0
    threshold = min(round(dropout_p * 2**16), 2**16 - 1)
    return threshold, 2**16 / (2**16 - threshold)


def _pointers(q, padding, positions, distance, u, w, u_lo, w_lo, seed) -> list[torch.Tensor]:
    """Tensor arguments in kernel order (see ``_present``)."""
    padding = None if padding is None else padding.view(torch.uint8)
    positions = None if _in_token_order(positions) else positions  # the kernels read none then
    return _present(q, padding, positions, distance, u, w, u_lo, w_lo, seed)


def _in_token_order(positions) -> bool:
    """Whether every path visits the tokens in order (``_positions`` gave ``(P, 0)``): the kernels' NATURAL."""
    return positions is not None and positions.shape[1] == 0


def _present(q: torch.Tensor, *tensors: torch.Tensor | None) -> list[torch.Tensor]:
    """``tensors`` with each absent one replaced by ``q``, which the kernels never touch in its place."""
    return [q if t is None else t for t in tensors]


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _output(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """An empty ``(B, H, N, Dv)`` output laid out as ``(B, N, H, Dv)``: merging the heads afterwards is a view."""
    batch, heads, length, _ = q.shape
    return q.new_empty(batch, length, heads, v.shape[-1]).transpose(1, 2)


def _strides(*tensors: torch.Tensor) -> tuple[int, ...]:
    """The batch, head and token strides of each of ``tensors``, in order (a kernel's queries stand for the keys
    too, its outputs for their gradients)."""
    return tuple(stride for t in tensors for stride in t.stride()[:3])


def _readable(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` and ``k`` as the kernels read them: the same strides, the last dim contiguous (views of a fused
    projection's output already are)."""
    if q.stride() != k.stride() or q.stride(-1) != 1:
        return q.contiguous(), k.contiguous()
    return q, k


def _forward(q, k, v, padding, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps, scale):
    """``(Y, Z)``: the output and, when ``normalize``, the row sums ``(B, H, N)`` float32 (else empty), for the
    queries and keys as multiplied (feature-mapped), the scores scaled by ``scale``."""
    batch, heads, length, dim = q.shape
    value_dim = v.shape[-1]
    (q, k), v = _readable(q, k), _last_dim_contiguous(v)
    out = _output(q, v)
    z = torch.empty(batch, heads, length if normalize else 0, device=q.device, dtype=torch.float32)
    meta = _meta("forward", q, v, positions, distance, u_lo, padding, dropout_p, normalize)
    path_stride, batch_stride = _decay_strides(distance, u)
    threshold, drop_scale = _dropout_arguments(dropout_p)
    launch(
        _forward_kernel, (cdiv(length, meta["BLOCK_M"]), batch * heads),
        q, k, v, out, z if normalize else q, *_pointers(q, padding, positions, distance, u, w, u_lo, w_lo, seed),
        heads, length, dim, value_dim, *_strides(q, v, out), path_stride, batch_stride, eps, scale, threshold,
        drop_scale, **meta,
    )  # fmt: skip
    return out, z


def _backward(
    grad_out, q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed, dropout_p, normalize, eps, scale,
    raw=None, feature=0,
):  # fmt: skip
    """``(dq, dk, dv, grad_u, grad_w)``: the gradients of the queries and keys (contiguous) and of the values (in
    the layout of ``out``); the kernels' per-token gradients of the decay terms, ``(P, B, H, N)`` float32 each
    (see the module docstring; LION-D's in ``grad_u``, ``grad_w`` then the same tensor; both ``None`` without
    decays). With ``raw``, the queries and keys that feature map ``feature`` (a code of ``FEATURE_MAPS``) turned
    into ``q`` and ``k``, ``dq`` and ``dk`` are those of the raw ones (the kernels apply the map's gradient before
    storing them)."""
    batch, heads, length, dim = q.shape
    value_dim = v.shape[-1]
    (q, k), v = _readable(q, k), _last_dim_contiguous(v)
    raw_q, raw_k = (q, k) if raw is None else _readable(*raw)
    dy = grad_out if grad_out.stride() == out.stride() else torch.empty_like(out).copy_(grad_out)
    dq, dk = q.new_empty(q.shape), k.new_empty(k.shape)
    dv = torch.empty_like(out)
    if positions is None:
        grad_u = grad_w = None
    else:
        grad_u = torch.empty(positions.shape[0], batch, heads, length, device=q.device, dtype=torch.float32)
        grad_w = torch.empty_like(grad_u) if u is not None else grad_u
    if normalize:
        inv, delta = (torch.empty(batch, heads, length, device=q.device, dtype=torch.float32) for _ in range(2))
    else:
        inv = delta = z = q
    path_stride, batch_stride = _decay_strides(distance, u)
    threshold, drop_scale = _dropout_arguments(dropout_p)
    pointers = _pointers(q, padding, positions, distance, u, w, u_lo, w_lo, seed)
    strides = _strides(q, raw_q, v, out)
    meta = _meta("backward_q", q, v, positions, distance, u_lo, padding, dropout_p, normalize)
    launch(
        _backward_q_kernel, (cdiv(length, meta["BLOCK_M"]), batch * heads),
        q, k, raw_q, v, out, z, dy, inv, delta, dq, *_present(q, grad_u, grad_w), *pointers,
        heads, length, dim, value_dim, *strides, path_stride, batch_stride, eps, scale, threshold, drop_scale,
        FEATURE=feature, **meta,
    )  # fmt: skip
    # After the query kernel on the same stream: it reads the normaliser terms and row sums that kernel left.
    meta = _meta("backward_kv", q, v, positions, distance, u_lo, padding, dropout_p, normalize)
    launch(
        _backward_kv_kernel, (cdiv(length, meta["BLOCK_N"]), batch * heads),
        q, k, raw_k, v, dy, inv, delta, dk, dv, *_present(q, grad_u, grad_w), *pointers,
        heads, length, dim, value_dim, *strides, path_stride, batch_stride, scale, threshold, drop_scale,
        FEATURE=feature, **meta,
    )  # fmt: skip
    return dq, dk, dv, grad_u, grad_w


# -------------------------------------------------------------- torch.library operators (torch.compile) and eager

def op_prefix(module_name: str) -> str:
    """The ``torch.library`` name prefix of a kernel module's operators: one per copy of the file, since a
    checkpoint's remote code imports its own copy next to lion_hf's (one name for both would run the last one
    registered)."""
    return "lion_hf::" + re.sub(r"\W", "_", module_name)


_OP_PREFIX = op_prefix(__name__)


# What both operators take after their own tensors: the key padding, the decay terms (see _decay_terms), the
# dropout seed and the options.
_TERMS = (
    "Tensor? padding, Tensor? positions, Tensor? distance, Tensor? u, Tensor? w, Tensor? u_lo, Tensor? w_lo, "
    "Tensor? seed, float dropout_p, bool normalize, float eps, float scale"
)


@torch.library.custom_op(
    _OP_PREFIX + "_parallel_forward", mutates_args=(), schema=f"(Tensor q, Tensor k, Tensor v, {_TERMS}) -> (Tensor, Tensor)"
)
def _forward_op(q, k, v, *terms):
    return _forward(q, k, v, *terms)


@_forward_op.register_fake
def _(q, k, v, *terms):
    batch, heads, length, _ = q.shape
    normalize = terms[-3]
    return _output(q, v), q.new_empty(batch, heads, length if normalize else 0, dtype=torch.float32)


@torch.library.custom_op(
    _OP_PREFIX + "_parallel_backward",
    mutates_args=(),
    schema=f"(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor z, {_TERMS}) -> (Tensor, Tensor, "
    "Tensor, Tensor, Tensor, Tensor)",
)
def _backward_op(grad_out, q, k, v, out, z, *terms):
    dq, dk, dv, grad_u, grad_w = _backward(grad_out, q, k, v, out, z, *terms)
    distance, u, w = terms[2:5]

    def none():  # a fresh empty tensor each: an operator's outputs may not alias each other
        return q.new_empty(0)

    if distance is not None:
        return dq, dk, dv, grad_u.sum(-1).sum_to_size(distance.shape), none(), none()
    if u is not None:
        return dq, dk, dv, none(), grad_u.sum_to_size(u.shape), grad_w.sum_to_size(w.shape)
    return dq, dk, dv, none(), none(), none()


@_backward_op.register_fake
def _(grad_out, q, k, v, out, z, padding, positions, distance, u, *rest):
    def like(decay):
        return q.new_empty(0) if decay is None else torch.empty_like(decay)

    w = rest[0]
    return q.new_empty(q.shape), k.new_empty(k.shape), torch.empty_like(out), like(distance), like(u), like(w)


def _setup_context(ctx, inputs, output):
    *tensors, dropout_p, normalize, eps, scale = inputs
    q, k, v, padding, positions, distance, u, w, u_lo, w_lo, seed = tensors
    ctx.save_for_backward(q, k, v, *output, padding, positions, distance, u, w, u_lo, w_lo, seed)
    ctx.options = (dropout_p, normalize, eps, scale)


def _backward_of_forward_op(ctx, grad_out, grad_z):
    """The gradient of every input of the forward operator, in its order."""
    q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed = ctx.saved_tensors
    dq, dk, dv, grad_distance, grad_u, grad_w = _backward_op(
        grad_out, q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed, *ctx.options
    )
    grad_distance = grad_distance if distance is not None else None
    grad_u, grad_w = (grad_u, grad_w) if u is not None else (None, None)
    # The low parts of the running sums carry no gradient of their own (see _decay_terms).
    return dq, dk, dv, None, None, grad_distance, grad_u, grad_w, None, None, None, None, None, None, None


_forward_op.register_autograd(_backward_of_forward_op, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same forward and backward as the operators, for eager mode, with the feature map and the decay terms
    inside: one autograd node for the layer's whole token mixing. The queries and keys are read in place from the
    projection's output (any strides); the scale multiplies the scores in the kernels; a feature map other than the
    identity is applied by one fused kernel for both (``lion_triton_features``) and again in the backward instead
    of being kept, whose kernels turn the maps' gradients into those of the raw inputs before storing them. The
    running sums, their float32 split and the path orders are formed without autograd, and the backward turns the
    kernels' gradients of the sums into those of the log-decays itself (reversed running sums, gathers by the
    inverse orders). A training step pays the host time of every autograd node once per layer and again in the
    backward; here the feature map, the scale and the decays add none."""

    @staticmethod
    def forward(ctx, q, k, v, padding, seed, options, feature_map, orders, *log_decays):
        q, k = _readable(q, k)
        # Bounded in _decay_terms, outside autograd (see AttentionImplementation.bounds_decays): a valid mask is its
        # own span.
        terms = _decay_terms(q, log_decays or None, orders, padding)
        out, z = _forward(*_mapped(q, k, feature_map), v, padding, *terms, seed, *options)
        ctx.save_for_backward(q, k, v, out, z, padding, *terms, seed)
        ctx.options, ctx.feature_map, ctx.orders = options, feature_map, orders
        ctx.decays = [(log_decay.shape, log_decay.dtype) for log_decay in log_decays]
        ctx.passing = bounds_passing(log_decays, padding) if any(ctx.needs_input_grad[8:]) else None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, z, padding, positions, distance, u, w, u_lo, w_lo, seed = ctx.saved_tensors
        dq, dk, dv, grad_u, grad_w = _backward(
            grad_out, *_mapped(q, k, ctx.feature_map), v, out, z, padding, positions, distance, u, w, u_lo, w_lo,
            seed, *ctx.options, raw=(q, k), feature=FEATURE_MAPS[ctx.feature_map],
        )  # fmt: skip
        if ctx.passing is None:
            grads = [None] * len(ctx.decays)
        elif distance is not None:
            grads = [
                _constant_gradient(g, passing, *decay)
                for g, passing, decay in zip(grad_u.sum(-1).unbind(0), ctx.passing, ctx.decays)
            ]
        elif u is not None:
            accumulate = torch.float64 if q.dtype == torch.float32 else torch.float32
            grads = [
                torch.where(passing, _running_sums_gradient(gu, gw, order, *decay, accumulate), 0.0)
                for gu, gw, order, passing, decay in zip(
                    grad_u.unbind(0), grad_w.unbind(0), ctx.orders, ctx.passing, ctx.decays
                )
            ]
        else:
            grads = []
        return dq, dk, dv, None, None, None, None, None, *grads


def _mapped(q: torch.Tensor, k: torch.Tensor, feature_map: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(map(q), map(k))`` without autograd: the inputs themselves for the identity, else one fused launch."""
    if feature_map == "identity":
        return q, k
    return lion_triton_features.map_pair(feature_map, q, k, 1.0).unbind(0)


def _constant_gradient(grad: torch.Tensor, passing: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The gradient ``(B or 1, H)`` of a log-decay that is constant along the tokens, as the gradient of the
    ``(B or 1, H, N)`` tensor it was passed as (stride 0 along the tokens): all of it on the first token, since
    the expansion's backward sums over the tokens; none where the bounds moved it (``passing`` false)."""
    first = as_dtype(torch.where(passing, grad.sum_to_size(shape[:-1]).unsqueeze(-1), 0.0), dtype)
    return F.pad(first, (0, shape[-1] - 1))


def _running_sums_gradient(grad_u, grad_w, order, shape, dtype, accumulate) -> torch.Tensor:
    """The gradient of the log-decays from those of their exclusive (``u``) and inclusive (``w``) running sums
    along the path, all in token order (``along_path_gradient`` in path order)."""
    grad_u, grad_w = as_dtype(grad_u, accumulate), as_dtype(grad_w, accumulate)
    if order is not None:
        grad_u, grad_w = grad_u[..., order], grad_w[..., order]
    later = along_path_gradient(grad_u, grad_w)
    if order is not None:
        later = later[..., order_steps(order)]
    return as_dtype(later.sum_to_size(shape), dtype)


def along_path_gradient(grad_exclusive: torch.Tensor, grad_inclusive: torch.Tensor) -> torch.Tensor:
    """``d / d log a_m`` along a path (last dim, in path order) from the gradients of the exclusive and inclusive
    running sums: step ``m`` is in the exclusive sum of every later step and in the inclusive sum of itself and
    every later step."""
    return (grad_exclusive + grad_inclusive).flip(-1).cumsum(-1).flip(-1) - grad_exclusive


# ---------------------------------------------------------------------------------------- the entry point


def unsupported(q, k, v, log_decays, orders, *, chunk_size, normalize, eps, key_padding_mask, dropout_p) -> str | None:
    """Why the kernels cannot run these inputs (``lion_attention``'s dispatch), or ``None``."""
    device = q.device.type
    if device != "cuda" and not (device == "cpu" and is_interpreted()):
        return f"{device} tensors (the kernels run on CUDA, or on the CPU through TRITON_INTERPRET=1)"
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"dtype {q.dtype} (the kernels take bfloat16, float16 and float32)"
    if q.numel() == 0 or v.numel() == 0:
        return f"empty inputs (q {tuple(q.shape)}, v {tuple(v.shape)})"
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


def parallel_attention(
    q, k, v, log_decays, orders, *, feature_map, scale, chunk_size, normalize, eps, key_padding_mask, dropout_p
):
    """The parallel form through the fused kernels (``AttentionImplementation.run`` of ``lion_attention``, which
    leaves the feature map and the scale to it)."""
    seed = None
    if dropout_p > 0.0:
        # Drawn from torch's generator: torch.manual_seed reproduces the dropout, and recomputation under
        # activation checkpointing (which restores the generator) draws the same mask.
        seed = torch.randint(0, 2**62, (1,), device=q.device, dtype=torch.int64)
    options = (dropout_p, normalize, eps, scale)
    if torch.compiler.is_compiling():
        # The PyTorch feature map (as feature_maps takes under compile), which inductor fuses with its neighbours.
        q, k = feature_maps(feature_map, q, k)
        terms = _decay_terms(q, log_decays, orders, key_padding_mask)
        return _forward_op(q, k, v, key_padding_mask, *terms, seed, *options)[0]
    return _EagerAttention.apply(
        q, k, v, key_padding_mask, seed, options, feature_map, orders, *(log_decays or ())
    )


def _decay_terms(q, log_decays, orders, spanned):
    """``(positions, distance, u, w, u_lo, w_lo)`` of the paths; absent ones ``None``.

    ``positions``: ``(P, N)`` float32, the step at which each path visits each token (``(P, 0)`` when every path
    visits them in order). LION-D (every path constant along the tokens): ``distance`` ``(P, B or 1, H)``, the
    log-decays. Otherwise ``u``, ``w`` ``(P, B or 1, H, N)``: the exclusive and inclusive running sums along each
    path, in token order; for float32 inputs summed in float64 and split into a float32 high part and a low part
    (``u_lo``, ``w_lo``, outside autograd: the gradient reaches the sums through the high part). The log-decays are
    bounded here as ``bounded_log_decays`` bounds them (``spanned``: see there); where autograd runs, it carries the
    bounds' gradient, else ``bounds_passing`` gives it.
    """
    if log_decays is None:
        return None, None, None, None, None, None
    positions = _positions(orders, q.shape[2], q.device)
    batch = max(ld.shape[0] for ld in log_decays)
    if all(is_constant_along_length(ld) for ld in log_decays):
        values = [ld[..., 0] if ld.shape[0] == batch else ld[..., 0].expand(batch, -1) for ld in log_decays]
        distance = as_dtype(torch.stack(values), torch.float32).clamp(min=MIN_LOG_DECAY)
        return positions, distance, None, None, None, None
    log_decays = bounded_log_decays(log_decays, spanned)
    steps = [None if order is None else order_steps(order) for order in orders]
    exact = q.dtype == torch.float32
    sum_dtype = torch.float64 if exact else torch.float32
    sums = [_segment_sums(ld, order, step, sum_dtype) for ld, order, step in zip(log_decays, orders, steps)]
    u = _stack([s[0].expand(batch, -1, -1) for s in sums], sum_dtype).contiguous()
    w = _stack([s[1].expand(batch, -1, -1) for s in sums], sum_dtype).contiguous()
    if not exact:
        return positions, None, u, w, None, None
    u_hi, w_hi = u.to(torch.float32), w.to(torch.float32)
    with torch.no_grad():
        u_lo, w_lo = (u - u_hi.double()).to(torch.float32), (w - w_hi.double()).to(torch.float32)
    return positions, None, u_hi, w_hi, u_lo, w_lo


def _positions(orders, length: int, device: torch.device) -> torch.Tensor:
    """``(P, N)`` float32: the step at which each path visits each token; ``(P, 0)`` when every path visits them in
    order, each token's step its index, which the kernels take from the indices themselves."""
    if all(order is None for order in orders):
        if torch.compiler.is_compiling():
            return torch.empty(len(orders), 0, device=device)
        return _natural_positions(len(orders), device)
    steps = [
        torch.arange(length, device=device, dtype=torch.float32) if o is None else order_steps(o, torch.float32)
        for o in orders
    ]
    return _stack(steps, torch.float32)


@functools.lru_cache(maxsize=64)
def _natural_positions(paths: int, device: torch.device) -> torch.Tensor:
    """The ``(P, 0)`` positions of paths in token order, made once (every layer and step of a model asks for the
    same); a normal tensor even under inference mode, so that a later training step may save it for its backward."""
    with torch.inference_mode(False):
        return torch.empty(paths, 0, device=device)


def _stack(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The paths stacked along a new first dim (a view for a single path)."""
    if len(tensors) == 1:
        return as_dtype(tensors[0], dtype).unsqueeze(0)
    return as_dtype(torch.stack(tensors), dtype)


def _segment_sums(log_decay, order, step, dtype):
    """Exclusive and inclusive running sums of the log-decays along the path, in token order."""
    log_a = as_dtype(log_decay, dtype)
    along = log_a if order is None else log_a[..., order]
    inclusive = along.cumsum(-1)
    exclusive = inclusive - along
    if step is None:
        return exclusive, inclusive
    return exclusive[..., step], inclusive[..., step]


# Last, and as a module: the feature-map module imports this one's helpers, and either may load first.
from . import lion_triton_features  # noqa: E402
