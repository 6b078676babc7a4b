"""Fused Triton kernels for the feature maps of queries and keys (``elu_plus_one``, ``silu_shift_l2``).

In PyTorch ``silu_shift_l2`` is five kernels forward and about as many backward, each a pass over the queries and
keys through HBM (and a strided broadcast for the division by the row norm); here it is one launch each way for the
queries and the keys together: a program takes a block of rows of one of them, read in place from any (B, H, N, D)
strides (a view of the fused qkv projection's output needs no copy), computes the map in float32 registers (the row
norm over the head dim included), multiplies the queries by the attention scale and writes both into one contiguous
``(2, B, H, N, D)`` tensor; the backward recomputes the map from the raw input instead of keeping it.
Eager only: under ``torch.compile`` the PyTorch functions run, which inductor fuses itself.

Triton is optional: this module raises ``ImportError`` without it (the models then use PyTorch). Under
``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors through Triton's
interpreter, which is how the tests exercise them without a GPU.
"""

import torch

try:
    import triton
    import triton.language as tl

    from .lion_triton import (
        FEATURE_MAPS,
        _feature_map,
        _feature_map_gradient,
        cdiv,
        is_interpreted,
        launch,
        next_power_of_2,
    )
except ImportError as error:  # the models catch this and use the PyTorch feature maps
    raise ImportError("the fused LION kernels need Triton (pip install triton)") from error

# The maps that take a kernel (the identity needs none), by their code in lion_triton.
KINDS = {name: code for name, code in FEATURE_MAPS.items() if name != "identity"}
MAX_DIM = 256
# Elements per program: rows x head dim, at most this many.
_TILE = 4096


@triton.jit
def _pair_input(
    X0, X1, rows, dim, sb, sh, sn, heads, length, scale, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    """What a program of either kernel reads: its block of rows of the queries ``X0`` (grid axis 1 = 0) or the
    keys ``X1`` (1) in the (B, H, N) row space, from strides ``sb, sh, sn`` (the last dim contiguous), in float32;
    the mask of the block, that of its rows, the block's offsets in the packed ``(2, B, H, N, D)`` tensors, and
    the factor of its rows (``scale`` for the queries, 1 for the keys)."""
    which = tl.program_id(1)
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_D)
    ok = (row[:, None] < rows) & (col[None, :] < dim)
    bh = row // length
    offsets = (bh // heads).to(tl.int64) * sb + (bh % heads).to(tl.int64) * sh + (row % length).to(tl.int64) * sn
    if which == 0:
        X = X0
        factor = scale
    else:
        X = X1
        factor = 1.0
    x = tl.load(X + offsets[:, None] + col[None, :], mask=ok, other=0.0).to(tl.float32)
    packed = which.to(tl.int64) * rows * dim + row[:, None].to(tl.int64) * dim + col[None, :]
    return x, ok, row < rows, packed, factor


@triton.jit
def _forward_kernel(
    X0, X1, Y, rows, dim, sb, sh, sn, heads, length, scale,
    KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``Y[0] = map(X0) * scale`` and ``Y[1] = map(X1)``; ``Y`` is ``(2, B, H, N, D)`` contiguous."""
    x, ok, row_ok, packed, factor = _pair_input(X0, X1, rows, dim, sb, sh, sn, heads, length, scale, BLOCK_R, BLOCK_D)
    y = _feature_map(x, ok, row_ok, KIND)
    tl.store(Y + packed, (y * factor).to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _backward_kernel(
    X0, X1, DY, DX, rows, dim, sb, sh, sn, heads, length, scale,
    KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``DX`` (contiguous like ``DY``) from ``DY``, the gradient of ``Y``; ``dy`` of the queries times ``scale``."""
    x, ok, row_ok, packed, factor = _pair_input(X0, X1, rows, dim, sb, sh, sn, heads, length, scale, BLOCK_R, BLOCK_D)
    dy = tl.load(DY + packed, mask=ok, other=0.0).to(tl.float32) * factor
    dx = _feature_map_gradient(x, dy, ok, row_ok, KIND)
    tl.store(DX + packed, dx.to(DX.dtype.element_ty), mask=ok)


def _launch(kernel, kind: str, q: torch.Tensor, k: torch.Tensor, scale: float, *tensors: torch.Tensor) -> None:
    batch, heads, length, dim = q.shape
    rows = batch * heads * length
    block_d = max(16, next_power_of_2(dim))
    block_r = max(1, _TILE // block_d) if not is_interpreted() else 16
    launch(
        kernel, (cdiv(rows, block_r), 2), q, k, *tensors, rows, dim, *q.stride()[:3], heads, length, scale,
        KIND=KINDS[kind], BLOCK_R=block_r, BLOCK_D=block_d,
    )  # fmt: skip


def map_pair(kind: str, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``(2, B, H, N, D)``: ``map(q) * scale`` and ``map(k)`` (inputs checked by ``unsupported``), no autograd."""
    y = q.new_empty((2, *q.shape))
    _launch(_forward_kernel, kind, q, k, scale, y)
    return y


def map_pair_backward(kind: str, q: torch.Tensor, k: torch.Tensor, scale: float, dy: torch.Tensor) -> torch.Tensor:
    """``(2, B, H, N, D)``: the gradients of ``q`` and ``k`` from ``dy``, that of ``map_pair``'s output."""
    dx = torch.empty_like(dy)
    _launch(_backward_kernel, kind, q, k, scale, dy.contiguous(), dx)
    return dx


class _FeatureMaps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, kind, scale):
        ctx.save_for_backward(q, k)
        ctx.kind, ctx.scale = kind, scale
        return tuple(map_pair(kind, q, k, scale).unbind(0))

    @staticmethod
    def backward(ctx, dq, dk):
        q, k = ctx.saved_tensors
        dx = map_pair_backward(ctx.kind, q, k, ctx.scale, torch.stack([dq, dk]))
        return dx[0], dx[1], None, None


def unsupported(kind: str, q: torch.Tensor, k: torch.Tensor) -> str | None:
    """Why the kernels cannot map ``q`` and ``k`` (``(B, H, N, D)``, the same shape), or ``None``."""
    if kind not in KINDS:
        return f"feature map {kind!r} (the kernels take {', '.join(KINDS)})"
    if q.device.type != "cuda" and not (q.device.type == "cpu" and is_interpreted()):
        return f"{q.device.type} tensors (the kernels run on CUDA, or on the CPU through TRITON_INTERPRET=1)"
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32) or k.dtype != q.dtype:
        return f"dtypes {q.dtype} and {k.dtype} (the kernels take bfloat16, float16 and float32, the same for both)"
    if q.dim() != 4 or k.shape != q.shape or q.numel() == 0 or not 0 < q.shape[-1] <= MAX_DIM:
        return f"shapes {tuple(q.shape)} and {tuple(k.shape)} (the kernels take two (B, H, N, D), D of 1 to {MAX_DIM})"
    if q.stride() != k.stride() or q.stride(-1) != 1:
        return f"strides {q.stride()} and {k.stride()} (the kernels take the same strides, the last dim contiguous)"
    return None


def feature_maps(kind: str, q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(map(q) * scale, map(k))`` (inputs checked by ``unsupported``), differentiable, contiguous."""
    return _FeatureMaps.apply(q, k, kind, scale)
