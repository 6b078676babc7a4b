"""Where one training step of ViT-B/16 (or of BERT-base MLM) spends its time: host, GPU, and the GPU's time per
kernel.

    python -m benchmarks.profile_step [--models timm,lit,d,s,d-snake] [--batch 64] [--out profile.json] [--python N]
                                      [--compile [MODE]] [--rounds 20]
    python -m benchmarks.profile_step --task mlm [--models bert,lit,d,s] [--seq 128] [--batch 128] ...
    python -m benchmarks.profile_step --task long_mlm [--seq 8192] [--batch 2] ...  # LION in the chunk form

The models' steps are timed in interleaved rounds (every model once per round, all of them built and warmed up
first), since a GPU machine's host speed can drift by tens of percent within minutes: ``wall`` is the median step
with a synchronisation after it, ``wall_ratio`` the median over the rounds of its ratio to the first model's step
in the same round; ``host`` the median time the Python side takes to issue one step (measured from an idle GPU, so
no launch waits on a busy one). Then each model's steps on their own (every model is built, and compiled, once):
``gpu`` the kernels' summed durations per step (torch.profiler), grouped (LION's Triton kernels, attention, matrix
products, the rest) and the largest listed with their calls and time per step; ``peak_mb`` the peak memory of its
steps (its weights, optimiser state and inputs included, the other models' not); ``syncs`` the operations of a step
that make the host wait for the GPU (``torch.cuda.set_sync_debug_mode``). A step is host-bound when ``host`` is
close to ``wall``, ``gpu`` well below it and no sync in it. ``--python N`` adds the N Python functions with the
most time of their own in one step (cProfile); ``--compile`` profiles ``torch.compile``d models (``--compile
reduce-overhead``: with CUDA graphs, which replay a step's launches without the host). Needs a CUDA
device.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from .models import bert_sdpa, comma_separated, lion_mlm, lion_vision, timm_available, timm_vit, vit_sdpa
from .suites import BERT_BASE, VIT_B, full_settings, mlm_inputs

# Vision models: label, variant, patch order, attention form ("lit-chunk": LIT's linear form through the chunk
# kernels, at a length where the parallel form takes the parallel kernels).
MODELS = {
    "timm": ("timm ViT", None, None, None),
    "vit": ("ViT SDPA", None, None, None),
    "lit": ("LION-LIT", "lit", "raster", "parallel"),
    "lit-chunk": ("LION-LIT chunk", "lit", "raster", "chunk"),
    "d": ("LION-D", "d", "raster", "parallel"),
    "s": ("LION-S", "s", "raster", "parallel"),
    "d-snake": ("LION-D snake", "d", "snake", "parallel"),
    "s-snake": ("LION-S snake", "s", "snake", "parallel"),
}
# ``--task mlm``: BERT-base-shaped masked-LM models, their attention dropout included (as the ``mlm`` group).
TEXT_MODELS = {"bert": ("BERT SDPA", None), "lit": ("LION-LIT", "lit"), "d": ("LION-D", "d"), "s": ("LION-S", "s")}
# Per task: its models, the ones profiled by default, its default batch and tokens per sequence. ``long_mlm``: the
# ``long_mlm`` group's models (position table of 16384, LION in the chunk form) in interleaved rounds.
TASKS = {
    "vit": (MODELS, ["timm", "lit", "d", "s", "d-snake"], 64, None),
    "mlm": (TEXT_MODELS, list(TEXT_MODELS), 128, 128),
    "long_mlm": (TEXT_MODELS, list(TEXT_MODELS), 2, 8192),
}
LONG = full_settings()
# LION's Triton kernels by their exact names (parallel, feature-map and chunk kernels); the other groups by parts of
# the library kernels' names.
LION_KERNELS = frozenset(
    ("_forward_kernel", "_backward_kernel", "_backward_q_kernel", "_backward_kv_kernel", "_states", "_total",
     "_output", "_gradients", "_row_dot", "_recurrent")
)  # fmt: skip
GROUPS = (
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("matrix products", ("gemm", "cutlass", "nvjet", "sm90_xmma", "wgmma", "cublas")),
)


def text_shape(task: str):
    """The BERT-base shape of a text task (the long one with a position table of 16384), ``None`` for vision."""
    return {"mlm": BERT_BASE, "long_mlm": LONG.long_text_shape}.get(task)


def build(key: str, task: str, device: torch.device):
    shape = text_shape(task)
    if shape is not None:
        if key == "bert":
            return bert_sdpa(shape, device)
        chunked = dict(attention_form="chunk", chunk_size=LONG.long_chunk_size) if task == "long_mlm" else {}
        return lion_mlm(shape, TEXT_MODELS[key][1], device, **chunked)
    _, variant, order, form = MODELS[key]
    if key == "timm":
        return timm_vit(VIT_B, device)
    if key == "vit":
        return vit_sdpa(VIT_B, device)
    return lion_vision(VIT_B, variant, order, device, attention_form=form)


def task_inputs(task: str, batch: int, length: int, device: torch.device) -> dict:
    """A fixed batch of the task: random images and labels, or a masked-LM batch of ``length`` tokens."""
    if text_shape(task) is not None:
        return mlm_inputs(text_shape(task), length, batch, device)
    pixels = torch.randn(batch, 3, VIT_B.image_size, VIT_B.image_size, device=device)
    return {"pixel_values": pixels, "labels": torch.randint(0, VIT_B.num_labels, (batch,), device=device)}


def describe(task: str, batch: int, length: int) -> str:
    if task == "vit":
        return f"ViT-B/16, batch {batch}"
    return f"BERT-base MLM{' (LION chunk form)' if task == 'long_mlm' else ''}, seq {length}, batch {batch}"


def group_of(kernel: str) -> str:
    if kernel in LION_KERNELS:
        return "lion kernels"
    lowered = kernel.lower()
    for group, needles in GROUPS:
        if any(needle.lower() in lowered for needle in needles):
            return group
    return "other"


TIMED_STEPS = 10
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def training_step(key: str, workload: tuple[str, int, int], device: torch.device, compile_mode: str | None):
    """One bf16 training step (AdamW) of model ``key`` on a fixed batch of ``workload`` (task, batch, length),
    warmed up; ``compile_mode``: a ``torch.compile`` mode, or ``None`` for eager. Its ``resting_mb`` attribute: the
    memory the model keeps between steps (weights, optimiser state, inputs); ``warmup_peak_mb``: the most it held
    while warming up, when CUDA graphs (``reduce-overhead``) take their memory pools."""
    task, batch, length = workload
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    allocated = torch.cuda.memory_allocated()
    model = build(key, task, device).train()
    if compile_mode is not None:
        model = torch.compile(model, mode=compile_mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = task_inputs(task, batch, length, device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    step.resting_mb = (torch.cuda.memory_allocated() - allocated) / 2**20
    step.warmup_peak_mb = (torch.cuda.max_memory_allocated() - allocated) / 2**20
    return step


def timed_step(step) -> tuple[float, float]:
    """``(host, wall)`` seconds of one step from an idle GPU."""
    torch.cuda.synchronize()
    begin = time.perf_counter()
    step()
    host = time.perf_counter() - begin
    torch.cuda.synchronize()
    return host, time.perf_counter() - begin


def interleaved_times(steps: list, rounds: int) -> list[dict]:
    """Per step: the median ``wall_ms`` and ``host_ms`` over ``rounds`` rounds that run every step once in turn,
    and ``wall_ratio``, the median of its wall time over the first step's in the same round."""
    times = [[timed_step(step) for step in steps] for _ in range(rounds)]
    return [
        {
            "host_ms": statistics.median(row[index][0] for row in times) * 1e3,
            "wall_ms": statistics.median(row[index][1] for row in times) * 1e3,
            "wall_ratio": statistics.median(row[index][1] / row[0][1] for row in times),
        }
        for index in range(len(steps))
    ]


