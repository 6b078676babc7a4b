"""LION against softmax on real data, trained by the same scripts with the same budget; writes examples/results/.

    python examples/results/run_all.py                  # on a GPU: every run below, a few minutes on an H200
    python examples/results/run_all.py --smoke --out /tmp/smoke   # tiny shapes on the CPU, to check the plumbing

Runs, in this order, each the `main` of a training script called in this process with the argument list that is
recorded as its command (`python examples/<script> <arguments>` does the same):
  1. MLM pretraining from scratch on the sentences of SST-2 train and AG News (5% held out): BERT (SDPA) and
     LION-LIT / D / S, one shape, tokenizer, mask rate (0.3, as the paper) and number of steps;
  2. each of them fine-tuned on SST-2 train, scored on SST-2 dev;
  3. CIFAR-10 from scratch on cifar10-mini (10% held out, per class): ViT (SDPA), LION-D, LION-S and their snake
     variants, one shape and number of steps;
  4. LION-D snake with a distillation token, distilled from the ViT of step 3 (against step 3's LION-D snake);
  5. one-GPU throughput and peak memory of issue 15's shapes (BERT-base LION-S at 512 tokens, ViT-S/16 LION-D
     snake at 224 px, bf16), each after a short warm-up run, and a one-process FSDP run whose gathered checkpoint
     is reloaded on the GPU and on the CPU (written to scaleout_1gpu.json).
After every run the reports are rewritten (results.json, results.md, loss_curves.png), so a run cut short keeps
what it finished; runs that would start after --budget_s are skipped and listed as not run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(EXAMPLES))

from common import script_command  # noqa: E402

MLM_MODELS = {
    "BERT (SDPA)": ("bert", ""),
    "LION-LIT": ("lion", "variant=lit,"),
    "LION-D": ("lion", "variant=d,"),
    "LION-S": ("lion", "variant=s,"),
}
IMAGE_MODELS = {
    "ViT (SDPA)": ("vit", ""),
    "LION-D": ("lion", "variant=d,"),
    "LION-S": ("lion", "variant=s,"),
    "LION-D snake": ("lion", "variant=d,patch_order=snake,"),
    "LION-S snake": ("lion", "variant=s,patch_order=snake,"),
}
DISTILLED_STUDENT = "LION-D snake"

# Shapes and budgets: the real run on a GPU, and the smoke run on a CPU (flag strings split on spaces).
SETTINGS = {
    "full": {
        "text_shape": "hidden_size=256,num_hidden_layers=4,num_attention_heads=4,intermediate_size=1024,"
        "max_position_embeddings=128",
        "mlm": "--max_seq_length 128 --max_steps 600 --per_device_train_batch_size 64 --learning_rate 5e-4 "
        "--warmup_steps 60 --weight_decay 0.01 --logging_steps 25".split(),
        "glue": "--max_seq_length 64 --max_steps 400 --per_device_train_batch_size 64 --learning_rate 1e-4 "
        "--warmup_steps 40 --logging_steps 25".split(),
        "image_shape": "image_size=32,patch_size=4,hidden_size=192,num_hidden_layers=6,num_attention_heads=3,"
        "intermediate_size=768",
        "image": "--max_steps 600 --per_device_train_batch_size 128 --learning_rate 1e-3 --weight_decay 0.05 "
        "--warmup_steps 60 --lr_scheduler_type cosine --min_crop_scale 0.35 --logging_steps 25 "
        "--dataloader_num_workers 6".split(),
        "device": "--bf16 --per_device_eval_batch_size 256".split(),
        "scaleout_steps": ("5", "40"),
        "scaleout_mlm": "--preset bert-base --config_overrides variant=s --max_seq_length 512 "
        "--per_device_train_batch_size 32".split(),
        "scaleout_image": "--preset lion_small_patch16_224 --config_overrides variant=d,patch_order=snake "
        "--per_device_train_batch_size 64 --dataloader_num_workers 12".split(),
    },
    "smoke": {
        "text_shape": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,"
        "max_position_embeddings=64",
        "mlm": "--max_seq_length 32 --max_steps 3 --per_device_train_batch_size 8 --max_train_samples 64 "
        "--max_eval_samples 32 --logging_steps 1".split(),
        "glue": "--max_seq_length 32 --max_steps 3 --per_device_train_batch_size 8 --max_train_samples 64 "
        "--max_eval_samples 64 --logging_steps 1".split(),
        "image_shape": "image_size=32,patch_size=8,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
        "intermediate_size=64",
        "image": "--max_steps 3 --per_device_train_batch_size 8 --max_train_samples 64 --max_eval_samples 32 "
        "--logging_steps 1".split(),
        "device": ["--use_cpu"],
        "scaleout_steps": ("1", "2"),
        "scaleout_mlm": "--preset bert-base --config_overrides variant=s,num_hidden_layers=1 --max_seq_length 512 "
        "--per_device_train_batch_size 2 --max_train_samples 8".split(),
        "scaleout_image": "--preset lion_small_patch16_224 --config_overrides variant=d,patch_order=snake,"
        "num_hidden_layers=1 --per_device_train_batch_size 4 --max_train_samples 16".split(),
    },
}
NOT_RUN = "not run (time budget)"
SCALEOUT_METRICS = ("train_samples_per_second", "train_steps_per_second", "train_loss")
COMMON = "--report_to none --save_strategy no --seed 0 --overwrite_output_dir --disable_tqdm true".split()


# --------------------------------------------------------------------------------------------- the plan


def build_corpus(data: Path, folder: Path) -> Path:
    """The MLM corpus: every SST-2 training sentence and AG News text, one per line."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    with open(data / "text" / "sst2" / "train.tsv", encoding="utf-8", newline="") as handle:
        lines += [row["sentence"] for row in csv.DictReader(handle, delimiter="\t")]
    with open(data / "text" / "agnews" / "dev.tsv", encoding="utf-8", newline="") as handle:
        lines += [row[0] for row in csv.reader(handle, delimiter="\t")]
    corpus = folder / "mlm_corpus.txt"
    corpus.write_text("".join(f"{' '.join(line.split())}\n" for line in lines), encoding="utf-8")
    return corpus


