"""CI smoke test of ``python -m benchmarks``: tiny shapes on the CPU, every group, JSON + plots + table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import report
from benchmarks.models import timm_available

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
    # Ratios are to the fastest softmax model of each case; timm's ViT joins where timm is installed.
    for record in records:
        base = next(r for r in records if r["model"] == record["baseline"] and r["group"] == record["group"]
                    and all(r[k] == record[k] for k in report.CASE_KEYS[r["group"]]))  # fmt: skip
        assert base["model"] in report.SOFTMAX_MODELS[record["group"]] and base["time_ratio"] == 1.0
        softmax = [r for r in records if r["model"] in report.SOFTMAX_MODELS[record["group"]]
                   and r["group"] == record["group"] and all(r[k] == record[k] for k in report.CASE_KEYS[r["group"]])]  # fmt: skip
        assert base["median_ms"] == min(r["median_ms"] for r in softmax)
    vision = {(r["model"]) for r in records if r["group"] == "vision"}
    lion = {"LION-LIT", "LION-D", "LION-S", "LION-D snake", "LION-S snake"}
    assert vision == {"ViT SDPA", *(["timm ViT"] if timm_available() else []), *lion}
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


def test_compiled_groups_get_their_own_baselines_and_targets():
    def record(model, median_ms, peak_mb=100.0):
        return {"group": "compiled_mlm", "shape": "BERT-base", "seq_len": 128, "batch": 128, "model": model,
                "form": None, "chunk_size": None, "status": "ok", "median_ms": median_ms, "peak_mb": peak_mb}  # fmt: skip

    records = [record("BERT SDPA", 40.0), record("LION-S", 46.0, 104.0)]
    report.add_ratios(records)
    assert [r["time_ratio"] for r in records] == [1.0, 46.0 / 40.0]
    # Compiled against compiled: the seq-128 MLM targets, time and memory, of every variant (missing ones missed).
    targets = {t["target"]: t for t in report.evaluate_targets(records)}
    assert len(targets) == 6 and not any(t["met"] for t in targets.values() if t["value"] is None)
    assert targets["compiled MLM training seq 128 batch 128 LION-S time"]["value"] == 46.0 / 40.0
    assert not targets["compiled MLM training seq 128 batch 128 LION-S time"]["met"]
    assert targets["compiled MLM training seq 128 batch 128 LION-S peak memory"]["met"]
    assert "== MLM training step under torch.compile == (ratios to BERT SDPA)" in report.table(records, [])


def test_ratios_are_to_the_fastest_softmax_model_of_the_case():
    def record(model, median_ms):
        return {"group": "vision", "shape": "ViT-B/16", "batch": 64, "model": model, "form": None,
                "chunk_size": None, "status": "ok", "median_ms": median_ms, "peak_mb": 100.0}  # fmt: skip

    records = [record("ViT SDPA", 36.0), record("timm ViT", 24.0), record("LION-D", 30.0)]
    report.add_ratios(records)
    assert [r["baseline"] for r in records] == ["timm ViT"] * 3
    assert records[2]["time_ratio"] == 30.0 / 24.0 and records[0]["time_ratio"] == 1.5


def test_operator_lengths_and_bad_flags(tmp_path, capsys):
    from benchmarks.__main__ import main

    flags = ["--smoke", "--device", "cpu", "--no-plots", "--out", str(tmp_path)]
    assert main([*flags, "--groups", "operator", "--operator-lengths", "16,24"]) == 0
    records = json.loads((tmp_path / "results.json").read_text())["results"]
    assert {r["seq_len"] for r in records} == {16, 24}
    capsys.readouterr()
    for bad, message in [
        (["--operator-lengths", "16,x"], "expected comma-separated positive integers, got '16,x'"),
        (["--vision-shapes", "ViT-H/14"], "unknown vision shape(s) ['ViT-H/14']; allowed: ViT-B/16, ViT-S/16"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*flags, *bad])
        assert exit_info.value.code != 0
        assert message in capsys.readouterr().err + str(exit_info.value.code)


def test_long_sequence_groups_run_and_draw(tmp_path):
    groups = "long_operator,long_inference,long_mlm"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--groups", groups, "--device", "cpu", "--out", str(tmp_path)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "results.json").read_text())["results"]
    assert {r["group"] for r in records} == set(groups.split(","))
    for record in records:
        # timm is the vision baseline where it is installed (on the GPU machines); elsewhere its row says so.
        if record["model"] == "timm ViT" and record["status"] == "skipped":
            assert record["reason"] == "timm is not installed"
        else:
            assert record["status"] == "ok", record
    operator = {(r["model"], r.get("backend")) for r in records if r["group"] == "long_operator"}
    assert {("LION-S", None), ("LION-S", "pytorch"), ("SDPA", None)} <= operator
    forms = {(r["model"], r["form"]) for r in records if r["group"] == "long_inference"}
    assert {("LION-D", "chunk"), ("LION-D", "recurrent"), ("ViT SDPA", None), ("timm ViT", None)} <= forms
    for name in ("long_operator_time.png", "long_inference_time.png", "long_mlm_time.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_profile_step_groups_kernels_and_refuses_what_it_cannot_run(capsys):
    from benchmarks import profile_step

    for kernel in ("_backward_kv_kernel", "_states", "_gradients", "_output", "_total", "_row_dot", "_recurrent"):
        assert profile_step.group_of(kernel) == "lion kernels"
    assert profile_step.group_of("void at::native::max_pool_backward_output<float>") == "other"
    assert profile_step.group_of("cudnn_generated_fort_native_sdpa_sm90_flash_bprop") == "attention"
    assert profile_step.group_of("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN") == "matrix products"
    assert profile_step.group_of("void at::native::vectorized_elementwise_kernel<8>") == "other"
    for argv, message in [
        (["--models", "lit,mamba"], "unknown models ['mamba']"),
        (["--models", "lit"], "profiling a step needs a CUDA device"),
        (["--models", "lit", "--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--models", "lit", "--compile", "fast"], "argument --compile: invalid choice: 'fast'"),
        (["--task", "mlm", "--models", "bert,timm"], "models ['timm'] are not models of --task mlm"),
        (["--models", "bert"], "models ['bert'] are not models of --task vit"),
        (["--task", "mlm", "--seq", "2048"], "--seq must be 1 to 512 for --task mlm, got 2048"),
        (["--task", "long_mlm", "--seq", "0"], "--seq must be 1 to 16384 for --task long_mlm, got 0"),
        (["--batch", "0"], "--batch must be at least 1, got 0"),
    ]:
        with pytest.raises(SystemExit) as raised:
            profile_step.main(argv)
        assert raised.value.code == 2
        assert message in capsys.readouterr().err


def test_profile_step_long_mlm_builds_the_long_mlm_groups_models(monkeypatch):
    """``--task long_mlm``: the long-MLM group's models (its position table, LION in the chunk form) and batches."""
    from benchmarks import profile_step
    from benchmarks.suites import smoke_settings

    settings = smoke_settings()
    monkeypatch.setattr(profile_step, "LONG", settings)
    cpu = torch.device("cpu")
    bert, lion = (profile_step.build(key, "long_mlm", cpu) for key in ("bert", "d"))
    shape = settings.long_text_shape
    assert bert.config.max_position_embeddings == lion.config.max_position_embeddings == shape.max_position_embeddings
    assert (lion.config.variant, lion.config.attention_form) == ("d", "chunk")
    assert lion.config.chunk_size == settings.long_chunk_size
    length, batch = settings.long_mlm_cases[-1]
    inputs = profile_step.task_inputs("long_mlm", batch, length, cpu)
    assert inputs["input_ids"].shape == (batch, length) and int(inputs["input_ids"].max()) < shape.vocab_size
    assert lion(**inputs).loss.isfinite() and bert(**inputs).loss.isfinite()


