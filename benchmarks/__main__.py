"""``python -m benchmarks``: LION against softmax (SDPA) baselines in one run; JSON, plots and a ratio table."""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers

import lion_hf

from . import report
from .suites import GROUPS, VISION_SHAPES, full_settings, smoke_settings

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes that run on a CPU in seconds (the CI smoke test)"
    )
    parser.add_argument(
        "--groups",
        default="vision,mlm,inference,operator",
        help=f"comma-separated groups to run, from: {', '.join(GROUPS)} (default: all but the compiled ones)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--no-plots", action="store_true", help="write the JSON and the table only")
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: print the table and redraw the plots (into --out) from a results.json",
    )
    for name, kind, what in (
        ("warmup", int, "untimed calls before timing"),
        ("repeats", int, "timed calls (the median is reported)"),
        ("budget-s", float, "seconds of timed calls per configuration (caps --repeats)"),
        ("max-call-s", float, "skip (and record) a configuration predicted to take longer per call"),
    ):
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"{what} (default: the mode's setting)")
    parser.add_argument(
        "--operator-lengths",
        type=_positive_ints,
        default=None,
        metavar="N,N,...",
        help="sequence lengths of the operator group (default: the mode's setting)",
    )
    parser.add_argument(
        "--vision-shapes",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        default=None,
        metavar="NAME,...",
        help=f"vision training shapes, from: {', '.join(VISION_SHAPES)} (default: the mode's setting)",
    )
    return parser


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _meta(device: torch.device, settings, elapsed_s: float) -> dict:
    meta = {
        "command": "python -m benchmarks " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": settings.mode,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "lion_hf": lion_hf.__version__,
        "python": platform.python_version(),
        "autocast": "bfloat16" if settings.autocast else None,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "budget_s_per_configuration": settings.budget_s,
        "elapsed_s": round(elapsed_s, 1),
    }
    return meta


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replot is not None:
        meta, records, targets = report.read_json(args.replot)
        args.out.mkdir(parents=True, exist_ok=True)
        report.plot(records, args.out, f"{meta['device']}, {meta['mode']}")
        print(f"{meta['device']} | torch {meta['torch']} | transformers {meta['transformers']} | {meta['date']}")
        print(report.table(records, targets))
        return 0
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise SystemExit(f"unknown benchmark group(s) {unknown or groups}; allowed: {', '.join(GROUPS)}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {
        key: getattr(args, key)
        for key in ("warmup", "repeats", "budget_s", "max_call_s", "operator_lengths")
        if getattr(args, key) is not None
    }
    if args.vision_shapes is not None:
        unknown = [name for name in args.vision_shapes if name not in VISION_SHAPES]
        if unknown or not args.vision_shapes:
            raise SystemExit(f"unknown vision shape(s) {unknown}; allowed: {', '.join(VISION_SHAPES)}")
        overrides["vision_shapes"] = tuple(VISION_SHAPES[name] for name in args.vision_shapes)
    settings = smoke_settings(**overrides) if args.smoke else full_settings(**overrides)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    records = []
    for group in groups:
        for record in GROUPS[group](settings, device):
            records.append(record)
            status = f"{record['median_ms']:.2f} ms" if record["status"] == "ok" else record["status"]
            keys = ("shape", "seq_len", "resolution", "form", "chunk_size")
            details = ", ".join(f"{k}={record[k]}" for k in keys if record.get(k) is not None)
            print(f"[{group}] {record['model']} ({details}): {status}", flush=True)
        # Written after every group, so that an interrupted run keeps what it measured.
        report.add_ratios(records)
        targets = report.evaluate_targets(records) if not args.smoke else []
        meta = _meta(device, settings, time.perf_counter() - start)
        report.write_json(args.out / "results.json", meta, records, targets)
    if not args.no_plots:
        report.plot(records, args.out, f"{meta['device']}, {settings.mode}")
    print(f"\n{meta['device']} | torch {meta['torch']} | transformers {meta['transformers']} | {meta['date']}")
    print(report.table(records, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
