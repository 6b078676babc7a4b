"""Fused Triton kernels for the feature maps of queries and keys (``elu_plus_one``, ``silu_shift_l2``).

In PyTorch ``silu_shift_l2`` is five kernels forward and about as many backward, each a pass over the queries and
keys through HBM (and a strided broadcast for the division by the row norm); here it is one pass each way: a
program takes a block of rows, computes the map in float32 registers (the row norm over the head dim included) and
writes the result in the input's dtype; the backward recomputes the map from the saved input instead of keeping it.
Eager only: under ``torch.compile`` the models use the PyTorch functions, which inductor fuses itself.

Triton is optional: this module raises ``ImportError`` without it (the models then use PyTorch). Under
``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors through Triton's
interpreter, which is how the tests exercise them without a GPU.
"""

import torch

try:
    import triton
    import triton.language as tl

    from .lion_triton import cdiv, is_interpreted, next_power_of_2
except ImportError as error:  # the models catch this and use the PyTorch feature maps
    raise ImportError("the fused LION kernels need Triton (pip install triton)") from error

KINDS = {"elu_plus_one": 0, "silu_shift_l2": 1}
MAX_DIM = 256
# Elements per program: rows x head dim, at most this many.
_TILE = 4096


@triton.jit
def _silu_shifted(x, ok):
    """``silu(x) + 1/2`` (positive: silu is above -0.28) and ``sigmoid(x)``; zeros outside ``ok``."""
    sigmoid = tl.sigmoid(x)
    return tl.where(ok, x * sigmoid + 0.5, 0.0), sigmoid


@triton.jit
def _row_norm(s, row_ok):
    """``|s|`` of each row as a column; 1 on rows past the end (all zeros there), which are not stored."""
    return tl.where(row_ok, tl.sqrt(tl.sum(s * s, 1)), 1.0)[:, None]


@triton.jit
def _forward_kernel(X, Y, rows, dim, KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_D)
    ok = (row[:, None] < rows) & (col[None, :] < dim)
    offsets = row[:, None].to(tl.int64) * dim + col[None, :]
    x = tl.load(X + offsets, mask=ok, other=0.0).to(tl.float32)
    if KIND == 0:
        y = tl.where(x > 0, x + 1.0, tl.exp(x))
    else:
        s, _ = _silu_shifted(x, ok)
        y = s / _row_norm(s, row < rows)
    tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _backward_kernel(X, DY, DX, rows, dim, KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """``elu + 1``: ``dx = dy`` where ``x > 0``, else ``dy exp(x)``. ``silu_shift_l2``, ``y = s / |s|``:
    ``ds = (dy - y (y . dy)) / |s|`` and ``dx = ds silu'(x)``, ``silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x)))``."""
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_D)
    ok = (row[:, None] < rows) & (col[None, :] < dim)
    offsets = row[:, None].to(tl.int64) * dim + col[None, :]
    x = tl.load(X + offsets, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(DY + offsets, mask=ok, other=0.0).to(tl.float32)
    if KIND == 0:
        dx = tl.where(x > 0, dy, dy * tl.exp(x))
    else:
        s, sigmoid = _silu_shifted(x, ok)
        norm = _row_norm(s, row < rows)
        y = s / norm
        ds = (dy - y * tl.sum(y * dy, 1)[:, None]) / norm
        dx = ds * (sigmoid * (1.0 + x * (1.0 - sigmoid)))
    tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=ok)


def _launch(kernel, kind: str, x: torch.Tensor, *tensors: torch.Tensor) -> None:
    dim = x.shape[-1]
    rows = x.numel() // dim
    block_d = max(16, next_power_of_2(dim))
    block_r = max(1, _TILE // block_d) if not is_interpreted() else 16
    kernel[(cdiv(rows, block_r),)](x, *tensors, rows, dim, KIND=KINDS[kind], BLOCK_R=block_r, BLOCK_D=block_d)


class _FeatureMap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind):
        y = torch.empty_like(x)
        _launch(_forward_kernel, kind, x, y)
        ctx.save_for_backward(x)
        ctx.kind = kind
        return y

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dx = torch.empty_like(x)
        _launch(_backward_kernel, ctx.kind, x, dy.contiguous(), dx)
        return dx, None


def unsupported(kind: str, x: torch.Tensor) -> str | None:
    """Why the kernels cannot map ``x``, or ``None``."""
    if kind not in KINDS:
        return f"feature map {kind!r} (the kernels take {', '.join(KINDS)})"
    if x.device.type != "cuda" and not (x.device.type == "cpu" and is_interpreted()):
        return f"{x.device.type} tensors (the kernels run on CUDA, or on the CPU through TRITON_INTERPRET=1)"
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"dtype {x.dtype} (the kernels take bfloat16, float16 and float32)"
    if not x.is_contiguous():
        return "a non-contiguous input"
    if not 0 < x.shape[-1] <= MAX_DIM or x.numel() == 0:
        return f"shape {tuple(x.shape)} (the kernels take a head dim of 1 to {MAX_DIM} and at least one row)"
    return None


def feature_map(kind: str, x: torch.Tensor) -> torch.Tensor:
    """``kind`` applied along the last dim of ``x`` (contiguous, checked by ``unsupported``), differentiable."""
    return _FeatureMap.apply(x, kind)
