"""examples/run_mlm.py end to end on real text: training, evaluation, resuming, the saved folder, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run_without_lion_hf
from examples_support import CPU_RUN, TINY_TEXT_SHAPE, read_json
from huggingface_hub import ModelCard
from transformers import AutoTokenizer

import run_mlm
from common import InputError
from lion_hf import LionForMaskedLM

SENTENCE = "a gorgeous , witty , seductive movie ."
# Every non-special token masked by [MASK]: evaluation is deterministic, so the test can recompute its metrics.
FULL_MASKING = ["--mlm_probability", "1", "--mask_replace_prob", "1", "--random_replace_prob", "0"]


def mlm_flags(output_dir, text_data, tokenizer_dir, variant="s", *extra):
    return [
        "--model_type", "lion", "--config_overrides", f"variant={variant},{TINY_TEXT_SHAPE}",
        "--tokenizer_name", str(tokenizer_dir), "--train_file", str(text_data["corpus"]),
        "--max_seq_length", "32", "--output_dir", str(output_dir), "--per_device_train_batch_size", "8",
        *CPU_RUN, *extra,
    ]  # fmt: skip


def test_trains_evaluates_and_saves_a_folder_that_loads_without_lion_hf(tmp_path, text_data, tokenizer_dir):
    output_dir = tmp_path / "run"
    results = run_mlm.main(
        mlm_flags(output_dir, text_data, tokenizer_dir, "s", "--do_train", "--do_eval", "--max_steps", "3",
                  "--learning_rate", "1e-3", "--validation_split_percentage", "10",
                  "--per_device_eval_batch_size", "64", *FULL_MASKING)
    )  # fmt: skip
    saved = read_json(output_dir / "all_results.json")
    assert saved == {**results["train"], **results["eval"]}
    assert read_json(output_dir / "eval_results.json") == results["eval"]
    assert saved["eval_perplexity"] == pytest.approx(math.exp(saved["eval_loss"]))
    assert len(read_json(output_dir / "trainer_state.json")["log_history"]) > 0

    # The metrics recomputed from the saved model on the same held-out blocks (full masking makes them fixed).
    model = LionForMaskedLM.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_lion.LionForMaskedLM"
    eval_blocks = held_out_blocks(text_data, tokenizer, share=0.10, length=32)
    assert saved["eval_samples"] == len(eval_blocks)
    ids = torch.tensor(eval_blocks)
    special = torch.tensor(
        [tokenizer.get_special_tokens_mask(b, already_has_special_tokens=True) for b in eval_blocks]
    ).bool()
    with torch.no_grad():
        logits = model(input_ids=ids.masked_fill(~special, tokenizer.mask_token_id)).logits
    targets = ids[~special]
    assert saved["eval_accuracy"] == pytest.approx((logits[~special].argmax(-1) == targets).double().mean().item())
    assert saved["eval_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits[~special], targets).item(), rel=1e-4
    )

    encoded = tokenizer(SENTENCE, return_tensors="pt")
    with torch.no_grad():
        expected = model(**encoded).logits[0, :, :8]
    printed = run_without_lion_hf(
        f"""
        import json, torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        model = AutoModelForMaskedLM.from_pretrained({str(output_dir)!r}, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(output_dir)!r})
        with torch.no_grad():
            logits = model(**tokenizer({SENTENCE!r}, return_tensors="pt")).logits[0, :, :8]
        print("RESULT", json.dumps({{"class": type(model).__name__, "logits": logits.tolist()}}))
        """,
        cwd=tmp_path,
    )
    loaded = json.loads(printed.split("RESULT", 1)[1])
    assert loaded["class"] == "LionForMaskedLM"
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=1e-5, atol=1e-5)

    # The Hub-ready export of the run: nothing but the Hub's files, a card with the run's evaluation results.
    hub = output_dir / "hub"
    assert sorted(path.name for path in hub.iterdir()) == sorted([
        "README.md", "config.json", "model.safetensors", "configuration_lion.py", "modeling_lion.py",
        "lion_attention.py", "lion_triton.py", "lion_triton_chunk.py", "lion_triton_features.py", "tokenizer.json",
        "tokenizer_config.json",
    ])  # fmt: skip
    card = ModelCard.load(hub / "README.md")
    assert card.data.pipeline_tag == "fill-mask"
    assert "Command: `python examples/run_mlm.py --model_type lion" in card.content and "--max_steps 3" in card.content
    for metric in ("loss", "accuracy", "perplexity"):
        assert f"| {metric} | {saved['eval_' + metric]:.4g} |" in card.content, metric
    exported = LionForMaskedLM.from_pretrained(hub).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**encoded).logits[0, :, :8], expected, rtol=0, atol=0)


def held_out_blocks(text_data, tokenizer, share: float, length: int) -> list[list[int]]:
    """The script's validation blocks, rebuilt independently: the same seeded split, then 32-token blocks."""
    import datasets

    lines = datasets.load_dataset("text", data_files={"train": str(text_data["corpus"])})["train"]
    held_out = lines.train_test_split(test_size=share, seed=0)["test"]["text"]
    stream = [token for line in held_out for token in tokenizer(line)["input_ids"]]
    return [stream[start : start + length] for start in range(0, len(stream) - length + 1, length)]