def test_profile_step_rounds_step_every_model_in_turn_and_take_the_median_of_the_ratios(monkeypatch):
    from benchmarks import profile_step

    walls = {"timm": iter([1.0, 2.0, 10.0]), "lit": iter([5.0, 3.0, 4.0])}
    stepped = []

    def timed_step(key):
        stepped.append(key)
        wall = next(walls[key])
        return wall / 2, wall

    monkeypatch.setattr(profile_step, "timed_step", timed_step)
    timm, lit = profile_step.interleaved_times(["timm", "lit"], rounds=3)
    assert stepped == ["timm", "lit"] * 3
    assert (timm["wall_ms"], timm["host_ms"], timm["wall_ratio"]) == (2000.0, 1000.0, 1.0)
    # The rounds' ratios are 5, 1.5 and 0.4: their median, not the ratio of the medians (4 / 2).
    assert (lit["wall_ms"], lit["host_ms"], lit["wall_ratio"]) == (4000.0, 2000.0, 1.5)


def test_launch_cost_refuses_to_run_without_a_gpu(capsys):
    from benchmarks import launch_cost

    with pytest.raises(SystemExit) as raised:
        launch_cost.main([])
    assert raised.value.code == 2
    assert "timing kernel launches needs a CUDA device" in capsys.readouterr().err


