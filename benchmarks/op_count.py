"""Counts what one training step asks of the host: aten operations (torch.profiler) and Python calls (cProfile).

Launch-bound eager steps move with these counts rather than with FLOPs; two checkouts compare exactly, on a CPU:

    python -m benchmarks.op_count            # a 12-layer tiny ViT, one forward + backward per LION variant
"""

from __future__ import annotations

import cProfile
import pstats

import torch
from torch.profiler import ProfilerActivity, profile

from lion_hf import LionConfig, LionForImageClassification

CASES = (("lit", "raster"), ("d", "raster"), ("s", "raster"), ("s", "snake"))


def counts(variant: str, order: str) -> tuple[int, int]:
    """(aten operations, Python calls) of one training step of a tiny 12-layer vision model, after a warm-up step."""
    config = LionConfig(
        modality="vision", variant=variant, patch_order=order, hidden_size=32, num_hidden_layers=12,
        num_attention_heads=2, image_size=32, patch_size=8, num_labels=10,
    )  # fmt: skip
    model = LionForImageClassification(config).train()
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])

    def step():
        model(pixel_values=pixels, labels=labels).loss.backward()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    aten = sum(1 for event in profiler.events() if event.name.startswith("aten::"))
    python = cProfile.Profile()
    python.runcall(step)
    calls = sum(stat[1] for stat in pstats.Stats(python).stats.values())
    return aten, calls


def main() -> int:
    for variant, order in CASES:
        aten, calls = counts(variant, order)
        print(f"LION-{variant.upper()} {order}: {aten} aten ops, {calls} Python calls per training step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