def plan(settings: dict, data: Path, work: Path, corpus: Path) -> list[dict]:
    tokenizer = str(data / "tokenizers" / "bert-base-uncased")
    sst2, cifar = data / "text" / "sst2", data / "images" / "cifar10-mini" / "train"
    device = settings["device"]
    runs = [{
        "name": "warm-up", "group": "warm-up", "script": "run_mlm.py",
        "argv": ["--model_type", "lion", "--config_overrides", settings["text_shape"], "--tokenizer_name", tokenizer,
                 "--train_file", str(corpus), "--do_train", "--max_steps", "5", "--max_seq_length", "32",
                 "--output_dir", str(work / "warm-up"), *COMMON, *device],
    }]  # fmt: skip
    mlm_dirs = {name: work / "mlm" / slug(name) for name in MLM_MODELS}
    for name, (model_type, variant) in MLM_MODELS.items():
        runs.append({
            "name": name, "group": "mlm", "script": "run_mlm.py",
            "argv": ["--model_type", model_type, "--config_overrides", variant + settings["text_shape"],
                     "--tokenizer_name", tokenizer, "--train_file", str(corpus), "--validation_split_percentage", "5",
                     "--mlm_probability", "0.3", "--do_train", "--do_eval", "--output_dir", str(mlm_dirs[name]),
                     *settings["mlm"], *COMMON, *device],
        })  # fmt: skip
    for name in MLM_MODELS:
        runs.append({
            "name": name, "group": "sst2", "script": "run_glue.py", "needs": str(mlm_dirs[name]),
            "argv": ["--model_name_or_path", str(mlm_dirs[name]), "--task_name", "sst2",
                     "--train_file", str(sst2 / "train.tsv"), "--validation_file", str(sst2 / "dev.tsv"),
                     "--do_train", "--do_eval", "--output_dir", str(work / "sst2" / slug(name)),
                     *settings["glue"], *COMMON, *device],
        })  # fmt: skip
    for name, (model_type, variant) in IMAGE_MODELS.items():
        runs.append({
            "name": name, "group": "cifar10", "script": "run_image_classification.py",
            "argv": image_argv(model_type, variant + settings["image_shape"], cifar, work / "cifar10" / slug(name),
                               settings),
        })  # fmt: skip
    teacher = work / "cifar10" / slug("ViT (SDPA)")
    student_type, student_variant = IMAGE_MODELS[DISTILLED_STUDENT]
    runs.append({
        "name": f"{DISTILLED_STUDENT} distilled from ViT", "group": "distillation",
        "script": "run_image_classification.py",
        "needs": str(teacher),
        "argv": [*image_argv(student_type, student_variant + settings["image_shape"], cifar, work / "distilled",
                             settings),
                 "--teacher_model", str(teacher), "--distillation_type", "hard"],
    })  # fmt: skip
    warm, measured = settings["scaleout_steps"]
    for steps in (warm, measured):
        runs.append({
            "name": "BERT-base LION-S, 512 tokens", "group": "scaleout" if steps == measured else "scaleout warm-up",
            "script": "run_mlm.py",
            "argv": [*settings["scaleout_mlm"], "--tokenizer_name", tokenizer, "--train_file", str(corpus),
                     "--do_train", "--max_steps", steps, "--output_dir", str(work / "scaleout_mlm"), *COMMON, *device],
        })  # fmt: skip
        runs.append({
            "name": "ViT-S/16 LION-D snake, 224 px", "group": "scaleout" if steps == measured else "scaleout warm-up",
            "script": "run_image_classification.py",
            "argv": [*settings["scaleout_image"], "--train_dir", str(cifar), "--do_train", "--max_steps", steps,
                     "--output_dir", str(work / "scaleout_image"), *COMMON, *device],
        })  # fmt: skip
    return runs