def test_resumes_from_the_checkpoint_in_its_output_dir(tmp_path, text_data, tokenizer_dir):
    output_dir = tmp_path / "run"
    flags = mlm_flags(
        output_dir, text_data, tokenizer_dir, "d", "--do_train", "--save_steps", "2", "--logging_steps", "1"
    )
    run_mlm.main([*flags, "--max_steps", "2"])
    first = read_json(output_dir / "trainer_state.json")["log_history"]
    run_mlm.main([*flags, "--max_steps", "4"])
    state = read_json(output_dir / "trainer_state.json")
    assert state["global_step"] == 4
    losses = {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}
    assert sorted(losses) == [1, 2, 3, 4]
    assert [losses[1], losses[2]] == [entry["loss"] for entry in first if "loss" in entry]


def test_trains_the_bert_baseline_line_by_line_from_json(tmp_path, text_data, tokenizer_dir):
    lines = text_data["corpus"].read_text(encoding="utf-8").splitlines()[:80]
    data = tmp_path / "lines.jsonl"
    data.write_text("".join(json.dumps({"sentence": line, "id": i}) + "\n" for i, line in enumerate(lines)), "utf-8")
    output_dir = tmp_path / "bert"
    bert_shape = TINY_TEXT_SHAPE.replace("max_position_embeddings=64", "max_position_embeddings=32")
    results = run_mlm.main([
        "--model_type", "bert", "--config_overrides", bert_shape, "--tokenizer_name", str(tokenizer_dir),
        "--train_file", str(data), "--text_column_name", "sentence", "--line_by_line", "--max_seq_length", "16",
        "--do_train", "--do_eval", "--max_steps", "2", "--output_dir", str(output_dir), *CPU_RUN,
    ])  # fmt: skip
    config = read_json(output_dir / "config.json")
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForMaskedLM"]
    assert config["vocab_size"] == len(AutoTokenizer.from_pretrained(tokenizer_dir))
    assert results["train"]["train_samples"] + results["eval"]["eval_samples"] == len(lines)
    assert math.isfinite(results["eval"]["eval_loss"])


BAD_INPUTS = {
    "missing file": (["--train_file", "{tmp}/nowhere.txt"], r"--train_file .*nowhere\.txt does not exist"),
    "unknown extension": (["--train_file", "{tmp}/corpus.parquet"], r"unknown extension; allowed: txt, csv, tsv"),
    "missing column": (
        ["--train_file", "{sst2}", "--text_column_name", "review"],
        r"no column 'review' in the data; its columns: sentence, label",
    ),
    "sequence longer than the position table": (["--max_seq_length", "65"], r"--max_seq_length 65 is longer .*=64"),
    "unknown config field": (["--config_overrides", "hiden_size=16"], r"LionConfig has no field 'hiden_size'"),
    "config value of the wrong type": (
        ["--config_overrides", "num_hidden_layers=two"],
        r"num_hidden_layers takes a int",
    ),
    "two model sources": (["--config_name", "{tmp}"], r"exactly one of .* \(got --config_name, --model_type\)"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_before_anything_is_written(case, tmp_path, text_data, tokenizer_dir):
    (tmp_path / "corpus.parquet").write_bytes(b"")
    extra, message = BAD_INPUTS[case]
    extra = [flag.format(tmp=tmp_path, sst2=text_data["sst2_train"]) for flag in extra]
    output_dir = tmp_path / "run"
    with pytest.raises(InputError, match=message):
        run_mlm.main([*mlm_flags(output_dir, text_data, tokenizer_dir), "--do_train", "--max_steps", "1", *extra])
    assert not output_dir.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--push_to_hub"], r"--push_to_hub needs --hub_model_id namespace/name"),
        (["--push_to_hub", "--hub_model_id", "no-namespace"], r"--repo-id 'no-namespace' is not of the form"),
        (["--push_to_hub", "--hub_model_id", "my-org/lion-s"], r"--push_to_hub needs a Hub token: log in with `hf auth"),
    ],
)
def test_push_to_hub_is_checked_before_training(flags, message, tmp_path, text_data, tokenizer_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    output_dir = tmp_path / "run"
    with pytest.raises(InputError, match=message):
        run_mlm.main([*mlm_flags(output_dir, text_data, tokenizer_dir), "--do_train", "--max_steps", "1", *flags])
    assert not output_dir.exists()


def test_an_output_dir_holding_another_run_is_refused(tmp_path, text_data, tokenizer_dir):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "config.json").write_text("{}")
    with pytest.raises(
        InputError, match=r"already holds another run \(config\.json, \.\.\.\); pass --overwrite_output_dir"
    ):
        run_mlm.main([*mlm_flags(output_dir, text_data, tokenizer_dir), "--do_train", "--max_steps", "1"])
    assert [path.name for path in output_dir.iterdir()] == ["config.json"]
    assert (output_dir / "config.json").read_text() == "{}"
