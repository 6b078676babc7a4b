"""Counts what one training step asks of the host: aten operations (torch.profiler), autograd nodes, Python calls
(cProfile) and the step's time on the CPU, for tiny 12-layer ViTs: LION's variants and, as the reference,
timm's own ``VisionTransformer`` where timm is installed, then the same ViT with timm's block (fused qkv, SDPA)
in plain PyTorch.

Launch-bound eager steps move with these counts rather than with FLOPs; two checkouts compare exactly, on a CPU:

    python -m benchmarks.op_count            # the PyTorch path
    python -m benchmarks.op_count --kernels  # the fused-kernel path, its launches replaced by no-ops

``--kernels`` runs the models through the kernels' host code (dispatch, autograd Functions, allocations, launch
arguments) with every Triton launch replaced by a no-op, so the outputs are meaningless and only the counts and
the host time mean anything; it sets ``TRITON_INTERPRET=1`` before Triton is imported, which is how the kernels
take CPU tensors. The models' steps are timed in interleaved rounds and given as ratios to the first (the
reference), which this machine's drift leaves nearly alone; they are a proxy for a GPU machine's host time, where
every kernel launch costs more. Against timm's model the ratios of ``--kernels`` came within 0.1 of the eager
ViT-B/16 step's on an H200 machine, where every eager step was host-bound (benchmarks/NOTES.md, session 7); timm's
model asks more of the host than the plain block (its identity and dropout modules).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import torch
import torch.nn.functional as F
from torch import nn

CASES = (("lit", "raster"), ("d", "raster"), ("s", "raster"), ("d", "snake"), ("s", "snake"))
WIDTH, HEADS, LAYERS, IMAGE, PATCH, LABELS = 64, 2, 12, 32, 8, 10


class _Block(nn.Module):
    """timm's ViT block: one qkv projection, SDPA on its views, the MLP."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.fc1, self.fc2 = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x):
        batch, length, width = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, length, 3, HEADS, width // HEADS).permute(2, 0, 3, 1, 4)
        attention = F.scaled_dot_product_attention(*qkv.unbind(0)).transpose(1, 2).reshape(batch, length, width)
        x = x + self.proj(attention)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _ReferenceViT(nn.Module):
    def __init__(self):
        super().__init__()
        tokens = (IMAGE // PATCH) ** 2 + 1
        self.patches = nn.Conv2d(3, WIDTH, PATCH, PATCH)
        self.cls_token, self.positions = nn.Parameter(torch.zeros(1, 1, WIDTH)), nn.Parameter(torch.zeros(1, tokens, WIDTH))
        self.blocks = nn.Sequential(*[_Block() for _ in range(LAYERS)])
        self.norm, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, LABELS)

    def forward(self, pixel_values, labels):
        x = self.patches(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.positions
        return F.cross_entropy(self.head(self.norm(self.blocks(x))[:, 0]), labels)


def training_steps():
    """``(name, loss)`` for the reference ViT and every LION case; ``loss()`` runs one forward pass."""
    from lion_hf import LionConfig, LionForImageClassification

    from .models import VisionShape, timm_available, timm_vit

    pixels, labels = torch.randn(2, 3, IMAGE, IMAGE), torch.tensor([1, 2])
    torch.manual_seed(0)
    steps = []
    if timm_available():
        shape = VisionShape("tiny", WIDTH, LAYERS, HEADS, 4 * WIDTH, IMAGE, PATCH, LABELS)
        timm_model = timm_vit(shape, torch.device("cpu")).train()
        steps.append(("timm VisionTransformer", lambda: timm_model(pixels, labels).loss))
    reference = _ReferenceViT()
    steps.append(("ViT (SDPA, timm's block)", lambda: reference(pixels, labels)))
    for variant, order in CASES:
        config = LionConfig(
            modality="vision", variant=variant, patch_order=order, hidden_size=WIDTH, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH, num_labels=LABELS,
        )  # fmt: skip
        model = LionForImageClassification(config).train()
        steps.append((f"LION-{variant.upper()} {order}", lambda m=model: m(pixel_values=pixels, labels=labels).loss))
    return steps


def autograd_graph(loss: torch.Tensor) -> set:
    """Every autograd node that ``loss``'s backward runs, once each."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return seen


def counts(loss_of_step) -> dict:
    """Aten operations, autograd nodes and Python calls of one training step."""

    def step():
        loss_of_step().backward()

    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step()
    aten = sum(1 for event in profiler.events() if event.name.startswith("aten::"))
    python = cProfile.Profile()
    python.runcall(step)
    calls = sum(stat[1] for stat in pstats.Stats(python).stats.values())
    return dict(aten=aten, nodes=len(autograd_graph(loss_of_step())), python=calls)


def step_times(losses_of_steps: list, rounds: int) -> list[float]:
    """The CPU time (ms) of one training step of each model: the 20th percentile of ``rounds`` rounds that step
    every model once in turn, so that the machine's drift reaches every model alike."""
    steps = [lambda loss_of_step=loss_of_step: loss_of_step().backward() for loss_of_step in losses_of_steps]
    times = [[] for _ in steps]
    for step in steps:
        step()
    for _ in range(rounds):
        for step, kept in zip(steps, times):
            start = time.perf_counter()
            step()
            kept.append(time.perf_counter() - start)
    return [sorted(kept)[len(kept) // 5] * 1e3 for kept in times]


def _stub_kernel_launches() -> None:
    """Every Triton kernel of the parallel-form, chunk-form and feature-map modules launched as a no-op."""
    import triton

    from lion_hf.modeling import lion_triton, lion_triton_chunk, lion_triton_features

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    for module in (lion_triton, lion_triton_chunk, lion_triton_features):
        for name in dir(module):
            if isinstance(getattr(module, name), triton.runtime.KernelInterface):
                setattr(module, name, NoLaunch())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.op_count", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", action="store_true", help="count the fused-kernel path, launches stubbed out")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds of every model's step (default 30)")
    args = parser.parse_args(argv)
    if args.kernels:
        os.environ["TRITON_INTERPRET"] = "1"
        _stub_kernel_launches()
    torch.set_num_threads(1)
    names, losses_of_steps = zip(*training_steps())
    times = step_times(list(losses_of_steps), args.rounds)
    for name, loss_of_step, ms in zip(names, losses_of_steps, times):
        c = counts(loss_of_step)
        print(f"{name:26s} {c['aten']:6d} aten ops {c['nodes']:5d} autograd nodes {c['python']:6d} Python calls "
              f"{ms:7.2f} ms per step (CPU), {ms / times[0]:.2f}x the first")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