def image_argv(model_type: str, overrides: str, cifar: Path, output_dir: Path, settings: dict) -> list[str]:
    return [
        "--model_type", model_type, "--config_overrides", overrides.rstrip(","), "--train_dir", str(cifar),
        "--train_val_split", "0.1", "--do_train", "--do_eval", "--output_dir", str(output_dir),
        *settings["image"], *COMMON, *settings["device"],
    ]  # fmt: skip


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


# ---------------------------------------------------------------------------------------------- running


def execute(run: dict) -> dict:
    """Run one script's ``main`` here; its metrics, logged losses, wall time and peak GPU memory."""
    import importlib

    import torch

    module = importlib.import_module(Path(run["script"]).stem)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    results = module.main(run["argv"])
    wall = time.perf_counter() - started
    output_dir = Path(run["argv"][run["argv"].index("--output_dir") + 1])
    state_file = output_dir / "trainer_state.json"
    history = json.loads(state_file.read_text())["log_history"] if state_file.is_file() else []
    record = {
        "metrics": {key: value for split in results.values() for key, value in split.items()},
        "loss_curve": [[entry["step"], entry["loss"]] for entry in history if "loss" in entry],
        "wall_s": round(wall, 1),
    }
    if torch.cuda.is_available():
        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def fsdp_launch(settings: dict, data: Path, work: Path, corpus: Path) -> tuple[list[str], Path]:
    """One FSDP process with the shipped text config: the scale-out BERT-base LION-S for the warm-up's steps."""
    output_dir = work / "fsdp_mlm"
    argv = [*settings["scaleout_mlm"], "--tokenizer_name", str(data / "tokenizers" / "bert-base-uncased"),
            "--train_file", str(corpus), "--do_train", "--max_steps", settings["scaleout_steps"][0],
            "--output_dir", str(output_dir), *COMMON, *settings["device"]]  # fmt: skip
    config = EXAMPLES / "accelerate" / "fsdp_text.yaml"
    launch = ["accelerate", "launch", "--config_file", str(config), "--num_processes", "1"]
    launch.append(str(EXAMPLES / "run_mlm.py"))
    return [*launch, *argv], output_dir


def fsdp_record(launch: list[str], status: str) -> dict:
    return {"command": shlex.join(launch).replace(str(EXAMPLES), "examples"), "status": status}


