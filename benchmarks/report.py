"""Ratios to the softmax baselines, the issue's targets, the stdout table, the JSON and the plots."""

from __future__ import annotations

import json
from pathlib import Path

# The softmax models of each group; ratios are to the fastest of them in the same case and run.
SOFTMAX_MODELS = {
    "vision": ("ViT SDPA", "timm ViT"),
    "compiled": ("ViT SDPA", "timm ViT"),
    "mlm": ("BERT SDPA",),
    "compiled_mlm": ("BERT SDPA",),
    "inference": ("ViT SDPA",),
    "operator": ("SDPA",),
    "long_operator": ("SDPA",),
    "long_inference": ("timm ViT", "ViT SDPA"),
    "long_mlm": ("BERT SDPA",),
}
# The softmax model the ratios are to (the fastest, where a group has several).
BASELINES = {group: models[0] for group, models in SOFTMAX_MODELS.items()}
# The keys that make two records the same configuration apart from the model.
CASE_KEYS = {
    "vision": ("shape", "batch"),
    "compiled": ("shape", "batch"),
    "mlm": ("seq_len", "batch"),
    "compiled_mlm": ("seq_len", "batch"),
    "inference": ("resolution", "batch"),
    "operator": ("seq_len", "batch"),
    "long_operator": ("seq_len", "batch"),
    "long_inference": ("resolution", "batch"),
    "long_mlm": ("seq_len", "batch"),
}


def _case(record: dict) -> tuple:
    return tuple(record[k] for k in CASE_KEYS[record["group"]])


def add_ratios(records: list[dict]) -> None:
    """``time_ratio`` and ``memory_ratio`` of every measured record to the fastest softmax model of its group in the
    same case (named in ``baseline``); the memory ratio is to that model's peak too."""
    baselines: dict[tuple, dict] = {}
    for r in records:
        if r["model"] in SOFTMAX_MODELS[r["group"]] and r["status"] == "ok":
            key = (r["group"], _case(r))
            if key not in baselines or r["median_ms"] < baselines[key]["median_ms"]:
                baselines[key] = r
    for record in records:
        base = baselines.get((record["group"], _case(record)))
        ok = record["status"] == "ok" and base is not None
        record["baseline"] = base["model"] if base is not None else None
        record["time_ratio"] = record["median_ms"] / base["median_ms"] if ok else None
        record["memory_ratio"] = (
            record["peak_mb"] / base["peak_mb"] if ok and record["peak_mb"] and base["peak_mb"] else None
        )


def _find(records, **keys) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in keys.items())]


def _ok(records) -> list[dict]:
    return [r for r in records if r["status"] == "ok"]


def _ratio_target(name: str, record: dict | None, limit: float, key: str = "time_ratio") -> dict:
    value = None if record is None else record.get(key)
    return {"target": name, "limit": limit, "value": value, "met": value is not None and value <= limit}


# Issue 13's training targets (ratios to the fastest softmax model; eager against eager, compiled against compiled).
VISION_TARGETS = {"LION-LIT": 0.90, "LION-D": 0.95, "LION-S": 1.00, "LION-D snake": 1.05, "LION-S snake": 1.05}
MLM_TARGETS = {(128, 128): 1.00, (512, 32): 0.95}  # (sequence length, batch): limit for every variant
TRAINING_MEMORY_LIMIT = 1.05
# The operator alone (parallel form): within 1.2x of SDPA for D and S, faster than SDPA for LIT.
OPERATOR_LENGTHS = (197, 512, 1024)
OPERATOR_TARGETS = {"LION-LIT": 1.0, "LION-D": 1.2, "LION-S": 1.2}


