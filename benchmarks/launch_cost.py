"""Host time of one launch of the parallel forward kernel (ViT-B shape, LION-D, bf16) four ways: through Triton's
``JITFunction`` (``kernel[grid](...)``), through the compiled kernel's launcher itself (``compiled.run``), through
its runner (``compiled[grid](...)``, which finds the stream and launch hooks) and through ``lion_triton.launch``
(a cache lookup, then the launcher), each checked to give the same output. Needs CUDA.

    python -m benchmarks.launch_cost [--launches 2000]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def per_launch_us(launch, count: int) -> float:
    """Host time of one ``launch()``, from ``count`` in a row after a warm-up (the GPU keeps up: tiny grids)."""
    for _ in range(50):
        launch()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(count):
        launch()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.launch_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=2000)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("timing kernel launches needs a CUDA device")
    from lion_hf.modeling import lion_triton

    batch, heads, length, dim = 4, 12, 197, 64
    q, k, v = (torch.randn(batch, heads, length, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    log_decay = F.logsigmoid(torch.randn(1, heads, device="cuda")).view(1, heads, 1).expand(1, heads, length)
    terms = lion_triton._decay_terms(q, [log_decay], [None], None)
    captured = {}

    def capture(kernel, grid, *arguments, **meta):
        captured.update(kernel=kernel, grid=grid, arguments=arguments, meta=meta)
        kernel[grid](*arguments, **meta)

    original = lion_triton.launch
    lion_triton.launch = capture
    try:
        lion_triton._forward(q, k, v, None, *terms, None, 0.0, True, 1e-6, dim**-0.5)
    finally:
        lion_triton.launch = original
    kernel, grid, arguments, meta = (captured[key] for key in ("kernel", "grid", "arguments", "meta"))
    out = arguments[3]
    compiled = kernel[grid](*arguments, **meta)
    everything = [*arguments, *(meta[name] for name in kernel.arg_names[len(arguments):])]
    stream = torch.cuda.current_stream().cuda_stream
    ways = {
        "JITFunction (kernel[grid](...))": lambda: kernel[grid](*arguments, **meta),
        "the compiled kernel's launcher": lambda: compiled.run(
            *(*grid, 1, 1)[:3], stream, compiled.function, compiled.packed_metadata, None, None, None, *everything
        ),
        "the compiled kernel's runner": lambda: compiled[(*grid, 1, 1)[:3]](*everything, stream=stream),
        "lion_triton.launch": lambda: lion_triton.launch(kernel, grid, *arguments, **meta),
    }
    kernel[grid](*arguments, **meta)
    torch.cuda.synchronize()
    want = out.clone()
    for name, launch in ways.items():
        out.zero_()
        launch()
        torch.cuda.synchronize()
        same = torch.equal(out, want)
        print(f"{name:34s} {per_launch_us(launch, args.launches):6.1f} us of host per launch; same output: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