def test_kernel_resources_compile_each_parallel_kernel_for_the_gpu_without_one(capsys):
    from benchmarks import kernel_resources
    from lion_hf.modeling import lion_triton

    assert kernel_resources.main(["--variants", "d", "--shapes", "vit", "--opcodes"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[2] for row in rows] == ["_forward_kernel", "_backward_q_kernel", "_backward_kv_kernel"]
    for row, kernel in zip(rows, ("forward", "backward_q", "backward_kv")):
        tiles = lion_triton._blocks(kernel, 197, torch.bfloat16)
        assert f"{tiles['BLOCK_M']}x{tiles['BLOCK_N']} warps {tiles['num_warps']}:" in row
        registers, stack, local, instructions = map(
            int, re.search(r"registers (\d+), stack (\d+) B, local (\d+) B; (\d+) instructions", row).groups()
        )
        assert 0 < registers <= 255 and stack >= 0 and local >= 0 and instructions > 100, row
    # The launches are captured, not run: the module's launcher is its own again afterwards.
    assert lion_triton.launch.__name__ == "launch"
    with pytest.raises(SystemExit):
        kernel_resources.main(["--variants", "x"])
    assert "unknown variants ['x']; choose from lit, d, s" in capsys.readouterr().err


def test_op_count_counts_each_autograd_node_once():
    from benchmarks.op_count import autograd_graph

    x = torch.randn(3, requires_grad=True)
    # Sum <- Mul <- AccumulateGrad(x), x reached through both factors of the product.
    assert len(autograd_graph((x * x).sum())) == 3
    # Add <- (Sum <- Exp <- Mul, Sum) <- one AccumulateGrad.
    assert len(autograd_graph((x * 2).exp().sum() + x.sum())) == 6


def test_memory_peak_replays_the_allocators_trace_and_names_the_allocating_lines(capsys):
    from benchmarks import memory_peak

    def frames(*where):
        return [{"filename": f, "line": line, "name": name} for f, line, name in where]

    inner = ("/site/torch/nn/functional.py", 10, "linear")
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": frames(inner, ("/m/modeling_lion.py", 5, "forward"))},
        {"action": "alloc", "addr": 2, "size": 50, "frames": frames(("/m/lion_triton.py", 7, "_forward"))},
        {"action": "free_requested", "addr": 1, "size": 100, "frames": []},
        {"action": "free_completed", "addr": 1, "size": 100, "frames": []},
        {"action": "alloc", "addr": 3, "size": 120, "frames": frames(("/m/modeling_lion.py", 5, "forward"))},
        {"action": "alloc", "addr": 4, "size": 10, "frames": frames(inner)},
        {"action": "free_completed", "addr": 99, "size": 7, "frames": []},  # allocated before the record began
        {"action": "free_completed", "addr": 4, "size": 10, "frames": []},
    ]
    peak, blocks = memory_peak.live_at_peak(trace)
    # Live totals: 100, 150, 50, 170, 180 (the peak: blocks 2, 3, 4), 180, 170.
    assert peak == 180
    assert sorted(block["addr"] for block in blocks) == [2, 3, 4]
    assert memory_peak.by_site(blocks) == {
        "modeling_lion.py:5 forward": 120, "lion_triton.py:7 _forward": 50, "torch (no frame outside it)": 10,
    }  # fmt: skip
    with pytest.raises(SystemExit) as raised:
        memory_peak.main(["--models", "bert,gpt"])
    assert raised.value.code == 2
    assert "unknown models ['gpt']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        memory_peak.main(["--models", "bert"])
    assert "recording the allocator needs a CUDA device" in capsys.readouterr().err


