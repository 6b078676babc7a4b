"""Timing and peak memory of one benchmark configuration: warm-up, median of many runs, OOM and budget guards."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    # Only a GPU's cache needs handing back between configurations; a full collection costs ~0.1 s.
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _run_guarded(fn: Callable[[], object]) -> str | None:
    """Run ``fn`` and drop its result; on running out of memory return the reason instead of raising.

    The error (and with it the frames that hold the big tensors) is gone before the caller frees the cache.
    """
    try:
        fn()
    except RuntimeError as error:
        if not _is_out_of_memory(error):
            raise
        return f"out of memory: {str(error).splitlines()[0][:200]}"
    return None


def _timed_run(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call: CUDA events on a GPU, the host clock after a full sync on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def measure(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    budget_s: float,
) -> dict:
    """Median time and peak memory of ``fn``.

    ``warmup`` untimed calls (compilation, cuBLAS handles, allocator growth; only two for a configuration slower
    than ``budget_s / warmup`` per call) come first; then up to ``repeats``
    timed calls, fewer when they would exceed ``budget_s`` (at least one; the count is recorded). Peak memory is
    read on a separate call after the timed ones: ``peak_mb`` is everything allocated at the peak (weights,
    optimiser state and inputs included), ``extra_mb`` what the call added on top of what was allocated before it.
    Running out of memory is recorded as ``status="oom"``, never raised.
    """
    _release(device)
    first_s = None
    for done in range(1, max(warmup, 1) + 1):
        begin = time.perf_counter()
        failure = _run_guarded(fn)
        _synchronize(device)
        last_s = time.perf_counter() - begin
        first_s = last_s if first_s is None else first_s
        # A slow configuration keeps only two warm-up calls: the first compiles and sets up, the second settles.
        if failure is not None or (done >= 2 and last_s * warmup > budget_s):
            break
    if failure is not None:
        _release(device)
        return {"status": "oom", "reason": failure}

    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (not times or time.perf_counter() + times[-1] / 1e3 < deadline):
        times.append(_timed_run(fn, device))

    result = {
        "status": "ok",
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "repeats": len(times),
        "first_call_ms": first_s * 1e3,
        "peak_mb": None,
        "extra_mb": None,
    }
    if device.type == "cuda":
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        result["peak_mb"] = peak / 2**20
        result["extra_mb"] = (peak - before) / 2**20
    _release(device)
    return result


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}