def profile_model(key: str, step, workload: tuple[str, int, int], python_rows: int = 0, compile_mode=None) -> dict:
    """The profile of model ``key``'s warmed-up ``step`` (from ``training_step``); its peak memory is what it keeps
    between steps plus the most a step allocates on top of that, or its warm-up's peak where that is higher (CUDA
    graphs' pools), so that other models alive beside it do not count."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    for _ in range(TIMED_STEPS):
        step()
    torch.cuda.synchronize()
    peak_mb = max(step.warmup_peak_mb, step.resting_mb + (torch.cuda.max_memory_allocated() - before) / 2**20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message)]
    torch.cuda.synchronize()
    profiled = 2
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(profiled):
            step()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for event in profiler.events():
        # GPU-side annotations (the optimizer's step region) span kernels that are counted on their own.
        if event.device_type == torch.autograd.DeviceType.CUDA and not event.is_user_annotation:
            kernels.setdefault(event.name, []).append(event.time_range.elapsed_us() / 1e3)
    per_kernel = sorted(
        ({"kernel": name[:90], "group": group_of(name), "calls_per_step": len(t) / profiled,
          "ms_per_step": sum(t) / profiled} for name, t in kernels.items()),
        key=lambda row: -row["ms_per_step"],
    )  # fmt: skip
    python = None
    if python_rows:
        profiler_py = cProfile.Profile()
        profiler_py.runcall(step)
        torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(profiler_py, stream=text).sort_stats("tottime").print_stats(python_rows)
        python = text.getvalue()
    groups = {}
    for row in per_kernel:
        groups[row["group"]] = groups.get(row["group"], 0.0) + row["ms_per_step"]
    return {
        "model": TASKS[workload[0]][0][key][0],
        "task": workload[0],
        "seq_len": workload[2],
        "compile_mode": compile_mode,
        "batch": workload[1],
        "gpu_ms": sum(groups.values()),
        "peak_mb": peak_mb,
        "syncs": syncs,
        "gpu_ms_by_group": groups,
        "kernels": per_kernel[:15],
        "python": python,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, default="vit", help="vit (default), mlm or long_mlm")
    parser.add_argument(
        "--models", type=comma_separated({**MODELS, **TEXT_MODELS}), default=None,
        help="comma-separated; " + "; ".join(
            f"{task}: {', '.join(models)} (default {','.join(chosen)})" for task, (models, chosen, *_) in TASKS.items()
        ),
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=None, help="default 64 (vit), 128 (mlm), 2 (long_mlm)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 128 (mlm), 8192 (long_mlm))")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--python", type=int, default=0, metavar="N", help="list the N costliest Python functions")
    parser.add_argument(
        "--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES, metavar="MODE",
        help=f"torch.compile each model (compiled during warm-up) in MODE, one of {', '.join(COMPILE_MODES)}; "
        "'default' when MODE is left out",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default 20)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    known, default_models, default_batch, default_seq = TASKS[args.task]
    keys = args.models or default_models
    wrong = [key for key in keys if key not in known]
    if wrong:
        parser.error(f"models {wrong} are not models of --task {args.task}; choose from {', '.join(known)}")
    batch = default_batch if args.batch is None else args.batch
    if batch < 1:
        parser.error(f"--batch must be at least 1, got {batch}")
    workload = (args.task, batch, default_seq if args.seq is None else args.seq)
    longest = text_shape(args.task)
    if longest is not None and not 1 <= workload[2] <= longest.max_position_embeddings:
        parser.error(f"--seq must be 1 to {longest.max_position_embeddings} for --task {args.task}, got {workload[2]}")
    if not torch.cuda.is_available():
        parser.error("profiling a step needs a CUDA device")
    if "timm" in keys and not timm_available():
        parser.error("timm is not installed (drop 'timm' from --models)")
    device = torch.device("cuda")
    if args.compile is not None:
        # Several LION configurations compile the same frames (transformers' output wrappers): more guards per frame
        # than dynamo's default limit allows would send the later models back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8 * len(keys))
    steps = [training_step(key, workload, device, args.compile) for key in keys]
    times = interleaved_times(steps, args.rounds)
    results = []
    for key, step, timing in zip(keys, steps, times):
        result = {**profile_model(key, step, workload, args.python, args.compile), **timing}
        results.append(result)
        groups = ", ".join(f"{group} {ms:.2f}" for group, ms in sorted(result["gpu_ms_by_group"].items()))
        compiled = "" if args.compile is None else f" compiled ({args.compile})"
        print(
            f"\n{result['model']}{compiled} ({describe(*workload)}): wall {result['wall_ms']:.2f} ms "
            f"({result['wall_ratio']:.2f}x the first), host {result['host_ms']:.2f} ms, GPU {result['gpu_ms']:.2f} ms "
            f"({groups}), peak {result['peak_mb']:.0f} MB; {len(result['syncs'])} syncs {result['syncs'][:3]}",
            flush=True,
        )
        for row in result["kernels"][:10]:
            print(f"  {row['ms_per_step']:7.3f} ms  x{row['calls_per_step']:<5g} {row['group']:<16} {row['kernel']}")
        if result["python"]:
            print(result["python"])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results},
                      handle, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
