"""Fused Triton kernels for the ``chunk`` and ``recurrent`` forms of the LION operator.

They compute what ``_chunkwise`` in ``lion_attention.py`` computes, without writing the intra-chunk scores to
memory. Along one path (tokens gathered by its order inside the kernels), with chunks of ``C`` tokens and, per
token, its log-decay ``la``, the chunk-local inclusive running sum ``b`` and the exclusive one ``e = b - la`` (float32),
and ``T`` the sum over a whole chunk:

- intra-chunk: ``M_ij = exp(e_i - e_j)`` (i after j), ``exp(b_j - b_i)`` (i before j), 1 on the diagonal; every
  exponent is <= 0;
- the state entering chunk ``c`` forwards, ``H_f[c] = sum over earlier chunks of (decay between) k~^T v`` with
  ``k~_j = exp(T - e_j) k_j``, and backwards, ``H_b[c]`` with ``k~_j = exp(b_j) k_j``; a query meets them as
  ``exp(e_i) q_i H_f[c] + exp(T - b_i) q_i H_b[c]``.

Kernels (one launch each per path):

- ``_states``: the entering states of every chunk, sequential over runs of chunks, one program per (head,
  block of value columns, direction, run), the state in registers (float32); stored in the inputs' dtype for the
  output kernel, after a first launch has summed each run (two launches for long inputs). Run on (queries, output
  gradients) it gives the states' gradients, which travel the opposite ways.
- ``_output``: parallel over blocks of query rows; masked scores tile by tile, plus the two carried states;
  normalised (the row sums come from the same tiles and from a vector state of the summed keys) and averaged
  over paths (float32 accumulators between the launches of several paths).
- ``_gradients``: parallel over blocks of rows: dq, dk, dv, and per token the row and column sums of
  ``dA * A`` below and above the diagonal, from which PyTorch forms the log-decay gradients with two reverse
  running sums (``_decay_gradient``); for a decay constant along the tokens (LION-D), the block's share of its
  one gradient per head instead.
- ``_recurrent``: inference only, the bidirectional RNN in one launch: a backward sweep over the chunks, then a
  forward sweep, the state in registers; no per-chunk states are stored. The chunk form runs it too for inference
  from ``ON_CHIP_STATES_FROM_LENGTH`` tokens on, where the stored states would raise the memory peak.
- LION-LIT has no mask: every token sees one sum ``K^T V``; ``_total`` forms it (split over the tokens, the parts
  added by PyTorch) and the output and gradient kernels read it in place of the two states.

Numerics: products of bf16 inputs accumulate in float32 (the weighted queries and keys and the states are
rounded to bf16 for the matrix units); float32 inputs use full float32 products (``ieee``). float16 is left to
PyTorch: its range would not hold the states of long sequences once rounded for the matrix units.
LION-D's decay, one value per head, is read as that value: the kernels form its running sums and chunk totals
from it (no padded copy, no running sums in PyTorch, forward or backward). Log-decays are clamped at -60 (a decay
under 1e-26, indistinguishable from 0 next to the diagonal's 1), which keeps differences of running sums finite.

Calls: the forward and backward are ``torch.library`` operators, which ``torch.compile`` keeps in its graph; eager
calls take an ``autograd.Function`` around the same launches (``_EagerChunkAttention``), which also bounds the
log-decays, gathers them along the paths and gives their gradients itself (less host time per layer).

Memory: the forward pass keeps only its output and (normalised) one float32 row sum per token for the backward
pass, which forms the states again. The states themselves take ``2 * N / C * D * Dv`` entries per head and path.

Supported: CUDA tensors (CPU tensors while ``TRITON_INTERPRET=1``, if it was also set when Triton and this module
were imported: the interpreter the tests use), float32 and bfloat16, head and value dims up to 128, chunk sizes
16, 32, 64, 128, 256, any length, any number of paths and orders, key padding. ``unsupported`` says why
otherwise, and the dispatch then takes the PyTorch forms.
"""

from __future__ import annotations

import os

import torch

from .lion_attention import as_dtype, bounded_log_decays, bounds_passing, is_constant_along_length, order_steps

try:
    import triton
    import triton.language as tl

    from .lion_triton import (
        MAX_BATCH_HEADS,
        _constant_gradient,
        along_path_gradient,
        cdiv,
        launch,
        next_power_of_2,
        op_prefix,
    )
except ImportError:  # a checkpoint must load without Triton; unsupported() then names the reason
    triton = tl = None

# Decided when the kernels are defined: Triton builds interpreter or GPU versions of them at that point.
_INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"
CHUNK_SIZES = (16, 32, 64, 128, 256)
MAX_HEAD_DIM = 128
_MIN_LOG_DECAY = -60.0
_DTYPES = (torch.float32, torch.bfloat16)
_ROWS = 64  # rows of one tile: chunks larger than this are walked in sub-blocks of it
# Launch settings from sweeps on one H200 (forward + backward, B 4, H 12, D 64, bf16; tests/gpu/time_kernels.py
# --chunk-sweep, benchmarks/NOTES.md sessions 8 and 9): 4 warps for the output and gradient tiles (8 before: -0.54
# and -1.36 ms of LION-D's 5.29 at 16k tokens; 2 warps made the gradients five times slower); each sweep of
# _states split into runs of at least _MIN_RUN_CHUNKS chunks until about _STATE_PROGRAMS programs run, each
# carrying up to 64 value columns (with runs, never slower than 32). One program per sweep spent ~1.9 us per chunk,
# far from the memory's speed: with the runs and the states in bf16, _states took 1.12 ms per call at 16k tokens
# against 1.46 (`time_kernels.py --profile 16384`) and 2.86 ms per BERT-base MLM step at seq 8192 x 2 against 5.38
# (`python -m benchmarks.profile_step --task long_mlm`).
_MIN_RUN_CHUNKS = 16
_STATE_PROGRAMS = 1024
_TILE_WARPS = 4


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


# ----------------------------------------------------------------------------------------------- kernels


@_jit
def _rows(ORDER, KPM, batch, length, steps, HAS_ORDER: tl.constexpr, HAS_KPM: tl.constexpr):
    """Tokens at path ``steps`` (real ones: ``valid``), and whether their keys count (``real``)."""
    valid = steps < length
    if HAS_ORDER:
        tokens = tl.load(ORDER + steps, mask=valid, other=0)
    else:
        tokens = steps
    real = valid
    if HAS_KPM:
        real = valid & (tl.load(KPM + batch * length + tokens, mask=valid, other=0) != 0)
    return tokens, valid, real


@_jit
def _load_rows(base, tokens, row_mask, cols, n_cols, stride):
    mask = row_mask[:, None] & (cols[None, :] < n_cols)
    return tl.load(base + tokens[:, None] * stride + cols[None, :], mask=mask, other=0.0)


@_jit
def _decay_base(batch, bh, heads, decay_batch, padded, CONSTANT: tl.constexpr):
    """Where one head's log-decays start: ``padded`` per head, one number per head for ``CONSTANT`` (LION-D)."""
    base = batch * decay_batch * heads + bh % heads
    if not CONSTANT:
        base = base * padded
    return base


@_jit
def _sums(CB, LA, decay_base, steps, valid, C: tl.constexpr, CONSTANT: tl.constexpr):
    """Chunk-local inclusive (``b``) and exclusive (``e``) running sums of the log-decays (0 past the end). A
    ``CONSTANT`` decay (one per head, LION-D) forms them from its value: ``b = la * (place in the chunk + 1)``."""
    if CONSTANT:
        la = tl.load(LA + decay_base)
        b = tl.where(valid, la * (steps % C + 1).to(tl.float32), 0.0)
        e = tl.where(valid, b - la, 0.0)
    else:
        b = tl.load(CB + decay_base + steps, mask=valid, other=0.0)
        e = b - tl.load(LA + decay_base + steps, mask=valid, other=0.0)
    return b, e