def evaluate_targets(records: list[dict]) -> list[dict]:
    """The issue's targets of the groups that ran, each with the figure that decides it; a missing figure of a
    group that ran counts as missed."""
    targets = []
    for group, title in (("vision", "vision training"), ("compiled", "compiled vision training")):
        shape = next((r["shape"] for r in records if r["group"] == group), None)
        if shape is None:
            continue
        for name, limit in VISION_TARGETS.items():
            match = _find(records, group=group, shape=shape, model=name)
            record = match[0] if match else None
            targets.append(_ratio_target(f"{title} {shape} {name} time", record, limit))
            targets.append(
                _ratio_target(f"{title} {shape} {name} peak memory", record, TRAINING_MEMORY_LIMIT, "memory_ratio")
            )
    for group, title in (("mlm", "MLM training"), ("compiled_mlm", "compiled MLM training")):
        cases = sorted({(r["seq_len"], r["batch"]) for r in records if r["group"] == group})
        for (length, batch), limit in MLM_TARGETS.items():
            if (length, batch) not in cases:
                continue
            for label in ("LIT", "D", "S"):
                match = _find(records, group=group, seq_len=length, batch=batch, model=f"LION-{label}")
                record = match[0] if match else None
                name = f"{title} seq {length} batch {batch} LION-{label}"
                targets.append(_ratio_target(f"{name} time", record, limit))
                targets.append(_ratio_target(f"{name} peak memory", record, TRAINING_MEMORY_LIMIT, "memory_ratio"))
    lengths = {r["seq_len"] for r in records if r["group"] == "operator"}
    for length in OPERATOR_LENGTHS:
        if length not in lengths:
            continue
        for name, limit in OPERATOR_TARGETS.items():
            match = _find(records, group="operator", seq_len=length, model=name, form="parallel")
            target = _ratio_target(f"operator {length} tokens {name} parallel", match[0] if match else None, limit)
            if limit == 1.0:  # "faster than SDPA"
                target["met"] = target["value"] is not None and target["value"] < 1.0
            targets.append(target)
    resolutions = sorted({r["resolution"] for r in records if r["group"] == "inference"})
    variants = sorted({r["model"] for r in records if r["group"] == "inference" and r["model"].startswith("LION")})
    for variant in variants:
        if 1024 in resolutions:
            chunks = _ok(_find(records, group="inference", resolution=1024, model=variant, form="chunk"))
            fastest = min(chunks, key=lambda r: r["median_ms"], default=None)
            smallest = min(chunks, key=lambda r: r["peak_mb"] or float("inf"), default=None)
            time_target = _ratio_target(f"inference 1024 px {variant} chunk time", fastest, 1.5)
            memory_target = _ratio_target(
                f"inference 1024 px {variant} chunk peak memory", smallest, 1.0, "memory_ratio"
            )
            for target, record in ((time_target, fastest), (memory_target, smallest)):
                target["chunk_size"] = None if record is None else record["chunk_size"]
                targets.append(target)
        if 2048 in resolutions:
            chunks = _ok(_find(records, group="inference", resolution=2048, model=variant, form="chunk"))
            fastest = min(chunks, key=lambda r: r["median_ms"], default=None)
            target = _ratio_target(f"inference 2048 px {variant} chunk faster than ViT SDPA", fastest, 1.0)
            target["met"] = target["value"] is not None and target["value"] < 1.0
            target["chunk_size"] = None if fastest is None else fastest["chunk_size"]
            targets.append(target)
        if resolutions:
            low = resolutions[0]
            parallel = _ok(_find(records, group="inference", resolution=low, model=variant, form="parallel"))
            recurrent = [
                r
                for r in _ok(_find(records, group="inference", resolution=low, model=variant, form="recurrent"))
                if r["chunk_size"] != 1
            ]
            value = recurrent[0]["median_ms"] / parallel[0]["median_ms"] if parallel and recurrent else None
            targets.append(
                {
                    "target": f"inference {low} px {variant} recurrent / parallel time",
                    "limit": 10.0,
                    "value": value,
                    "met": value is not None and value <= 10.0,
                }
            )
    return targets + _long_sequence_targets(records)