def fsdp_check(settings: dict, data: Path, work: Path, corpus: Path, smoke: bool) -> dict:
    """Train under FSDP, then reload the gathered checkpoint on the GPU and on the CPU and compare the logits."""
    import torch

    launch, output_dir = fsdp_launch(settings, data, work, corpus)
    record = fsdp_record(launch, "ran")
    if smoke:
        return fsdp_record(launch, "not run in the smoke run (FSDP needs a GPU)")
    module_launch = [sys.executable, "-m", "accelerate.commands.launch", *launch[2:]]
    result = subprocess.run(module_launch, capture_output=True, text=True, timeout=300)
    record["returncode"] = result.returncode
    if result.returncode != 0:
        record["status"] = "failed"
        record["stderr_tail"] = result.stderr[-3000:]
        return record
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    batch = tokenizer(["the movie is a gorgeous , witty , seductive [MASK] ."], return_tensors="pt")
    logits = {}
    for device in ("cuda", "cpu"):
        model = AutoModelForMaskedLM.from_pretrained(output_dir, trust_remote_code=True).to(device).eval()
        with torch.no_grad():
            logits[device] = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
    record["max_abs_logit_difference_gpu_vs_cpu"] = (logits["cuda"] - logits["cpu"]).abs().max().item()
    state = json.loads((output_dir / "trainer_state.json").read_text())
    record["final_loss"] = state["log_history"][-1].get("train_loss")
    return record


# ---------------------------------------------------------------------------------------------- reports


def environment() -> dict:
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}
    info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return info


def metric(run: dict | None, key: str, scale: float = 1.0, digits: int = 2) -> str:
    if run is None or key not in run.get("metrics", {}):
        return "not run" if run is None or run.get("status", "").startswith("not run") else "failed"
    return f"{run['metrics'][key] * scale:.{digits}f}"


def step_ms(run: dict | None) -> str:
    if run is None or "metrics" not in run:
        return "-"
    steps = int(run["argv"][run["argv"].index("--max_steps") + 1])
    return f"{run['metrics']['train_runtime'] / steps * 1000:.1f}"