@_jit
def _chunk_total(CB, LA, decay_base, c, length, C: tl.constexpr, CONSTANT: tl.constexpr):
    """The sum of the log-decays of chunk ``c``'s real steps."""
    if CONSTANT:
        total = tl.load(LA + decay_base) * tl.minimum(length - c * C, C).to(tl.float32)
    else:
        total = tl.load(CB + decay_base + (c + 1) * C - 1)
    return total


@_jit
def _intra_mask(i, j, e_i, b_i, e_j, b_j):
    later = i[:, None] > j[None, :]
    earlier = i[:, None] < j[None, :]
    forward = tl.exp(tl.minimum(e_i[:, None] - e_j[None, :], 0.0))
    backward = tl.exp(tl.minimum(b_j[None, :] - b_i[:, None], 0.0))
    return tl.where(later, forward, tl.where(earlier, backward, 1.0))


@_jit
def _load_state(STATES, VEC, slot, x_dim, y_dim, offs_d, offs_v, BD: tl.constexpr, HAS_VEC: tl.constexpr):
    """State ``slot`` of a float32 ``(slots, x_dim, y_dim)`` array, and its vector state (zeros without one)."""
    mask = (offs_d[:, None] < x_dim) & (offs_v[None, :] < y_dim)
    state = tl.load(STATES + slot * x_dim * y_dim + offs_d[:, None] * y_dim + offs_v[None, :], mask=mask, other=0.0)
    vec = tl.zeros((BD,), dtype=tl.float32)
    if HAS_VEC:
        vec = tl.load(VEC + slot * x_dim + offs_d, mask=offs_d < x_dim, other=0.0)
    return state, vec


@_jit
def _meet(q, weight, state, vec, HAS_VEC: tl.constexpr, PRECISION: tl.constexpr):
    """``(w q) H`` and ``(w q) . z``: what a state and its vector state bring the rows ``q`` meeting them."""
    qw = (q.to(tl.float32) * weight[:, None]).to(q.dtype)
    out = tl.dot(qw, state.to(q.dtype), input_precision=PRECISION)
    den = tl.zeros_like(weight)
    if HAS_VEC:
        den = tl.sum(qw.to(tl.float32) * vec[None, :], 1)
    return out, den


@_jit
def _enter(x, y, weight, column, PRECISION: tl.constexpr):
    """What rows ``x`` with values ``y`` (and one more value column ``column``) add to a state and its vector
    state: ``sum_j w_j x_j y_j^T`` and ``sum_j w_j x_j column_j``."""
    xw = (x.to(tl.float32) * weight[:, None]).to(x.dtype)
    return tl.dot(tl.trans(xw), y, input_precision=PRECISION), tl.sum(xw.to(tl.float32) * column[:, None], 0)


@_jit
def _entering_rows(x_base, y_base, EXTRA, RS, tokens, valid, real, offs_d, offs_v, x_dim, y_dim, BT: tl.constexpr,
                   HAS_RS: tl.constexpr, EXTRA_MODE: tl.constexpr):  # fmt: skip
    """Rows ``x`` and values ``y`` (scaled by ``RS``) about to enter a state, and its extra value column: ones
    (``EXTRA_MODE`` 1, the normaliser of the forward pass) or ``EXTRA`` (2, the normaliser's gradient)."""
    x = _load_rows(x_base, tokens, real, offs_d, x_dim, x_dim)
    y = _load_rows(y_base, tokens, real, offs_v, y_dim, y_dim)
    if HAS_RS:
        rs = tl.load(RS + tokens, mask=valid, other=0.0)
        y = (y.to(tl.float32) * rs[:, None]).to(y.dtype)
    column = tl.full((BT,), 1.0, tl.float32)
    if EXTRA_MODE == 2:
        column = tl.load(EXTRA + tokens, mask=valid, other=0.0)
    return x, y, column