def _long_sequence_targets(records: list[dict]) -> list[dict]:
    """Issue 14's targets, from the long-sequence groups that ran (the chunk form on the "auto" backend)."""
    targets = []
    operator = [r for r in _ok(records) if r["group"] == "long_operator" and not r.get("backend")]
    for label, limit in (("LIT", 2.0), ("D", 3.0), ("S", 3.0)):
        match = [r for r in operator if r["model"] == f"LION-{label}" and r["seq_len"] == 16384]
        if any(r["group"] == "long_operator" and r["seq_len"] == 16384 for r in records):
            target = _ratio_target(f"operator 16k tokens LION-{label} fwd+bwd ms", match[0] if match else None,
                                   limit, "median_ms")  # fmt: skip
            targets.append(target)
        if any(r["group"] == "long_operator" and r["seq_len"] == 4096 for r in records):
            match = [r for r in operator if r["model"] == f"LION-{label}" and r["seq_len"] == 4096]
            targets.append(_ratio_target(f"operator 4k tokens LION-{label} vs SDPA", match[0] if match else None, 0.5))
    mlm_limits = {2048: {"LIT": 0.8, "D": 0.8, "S": 0.8}, 8192: {"LIT": 1 / 3, "D": 0.5, "S": 0.5}}
    for seq_len, limits in mlm_limits.items():
        if not any(r["group"] == "long_mlm" and r["seq_len"] == seq_len for r in records):
            continue
        for label, limit in limits.items():
            match = _find(records, group="long_mlm", seq_len=seq_len, model=f"LION-{label}")
            targets.append(_ratio_target(f"MLM seq {seq_len} LION-{label}", match[0] if match else None, limit))
    for resolution, time_limit in ((1024, 1.0), (2048, 0.5)):
        if not any(r["group"] == "long_inference" and r["resolution"] == resolution for r in records):
            continue
        for label in ("LIT", "D", "S"):
            chunk = _ok(_find(records, group="long_inference", resolution=resolution, model=f"LION-{label}", form="chunk"))
            record = chunk[0] if chunk else None
            name = f"ViT-B/16 {resolution} px LION-{label} chunk"
            targets.append(_ratio_target(f"{name} time vs timm", record, time_limit))
            targets.append(_ratio_target(f"{name} peak memory vs timm", record, 1.0, "memory_ratio"))
            if resolution == 1024:
                recurrent = _ok(_find(records, group="long_inference", resolution=1024, model=f"LION-{label}",
                                      form="recurrent"))  # fmt: skip
                for key, what in (("median_ms", "time"), ("peak_mb", "peak memory")):
                    ok = recurrent and record and recurrent[0][key] and record[key]
                    value = recurrent[0][key] / record[key] if ok else None
                    limit = 2.0 if key == "median_ms" else 1.0
                    targets.append({"target": f"{name}: recurrent / chunk {what}", "limit": limit, "value": value,
                                    "met": value is not None and value <= limit})  # fmt: skip
    return targets


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _describe(record: dict) -> str:
    form = record.get("form")
    if form is None:
        return record["model"]
    chunk = f"/{record['chunk_size']}" if form != "parallel" and record.get("chunk_size") else ""
    backend = f" [{record['backend']}]" if record.get("backend") else ""
    return f"{record['model']} {form}{chunk}{backend}"


def table(records: list[dict], targets: list[dict]) -> str:
    lines = []
    titles = {
        "vision": "vision training step (fwd + bwd + AdamW, bf16 autocast)",
        "compiled": "vision training step under torch.compile",
        "mlm": "MLM training step (fwd + bwd + AdamW, bf16 autocast)",
        "compiled_mlm": "MLM training step under torch.compile",
        "inference": "inference (bf16 autocast) against resolution",
        "operator": "attention operator alone, fwd + bwd (bf16)",
        "long_operator": "long sequences: attention operator alone, fwd + bwd (bf16)",
        "long_inference": "long sequences: ViT inference (bf16 autocast) against resolution, vs timm",
        "long_mlm": "long sequences: MLM training step, LION in the chunk form",
    }
    for group, title in titles.items():
        rows = [r for r in records if r["group"] == group]
        if not rows:
            continue
        against = sorted({r["baseline"] for r in rows if r.get("baseline")})
        lines.append(f"\n== {title} ==" + (f" (ratios to {', '.join(against)})" if against else ""))
        lines.append(
            f"{'case':<24} {'configuration':<28} {'median ms':>10} {'x base':>7} {'peak MB':>9} {'x mem':>6}  note"
        )
        for r in rows:
            case = " ".join(f"{k}={r[k]}" for k in CASE_KEYS[group])
            note = "" if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
            lines.append(
                f"{case:<24} {_describe(r):<28} {_fmt(r.get('median_ms'), '10.2f')} "
                f"{_fmt(r.get('time_ratio'), '7.2f')} {_fmt(r.get('peak_mb'), '9.0f')} "
                f"{_fmt(r.get('memory_ratio'), '6.2f')}  {note}"
            )
    if targets:
        lines.append("\n== targets ==")
        for t in targets:
            verdict = "MET" if t["met"] else "MISSED"
            chunk = f" (chunk {t['chunk_size']})" if t.get("chunk_size") else ""
            lines.append(f"{verdict:<7} {t['target']}{chunk}: {_fmt(t['value'], '.2f')} (limit {t['limit']})")
    return "\n".join(lines)