def markdown(report: dict) -> str:
    runs = {(run["group"], run["name"]): run for run in report["runs"]}
    env = report["environment"]
    lines = [
        "# LION against softmax, same scripts, same budget",
        "",
        f"Produced by `python examples/results/run_all.py{' --smoke' if report['smoke'] else ''}` on {env['device']} "
        f"(torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}). ms/step is the "
        "training wall time over the steps (data loading included). Every command is listed below.",
        "",
        "## Masked-language modelling (SST-2 train + AG News, 5% held out) and SST-2 fine-tuning",
        "",
        "| model | held-out masked-token accuracy (%) | held-out loss | perplexity | ms/step (MLM) "
        "| SST-2 dev accuracy (%) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in MLM_MODELS:
        mlm, glue = runs.get(("mlm", name)), runs.get(("sst2", name))
        lines.append(
            f"| {name} | {metric(mlm, 'eval_accuracy', 100)} | {metric(mlm, 'eval_loss', digits=3)} | "
            f"{metric(mlm, 'eval_perplexity', digits=1)} | {step_ms(mlm)} | {metric(glue, 'eval_accuracy', 100)} |"
        )
    lines += ["", "## CIFAR-10 from scratch (cifar10-mini, 10% held out)", "",
              "| model | top-1 (%) | held-out loss | ms/step |", "| --- | --- | --- | --- |"]  # fmt: skip
    for name in IMAGE_MODELS:
        run = runs.get(("cifar10", name))
        scores = f"{metric(run, 'eval_accuracy', 100)} | {metric(run, 'eval_loss', digits=3)}"
        lines.append(f"| {name} | {scores} | {step_ms(run)} |")
    distilled = runs.get(("distillation", f"{DISTILLED_STUDENT} distilled from ViT"))
    undistilled = runs.get(("cifar10", DISTILLED_STUDENT))
    lines += [
        "", "## Distillation (DeiT hard distillation, teacher: the ViT above)", "",
        "| student | top-1 (%) | ms/step |", "| --- | --- | --- |",
        f"| {DISTILLED_STUDENT}, no teacher | {metric(undistilled, 'eval_accuracy', 100)} | {step_ms(undistilled)} |",
        f"| {DISTILLED_STUDENT} + distillation token, from the ViT teacher | "
        f"{metric(distilled, 'eval_accuracy', 100)} | {step_ms(distilled)} |",
        "", "## One GPU, issue 15's shapes (after a warm-up run)", "",
        "| run | samples/s | peak memory (GiB) | final training loss |", "| --- | --- | --- | --- |",
    ]  # fmt: skip
    for run in report["runs"]:
        if run["group"] == "scaleout":
            lines.append(
                f"| {run['name']} | {metric(run, 'train_samples_per_second', digits=1)} | "
                f"{run.get('peak_memory_gib', '-')} | {metric(run, 'train_loss', digits=3)} |"
            )
    lines += ["", "## Commands", "", "```bash"]
    lines += [f"{run['command']}  # {run['group']}: {run['name']}" for run in report["runs"] if "metrics" in run]
    lines += ["```"]
    not_run = [run for run in report["runs"] if "metrics" not in run]
    if not_run:
        lines += ["", "Planned but not run (the status says why):", "", "```bash"]
        lines += [f"{run['command']}  # {run['group']}: {run['name']}: {run.get('status')}" for run in not_run]
        lines += ["```"]
    fsdp = report.get("fsdp")
    if fsdp:
        lines += ["", f"FSDP, one process ({fsdp['status']}):", "", "```bash", fsdp["command"], "```"]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("mlm", "MLM pretraining"), ("sst2", "SST-2 fine-tuning"), ("cifar10", "CIFAR-10 from scratch")]
    figure, axes = plt.subplots(1, len(groups), figsize=(15, 4))
    for axis, (group, title) in zip(axes, groups, strict=True):
        for run in report["runs"]:
            curve = run.get("loss_curve")
            if curve and (run["group"] == group or (group == "cifar10" and run["group"] == "distillation")):
                axis.plot(*zip(*curve), label=run["name"])
        axis.set(title=title, xlabel="step", ylabel="training loss")
        if axis.lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_reports(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "loss_curves.png")
    scaleout = [
        {key: run.get(key) for key in ("name", "command", "peak_memory_gib", "wall_s", "status")}
        | {k: run.get("metrics", {}).get(k) for k in SCALEOUT_METRICS}
        | {"steps": int(run["argv"][run["argv"].index("--max_steps") + 1])}
        for run in report["runs"] if run["group"] == "scaleout"
    ]  # fmt: skip
    summary = {
        "environment": report["environment"],
        "note": "One GPU only: machines with several GPUs were withheld, so DDP/FSDP across GPUs (issue 15) was "
        "not run. "
        "Each measured run follows a warm-up run of the same command with fewer steps; samples/s is Trainer's "
        "train_samples_per_second (data loading included), peak memory torch.cuda.max_memory_allocated().",
        "runs": scaleout,
        "fsdp_one_process": report.get("fsdp"),
    }
    (out / "scaleout_1gpu.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=EXAMPLES.parents[1] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=EXAMPLES / "results")
    parser.add_argument("--work", type=Path, default=Path("outputs/results"), help="checkpoints and corpora")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and budgets, on the CPU")
    parser.add_argument("--budget_s", type=float, default=float("inf"), help="start no run after this many seconds")
    parser.add_argument("--replot", type=Path, help="only rewrite the reports of --out from this results.json")
    args = parser.parse_args(argv)
    if args.replot:
        write_reports(json.loads(args.replot.read_text(encoding="utf-8")), args.out)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = SETTINGS["smoke" if args.smoke else "full"]
    corpus = build_corpus(args.data, args.work)
    report = {"environment": environment(), "smoke": args.smoke, "runs": []}
    started = time.perf_counter()
    for run in plan(settings, args.data, args.work, corpus):
        entry = {key: run[key] for key in ("name", "group", "script", "argv")}
        entry["command"] = script_command(run["script"], run["argv"])
        report["runs"].append(entry)
        if time.perf_counter() - started > args.budget_s:
            entry["status"] = NOT_RUN
            continue
        if "needs" in run and not (Path(run["needs"]) / "config.json").is_file():
            entry["status"] = f"not run (needs {run['needs']})"
            continue
        print(f"\n=== {run['group']}: {run['name']}\n{entry['command']}", flush=True)
        try:
            entry |= execute(run)
        except Exception as error:  # one failed run must not lose the others' results
            entry |= {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            print(f"FAILED: {entry['error']}", flush=True)
        write_reports(report, args.out)
    if time.perf_counter() - started <= args.budget_s:
        report["fsdp"] = fsdp_check(settings, args.data, args.work, corpus, args.smoke)
    else:
        report["fsdp"] = fsdp_record(fsdp_launch(settings, args.data, args.work, corpus)[0], NOT_RUN)
    write_reports(report, args.out)
    print((args.out / "results.md").read_text(encoding="utf-8"))
    return 1 if any(run.get("status") == "failed" for run in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
