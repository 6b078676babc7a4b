"""What is alive at the peak of one BERT-base MLM training step, and where it was allocated: LION against BERT
with SDPA (GPU).

    python -m benchmarks.memory_peak [--models bert,lit,d,s] [--seq 128] [--batch 128] [--top 12] [--out DIR]

Each model's step (bf16 autocast, AdamW, as the ``mlm`` benchmark group runs it) is warmed up, then run once
while PyTorch's allocator records every allocation with its Python stack (``torch.cuda.memory``'s history).
Replaying that record gives the peak of the memory allocated during the step (on top of what was allocated
before it: weights, optimiser state, inputs) and the blocks alive at that moment, summed by the line of model code
that allocated them (the innermost frame outside torch itself). The models' lists side by side say which
allocations make up a difference in peak memory. ``--out`` also keeps each model's raw snapshot
(``torch.cuda.memory._snapshot()``, readable at pytorch.org/memory_viz).
"""

from __future__ import annotations

import argparse
import pickle
from collections import Counter
from pathlib import Path

import torch

from .models import TextShape, bert_sdpa, comma_separated, lion_mlm
from .suites import BERT_BASE, _training_step, full_settings, mlm_inputs

MODELS = {"bert": "BERT SDPA", "lit": "LION-LIT", "d": "LION-D", "s": "LION-S"}
# Frames in these parts of an installed torch are its machinery, not the code that asked for the memory.
_TORCH_PARTS = ("/torch/", "\\torch\\")


def live_at_peak(trace: list[dict]) -> tuple[int, list[dict]]:
    """``(peak, blocks)``: the highest total of the bytes allocated and not yet freed while replaying ``trace`` (the
    allocator's events, each with ``action``, ``addr``, ``size``, ``frames``; blocks allocated before the record
    began are not in it), and the allocation events of the blocks alive when that total was first reached."""
    live: dict[int, dict] = {}
    total, peak, at_peak = 0, 0, []
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, at_peak


def site(frames: list[dict]) -> str:
    """The innermost frame of an allocation's Python stack (innermost first, as the snapshot lists them) that is
    not inside torch, as ``file:line function``."""
    for frame in frames:
        filename = frame["filename"]
        if not any(part in filename for part in _TORCH_PARTS):
            return f"{Path(filename).name}:{frame['line']} {frame['name']}"
    return "torch (no frame outside it)"


def by_site(blocks: list[dict]) -> Counter:
    """Bytes of ``blocks`` summed by the site that allocated them."""
    sizes: Counter = Counter()
    for block in blocks:
        sizes[site(block.get("frames", []))] += block["size"]
    return sizes


def recorded_step(key: str, shape: TextShape, length: int, batch: int, device: torch.device) -> dict:
    """The allocator's snapshot of one warmed-up training step of model ``key``."""
    model = bert_sdpa(shape, device) if key == "bert" else lion_mlm(shape, key, device)
    step = _training_step(model, mlm_inputs(shape, length, batch, device), full_settings(), device)
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(stacks="python", max_entries=1_000_000)
    try:
        step()
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    del model, step
    torch.cuda.empty_cache()
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_peak", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", type=comma_separated(MODELS), default="bert,lit,d,s", help=f"comma-separated, of {', '.join(MODELS)}"
    )
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--top", type=int, default=12, help="sites listed per model (default 12)")
    parser.add_argument("--out", type=Path, help="keep each model's snapshot here (pickle)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("recording the allocator needs a CUDA device")
    device = torch.device("cuda")
    for key in args.models:
        snapshot = recorded_step(key, BERT_BASE, args.seq, args.batch, device)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{key}.pickle").write_bytes(pickle.dumps(snapshot))
        trace = [event for events in snapshot["device_traces"] for event in events]
        peak, blocks = live_at_peak(trace)
        print(f"\n{MODELS[key]} (seq {args.seq}, batch {args.batch}): {peak / 2**20:.0f} MB allocated at the step's peak")
        for where, size in by_site(blocks).most_common(args.top):
            print(f"  {size / 2**20:9.1f} MB  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
