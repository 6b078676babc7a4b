"""The export path: exported folders hold exactly the Hub files, load without lion_hf with the same outputs, run their
card's usage snippet and their task's pipeline; sharding; exporting a training folder; every refusal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    HEAD_AUTO_CLASSES,
    assert_close,
    randomized,
    right_padded_mask,
    run_without_lion_hf,
    tiny_text_config,
    tiny_vision_config,
    token_ids,
)
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, BertModel
from transformers.dynamic_module_utils import get_relative_import_files

import lion_hf
from lion_hf import (
    Evaluation,
    LionForImageClassification,
    LionForMaskedLM,
    LionForMultipleChoice,
    LionForQuestionAnswering,
    LionForSequenceClassification,
    LionForTokenClassification,
    LionModel,
    Provenance,
    export_folder,
    lion_image_processor,
)
from lion_hf.cli import main as lion_hf_main
from lion_hf.export import NotALionFolderError
from lion_hf.modeling.modeling_lion import lion_auto_map

TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
# Every file modeling_lion.py imports relatively (transformers copies exactly these), found from the package's copy.
MODEL_CODE = {
    "modeling_lion.py",
    *(Path(path).name for path in get_relative_import_files(lion_hf.modeling.modeling_lion.__file__)),
}
SNIPPET = re.compile(r"```python\n(.*?)```", flags=re.S)


def text_model(model_class, **config):
    return randomized(model_class(tiny_text_config("s", vocab_size=30522, max_position_embeddings=64, **config)))


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return AutoTokenizer.from_pretrained(data_dir / "tokenizers" / "bert-base-uncased")


@pytest.fixture(scope="module")
def published(tmp_path_factory, tokenizer):
    """Exported folders of every head (name -> (folder, model)), side by side in one parent folder."""
    root = tmp_path_factory.mktemp("published")
    labels = {0: "negative", 1: "positive"}
    vision = tiny_vision_config(image_size=32, patch_size=8, variant="s", patch_order="snake", id2label={0: "ants", 1: "bees"})
    models = {
        "mlm": (text_model(LionForMaskedLM), dict(tokenizer=tokenizer)),
        "sst2": (text_model(LionForSequenceClassification, id2label=labels), dict(tokenizer=tokenizer)),
        "ner": (text_model(LionForTokenClassification, num_labels=3), dict(tokenizer=tokenizer)),
        "qa": (text_model(LionForQuestionAnswering), dict(tokenizer=tokenizer)),
        "choice": (text_model(LionForMultipleChoice), dict(tokenizer=tokenizer)),
        "encoder": (text_model(LionModel), dict(tokenizer=tokenizer)),
        "no-tokenizer": (text_model(LionForMaskedLM), {}),
        "vision": (randomized(LionForImageClassification(vision)), {}),
        "sharded": (text_model(LionForMaskedLM), dict(tokenizer=tokenizer, max_shard_size="400KB")),
    }
    folders = {}
    for name, (model, options) in models.items():
        result = export_folder(model, root / name, progress=False, **options)
        folders[name] = (result.folder, model)
    return folders


def test_exported_folders_hold_exactly_the_hub_files(published):
    for name, (folder, model) in published.items():
        files = {path.name for path in folder.iterdir()}
        weights = {f for f in files if f.endswith(".safetensors") or f.endswith(".index.json")}
        preprocessor = {"no-tokenizer": set(), "vision": {"preprocessor_config.json"}}.get(name, TOKENIZER_FILES)
        assert files == {"config.json", "README.md", *MODEL_CODE, *preprocessor, *weights}, name
        if name == "sharded":
            assert len(weights) >= 3 and "model.safetensors.index.json" in weights, weights
        else:
            assert weights == {"model.safetensors"}, name
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == lion_auto_map(model.config), name
        assert config["architectures"] == [type(model).__name__]
        head = type(model).__name__
        assert config["auto_map"][HEAD_AUTO_CLASSES[head]] == f"modeling_lion.{head}", name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folders left behind"
    tokenizer_config = json.loads((published["mlm"][0] / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 64, "capped at the position table"


def test_exported_folders_load_without_lion_hf_with_the_same_outputs_and_run_their_card_snippets(published, tmp_path):
    root = published["mlm"][0].parent
    ids = token_ids(2, 9)
    mask = right_padded_mask([9, 6], 9)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.save({"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}, tmp_path / "inputs.pt")
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.png")
    auto = {name: HEAD_AUTO_CLASSES[type(m).__name__] for name, (_, m) in published.items()}
    out = run_without_lion_hf(
        f"""
        import json, re, torch, transformers
        from PIL import Image
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        result = {{}}
        for name, auto_class in {auto!r}.items():
            model = getattr(transformers, auto_class).from_pretrained(name, trust_remote_code=True).eval()
            if name == "vision":
                kwargs = dict(pixel_values=inputs["pixel_values"])
            elif name == "choice":
                kwargs = {{k: inputs[k][:, None].expand(-1, 2, -1) for k in ("input_ids", "attention_mask")}}
            else:
                kwargs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            with torch.no_grad():
                output = model(**kwargs)[0]
            snippet = re.search(r"```python\\n(.*?)```", open(name + "/README.md").read(), flags=re.S).group(1)
            exec(snippet, {{"__name__": "snippet"}})  # as written, from the folder's parent
            result[name] = dict(model_class=type(model).__name__, output=output.tolist())
        mask_pipeline = transformers.pipeline("fill-mask", model="mlm", trust_remote_code=True)
        result["fill-mask"] = mask_pipeline("paris is the [MASK] of france .", top_k=3)
        classify = transformers.pipeline("image-classification", model="vision", trust_remote_code=True)
        result["image-classification"] = classify(Image.open({str(tmp_path / "photo.png")!r}))
        print(json.dumps(result))
        """,
        cwd=root,
    )
    result = json.loads(out.strip().splitlines()[-1])
    for name, (_, model) in published.items():
        got = result[name]
        assert got["model_class"] == type(model).__name__
        with torch.no_grad():
            if name == "vision":
                expected = model(pixel_values=pixels)[0]
            elif name == "choice":
                expected = model(input_ids=ids[:, None].expand(-1, 2, -1), attention_mask=mask[:, None].expand(-1, 2, -1))[0]
            else:
                expected = model(input_ids=ids, attention_mask=mask)[0]
        assert_close(torch.tensor(got["output"]), expected)
    # fill-mask: the pipeline's top tokens are the model's own top predictions at the mask.
    tokenizer = AutoTokenizer.from_pretrained(published["mlm"][0])
    batch = tokenizer("paris is the [MASK] of france .", return_tensors="pt")
    with torch.no_grad():
        logits = published["mlm"][1](**batch).logits[0, batch["input_ids"][0].tolist().index(tokenizer.mask_token_id)]
    top = logits.softmax(-1).topk(3)
    assert [item["token"] for item in result["fill-mask"]] == top.indices.tolist()
    assert [item["score"] for item in result["fill-mask"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    # image-classification: the scores of the processor the export added (DeiT's evaluation transform) and the model.
    vision = published["vision"][1]
    with torch.no_grad():
        photo_pixels = lion_image_processor(vision.config)(photo, return_tensors="pt")["pixel_values"]
        probabilities = vision(pixel_values=photo_pixels).logits.softmax(-1)[0].tolist()
    expected = {vision.config.id2label[i]: p for i, p in enumerate(probabilities)}
    assert {item["label"]: item["score"] for item in result["image-classification"]} == pytest.approx(expected, abs=1e-5)


def test_tokenizer_loads_like_berts_without_a_prompt_or_warning(published):
    """Plain AutoTokenizer with lion_hf installed and imported; with trust_remote_code=True where it is not.

    In both the process's stdin is closed: a "custom code" prompt would print and fail instead of waiting.
    """
    folder = published["mlm"][0]
    hide = "import sys; sys.modules['lion_hf'] = None\n"
    for setup, call in (
        ("import lion_hf\n", "AutoTokenizer.from_pretrained(folder)"),
        (hide, "AutoTokenizer.from_pretrained(folder, trust_remote_code=True)"),
    ):
        code = setup + f"from transformers import AutoTokenizer\nfolder = {str(folder)!r}\nprint(type({call}).__name__)"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(folder.parent / "modules")}
        done = subprocess.run(
            [sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "BertTokenizer", (setup, done.stdout)
        assert done.stderr == "", (setup, done.stderr)


def test_a_sharded_export_loads_back_in_process(published):
    folder, model = published["sharded"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    reloaded = LionForMaskedLM.from_pretrained(folder)
    for key, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key


def test_a_training_folder_exports_without_its_trainer_files(tmp_path, tokenizer):
    run = tmp_path / "run"
    model = text_model(LionForSequenceClassification, id2label={0: "negative", 1: "positive"})
    model.save_pretrained(run)
    tokenizer.save_pretrained(run)
    for leftover in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"):
        (run / leftover).write_bytes(b"not for the Hub")
    (run / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.75, "eval_loss": 0.5, "train_loss": 0.4}))
    result = export_folder(
        run,
        tmp_path / "hub",
        metrics=run / "all_results.json",
        evaluation=Evaluation("nyu-mll/glue", config="sst2", split="validation"),
        provenance=Provenance(command="python examples/run_glue.py ...", datasets=["nyu-mll/glue"]),
        progress=False,
    )
    assert set(result.files) == {"config.json", "README.md", "model.safetensors", *MODEL_CODE, *TOKENIZER_FILES}
    reloaded = LionForSequenceClassification.from_pretrained(result.folder)
    ids = token_ids(2, 7)
    with torch.no_grad():
        assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    card = (result.folder / "README.md").read_text()
    assert "| accuracy | 0.75 |" in card and "train_loss" not in card


def test_lion_hf_export_on_the_command_line(tmp_path, tokenizer, capsys):
    src = tmp_path / "src"
    text_model(LionForMaskedLM).save_pretrained(src)
    tokenizer.save_pretrained(src)
    metrics = tmp_path / "eval_results.json"
    metrics.write_text(json.dumps({"eval_loss": 2.0, "perplexity": 7.39, "eval_runtime": 1.0}))
    status = lion_hf_main(
        ["export", str(src), str(tmp_path / "out"), "--metrics", str(metrics), "--eval-dataset", "wikitext",
         "--eval-dataset-config", "wikitext-2-raw-v1", "--eval-split", "validation", "--dataset", "wikitext",
         "--repo-id", "me/lion-s-mlm", "--no-progress"]
    )  # fmt: skip
    assert status == 0
    assert "wrote LionForMaskedLM to" in capsys.readouterr().out
    card = (tmp_path / "out" / "README.md").read_text()
    assert 'model_id = "me/lion-s-mlm"' in card and "| perplexity | 7.39 |" in card


# --------------------------------------------------------------------------------------------- refusals


def test_a_folder_that_is_not_a_lion_checkpoint_is_refused(tmp_path, capsys):
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(NotALionFolderError, match="model_type 'bert', not 'lion'"):
        export_folder(tmp_path / "bert", tmp_path / "out", progress=False)
    with pytest.raises(NotALionFolderError, match="is not a folder: export reads a local folder"):
        export_folder(tmp_path / "my-org/some-model", tmp_path / "out", progress=False)
    with pytest.raises(TypeError, match="takes a LION model or a folder holding one, not a Linear"):
        export_folder(torch.nn.Linear(2, 2), tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    assert lion_hf_main(["export", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"error: {str(tmp_path / 'empty')!r} is not a LION checkpoint: it has no config.json."
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_match_the_config_are_refused_naming_the_keys(tmp_path):
    model = text_model(LionForMaskedLM)
    model.save_pretrained(tmp_path / "src")
    weights = load_file(tmp_path / "src" / "model.safetensors")
    del weights["lion.encoder.layer.1.attention.self.key.bias"]
    weights["lion.encoder.layer.0.attention.self.query.weight"] = torch.zeros(5, 5)
    weights["lion.stray.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "src" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NotALionFolderError) as refused:
        export_folder(tmp_path / "src", tmp_path / "out", progress=False)
    message = str(refused.value)
    assert "missing from the weights: lion.encoder.layer.1.attention.self.key.bias" in message
    assert "unexpected in the weights: lion.stray.weight" in message
    assert "lion.encoder.layer.0.attention.self.query.weight is (5, 5) in the weights, the config needs (32, 32)" in message
    assert not (tmp_path / "out").exists()


def test_an_existing_destination_is_kept_unless_overwrite_and_a_failed_export_leaves_nothing(tmp_path, tokenizer):
    model = text_model(LionForMaskedLM)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_folder(model, dst, progress=False)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    # Replacing a folder that holds the source would delete it, even with --overwrite.
    model.save_pretrained(dst / "checkpoint-5")
    with pytest.raises(ValueError, match="contains the input .*checkpoint-5'; replacing the folder would delete it"):
        export_folder(dst / "checkpoint-5", dst, overwrite=True, progress=False)
    shutil.rmtree(dst / "checkpoint-5")

    def fails(folder):
        assert (folder / "model.safetensors").is_file()  # called on the written folder, before the card
        raise ValueError("verification failed")

    with pytest.raises(ValueError, match="verification failed"):
        export_folder(model, dst, overwrite=True, verify=fails, progress=False)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "staging folders left behind"
    with pytest.raises(ValueError, match="30522 tokens but the model's vocabulary has 97"):
        export_folder(randomized(LionForMaskedLM(tiny_text_config())), tmp_path / "other", tokenizer=tokenizer, progress=False)
    export_folder(model, dst, overwrite=True, progress=False)
    assert "keep.txt" not in {p.name for p in dst.iterdir()}


def test_a_bad_metrics_file_is_refused_before_any_work(tmp_path):
    model = text_model(LionForMaskedLM)
    for content, message in (("[1, 2]", "must hold a JSON object"), ("{oops", "is not valid JSON")):
        metrics = tmp_path / "metrics.json"
        metrics.write_text(content)
        with pytest.raises(ValueError, match=message):
            export_folder(model, tmp_path / "out", metrics=metrics, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_folder(model, tmp_path / "out", metrics=tmp_path / "missing.json", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
