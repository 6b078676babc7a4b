"""CI smoke test of ``python -m benchmarks``: tiny shapes on the CPU, every group, JSON + plots + table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_every_figure(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--device", "cpu", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    data = json.loads((tmp_path / "results.json").read_text())
    records = data["results"]
    assert {r["group"] for r in records} == {"vision", "mlm", "inference", "operator"}
    assert data["meta"]["mode"] == "smoke" and data["meta"]["command"].startswith("python -m benchmarks")
    for record in records:
        assert record["status"] == "ok", record
        assert record["median_ms"] > 0 and record["repeats"] >= 1
        assert record["time_ratio"] is not None
    baselines = {r["model"] for r in records if r["time_ratio"] == 1.0}
    assert {"ViT SDPA", "BERT SDPA", "SDPA"} <= baselines
    vision = {(r["model"]) for r in records if r["group"] == "vision"}
    assert vision == {"ViT SDPA", "LION-LIT", "LION-D", "LION-S", "LION-D snake", "LION-S snake"}
    forms = {(r["model"], r["form"], r["chunk_size"]) for r in records if r["group"] == "inference"}
    for variant in ("LION-LIT", "LION-D", "LION-S"):
        assert {(variant, "parallel", None), (variant, "chunk", 8), (variant, "recurrent", 8)} <= forms
    assert {r["resolution"] for r in records if r["group"] == "inference"} == {32, 64}

    for name in ("inference_time.png", "operator_time.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "== vision training step" in result.stdout and "LION-S snake" in result.stdout


def test_replot_redraws_from_a_results_file(tmp_path):
    source = tmp_path / "results.json"
    record = {
        "group": "inference", "shape": "s", "resolution": 32, "tokens": 5, "batch": 1, "model": "ViT SDPA",
        "form": None, "chunk_size": None, "status": "ok", "median_ms": 2.0, "peak_mb": None,
        "time_ratio": 1.0, "memory_ratio": None,
    }
    lion = {**record, "model": "LION-D", "form": "chunk", "chunk_size": 8, "median_ms": 3.0, "time_ratio": 1.5}
    meta = {"device": "cpu", "mode": "smoke", "torch": "x", "transformers": "y", "date": "today"}
    source.write_text(json.dumps({"meta": meta, "results": [record, lion], "targets": []}))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--replot", str(source), "--out", str(tmp_path / "plots")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "plots" / "inference_time.png").exists()
    assert "LION-D chunk/8" in result.stdout and "1.50" in result.stdout


def test_compiled_groups_get_their_own_baselines_and_no_eager_targets():
    from benchmarks import report

    def record(model, median_ms):
        return {"group": "compiled_mlm", "shape": "BERT-base", "seq_len": 128, "batch": 8, "model": model,
                "form": None, "chunk_size": None, "status": "ok", "median_ms": median_ms, "peak_mb": 100.0}  # fmt: skip

    records = [record("BERT SDPA", 40.0), record("LION-S", 46.0)]
    report.add_ratios(records)
    assert [r["time_ratio"] for r in records] == [1.0, 46.0 / 40.0]
    # The training targets are about the eager groups; a run without them decides none of them.
    assert report.evaluate_targets(records) == []
    assert "== MLM training step under torch.compile ==" in report.table(records, [])


def test_operator_lengths_and_bad_flags(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "benchmarks", "--smoke", "--device", "cpu", "--no-plots", "--out", str(tmp_path)]
    result = subprocess.run(
        command + ["--groups", "operator", "--operator-lengths", "16,24"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "results.json").read_text())["results"]
    assert {r["seq_len"] for r in records} == {16, 24}
    for flags, message in [
        (["--operator-lengths", "16,x"], "expected comma-separated positive integers, got '16,x'"),
        (["--vision-shapes", "ViT-H/14"], "unknown vision shape(s) ['ViT-H/14']; allowed: ViT-B/16, ViT-S/16"),
    ]:
        result = subprocess.run(command + flags, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
