"""Registers, stack and local memory (spills) of each fused parallel-form kernel, compiled for a GPU architecture
(default sm_90, the H100/H200) on any machine with Triton: no GPU needed, so a kernel change can be screened before
device time is spent on it.

The launches of one forward and one backward call at a training shape are captured instead of run (CPU tensors),
their arguments typed as Triton's launcher types them (pointers and integers divisible by 16 marked so, integers
equal to 1 folded in), compiled by Triton for the target, and the resource line of the cubin read with the
``cuobjdump`` Triton ships. What the GPU machines compile can differ when their Triton does.

    python -m benchmarks.kernel_resources [--variants lit,d,s] [--shapes vit,bert512] [--arch 90] [--opcodes]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import subprocess
import tempfile

import torch
import torch.nn.functional as F

from benchmarks.models import comma_separated

HEADS, HEAD_DIM = 12, 64
# label: batch, tokens, normalised (ViT) or un-normalised with padded keys (BERT), score dropout.
SHAPES = {
    "vit": (64, 197, True, 0.0),
    "bert512": (32, 512, False, 0.1),
    "bert512-p0": (32, 512, False, 0.0),
}
VARIANTS = ("lit", "d", "s")
_DTYPES = {
    torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64", torch.int32: "i32",
    torch.uint8: "u8", torch.bool: "i1",
}


@contextlib.contextmanager
def captured_launches(lion_triton):
    """``(kernel, args, meta)`` of every launch made inside, none of them run."""
    launches = []
    default = lion_triton.launch
    lion_triton.launch = lambda kernel, grid, *args, **meta: launches.append((kernel, args, meta))
    try:
        yield launches
    finally:
        lion_triton.launch = default


def training_launches(variant: str, batch: int, length: int, normalize: bool, dropout_p: float) -> list[tuple]:
    """The three kernel launches of one bf16 forward + backward of ``variant`` (one path) at this shape."""
    from lion_hf.modeling import lion_triton

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(batch, HEADS, length, HEAD_DIM, generator=generator).bfloat16() for _ in "qkv")
    mask = None if normalize else torch.ones(batch, length, dtype=torch.bool)
    if variant == "lit":
        terms = (None,) * 6
    else:
        if variant == "d":
            decays = [F.logsigmoid(torch.randn(1, HEADS, 1, generator=generator) + 3).expand(1, HEADS, length)]
        else:
            decays = [F.logsigmoid(torch.randn(batch, HEADS, length, generator=generator) + 3)]
        terms = lion_triton._decay_terms(q, decays, [None], mask)
    seed = torch.zeros(1, dtype=torch.int64) if dropout_p > 0 else None
    options = (seed, dropout_p, normalize, 1e-6, HEAD_DIM**-0.5)
    with captured_launches(lion_triton) as launches:
        out, z = lion_triton._forward(q, k, v, mask, *terms, *options)  # not run: only their layouts matter
        lion_triton._backward(torch.ones_like(out), q, k, v, out, z, mask, *terms, *options)
    return launches


def compile_for(kernel, args: tuple, meta: dict, arch: int):
    """``kernel`` compiled by Triton for CUDA architecture ``arch`` with these launch arguments."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    meta = dict(meta)
    options = {name: meta.pop(name) for name in ("num_warps", "num_stages") if name in meta}
    signature, constexprs, attrs = {}, {}, {}
    for index, (name, value) in enumerate(zip(kernel.arg_names, args)):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _DTYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int) and value == 1:
            signature[name] = "constexpr"
            constexprs[(index,)] = 1
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"argument {name} of {kernel.fn.__name__}: cannot type a {type(value).__name__}")
    for name in kernel.arg_names[len(args) :]:
        signature[name] = "constexpr"
        constexprs[(kernel.arg_names.index(name),)] = meta[name]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def _cuobjdump(cubin: bytes, flag: str) -> str:
    import triton.backends.nvidia as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    if not os.path.exists(tool):
        raise FileNotFoundError(f"this Triton ships no cuobjdump at {tool}: kernel resources cannot be read")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as file:
            file.write(cubin)
        return subprocess.run([tool, flag, path], capture_output=True, text=True, check=True).stdout


def resources(compiled) -> dict[str, int]:
    """Registers per thread, stack bytes and local (spilled) bytes of a compiled kernel."""
    line = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", _cuobjdump(compiled.asm["cubin"], "-res-usage"))
    if line is None:
        raise RuntimeError("cuobjdump printed no resource line for the kernel")
    return {"registers": int(line[1]), "stack": int(line[2]), "local": int(line[4])}


def opcode_counts(compiled) -> collections.Counter:
    """How often each SASS opcode appears in the kernel's code (a static count: loops count once)."""
    sass = _cuobjdump(compiled.asm["cubin"], "-sass")
    found = re.findall(r"^\s+/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M)
    return collections.Counter(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_resources", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=comma_separated(VARIANTS, "variants"), default=list(VARIANTS), help="default lit,d,s")
    parser.add_argument("--shapes", type=comma_separated(SHAPES, "shapes"), default=list(SHAPES), help=f"default {','.join(SHAPES)}")
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (default 90: H100/H200)")
    parser.add_argument("--opcodes", action="store_true", help="also the SASS instruction count and commonest opcodes")
    args = parser.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        parser.error("compiling the kernels needs Triton (pip install triton)")
    for shape in args.shapes:
        for variant in args.variants:
            for kernel, launch_args, meta in training_launches(variant, *SHAPES[shape]):
                compiled = compile_for(kernel, launch_args, meta, args.arch)
                used = resources(compiled)
                row = (
                    f"{shape:10s} {variant:3s} {kernel.fn.__name__:20s} {meta['BLOCK_M']}x{meta['BLOCK_N']} "
                    f"warps {meta['num_warps']}: registers {used['registers']}, stack {used['stack']} B, "
                    f"local {used['local']} B"
                )
                if args.opcodes:
                    counts = opcode_counts(compiled)
                    row += f"; {sum(counts.values())} instructions: " + ", ".join(
                        f"{op} {n}" for op, n in counts.most_common(8)
                    )
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
