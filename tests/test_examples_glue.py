"""examples/run_glue.py end to end on SST-2 and AG News slices: labels, metrics, predictions, the folder, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from helpers import run_without_lion_hf
from examples_support import CPU_RUN, read_json, write_tsv
from transformers import AutoTokenizer

import run_glue
from common import InputError
from lion_hf import LionConfig, LionForMaskedLM, LionForSequenceClassification


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tokenizer_dir):
    """A small LION-D masked-LM folder with the BERT tokenizer, as run_mlm.py would leave it."""
    folder = tmp_path_factory.mktemp("lion-mlm")
    torch.manual_seed(0)
    config = LionConfig(
        variant="d", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    LionForMaskedLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory, pretrained, text_data):
    output_dir = tmp_path_factory.mktemp("sst2") / "run"
    results = run_glue.main([
        "--model_name_or_path", str(pretrained), "--task_name", "sst2",
        "--train_file", str(text_data["sst2_train"]), "--validation_file", str(text_data["sst2_dev"]),
        "--test_file", str(text_data["sst2_dev"]), "--do_train", "--do_eval", "--do_predict", "--max_steps", "4",
        "--learning_rate", "1e-3", "--per_device_train_batch_size", "16", "--output_dir", str(output_dir), *CPU_RUN,
    ])  # fmt: skip
    return output_dir, results


def test_fine_tunes_evaluates_predicts_and_saves_a_folder_that_loads_without_lion_hf(sst2_run, text_data, tmp_path):
    output_dir, results = sst2_run
    saved = read_json(output_dir / "all_results.json")
    assert saved == {**results["train"], **results["eval"], **results["test"]}
    config = read_json(output_dir / "config.json")
    assert config["architectures"] == ["LionForSequenceClassification"]
    assert config["id2label"] == {"0": "0", "1": "1"}

    with open(text_data["sst2_dev"], encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    model = LionForSequenceClassification.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    batch = tokenizer([row["sentence"] for row in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    predicted = logits.argmax(-1)
    accuracy = (predicted == torch.tensor([int(row["label"]) for row in rows])).double().mean().item()
    assert saved["eval_accuracy"] == pytest.approx(accuracy) and saved["test_accuracy"] == pytest.approx(accuracy)
    lines = (output_dir / "predict_results.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["index\tprediction", *(f"{i}\t{label}" for i, label in enumerate(predicted.tolist()))]

    printed = run_without_lion_hf(
        f"""
        import json, torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        model = AutoModelForSequenceClassification.from_pretrained({str(output_dir)!r}, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(output_dir)!r})
        with torch.no_grad():
            logits = model(**tokenizer({rows[0]["sentence"]!r}, return_tensors="pt")).logits
        print("RESULT", json.dumps({{"labels": model.config.id2label, "logits": logits[0].tolist()}}))
        """,
        cwd=tmp_path,
    )
    loaded = json.loads(printed.split("RESULT", 1)[1])
    assert loaded["labels"] == {"0": "0", "1": "1"}
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits[0], rtol=1e-5, atol=1e-5)


def test_headerless_tsv_with_named_labels(tmp_path, pretrained, text_data):
    output_dir = tmp_path / "agnews"
    results = run_glue.main([
        "--model_name_or_path", str(pretrained), "--train_file", str(text_data["agnews"]),
        "--validation_file", str(text_data["agnews"]), "--column_names", "text,label",
        "--do_train", "--do_eval", "--max_steps", "2", "--output_dir", str(output_dir), *CPU_RUN,
    ])  # fmt: skip
    config = read_json(output_dir / "config.json")
    assert config["id2label"] == {"0": "Business", "1": "Sci/Tech", "2": "Sports", "3": "World"}
    assert results["eval"]["eval_samples"] == 80
    with open(text_data["agnews"], encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    label_ids = {label: int(i) for i, label in config["id2label"].items()}
    predicted = saved_model_outputs(output_dir, [text for text, _ in rows]).argmax(-1)
    accuracy = (predicted == torch.tensor([label_ids[label] for _, label in rows])).double().mean().item()
    assert results["eval"]["eval_accuracy"] == pytest.approx(accuracy)


def saved_model_outputs(output_dir, texts):
    """The saved classifier's logits on ``texts``, tokenised as run_glue.py does (64 tokens: the position table)."""
    model = LionForSequenceClassification.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")).logits


