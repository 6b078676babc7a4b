"""What the LION operator alone asks of the host, against SDPA: the calls of one ViT-B layer's token mixing
(queries, keys and values as views of a fused projection; B 4, H 12, N 197 unless --batch, --length; D 64, bf16),
forward + backward.

    python -m benchmarks.operator_host            # host time per call (GPU), interleaved rounds, ratios to SDPA
    python -m benchmarks.operator_host --count    # aten operations per call (CPU, kernel launches stubbed out)
    python -m benchmarks.operator_host --count --form chunk --length 256  # the chunk kernels' calls instead
    python -m benchmarks.operator_host --crossover --batch 64 --length 197  # parallel against chunk kernels (GPU)

The timing runs every operator once per round, each from an idle GPU (so that no launch waits on a busy one), and
reports the median host time of its forward + backward and the median over the rounds of its ratio to SDPA's in
the same round. ``--crossover`` times each whole call instead (``triton.testing.do_bench``'s median, ms), LION's
through the parallel kernels and through the chunk kernels (the parallel form's two routes, which
``CHUNK_KERNELS_FROM_LENGTH`` chooses between). ``--count`` counts the top-level aten operations of the forward and
of the backward as torch.profiler records them, with every Triton launch a no-op (``benchmarks.op_count``'s stubs, under
``TRITON_INTERPRET=1``), so the counts are the host code's own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

BATCH, HEADS, LENGTH, DIM = 4, 12, 197, 64


def operators(device: torch.device, form: str = "parallel", length: int = LENGTH, batch: int = BATCH) -> dict:
    """``name -> call``: SDPA and LION-LIT, D and S as a ViT layer calls them (LION in ``form``, ``batch`` x
    ``length`` tokens), each returning the output."""
    from lion_hf.modeling.lion_attention import lion_attention

    fused = torch.randn(batch, length, 3, HEADS, DIM, device=device, dtype=torch.bfloat16, requires_grad=True)
    logit = torch.randn(1, HEADS, device=device, requires_grad=True)
    gate = torch.randn(batch, length, HEADS, device=device, requires_grad=True)

    def heads():
        return [t.transpose(1, 2) for t in fused.unbind(2)]

    def lion(feature_map, decays=None):
        return lion_attention(*heads(), decays, feature_map=feature_map, scale=DIM**-0.5, normalize=True,
                              form=form, check_values=False)  # fmt: skip

    return {
        "SDPA": lambda: F.scaled_dot_product_attention(*heads()),
        "LION-LIT": lambda: lion("elu_plus_one"),
        "LION-D": lambda: lion("silu_shift_l2", [F.logsigmoid(logit).view(1, HEADS, 1).expand(1, HEADS, length)]),
        "LION-S": lambda: lion("silu_shift_l2", [F.logsigmoid(gate).permute(0, 2, 1)]),
    }


def aten_counts(call) -> tuple[int, int]:
    """Top-level aten operations of ``call()``'s forward and of its backward."""

    def top_level(profiler) -> int:
        events = [event for event in profiler.events() if event.name.startswith("aten::")]
        return sum(1 for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))

    call().float().sum().backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as forward:
        out = call()
    loss = out.float().sum()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as backward:
        loss.backward()
    return top_level(forward), top_level(backward)


def host_times(calls: dict, rounds: int) -> dict:
    """``name -> (median host us of forward + backward, median ratio to the first call's in the same round)``."""

    def host_us(call) -> float:
        torch.cuda.synchronize()
        begin = time.perf_counter()
        call().sum().backward()
        elapsed = time.perf_counter() - begin
        torch.cuda.synchronize()
        return elapsed * 1e6

    for call in calls.values():
        for _ in range(10):
            host_us(call)
    times = [[host_us(call) for call in calls.values()] for _ in range(rounds)]
    return {
        name: (statistics.median(row[i] for row in times), statistics.median(row[i] / row[0] for row in times))
        for i, name in enumerate(calls)
    }


def crossover_times(calls: dict, length: int) -> dict:
    """``name -> ms`` of one forward + backward: SDPA's, and each LION call's through the parallel kernels
    (``"LION-D parallel kernels"``) and through the chunk kernels."""
    import triton

    from lion_hf.modeling import lion_attention as dispatch

    def ms(call) -> float:
        return triton.testing.do_bench(lambda: call().sum().backward(), warmup=10, rep=60, return_mode="median")

    default = dispatch.CHUNK_KERNELS_FROM_LENGTH
    times = {}
    for name, call in calls.items():
        if name == "SDPA":
            times[name] = ms(call)
            continue
        for route, threshold in (("parallel kernels", length + 1), ("chunk kernels", 1)):
            dispatch.CHUNK_KERNELS_FROM_LENGTH = threshold
            try:
                times[f"{name} {route}"] = ms(call)
            finally:
                dispatch.CHUNK_KERNELS_FROM_LENGTH = default
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.operator_host", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", action="store_true", help="count aten operations (CPU, launches stubbed out)")
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds (default 200)")
    parser.add_argument("--crossover", action="store_true", help="time whole calls, parallel against chunk kernels")
    parser.add_argument("--form", choices=("parallel", "chunk"), default="parallel", help="LION's form")
    parser.add_argument("--length", type=int, default=LENGTH, help=f"tokens per sequence (default {LENGTH})")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"sequences (default {BATCH})")
    args = parser.parse_args(argv)
    for name in ("rounds", "length", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.count:
        os.environ["TRITON_INTERPRET"] = "1"
        from .op_count import _stub_kernel_launches

        _stub_kernel_launches()
        for name, call in operators(torch.device("cpu"), args.form, args.length, args.batch).items():
            forward, backward = aten_counts(call)
            print(f"{name:9s} {forward:3d} aten ops forward, {backward:3d} backward, {forward + backward:3d} in all")
        return 0
    if not torch.cuda.is_available():
        parser.error("timing needs a CUDA device (--count runs on the CPU)")
    calls = operators(torch.device("cuda"), args.form, args.length, args.batch)
    if args.crossover:
        for name, ms in crossover_times(calls, args.length).items():
            print(f"{name:26s} {ms:7.3f} ms per forward + backward (B {args.batch}, N {args.length})")
        return 0
    for name, (us, ratio) in host_times(calls, args.rounds).items():
        print(f"{name:9s} {us:8.1f} us of host per forward + backward, {ratio:.2f}x SDPA's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