def write_json(path: Path, meta: dict, records: list[dict], targets: list[dict]) -> None:
    path.write_text(json.dumps({"meta": meta, "results": records, "targets": targets}, indent=1) + "\n")


def read_json(path: Path) -> tuple[dict, list[dict], list[dict]]:
    data = json.loads(path.read_text())
    return data["meta"], data["results"], data["targets"]


def _series(records: list[dict], group: str, x_key: str, model: str) -> dict[str, list[tuple[int, dict]]]:
    lines: dict[str, list[tuple[int, dict]]] = {}
    for r in records:
        if r["group"] == group and (r["model"] == model or r["model"] in SOFTMAX_MODELS[group]):
            lines.setdefault(_describe(r), []).append((r[x_key], r))
    return lines


def plot(records: list[dict], out_dir: Path, mode_note: str) -> list[Path]:
    """Time and peak memory against resolution (inference) and sequence length (operator), one panel per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for group, x_key, x_label in (
        ("inference", "resolution", "image side (px)"),
        ("operator", "seq_len", "tokens"),
        ("long_inference", "resolution", "image side (px)"),
        ("long_operator", "seq_len", "tokens"),
        ("long_mlm", "seq_len", "tokens"),
    ):
        # One panel per LION variant, each with every softmax model of the group as a reference line.
        names = {r["model"] for r in records if r["group"] == group and r["model"] not in SOFTMAX_MODELS[group]}
        variants = [v for v in ("LION-LIT", "LION-D", "LION-S") if v in names] + sorted(
            names - {"LION-LIT", "LION-D", "LION-S"}
        )
        if not variants:
            continue
        quantities = (("time", "median_ms", "median time (ms)"), ("memory", "peak_mb", "peak memory (MiB)"))
        for quantity, y_key, y_label in quantities:
            if not any(r.get(y_key) for r in records if r["group"] == group):
                continue
            fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 4.5), squeeze=False)
            for ax, variant in zip(axes[0], variants):
                for name, points in _series(records, group, x_key, variant).items():
                    xs = [x for x, r in points if r["status"] == "ok" and r.get(y_key)]
                    ys = [r[y_key] for x, r in points if r["status"] == "ok" and r.get(y_key)]
                    style = {}
                    if name == BASELINES[group]:
                        style = dict(color="black", linewidth=2.5)
                    elif name in SOFTMAX_MODELS[group]:
                        style = dict(color="gray", linewidth=2, linestyle="--")
                    if xs:
                        ax.plot(xs, ys, marker="o", label=name, **style)
                    failed = [x for x, r in points if r["status"] == "oom"]
                    if failed and xs:
                        ax.plot(failed, [max(ys)] * len(failed), "x", color=ax.lines[-1].get_color(), markersize=10)
                ax.set_xscale("log", base=2)
                ticks = sorted({r[x_key] for r in records if r["group"] == group})
                ax.set_xticks(ticks, [str(t) for t in ticks])
                ax.minorticks_off()
                ax.set_yscale("log")
                ax.set_xlabel(x_label)
                ax.set_ylabel(y_label)
                ax.set_title(variant)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7)
            fig.suptitle(f"{group}: {quantity} ({mode_note}; x = out of memory)")
            fig.tight_layout()
            path = out_dir / f"{group}_{quantity}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