def test_float_labels_train_a_regression_head_scored_by_correlation(tmp_path, pretrained, text_data):
    with open(text_data["sst2_train"], encoding="utf-8", newline="") as handle:
        rows = [[row["sentence"], f"{int(row['label']) * 4.5 + len(row['sentence']) % 5 / 10:.1f}"]
                for row in csv.DictReader(handle, delimiter="\t")]  # fmt: skip
    data = write_tsv(tmp_path / "scores.tsv", rows[:64], ["sentence", "score"])
    output_dir = tmp_path / "scores"
    results = run_glue.main([
        "--model_name_or_path", str(pretrained), "--train_file", str(data), "--validation_file", str(data),
        "--label_column_name", "score", "--do_train", "--do_eval", "--max_steps", "2",
        "--output_dir", str(output_dir), *CPU_RUN,
    ])  # fmt: skip
    assert read_json(output_dir / "config.json")["id2label"] == {"0": "score"}
    assert {"eval_pearson", "eval_spearmanr"} <= set(results["eval"])
    predicted = saved_model_outputs(output_dir, [sentence for sentence, _ in rows[:64]])[:, 0].double().numpy()
    pearson = np.corrcoef(predicted, [float(score) for _, score in rows[:64]])[0, 1]
    assert results["eval"]["eval_pearson"] == pytest.approx(pearson, rel=1e-4)


def bad_labels_file(tmp_path, text_data):
    with open(text_data["sst2_dev"], encoding="utf-8", newline="") as handle:
        rows = [[row["sentence"], row["label"]] for row in csv.DictReader(handle, delimiter="\t")]
    rows[3][1] = "2"
    return write_tsv(tmp_path / "dev_with_2.tsv", rows, ["sentence", "label"])


BAD_INPUTS = {
    "labels of another classifier": (
        "classifier",
        ["--train_file", "{agnews}", "--column_names", "text,label"],
        r"classifier has 2 labels \(0, 1\) but the data has 4 \(Business, Sci/Tech, Sports, World\); pass "
        r"--ignore_mismatched_sizes",
    ),
    "an unknown label": (
        "backbone",
        ["--train_file", "{sst2}", "--validation_file", "{bad_labels}", "--do_eval"],
        r"The validation data has labels the model does not know: 2; the model's labels: 0, 1\.",
    ),
    "a missing column": (
        "backbone",
        ["--train_file", "{sst2}", "--text_column_names", "review"],
        r"--text_column_names: no column 'review' in the train data; its columns: sentence, label\.",
    ),
    "an unknown task": ("backbone", ["--task_name", "sst3"], r"Unknown --task_name 'sst3'; allowed: cola, sst2"),
    "too long for the position table": (
        "backbone",
        ["--train_file", "{sst2}", "--max_seq_length", "100"],
        r"--max_seq_length 100 is longer .*=64\)",
    ),
    "a missing file": ("backbone", ["--train_file", "{tmp}/train.tsv"], r"--train_file .*train\.tsv does not exist"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_before_anything_is_written(case, tmp_path, pretrained, sst2_run, text_data):
    model, extra, message = BAD_INPUTS[case]
    paths = {"agnews": text_data["agnews"], "sst2": text_data["sst2_train"], "tmp": tmp_path}
    if "{bad_labels}" in extra:
        paths["bad_labels"] = bad_labels_file(tmp_path, text_data)
    checkpoint = sst2_run[0] if model == "classifier" else pretrained
    output_dir = tmp_path / "run"
    argv = ["--model_name_or_path", str(checkpoint), "--do_train", "--max_steps", "1", "--output_dir", str(output_dir)]
    with pytest.raises(InputError, match=message):
        run_glue.main([*argv, *(flag.format(**paths) for flag in extra), *CPU_RUN])
    assert not output_dir.exists()


def test_evaluating_a_model_without_a_classifier_is_refused(tmp_path, pretrained, text_data):
    output_dir = tmp_path / "run"
    with pytest.raises(InputError, match=r"has no trained classifier; pass --do_train"):
        run_glue.main([
            "--model_name_or_path", str(pretrained), "--validation_file", str(text_data["sst2_dev"]), "--do_eval",
            "--output_dir", str(output_dir), *CPU_RUN,
        ])  # fmt: skip
    assert not output_dir.exists()