def _host_operation_counts(*options: str) -> dict:
    # A process of its own: --count replaces the kernels' launches for good.
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.operator_host", "--count", *options],
        cwd=REPO, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    totals = {}
    for line in result.stdout.splitlines():
        name, forward, backward, total = re.fullmatch(
            r"(\S+)\s+(\d+) aten ops forward,\s+(\d+) backward,\s+(\d+) in all", line
        ).groups()
        assert int(forward) + int(backward) == int(total) and int(forward) > 0 and int(backward) > 0
        totals[name] = int(total)
    assert list(totals) == ["SDPA", "LION-LIT", "LION-D", "LION-S"]
    return totals


def test_operator_host_counts_the_host_operations_of_every_operator_and_times_only_on_a_gpu(capsys):
    totals = _host_operation_counts()
    # The decays add host work: LION-D's closed form and LION-S's running sums on top of LION-LIT's.
    assert totals["SDPA"] < totals["LION-LIT"] < totals["LION-D"] < totals["LION-S"]
    # The chunk kernels take LION-D's decay as one number per head: fewer host operations than LION-S's
    # per-token running sums (before they did, LION-D made more: 77 against 68 at 256 tokens).
    totals = _host_operation_counts("--form", "chunk", "--length", "100")
    assert totals["SDPA"] < totals["LION-LIT"] < totals["LION-D"] < totals["LION-S"]
    from benchmarks import operator_host

    for argv in ([], ["--crossover"]):
        with pytest.raises(SystemExit) as raised:
            operator_host.main(argv)
        assert raised.value.code == 2
        assert "timing needs a CUDA device (--count runs on the CPU)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        operator_host.main(["--crossover", "--batch", "0"])
    assert "--batch must be at least 1, got 0" in capsys.readouterr().err


def test_series_guard_says_what_its_prediction_of_a_slow_call_comes_from():
    from benchmarks.suites import _SeriesGuard

    guard = _SeriesGuard(max_call_s=0.05)
    guard.record("steady", 4096, {"status": "ok", "median_ms": 20.0, "first_call_ms": 40.0})
    assert guard.reason("steady", 8192) is None  # 40 ms predicted, under the 50 ms limit
    assert guard.reason("steady", 16384) == (
        "predicted >= 0.08 s per call (linear from the median call, 20 ms, at 4096)"
    )
    # A first call that compiles (here 1 s) dominates the prediction; the message says so.
    guard.record("compiling", 4096, {"status": "ok", "median_ms": 1.0, "first_call_ms": 1000.0})
    assert guard.reason("compiling", 16384) == (
        "predicted >= 1 s per call (linear from a quarter of the first call, 250 ms, at 4096)"
    )