@_jit
def _intra(q, steps_i, e_i, b_i, c, k_base, v_base, CB, LA, ORDER, KPM, batch, length, decay_base, dim, value_dim,
           offs_d, offs_v, C: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, HAS_ORDER: tl.constexpr,
           HAS_KPM: tl.constexpr, CONSTANT: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Rows ``q`` against the tokens of their own chunk ``c``: ``(q k^T * M) v`` and the row sums of the tiles."""
    acc = tl.zeros((BT, BV), dtype=tl.float32)
    den = tl.zeros((BT,), dtype=tl.float32)
    for sub in range(C // BT):
        steps_j = c * C + sub * BT + tl.arange(0, BT)
        tokens_j, valid_j, real_j = _rows(ORDER, KPM, batch, length, steps_j, HAS_ORDER, HAS_KPM)
        k = _load_rows(k_base, tokens_j, real_j, offs_d, dim, dim)
        v = _load_rows(v_base, tokens_j, real_j, offs_v, value_dim, value_dim)
        b_j, e_j = _sums(CB, LA, decay_base, steps_j, valid_j, C, CONSTANT)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        scores = scores * _intra_mask(steps_i, steps_j, e_i, b_i, e_j, b_j)
        den += tl.sum(scores, 1)
        acc += tl.dot(scores.to(v.dtype), v, input_precision=PRECISION)
    return acc, den


@_jit
def _states(
    X, Y, EXTRA, RS, CB, LA, ORDER, KPM, STATES, VEC, ENDS, END_VEC, END_LOG,
    heads, length, chunks, x_dim, y_dim, decay_batch, runs, per_run,
    C: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    KEY_SIDE: tl.constexpr, HAS_ORDER: tl.constexpr, HAS_KPM: tl.constexpr, HAS_RS: tl.constexpr,
    EXTRA_MODE: tl.constexpr, STORE_ALL: tl.constexpr, CONSTANT: tl.constexpr, PRECISION: tl.constexpr,
):
    """The state entering every chunk, in direction 0 (from earlier chunks) and 1 (from later ones).

    ``sum_j w_j x_j y_j^T`` over the tokens of the chunks passed, decayed by the chunks between: keys and values
    (``KEY_SIDE``) give the forward pass's states, queries and output gradients (scaled per row by ``RS``) their
    gradients. ``EXTRA_MODE``: 0 none, 1 a ones column, 2 the column ``EXTRA``: its state is the vector ``VEC``.

    Each sweep is split into ``runs`` of ``per_run`` chunks (numbered in the sweep's order), one
    program each. Without ``STORE_ALL`` a program only sums its run from a zero state and stores the result
    (``ENDS``, ``END_VEC``) and the run's summed log-decay (``END_LOG``); with it, a program starts from the state
    that those of the earlier runs add up to and stores the state entering each of its chunks.
    """
    block_v = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    direction = tl.program_id(2) % 2
    run = tl.program_id(2) // 2
    batch = bh // heads
    padded = chunks * C
    decay_base = _decay_base(batch, bh, heads, decay_batch, padded, CONSTANT)
    x_base = X + bh * length * x_dim
    y_base = Y + bh * length * y_dim
    offs_d = tl.arange(0, BD)
    offs_v = block_v * BV + tl.arange(0, BV)
    ends = (bh * 2 + direction) * (runs - 1)
    state = tl.zeros((BD, BV), dtype=tl.float32)
    vec = tl.zeros((BD,), dtype=tl.float32)
    log_sum = tl.zeros((1,), dtype=tl.float32)
    store_mask = (offs_d[:, None] < x_dim) & (offs_v[None, :] < y_dim)
    if STORE_ALL:
        for earlier in range(run):
            end, end_vec = _load_state(ENDS, END_VEC, ends + earlier, x_dim, y_dim, offs_d, offs_v, BD,
                                       EXTRA_MODE != 0)  # fmt: skip
            decay = tl.exp(tl.load(END_LOG + ends + earlier))
            state = state * decay + end
            vec = vec * decay + end_vec
    for it in range(run * per_run, tl.minimum(run * per_run + per_run, chunks)):
        c = tl.where(direction == 0, it, chunks - 1 - it)
        if STORE_ALL:
            slot = (bh * 2 + direction) * chunks + c
            tl.store(STATES + slot * x_dim * y_dim + offs_d[:, None] * y_dim + offs_v[None, :], state, mask=store_mask)
            if EXTRA_MODE != 0:
                if block_v == 0:
                    tl.store(VEC + slot * x_dim + offs_d, vec, mask=offs_d < x_dim)
        total = _chunk_total(CB, LA, decay_base, c, length, C, CONSTANT)
        update = tl.zeros((BD, BV), dtype=tl.float32)
        vec_update = tl.zeros((BD,), dtype=tl.float32)
        for sub in range(C // BT):
            steps = c * C + sub * BT + tl.arange(0, BT)
            tokens, valid, real = _rows(ORDER, KPM, batch, length, steps, HAS_ORDER, HAS_KPM)
            x, y, column = _entering_rows(x_base, y_base, EXTRA + bh * length, RS + bh * length, tokens, valid, real,
                                          offs_d, offs_v, x_dim, y_dim, BT, HAS_RS, EXTRA_MODE)  # fmt: skip
            b, e = _sums(CB, LA, decay_base, steps, valid, C, CONSTANT)
            if KEY_SIDE:
                w = tl.where(direction == 0, tl.exp(total - e), tl.exp(b))
            else:
                w = tl.where(direction == 0, tl.exp(total - b), tl.exp(e))
            part, vec_part = _enter(x, y, w, column, PRECISION)
            update += part
            vec_update += vec_part
        decay = tl.exp(total)
        state = state * decay + update
        vec = vec * decay + vec_update
        if not STORE_ALL:
            log_sum += total
    if not STORE_ALL:
        slot = ends + run
        tl.store(ENDS + slot * x_dim * y_dim + offs_d[:, None] * y_dim + offs_v[None, :], state, mask=store_mask)
        if block_v == 0:
            tl.store(END_LOG + slot + tl.arange(0, 1), log_sum)
            if EXTRA_MODE != 0:
                tl.store(END_VEC + slot * x_dim + offs_d, vec, mask=offs_d < x_dim)


@_jit
def _total(
    X, Y, EXTRA, RS, KPM, TOTAL, VEC,
    heads, length, x_dim, y_dim, per_split,
    BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    HAS_KPM: tl.constexpr, HAS_RS: tl.constexpr, EXTRA_MODE: tl.constexpr, PRECISION: tl.constexpr,
):
    """No decay (LION-LIT): ``sum_j x_j y_j^T`` over the tokens of one split, one float32 part per split."""
    block_v = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    splits = tl.num_programs(2)
    batch = bh // heads
    x_base = X + bh * length * x_dim
    y_base = Y + bh * length * y_dim
    offs_d = tl.arange(0, BD)
    offs_v = block_v * BV + tl.arange(0, BV)
    part = tl.zeros((BD, BV), dtype=tl.float32)
    vec = tl.zeros((BD,), dtype=tl.float32)
    ones = tl.full((BT,), 1.0, tl.float32)
    for block in range(per_split):
        steps = (split * per_split + block) * BT + tl.arange(0, BT)
        tokens, valid, real = _rows(KPM, KPM, batch, length, steps, False, HAS_KPM)
        x, y, column = _entering_rows(x_base, y_base, EXTRA + bh * length, RS + bh * length, tokens, valid, real,
                                      offs_d, offs_v, x_dim, y_dim, BT, HAS_RS, EXTRA_MODE)  # fmt: skip
        matrix, vector = _enter(x, y, ones, column, PRECISION)
        part += matrix
        vec += vector
    slot = bh * splits + split
    mask = (offs_d[:, None] < x_dim) & (offs_v[None, :] < y_dim)
    tl.store(TOTAL + slot * x_dim * y_dim + offs_d[:, None] * y_dim + offs_v[None, :], part, mask=mask)
    if EXTRA_MODE != 0:
        if block_v == 0:
            tl.store(VEC + slot * x_dim + offs_d, vec, mask=offs_d < x_dim)


@_jit
def _output(
    Q, K, V, CB, LA, ORDER, KPM, STATES, VEC, OUT, ACC, DEN, MEAN_DEN,
    heads, length, chunks, dim, value_dim, decay_batch, paths, eps,
    C: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, HAS_ORDER: tl.constexpr, HAS_KPM: tl.constexpr, NORMALIZE: tl.constexpr,
    FIRST: tl.constexpr, LAST: tl.constexpr, CONSTANT: tl.constexpr, PRECISION: tl.constexpr,
):
    """One path's contribution to one block of query rows; the last path normalises and writes the output.

    ``ACC``/``DEN`` carry the numerator and the row sums between the paths' launches (float32); ``MEAN_DEN``
    keeps the final row sums (mean over paths) for the backward pass.
    """
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    batch = bh // heads
    padded = chunks * C
    c = (block * BT) // C
    offs_d = tl.arange(0, BD)
    offs_v = tl.arange(0, BV)
    steps_i = block * BT + tl.arange(0, BT)
    tokens_i, valid_i, _ = _rows(ORDER, KPM, batch, length, steps_i, HAS_ORDER, False)
    q = _load_rows(Q + bh * length * dim, tokens_i, valid_i, offs_d, dim, dim)
    if HAS_DECAY:
        decay_base = _decay_base(batch, bh, heads, decay_batch, padded, CONSTANT)
        b_i, e_i = _sums(CB, LA, decay_base, steps_i, valid_i, C, CONSTANT)
        acc, den = _intra(q, steps_i, e_i, b_i, c, K + bh * length * dim, V + bh * length * value_dim, CB, LA,
                          ORDER, KPM, batch, length, decay_base, dim, value_dim, offs_d, offs_v,
                          C, BT, BV, HAS_ORDER, HAS_KPM, CONSTANT, PRECISION)  # fmt: skip
        total = _chunk_total(CB, LA, decay_base, c, length, C, CONSTANT)
        # The forward state (slot 0) meets a query decayed from its chunk's start, the backward one from its end.
        for slot_dir in tl.static_range(2):
            if slot_dir == 0:
                weight = tl.exp(e_i)
            else:
                weight = tl.exp(total - b_i)
            state, vec = _load_state(STATES, VEC, (bh * 2 + slot_dir) * chunks + c, dim, value_dim, offs_d, offs_v,
                                     BD, NORMALIZE)  # fmt: skip
            part, part_den = _meet(q, weight, state, vec, NORMALIZE, PRECISION)
            acc += part
            den += part_den
    else:
        state, vec = _load_state(STATES, VEC, bh, dim, value_dim, offs_d, offs_v, BD, NORMALIZE)
        acc, den = _meet(q, tl.full((BT,), 1.0, tl.float32), state, vec, NORMALIZE, PRECISION)
    rows = bh * length + tokens_i
    out_mask = valid_i[:, None] & (offs_v[None, :] < value_dim)
    acc_ptrs = ACC + rows[:, None] * value_dim + offs_v[None, :]
    if not FIRST:
        acc += tl.load(acc_ptrs, mask=out_mask, other=0.0)
        if NORMALIZE:
            den += tl.load(DEN + rows, mask=valid_i, other=0.0)
    if LAST:
        out = acc / paths
        if NORMALIZE:
            mean_den = den / paths
            out = out / (mean_den + eps)[:, None]
            tl.store(MEAN_DEN + rows, mean_den, mask=valid_i)
        tl.store(OUT + rows[:, None] * value_dim + offs_v[None, :], out, mask=out_mask)
    else:
        tl.store(acc_ptrs, acc, mask=out_mask)
        if NORMALIZE:
            tl.store(DEN + rows, den, mask=valid_i)


@_jit
def _state_gradient(rows_x, rows_y, g0, weight, state, vec, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr):
    """``w (y H^T + g0 z)``: what a state ``H`` (vector state ``z``) sends back to the rows ``x`` that met it,
    and ``x . grad``: the sum over the row of ``dA * A`` for the entries the state stands for."""
    grad = tl.dot(rows_y, tl.trans(state.to(rows_y.dtype)), input_precision=PRECISION)
    if NORMALIZE:
        grad += g0[:, None] * vec[None, :]
    grad = grad * weight[:, None]
    return grad, tl.sum(rows_x.to(tl.float32) * grad, 1)


@_jit
def _gradient_rows(steps, q_base, k_base, v_base, g_base, RS, DD, ORDER, KPM, batch, length, dim, value_dim, offs_d,
                   offs_v, BT: tl.constexpr, HAS_ORDER: tl.constexpr, HAS_KPM: tl.constexpr,
                   NORMALIZE: tl.constexpr):  # fmt: skip
    """A block of rows as the gradient kernel reads them: q, k, v (padded keys zero), ``g = RS * G`` and ``g0``."""
    tokens, valid, real = _rows(ORDER, KPM, batch, length, steps, HAS_ORDER, HAS_KPM)
    q = _load_rows(q_base, tokens, valid, offs_d, dim, dim)
    k = _load_rows(k_base, tokens, real, offs_d, dim, dim)
    v = _load_rows(v_base, tokens, real, offs_v, value_dim, value_dim)
    rs = tl.load(RS + tokens, mask=valid, other=0.0)
    g = (_load_rows(g_base, tokens, valid, offs_v, value_dim, value_dim).to(tl.float32) * rs[:, None]).to(v.dtype)
    g0 = tl.zeros((BT,), dtype=tl.float32)
    if NORMALIZE:
        g0 = tl.load(DD + tokens, mask=valid, other=0.0)
    return tokens, valid, real, q, k, v, g, g0


@_jit
def _gradients(
    Q, K, V, G, RS, DD, CB, LA, ORDER, KPM, STATES, VEC, GSTATES, GVEC,
    DQ, DK, DV, DQ_ACC, DK_ACC, DV_ACC, DE, DB,
    heads, length, chunks, dim, value_dim, decay_batch,
    C: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, HAS_ORDER: tl.constexpr, HAS_KPM: tl.constexpr, NORMALIZE: tl.constexpr,
    FIRST: tl.constexpr, LAST: tl.constexpr, CONSTANT: tl.constexpr, PRECISION: tl.constexpr,
):
    """One path's dq (rows as queries), dk and dv (rows as keys) of one block of rows, and with decays the
    per-token sums of ``P = dA * A`` that give the log-decay gradients: ``DE = sum_(j<i) P_ij - sum_(i>j) P_ij``
    (row i, column i) and ``DB = sum_(i<j) P_ij - sum_(j>i) P_ij``.

    ``dA_ij = g_i . v_j + g0_i`` with ``g = RS * G`` (the gradient of this path's numerator) and ``g0 = DD`` (of its
    row sums, with ``NORMALIZE``).
    """
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    batch = bh // heads
    padded = chunks * C
    c = (block * BT) // C
    offs_d = tl.arange(0, BD)
    offs_v = tl.arange(0, BV)
    q_base = Q + bh * length * dim
    k_base = K + bh * length * dim
    v_base = V + bh * length * value_dim
    g_base = G + bh * length * value_dim
    ones = tl.full((BT,), 1.0, tl.float32)
    steps_t = block * BT + tl.arange(0, BT)
    tokens_t, valid_t, real_t, q_t, k_t, v_t, g_t, g0_t = _gradient_rows(
        steps_t, q_base, k_base, v_base, g_base, RS + bh * length, DD + bh * length, ORDER, KPM, batch, length,
        dim, value_dim, offs_d, offs_v, BT, HAS_ORDER, HAS_KPM, NORMALIZE,
    )
    if HAS_DECAY:
        decay_base = _decay_base(batch, bh, heads, decay_batch, padded, CONSTANT)
        b_t, e_t = _sums(CB, LA, decay_base, steps_t, valid_t, C, CONSTANT)
        total = _chunk_total(CB, LA, decay_base, c, length, C, CONSTANT)
        dq = tl.zeros((BT, BD), dtype=tl.float32)
        dk = tl.zeros((BT, BD), dtype=tl.float32)
        dv = tl.zeros((BT, BV), dtype=tl.float32)
        row_before = tl.zeros((BT,), dtype=tl.float32)  # sum_(j<i) P_ij, i in this block
        row_after = tl.zeros((BT,), dtype=tl.float32)  # sum_(j>i) P_ij
        col_after = tl.zeros((BT,), dtype=tl.float32)  # sum_(i>j) P_ij, j in this block
        col_before = tl.zeros((BT,), dtype=tl.float32)  # sum_(i<j) P_ij
        for sub in range(C // BT):
            steps_u = c * C + sub * BT + tl.arange(0, BT)
            tokens_u, valid_u, real_u, q_u, k_u, v_u, g_u, g0_u = _gradient_rows(
                steps_u, q_base, k_base, v_base, g_base, RS + bh * length, DD + bh * length, ORDER, KPM, batch,
                length, dim, value_dim, offs_d, offs_v, BT, HAS_ORDER, HAS_KPM, NORMALIZE,
            )
            b_u, e_u = _sums(CB, LA, decay_base, steps_u, valid_u, C, CONSTANT)
            # This block's rows as queries, block u's as keys.
            mask = _intra_mask(steps_t, steps_u, e_t, b_t, e_u, b_u)
            scores = tl.dot(q_t, tl.trans(k_u), input_precision=PRECISION)
            grad_scores = (tl.dot(g_t, tl.trans(v_u), input_precision=PRECISION) + g0_t[:, None]) * mask
            dq += tl.dot(grad_scores.to(k_u.dtype), k_u, input_precision=PRECISION)
            p = grad_scores * scores
            row_before += tl.sum(tl.where(steps_t[:, None] > steps_u[None, :], p, 0.0), 1)
            row_after += tl.sum(tl.where(steps_t[:, None] < steps_u[None, :], p, 0.0), 1)
            # Block u's rows as queries, this block's as keys.
            mask = _intra_mask(steps_u, steps_t, e_u, b_u, e_t, b_t)
            scores = tl.dot(q_u, tl.trans(k_t), input_precision=PRECISION)
            grad_scores = (tl.dot(g_u, tl.trans(v_t), input_precision=PRECISION) + g0_u[:, None]) * mask
            dk += tl.dot(tl.trans(grad_scores.to(q_u.dtype)), q_u, input_precision=PRECISION)
            dv += tl.dot(tl.trans((scores * mask).to(g_u.dtype)), g_u, input_precision=PRECISION)
            p = grad_scores * scores
            col_after += tl.sum(tl.where(steps_u[:, None] > steps_t[None, :], p, 0.0), 0)
            col_before += tl.sum(tl.where(steps_u[:, None] < steps_t[None, :], p, 0.0), 0)
        for slot_dir in tl.static_range(2):
            slot = (bh * 2 + slot_dir) * chunks + c
            # Queries met the forward state (slot 0, weight exp(e)) and the backward one (slot 1, exp(T - b)) ...
            if slot_dir == 0:
                weight = tl.exp(e_t)
            else:
                weight = tl.exp(total - b_t)
            state, vec = _load_state(STATES, VEC, slot, dim, value_dim, offs_d, offs_v, BD, NORMALIZE)
            grad, sums = _state_gradient(q_t, g_t, g0_t, weight, state, vec, NORMALIZE, PRECISION)
            dq += grad
            # ... and keys entered the states whose gradients come from earlier queries (gradient slot 0, through
            # the backward state, weight exp(b)) and from later ones (slot 1, the forward state, exp(T - e)).
            if slot_dir == 0:
                row_before += sums
                weight = tl.exp(b_t)
            else:
                row_after += sums
                weight = tl.exp(total - e_t)
            state, vec = _load_state(GSTATES, GVEC, slot, dim, value_dim, offs_d, offs_v, BD, NORMALIZE)
            grad, sums = _state_gradient(k_t, v_t, ones, weight, state, vec, NORMALIZE, PRECISION)
            dk += grad
            dv += _meet(k_t, weight, state, vec, False, PRECISION)[0]
            if slot_dir == 0:
                col_before += sums
            else:
                col_after += sums
        d_exclusive = tl.where(valid_t, row_before - col_after, 0.0)
        d_inclusive = tl.where(valid_t, col_before - row_after, 0.0)
        if CONSTANT:
            # d la = sum_t t DE_t + (t + 1) DB_t (t: the step along the path), as this block's share, the steps
            # counted from the block's first so that the products stay small (DE and DB sum to 0 over a path).
            first = block * BT
            local = (steps_t - first).to(tl.float32)
            share = tl.sum(local * d_exclusive + (local + 1.0) * d_inclusive, 0)
            share += first.to(tl.float32) * tl.sum(d_exclusive + d_inclusive, 0)
            tl.store(DE + bh * tl.num_programs(0) + block + tl.arange(0, 1), tl.zeros((1,), tl.float32) + share)
        else:
            tl.store(DE + bh * padded + steps_t, d_exclusive, mask=valid_t)
            tl.store(DB + bh * padded + steps_t, d_inclusive, mask=valid_t)
    else:
        state, vec = _load_state(STATES, VEC, bh, dim, value_dim, offs_d, offs_v, BD, NORMALIZE)
        dq, _ = _state_gradient(q_t, g_t, g0_t, ones, state, vec, NORMALIZE, PRECISION)
        state, vec = _load_state(GSTATES, GVEC, bh, dim, value_dim, offs_d, offs_v, BD, NORMALIZE)
        dk, _ = _state_gradient(k_t, v_t, ones, ones, state, vec, NORMALIZE, PRECISION)
        dv = _meet(k_t, ones, state, vec, False, PRECISION)[0]
    # Padded keys were selected away: nothing flows back to them.
    dk = tl.where(real_t[:, None], dk, 0.0)
    dv = tl.where(real_t[:, None], dv, 0.0)
    rows = bh * length + tokens_t
    d_mask = valid_t[:, None] & (offs_d[None, :] < dim)
    v_mask = valid_t[:, None] & (offs_v[None, :] < value_dim)
    dq_acc = DQ_ACC + rows[:, None] * dim + offs_d[None, :]
    dk_acc = DK_ACC + rows[:, None] * dim + offs_d[None, :]
    dv_acc = DV_ACC + rows[:, None] * value_dim + offs_v[None, :]
    if not FIRST:
        dq += tl.load(dq_acc, mask=d_mask, other=0.0)
        dk += tl.load(dk_acc, mask=d_mask, other=0.0)
        dv += tl.load(dv_acc, mask=v_mask, other=0.0)
    if LAST:
        tl.store(DQ + rows[:, None] * dim + offs_d[None, :], dq, mask=d_mask)
        tl.store(DK + rows[:, None] * dim + offs_d[None, :], dk, mask=d_mask)
        tl.store(DV + rows[:, None] * value_dim + offs_v[None, :], dv, mask=v_mask)
    else:
        tl.store(dq_acc, dq, mask=d_mask)
        tl.store(dk_acc, dk, mask=d_mask)
        tl.store(dv_acc, dv, mask=v_mask)


@_jit
def _row_dot(A, B, MEAN, RS, OUT, n_rows, n_cols, eps, paths, BR: tl.constexpr, BC: tl.constexpr):
    """``RS = 1 / (paths * (MEAN + eps))``, the factor of a normalised output's gradient for each path's
    numerator, and ``OUT = -RS * rowsum(A * B)``, that of its row sums, in float32 (one launch for both)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.arange(0, BC)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    a = tl.load(A + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + rows, mask=rows < n_rows, other=1.0)
    scale = 1.0 / (paths * (mean + eps))
    tl.store(RS + rows, scale, mask=rows < n_rows)
    tl.store(OUT + rows, -scale * tl.sum(a * b, 1), mask=rows < n_rows)


@_jit
def _recurrent(
    Q, K, V, CB, LA, ORDER, KPM, OUT, ACC, DEN,
    heads, length, chunks, dim, value_dim, decay_batch, paths, eps,
    C: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    HAS_ORDER: tl.constexpr, HAS_KPM: tl.constexpr, NORMALIZE: tl.constexpr,
    FIRST: tl.constexpr, LAST: tl.constexpr, CONSTANT: tl.constexpr, PRECISION: tl.constexpr,
):
    """The bidirectional RNN over chunks for one head and block of value columns, its state in registers.

    Sweep 1 (last chunk to first) leaves every token what the backward state brings it in ``ACC`` (the output
    itself for a single path) and ``DEN``; sweep 2 (first to last) adds the chunk's own tokens and the forward
    state, and the last path normalises. The state a token meets is the one entering its chunk, so each chunk
    is read before the state takes it in.
    """
    block_v = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    batch = bh // heads
    padded = chunks * C
    decay_base = _decay_base(batch, bh, heads, decay_batch, padded, CONSTANT)
    q_base = Q + bh * length * dim
    k_base = K + bh * length * dim
    v_base = V + bh * length * value_dim
    den_base = DEN + (block_v * tl.num_programs(1) + bh) * length
    offs_d = tl.arange(0, BD)
    offs_v = block_v * BV + tl.arange(0, BV)
    ones = tl.full((BT,), 1.0, tl.float32)
    for sweep in tl.static_range(2):
        state = tl.zeros((BD, BV), dtype=tl.float32)
        vec = tl.zeros((BD,), dtype=tl.float32)
        for it in range(chunks):
            c = chunks - 1 - it if sweep == 0 else it
            total = _chunk_total(CB, LA, decay_base, c, length, C, CONSTANT)
            update = tl.zeros((BD, BV), dtype=tl.float32)
            vec_update = tl.zeros((BD,), dtype=tl.float32)
            for sub in range(C // BT):
                steps = c * C + sub * BT + tl.arange(0, BT)
                tokens, valid, real = _rows(ORDER, KPM, batch, length, steps, HAS_ORDER, HAS_KPM)
                q = _load_rows(q_base, tokens, valid, offs_d, dim, dim)
                b, e = _sums(CB, LA, decay_base, steps, valid, C, CONSTANT)
                rows = bh * length + tokens
                out_mask = valid[:, None] & (offs_v[None, :] < value_dim)
                acc_ptrs = ACC + rows[:, None] * value_dim + offs_v[None, :]
                if sweep == 0:
                    acc, den = _meet(q, tl.exp(total - b), state, vec, NORMALIZE, PRECISION)
                    if not FIRST:
                        acc += tl.load(acc_ptrs, mask=out_mask, other=0.0)
                        if NORMALIZE:
                            den += tl.load(den_base + tokens, mask=valid, other=0.0)
                    tl.store(acc_ptrs, acc, mask=out_mask)
                    if NORMALIZE:
                        tl.store(den_base + tokens, den, mask=valid)
                    entering = tl.exp(b)
                else:
                    acc, den = _intra(q, steps, e, b, c, k_base, v_base, CB, LA, ORDER, KPM, batch, length,
                                      decay_base, dim, value_dim, offs_d, offs_v, C, BT, BV, HAS_ORDER, HAS_KPM,
                                      CONSTANT, PRECISION)  # fmt: skip
                    part, part_den = _meet(q, tl.exp(e), state, vec, NORMALIZE, PRECISION)
                    acc += part + tl.load(acc_ptrs, mask=out_mask, other=0.0).to(tl.float32)
                    den += part_den
                    if NORMALIZE:
                        den += tl.load(den_base + tokens, mask=valid, other=0.0)
                    if LAST:
                        out = acc / paths
                        if NORMALIZE:
                            out = out / (den / paths + eps)[:, None]
                        tl.store(OUT + rows[:, None] * value_dim + offs_v[None, :], out, mask=out_mask)
                    else:
                        tl.store(acc_ptrs, acc, mask=out_mask)
                        if NORMALIZE:
                            tl.store(den_base + tokens, den, mask=valid)
                    entering = tl.exp(total - e)
                k = _load_rows(k_base, tokens, real, offs_d, dim, dim)
                v = _load_rows(v_base, tokens, real, offs_v, value_dim, value_dim)
                part, vec_part = _enter(k, v, entering, ones, PRECISION)
                update += part
                vec_update += vec_part
            state = state * tl.exp(total) + update
            vec = vec * tl.exp(total) + vec_update
        tl.debug_barrier()  # sweep 2 reads what other threads of this program stored in sweep 1


# ------------------------------------------------------------------------------------------ launches


def _block(dim: int) -> int:
    return max(16, next_power_of_2(dim))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _warps(rows: int) -> int:
    return 8 if rows >= 64 else 4


class _Path:
    """One path's decays as the kernels read them: padded to whole chunks, with chunk-local running sums.
    ``log_decay``: ``(B or 1, H, length)`` float32 in path order, bounded, or ``(B or 1, H, 1)`` for one constant
    along the tokens (LION-D: the kernels form its sums from the value, ``constant``); ``order`` a permutation or
    empty."""

    def __init__(self, log_decay: torch.Tensor, order: torch.Tensor, chunk: int, length: int):
        decay_batch, heads, steps = log_decay.shape
        padded = -(-length // chunk) * chunk
        self.constant = steps == 1
        if self.constant:
            self.log_decay = self.sums = log_decay
        else:
            # Padded steps have decay 1 (log 0): the last entry of every chunk is then its total.
            self.log_decay = torch.nn.functional.pad(log_decay, (0, padded - length))
            self.sums = self.log_decay.view(decay_batch, heads, padded // chunk, chunk).cumsum(-1).view_as(
                self.log_decay
            )
        self.order = order if order.numel() else None
        self.batch_stride = 1 if decay_batch > 1 else 0
        self.chunks = padded // chunk


def _states_of(x, y, path, chunk, *, key_side, kpm, rs, extra, extra_mode):
    """The states entering every chunk, both directions: ``(B*H, 2, chunks, Dx, Dy)`` in ``x``'s dtype (the
    kernels that read them round them to it for their products) and the float32 vector states."""
    batch, heads, length, x_dim = x.shape
    y_dim = y.shape[-1]
    states = x.new_empty(batch * heads, 2, path.chunks, x_dim, y_dim)
    vec = x.new_empty(batch * heads, 2, path.chunks, x_dim, dtype=torch.float32)
    block_v = min(_block(y_dim), 64)
    columns = cdiv(y_dim, block_v)
    runs = max(1, min(path.chunks // _MIN_RUN_CHUNKS, _STATE_PROGRAMS // (columns * batch * heads * 2)))
    per_run = cdiv(path.chunks, runs)
    runs = cdiv(path.chunks, per_run)
    ends = x.new_empty(batch * heads, 2, runs - 1, x_dim, y_dim, dtype=torch.float32)
    end_vec = x.new_empty(batch * heads, 2, runs - 1, x_dim, dtype=torch.float32)
    end_log = x.new_empty(batch * heads, 2, runs - 1, dtype=torch.float32)
    arguments = (
        x, y, extra if extra is not None else x, rs if rs is not None else x, path.sums, path.log_decay,
        path.order if path.order is not None else x, kpm if kpm is not None else x, states, vec, ends, end_vec,
        end_log, heads, length, path.chunks, x_dim, y_dim, path.batch_stride, runs, per_run,
    )  # fmt: skip
    options = dict(
        C=chunk, BT=min(chunk, _ROWS), BD=_block(x_dim), BV=block_v, KEY_SIDE=key_side,
        HAS_ORDER=path.order is not None, HAS_KPM=kpm is not None, HAS_RS=rs is not None, EXTRA_MODE=extra_mode,
        CONSTANT=path.constant, PRECISION=_precision(x.dtype), num_warps=4,
    )  # fmt: skip
    if runs > 1:
        launch(_states, (columns, batch * heads, 2 * (runs - 1)), *arguments, STORE_ALL=False, **options)
    launch(_states, (columns, batch * heads, 2 * runs), *arguments, STORE_ALL=True, **options)
    return states, vec


def _total_of(x, y, *, kpm, rs, extra, extra_mode):
    """LION-LIT's one state ``sum_j x_j y_j^T`` per head ``(B*H, Dx, Dy)`` and its vector state."""
    batch, heads, length, x_dim = x.shape
    y_dim = y.shape[-1]
    rows = _ROWS
    blocks = cdiv(length, rows)
    block_v = min(_block(y_dim), 32)
    columns = cdiv(y_dim, block_v)
    # Enough programs for every multiprocessor a few times over; the parts are summed below.
    per_split = cdiv(blocks, max(1, 512 // (batch * heads * columns)))
    splits = cdiv(blocks, per_split)
    parts = x.new_empty(batch * heads, splits, x_dim, y_dim, dtype=torch.float32)
    vec = x.new_zeros(batch * heads, splits, x_dim, dtype=torch.float32)
    launch(
        _total, (columns, batch * heads, splits),
        x, y, extra if extra is not None else x, rs if rs is not None else x, kpm if kpm is not None else x,
        parts, vec, heads, length, x_dim, y_dim, per_split,
        BT=rows, BD=_block(x_dim), BV=block_v, HAS_KPM=kpm is not None, HAS_RS=rs is not None,
        EXTRA_MODE=extra_mode, PRECISION=_precision(x.dtype), num_warps=4,
    )
    return parts.sum(1), vec.sum(1)


def _forward(q, k, v, paths, kpm, chunk, normalize, eps):
    """The output and (with ``normalize``; else empty) the row sums averaged over ``paths`` (``_Path``s; none
    for LION-LIT), kept for the backward."""
    batch, heads, length, dim = q.shape
    value_dim = v.shape[-1]
    out = torch.empty(batch, heads, length, value_dim, dtype=q.dtype, device=q.device)
    mean_den = q.new_empty((batch, heads, length) if normalize else (0,), dtype=torch.float32)
    rows = min(chunk, _ROWS)
    common = dict(BT=rows, BD=_block(dim), BV=_block(value_dim), HAS_KPM=kpm is not None, NORMALIZE=normalize,
                  PRECISION=_precision(q.dtype), num_warps=_TILE_WARPS)  # fmt: skip
    if not paths:
        total, vec = _total_of(k, v, kpm=kpm, rs=None, extra=None, extra_mode=1 if normalize else 0)
        grid = (cdiv(length, rows), batch * heads)
        launch(
            _output, grid,
            q, k, v, q, q, q, kpm if kpm is not None else q, total, vec, out, out, mean_den, mean_den,
            heads, length, 1, dim, value_dim, 0, 1, eps,
            C=rows, HAS_DECAY=False, HAS_ORDER=False, FIRST=True, LAST=True, CONSTANT=False, **common,
        )
        return out, mean_den
    count = len(paths)
    acc = out if count == 1 else torch.empty(out.shape, dtype=torch.float32, device=q.device)
    den = mean_den if count == 1 or not normalize else torch.empty_like(mean_den)
    for index, path in enumerate(paths):
        order = path.order
        states, vec = _states_of(k, v, path, chunk, key_side=True, kpm=kpm, rs=None, extra=None,
                                 extra_mode=1 if normalize else 0)  # fmt: skip
        launch(
            _output, (path.chunks * chunk // rows, batch * heads),
            q, k, v, path.sums, path.log_decay, order if order is not None else q, kpm if kpm is not None else q,
            states, vec, out, acc, den, mean_den,
            heads, length, path.chunks, dim, value_dim, path.batch_stride, count, eps,
            C=chunk, HAS_DECAY=True, HAS_ORDER=order is not None, FIRST=index == 0, LAST=index == count - 1,
            CONSTANT=path.constant, **common,
        )
    return out, mean_den


def _decay_gradient(d_exclusive, d_inclusive, length, decay_batch):
    """``d log a_t = sum_(x>t) DE_x + sum_(x>=t) DB_x`` along the path (``DE``/``DB``: gradients of the exclusive
    and inclusive running sums of the whole path), summed over a batch the decay is shared across."""
    grad = along_path_gradient(d_exclusive[..., :length].double(), d_inclusive[..., :length].double())
    if decay_batch == 1:
        grad = grad.sum(0, keepdim=True)
    return grad.float()


def _backward(grad, q, k, v, out, mean_den, paths, kpm, chunk, normalize, eps):
    """``dq, dk, dv`` and one gradient of each path's log-decays (as ``_Path`` takes them)."""
    batch, heads, length, dim = q.shape
    value_dim = v.shape[-1]
    grad = grad.contiguous()
    count = max(1, len(paths))
    # The gradient of one path's numerator is grad * rs; with normalize, that of its row sums is dd.
    if normalize:
        rs, dd = torch.empty_like(mean_den), torch.empty_like(mean_den)
        rows = 32
        launch(
            _row_dot, (cdiv(batch * heads * length, rows),),
            grad, out, mean_den, rs, dd, batch * heads * length, value_dim, eps, count, BR=rows,
            BC=_block(value_dim), num_warps=4,
        )  # fmt: skip
    else:
        rs = torch.full((batch, heads, length), 1.0 / count, dtype=torch.float32, device=q.device)
        dd = rs
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    rows = min(chunk, _ROWS)
    common = dict(BT=rows, BD=_block(dim), BV=_block(value_dim), HAS_KPM=kpm is not None, NORMALIZE=normalize,
                  PRECISION=_precision(q.dtype), num_warps=_TILE_WARPS)  # fmt: skip
    extra_mode = 2 if normalize else 0
    if not paths:
        total, vec = _total_of(k, v, kpm=kpm, rs=None, extra=None, extra_mode=1 if normalize else 0)
        gtotal, gvec = _total_of(q, grad, kpm=None, rs=rs, extra=dd, extra_mode=extra_mode)
        launch(
            _gradients, (cdiv(length, rows), batch * heads),
            q, k, v, grad, rs, dd, q, q, q, kpm if kpm is not None else q, total, vec, gtotal, gvec,
            dq, dk, dv, dq, dk, dv, q, q, heads, length, 1, dim, value_dim, 0,
            C=rows, HAS_DECAY=False, HAS_ORDER=False, FIRST=True, LAST=True, CONSTANT=False, **common,
        )
        return dq, dk, dv, []
    if count == 1:
        accumulators = (dq, dk, dv)
    else:
        accumulators = tuple(torch.empty(t.shape, dtype=torch.float32, device=q.device) for t in (dq, dk, dv))
    decay_grads = []
    for index, path in enumerate(paths):
        order = path.order
        states, vec = _states_of(k, v, path, chunk, key_side=True, kpm=kpm, rs=None, extra=None,
                                 extra_mode=1 if normalize else 0)  # fmt: skip
        gstates, gvec = _states_of(q, grad, path, chunk, key_side=False, kpm=None, rs=rs, extra=dd,
                                   extra_mode=extra_mode)  # fmt: skip
        if path.constant:
            # One share of the gradient per block of rows (``_gradients``), none per token.
            d_exclusive = torch.empty(batch, heads, path.chunks * chunk // rows, dtype=torch.float32, device=q.device)
            d_inclusive = d_exclusive
        else:
            d_exclusive = torch.empty(batch, heads, path.chunks * chunk, dtype=torch.float32, device=q.device)
            d_inclusive = torch.empty_like(d_exclusive)
        launch(
            _gradients, (path.chunks * chunk // rows, batch * heads),
            q, k, v, grad, rs, dd, path.sums, path.log_decay, order if order is not None else q,
            kpm if kpm is not None else q, states, vec, gstates, gvec,
            dq, dk, dv, *accumulators, d_exclusive, d_inclusive,
            heads, length, path.chunks, dim, value_dim, path.batch_stride,
            C=chunk, HAS_DECAY=True, HAS_ORDER=order is not None, FIRST=index == 0, LAST=index == count - 1,
            CONSTANT=path.constant, **common,
        )
        if path.constant:
            decay_grads.append(d_exclusive.sum(-1, keepdim=True).sum_to_size(path.log_decay.shape))
        else:
            decay_grads.append(_decay_gradient(d_exclusive, d_inclusive, length, path.log_decay.shape[0]))
    return dq, dk, dv, decay_grads


def _recurrent_forward(q, k, v, paths, kpm, chunk, normalize, eps):
    batch, heads, length, dim = q.shape
    value_dim = v.shape[-1]
    out = torch.empty(batch, heads, length, value_dim, dtype=q.dtype, device=q.device)
    count = len(paths)
    # A single path keeps what sweep 1 leaves each token in the output itself; several add up in float32.
    acc = out if count == 1 else torch.empty(out.shape, dtype=torch.float32, device=q.device)
    block_v = min(_block(value_dim), 64)
    columns = cdiv(value_dim, block_v)
    den = q.new_empty((columns, batch * heads, length) if normalize else (0,), dtype=torch.float32)
    rows = min(chunk, _ROWS)
    for index, path in enumerate(paths):
        order = path.order
        launch(
            _recurrent, (columns, batch * heads),
            q, k, v, path.sums, path.log_decay, order if order is not None else q, kpm if kpm is not None else q,
            out, acc, den, heads, length, path.chunks, dim, value_dim, path.batch_stride, count, eps,
            C=chunk, BT=rows, BD=_block(dim), BV=block_v, HAS_ORDER=order is not None, HAS_KPM=kpm is not None,
            NORMALIZE=normalize, FIRST=index == 0, LAST=index == count - 1, CONSTANT=path.constant,
            PRECISION=_precision(q.dtype), num_warps=_warps(rows),
        )
    return out


# -------------------------------------------------------------------------- custom operators (torch.compile)

# Per copy of this file (a checkpoint's remote code imports its own): see lion_triton.op_prefix.
_OP_PREFIX = op_prefix(__name__) if triton is not None else "lion_hf::unavailable"


@torch.library.custom_op(_OP_PREFIX + "_chunk_attention", mutates_args=())
def _chunk_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decays: list[torch.Tensor],
    orders: list[torch.Tensor], key_padding_mask: torch.Tensor | None, chunk_size: int, normalize: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output and (with ``normalize``; else empty) the row sums averaged over paths, kept for backward."""
    paths = _paths(log_decays, orders, chunk_size, q.shape[2])
    return _forward(q, k, v, paths, _int8(key_padding_mask), chunk_size, normalize, eps)


@_chunk_attention.register_fake
def _(q, k, v, log_decays, orders, key_padding_mask, chunk_size, normalize, eps):
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    return out, q.new_empty(q.shape[:3] if normalize else (0,), dtype=torch.float32)


@torch.library.custom_op(_OP_PREFIX + "_chunk_attention_backward", mutates_args=())
def _chunk_attention_backward(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    mean_den: torch.Tensor, log_decays: list[torch.Tensor], orders: list[torch.Tensor],
    key_padding_mask: torch.Tensor | None, chunk_size: int, normalize: bool, eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    paths = _paths(log_decays, orders, chunk_size, q.shape[2])
    return _backward(grad, q, k, v, out, mean_den, paths, _int8(key_padding_mask), chunk_size, normalize, eps)


@_chunk_attention_backward.register_fake
def _(grad, q, k, v, out, mean_den, log_decays, orders, key_padding_mask, chunk_size, normalize, eps):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), [torch.empty_like(d) for d in log_decays]


def _setup_context(ctx, inputs, output):
    q, k, v, log_decays, orders, key_padding_mask, chunk_size, normalize, eps = inputs
    out, mean_den = output
    ctx.mark_non_differentiable(mean_den)
    ctx.save_for_backward(q, k, v, out, mean_den, *log_decays)
    ctx.orders, ctx.key_padding_mask = orders, key_padding_mask
    ctx.options = (chunk_size, normalize, eps)


def _chunk_attention_grad(ctx, grad, grad_mean_den):
    q, k, v, out, mean_den, *log_decays = ctx.saved_tensors
    dq, dk, dv, decay_grads = _chunk_attention_backward(
        grad, q, k, v, out, mean_den, log_decays, ctx.orders, ctx.key_padding_mask, *ctx.options
    )
    return dq, dk, dv, decay_grads, [None] * len(ctx.orders), None, None, None, None


_chunk_attention.register_autograd(_chunk_attention_grad, setup_context=_setup_context)


@torch.library.custom_op(_OP_PREFIX + "_recurrent_attention", mutates_args=())
def _recurrent_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decays: list[torch.Tensor],
    orders: list[torch.Tensor], key_padding_mask: torch.Tensor | None, chunk_size: int, normalize: bool,
    eps: float,
) -> torch.Tensor:
    paths = _paths(log_decays, orders, chunk_size, q.shape[2])
    return _recurrent_forward(q, k, v, paths, _int8(key_padding_mask), chunk_size, normalize, eps)


@_recurrent_attention.register_fake
def _(q, k, v, log_decays, orders, key_padding_mask, chunk_size, normalize, eps):
    return q.new_empty(*q.shape[:3], v.shape[-1])


# ------------------------------------------------------------------------------ the dispatch's entries


def unsupported(q, k, v, log_decays, orders, *, chunk_size, normalize, eps, key_padding_mask, dropout_p) -> str | None:
    """Why the fused kernels cannot run these inputs, or ``None``."""
    if triton is None:
        return "Triton is not installed"
    if q.device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "CPU tensors (the kernels run on CUDA, or on the CPU under TRITON_INTERPRET=1)"
        if not _INTERPRETED:
            return "TRITON_INTERPRET=1 was set after lion_triton_chunk was imported; the kernels were built for the GPU"
    elif q.device.type != "cuda":
        return f"tensors on {q.device.type}, not CUDA"
    elif _INTERPRETED:
        return "the kernels were built for the interpreter (TRITON_INTERPRET=1), not the GPU"
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} (supported: float32, bfloat16)"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"head dims {q.shape[-1]}/{v.shape[-1]} (supported: up to {MAX_HEAD_DIM})"
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return f"batch x heads = {q.shape[0] * q.shape[1]} (the kernels take at most {MAX_BATCH_HEADS})"
    if chunk_size not in CHUNK_SIZES:
        return f"chunk_size {chunk_size} (supported: {', '.join(map(str, CHUNK_SIZES))})"
    if dropout_p > 0.0:
        return "score dropout (only the parallel form has it)"
    return None


def _paths(log_decays, orders, chunk, length):
    return [_Path(log_decay, order, chunk, length) for log_decay, order in zip(log_decays, orders)]


def _along_paths(log_decays, orders, spanned):
    """The log-decays as the kernels take them (see ``_Path``): per path, in path order, float32, bounded as
    ``bounded_log_decays`` bounds them (``spanned``: see there) at ``_MIN_LOG_DECAY``; orders as tensors, empty
    for the natural order (the operators' schema has no optional list entries). Differentiable where autograd
    records it (under torch.compile); the eager node gives the gradient itself (``bounds_passing``)."""
    paths, steps = [], []
    bounded = bounded_log_decays(log_decays, spanned, minimum=_MIN_LOG_DECAY)
    for log_decay, along, order in zip(log_decays, bounded, orders):
        if is_constant_along_length(log_decay):
            along = along[..., :1]  # the same in every order; the kernels take the one value per head
        elif order is not None:
            along = along[..., order]
        paths.append(as_dtype(along, torch.float32).contiguous())
        steps.append(order if order is not None else log_decay.new_empty(0, dtype=torch.long))
    return paths, steps


class _EagerChunkAttention(torch.autograd.Function):
    """The chunk kernels' forward and backward for eager mode, with the log-decays' bounds, dtype and path orders
    inside: one autograd node for the layer's token mixing, where the operators' autograd (a Python layer of
    torch.library) and that of the decays' preparation cost the host several dispatches per layer; the backward
    reuses the forward's chunk sums of the decays (``_Path``) instead of forming them again."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, chunk, normalize, eps, orders, *log_decays):
        kpm = _int8(key_padding_mask)
        paths = _paths(*_along_paths(log_decays, orders, key_padding_mask), chunk, q.shape[2])
        out, mean_den = _forward(q, k, v, paths, kpm, chunk, normalize, eps)
        ctx.save_for_backward(q, k, v, out, mean_den)
        ctx.paths, ctx.kpm, ctx.options = paths, kpm, (chunk, normalize, eps)
        decays_need_grad = any(ctx.needs_input_grad[8:])
        ctx.passing = bounds_passing(log_decays, key_padding_mask, _MIN_LOG_DECAY) if decays_need_grad else None
        ctx.decays = [(log_decay.shape, log_decay.dtype) for log_decay in log_decays]
        ctx.orders = orders
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, mean_den = ctx.saved_tensors
        dq, dk, dv, path_grads = _backward(grad, q, k, v, out, mean_den, ctx.paths, ctx.kpm, *ctx.options)
        if ctx.passing is None:
            grads = [None] * len(ctx.decays)
        else:
            grads = [
                _token_gradient(g, order, passing, *decay)
                for g, order, passing, decay in zip(path_grads, ctx.orders, ctx.passing, ctx.decays)
            ]
        return dq, dk, dv, None, None, None, None, None, *grads


def _token_gradient(grad, order, passing, shape, dtype):
    """The gradient of a path's log-decays (path order) as that of the tensor passed (token order): for one that
    is constant along the tokens, all of it on the first token (see ``lion_triton._constant_gradient``)."""
    if passing.shape[-1] == 1:
        return _constant_gradient(grad.sum(-1), passing, shape, dtype)
    grad = grad if order is None else grad[..., order_steps(order)]
    return as_dtype(torch.where(passing, grad, 0.0).sum_to_size(shape), dtype)


# Without gradients to compute, from this many tokens on the chunk form runs the kernel that keeps its states in
# registers (the recurrent form's): on one H200 at 4097 tokens (ViT-B/16 at 1024 px, batch 8; `python -m
# benchmarks --groups long_inference`) it took 1-2% longer than storing the states and kept the peak at timm's
# instead of 1.04-1.05x it; at 1025 tokens LION-D's took 21% longer (few chunks to sweep, and one program per head
# and value block). benchmarks/NOTES.md, session 8.
ON_CHIP_STATES_FROM_LENGTH = 4096


def _needs_grad(q, k, v, log_decays) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *(log_decays or ())))


def chunk_form(q, k, v, log_decays, orders, *, chunk_size, normalize, eps, key_padding_mask, dropout_p):
    """The chunk kernels; for inference on long inputs, the same sums with the states kept on chip. The
    log-decays come unbounded where the caller skipped the value checks (``bounds_decays``)."""
    if log_decays and q.shape[2] >= ON_CHIP_STATES_FROM_LENGTH and not _needs_grad(q, k, v, log_decays):
        return recurrent_form(q, k, v, log_decays, orders, chunk_size=chunk_size, normalize=normalize, eps=eps,
                              key_padding_mask=key_padding_mask, dropout_p=dropout_p)  # fmt: skip
    if not torch.compiler.is_compiling():
        return _EagerChunkAttention.apply(
            q, k, v, key_padding_mask, chunk_size, normalize, eps, orders or [], *(log_decays or ())
        )
    decays, steps = _along_paths(log_decays or (), orders or (), key_padding_mask)
    return _chunk_attention(q, k, v, decays, steps, key_padding_mask, chunk_size, normalize, eps)[0]


def recurrent_form(q, k, v, log_decays, orders, *, chunk_size, normalize, eps, key_padding_mask, dropout_p):
    """The RNN kernel for inference; with gradients to compute (or no decay) the chunk kernels."""
    if log_decays is None or _needs_grad(q, k, v, log_decays):
        return chunk_form(q, k, v, log_decays, orders, chunk_size=chunk_size, normalize=normalize, eps=eps,
                          key_padding_mask=key_padding_mask, dropout_p=dropout_p)  # fmt: skip
    decays, steps = _along_paths(log_decays, orders, key_padding_mask)
    return _recurrent_attention(q, k, v, decays, steps, key_padding_mask, chunk_size, normalize, eps)


def _int8(key_padding_mask):
    """The boolean padding mask as the kernels read it, a view. Taken inside the operators, never in a traced
    graph: Inductor in torch 2.11 cannot lower this view of a mask computed in the graph ("torch.bool is not
    supported by torch.iinfo")."""
    return None if key_padding_mask is None else key_padding_mask.view(torch.int8)


ENTRIES = {"chunk": chunk_form, "recurrent": recurrent_form, "unsupported": unsupported}
