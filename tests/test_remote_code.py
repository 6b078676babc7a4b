"""Saved checkpoints carry their code: round trips in-process, loads with lion_hf hidden, older checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    REPO,
    assert_close,
    deit_eval_transform,
    randomized,
    run_without_lion_hf,
    some_images,
    tiny_text_config,
    tiny_vision_config,
)
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, AutoModelForMaskedLM, AutoTokenizer, pipeline

from lion_hf import (
    LionForImageClassification,
    LionForImageClassificationWithTeacher,
    LionForMaskedLM,
    lion_image_processor,
)

MODEL_FILES = (
    "configuration_lion.py", "modeling_lion.py", "lion_attention.py", "lion_triton.py", "lion_triton_chunk.py",
    "lion_triton_features.py",
)
SENTENCES = ["the cat sat on the [MASK] .", "a [MASK] day"]
FILL_MASK_TEXT = "paris is the [MASK] of france ."


def comparable(config: dict) -> dict:
    """A config dict as JSON would hold it, without the fields that name where it was loaded from."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in ("_name_or_path", "architectures")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_dir: Path):
    """A small LION-S masked-LM folder with the real BERT tokenizer, and the model that wrote it."""
    folder = tmp_path_factory.mktemp("lion-mlm")
    torch.manual_seed(0)
    model = LionForMaskedLM(tiny_text_config("s", vocab_size=30522, max_position_embeddings=64, chunk_size=4)).eval()
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizers" / "bert-base-uncased")
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def test_save_load_round_trip(checkpoint):
    folder, model, tokenizer = checkpoint
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "lion" and config["architectures"] == ["LionForMaskedLM"]
    assert config["auto_map"]["AutoConfig"] == "configuration_lion.LionConfig"
    assert config["auto_map"]["AutoModel"] == "modeling_lion.LionModel"
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_lion.LionForMaskedLM"
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_lion.LionForSequenceClassification"
    for name in MODEL_FILES:
        assert (folder / name).read_text() == (REPO / "modeling" / name).read_text(), name

    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits
        for loaded in (LionForMaskedLM.from_pretrained(folder), AutoModelForMaskedLM.from_pretrained(folder)):
            assert type(loaded) is LionForMaskedLM
            assert comparable(loaded.config.to_dict()) == comparable(model.config.to_dict())
            state, loaded_state = model.state_dict(), loaded.state_dict()
            assert state.keys() == loaded_state.keys()
            assert all(torch.equal(state[key], loaded_state[key]) for key in state)
            assert torch.equal(loaded.eval()(**inputs).logits, expected)


REMOTE = """
import json
import torch
from safetensors.torch import save_file
from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                          AutoTokenizer, pipeline)

folder, out = {folder!r}, {out!r}
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
tokenizer = AutoTokenizer.from_pretrained(folder)
inputs = tokenizer({sentences!r}, padding=True, return_tensors="pt")
results = dict(inputs)
with torch.no_grad():
    backbone = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(backbone).__name__ == "LionModel", type(backbone)
    results["last_hidden_state"] = backbone(**inputs).last_hidden_state
    mlm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(mlm).__module__.startswith("transformers_modules"), type(mlm).__module__
    for form in ("parallel", "chunk", "recurrent"):
        mlm.set_attention_form(form)
        results["logits_" + form] = mlm(**inputs).logits
    # The chunk kernels' file came with the checkpoint (on the CPU nothing imports it): without Triton it imports
    # and declines, and PyTorch ran those forms.
    import importlib
    kernels = importlib.import_module(type(mlm).__module__.rsplit(".", 1)[0] + ".lion_triton_chunk")
    x = torch.zeros(1, 1, 4, 8)
    reason = kernels.unsupported(x, x, x, None, None, chunk_size=64, normalize=False, eps=1e-6,
                                 key_padding_mask=None, dropout_p=0.0)
    assert reason == "Triton is not installed", reason
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=3)
    results["classifier_logits"] = classifier.eval()(**inputs).logits
    for name, value in classifier.lion.state_dict().items():
        results["classifier.lion." + name] = value
fill_mask = pipeline("fill-mask", model=folder, trust_remote_code=True)
predictions = fill_mask({fill_text!r}, top_k=5)
results["fill_tokens"] = torch.tensor([p["token"] for p in predictions])
results["fill_scores"] = torch.tensor([p["score"] for p in predictions], dtype=torch.float64)
save_file({{k: v.contiguous() for k, v in results.items()}}, out + "/remote.safetensors")
with open(out + "/remote.json", "w") as f:
    json.dump(dict(config=config.to_dict(), fill_mask=predictions), f)
"""


def test_remote_code_without_lion_hf(checkpoint, tmp_path):
    folder, model, tokenizer = checkpoint
    code = REMOTE.format(folder=str(folder), out=str(tmp_path), sentences=SENTENCES, fill_text=FILL_MASK_TEXT)
    run_without_lion_hf(code, cwd=tmp_path, also_hidden=("triton",))
    remote = load_file(tmp_path / "remote.safetensors")
    written = json.loads((tmp_path / "remote.json").read_text())

    assert comparable(written["config"]) == comparable(model.config.to_dict())

    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert inputs["attention_mask"].min() == 0  # a padded batch
    for key, value in inputs.items():
        assert torch.equal(remote[key], value), key
    with torch.no_grad():
        expected_hidden = model.lion(**inputs).last_hidden_state
        expected_logits = model(**inputs).logits
    torch.testing.assert_close(remote["last_hidden_state"], expected_hidden, rtol=0, atol=1e-6)
    torch.testing.assert_close(remote["logits_parallel"], expected_logits, rtol=0, atol=1e-6)
    for form in ("chunk", "recurrent"):
        torch.testing.assert_close(remote["logits_" + form], expected_logits, rtol=1e-5, atol=2e-5)

    # A sequence classifier made from the masked-LM checkpoint starts from its backbone.
    backbone = model.lion.state_dict()
    assert remote["classifier_logits"].shape == (len(SENTENCES), 3)
    new_in_classifier = {"pooler.dense.weight", "pooler.dense.bias"}
    remote_backbone = {k.removeprefix("classifier.lion."): v for k, v in remote.items() if k.startswith("classifier.lion.")}
    assert remote_backbone.keys() == backbone.keys() | new_in_classifier
    for key, value in backbone.items():
        assert torch.equal(remote_backbone[key], value), key

    # fill-mask: the remote pipeline's top 5 equal the softmax of the in-process logits at the mask.
    encoded = tokenizer(FILL_MASK_TEXT, return_tensors="pt")
    position = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().item()
    with torch.no_grad():
        probabilities = model(**encoded).logits[0, position].double().softmax(-1)
    scores, tokens = probabilities.topk(5)
    assert torch.equal(remote["fill_tokens"], tokens)
    torch.testing.assert_close(remote["fill_scores"], scores, rtol=1e-5, atol=1e-7)
    local = pipeline("fill-mask", model=model, tokenizer=tokenizer)(FILL_MASK_TEXT, top_k=5)
    assert local == written["fill_mask"]


# ---------------------------------------------------------------------------------------------- vision


def _save_pair(folder: Path):
    labels = {0: "ants", 1: "bees"}
    classifier_config = tiny_vision_config(image_size=32, patch_size=8, variant="s", patch_order="snake", id2label=labels)
    classifier = randomized(LionForImageClassification(classifier_config))
    classifier.save_pretrained(folder / "classifier")
    lion_image_processor(classifier_config).save_pretrained(folder / "classifier")
    teacher_config = tiny_vision_config(image_size=32, patch_size=8, variant="d", use_distillation_token=True, id2label=labels)
    distilled = randomized(LionForImageClassificationWithTeacher(teacher_config))
    distilled.save_pretrained(folder / "distilled")
    lion_image_processor(teacher_config).save_pretrained(folder / "distilled")
    return classifier, distilled


def test_saved_checkpoints_load_as_remote_code_and_classify_a_photo(tmp_path, data_dir):
    classifier, distilled = _save_pair(tmp_path)
    photo = some_images(data_dir, 1)[0]
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.save(pixels, tmp_path / "pixels.pt")
    stdout = run_without_lion_hf(
        f"""
        import json, torch
        from PIL import Image
        from transformers import AutoModel, AutoModelForImageClassification, pipeline
        from transformers.models.auto.image_processing_auto import AutoImageProcessor
        pixels = torch.load("pixels.pt")
        result = {{}}
        for name in ("classifier", "distilled"):
            model = AutoModelForImageClassification.from_pretrained(name, trust_remote_code=True).eval()
            backbone = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
            processor = AutoImageProcessor.from_pretrained(name)
            with torch.no_grad():
                photo = processor(Image.open({str(photo)!r}), return_tensors="pt")["pixel_values"]
                result[name] = dict(
                    model_class=type(model).__name__,
                    backbone_class=type(backbone).__name__,
                    processor_size=processor.crop_size["height"],
                    logits=model(pixel_values=pixels).logits.tolist(),
                    hidden=backbone(pixel_values=pixels).last_hidden_state.tolist(),
                    photo=photo.tolist(),
                    pipeline=pipeline("image-classification", model=name, trust_remote_code=True)({str(photo)!r}),
                )
        print(json.dumps(result))
        """,
        cwd=tmp_path,
    )
    result = json.loads(stdout.strip().splitlines()[-1])
    for name, model, model_class in [
        ("classifier", classifier, "LionForImageClassification"),
        ("distilled", distilled, "LionForImageClassificationWithTeacher"),
    ]:
        got = result[name]
        assert (got["model_class"], got["backbone_class"], got["processor_size"]) == (model_class, "LionModel", 32)
        with torch.no_grad():
            assert_close(torch.tensor(got["logits"]), model(pixel_values=pixels).logits)
            assert_close(torch.tensor(got["hidden"]), model.lion(pixel_values=pixels).last_hidden_state)
            with Image.open(photo) as image:
                photo_pixels = torch.from_numpy(deit_eval_transform(image, 32))[None]
            assert_close(torch.tensor(got["photo"]), photo_pixels)
            probabilities = model(pixel_values=photo_pixels).logits.softmax(-1)[0]
        expected = sorted(
            ({"label": model.config.id2label[i], "score": p} for i, p in enumerate(probabilities.tolist())),
            key=lambda item: -item["score"],
        )
        assert [item["label"] for item in got["pipeline"]] == [item["label"] for item in expected]
        assert {item["label"] for item in expected} == {"ants", "bees"}
        np.testing.assert_allclose([i["score"] for i in got["pipeline"]], [i["score"] for i in expected], atol=1e-5)


def test_installed_auto_class_picks_the_distilled_head(tmp_path):
    _, distilled = _save_pair(tmp_path)
    for trust in (False, True):
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "distilled", trust_remote_code=trust).eval()
        assert type(loaded) is LionForImageClassificationWithTeacher
        pixels = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(pixel_values=pixels).logits, distilled(pixel_values=pixels).logits)


WITHOUT_TRITON = """
import os
import sys

class _BlockTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden for this test)")
        return None

sys.meta_path.insert(0, _BlockTriton())
# The kernels' CPU switch: the dispatch now tries to import them, and must fall back.
os.environ["TRITON_INTERPRET"] = "1"

import torch
from transformers import AutoModelForMaskedLM

model = AutoModelForMaskedLM.from_pretrained({folder!r}, trust_remote_code=True).eval()
package = type(model).__module__.rsplit(".", 1)[0]
assert os.path.isfile(os.path.join(os.path.dirname(sys.modules[type(model).__module__].__file__), "lion_triton.py"))
attention = sys.modules[package + ".lion_attention"]
x = torch.rand(1, 2, 5, 16)
options = dict(chunk_size=64, normalize=False, eps=1e-6, key_padding_mask=None, dropout_p=0.0)
assert attention.select_implementation("parallel", "auto", x, x, x, None, None, **options).backend == "pytorch"
try:
    attention.select_implementation("parallel", "triton", x, x, x, None, None, **options)
    raise AssertionError("the triton backend ran without triton")
except ValueError as error:
    assert "triton is not installed" in str(error), error
with torch.no_grad():
    logits = model(input_ids=torch.tensor([{ids!r}])).logits
torch.save(logits, {out!r})
assert "triton" not in sys.modules
"""


def test_checkpoint_ships_the_kernels_and_loads_without_triton(checkpoint, tmp_path):
    """lion_triton.py travels with the checkpoint (lion_attention imports it lazily), and a process in which
    ``import triton`` fails loads the model, reports why the kernels cannot run, and computes with PyTorch."""
    folder, model, _ = checkpoint
    assert (folder / "lion_triton.py").is_file()
    ids = [101, 2023, 2003, 1037, 102]
    out = tmp_path / "logits.pt"
    run_without_lion_hf(WITHOUT_TRITON.format(folder=str(folder), ids=ids, out=str(out)), cwd=tmp_path)
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(torch.load(out), expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ older checkpoints

SAVED_BY_0_1_0 = Path(__file__).parent / "data" / "saved-by-0.1.0-ecd2d26"


def test_checkpoints_saved_by_version_0_1_0_still_load_and_give_their_outputs():
    """Folders written by commit ecd2d26 (with its auto_map, processor and code), outputs computed by that code."""
    for name, model_class, inputs in [
        ("text-mlm", LionForMaskedLM, ("input_ids", "attention_mask")),
        ("vision-classifier", LionForImageClassification, ("pixel_values",)),
    ]:
        io = load_file(SAVED_BY_0_1_0 / f"{name}.io.safetensors")
        for loader in (model_class, AutoModelForImageClassification if "vision" in name else AutoModelForMaskedLM):
            model = loader.from_pretrained(SAVED_BY_0_1_0 / name).eval()
            assert type(model) is model_class
            with torch.no_grad():
                # float32 outputs recorded on another CPU: its matrix kernels sum in another order (1.25e-6 apart
                # on one logit here), far below what any change to the model's computation moves.
                assert_close(model(**{key: io[key] for key in inputs}).logits, io["logits"], rtol=1e-5, atol=1e-5)


def test_checkpoints_saved_by_version_0_1_0_load_their_own_code_without_lion_hf(tmp_path):
    """The vision folder carries the code of that version (the text one is kept without, to stay small)."""
    stdout = run_without_lion_hf(
        f"""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForImageClassification
        folder = {str(SAVED_BY_0_1_0)!r}
        io = load_file(folder + "/vision-classifier.io.safetensors")
        model = AutoModelForImageClassification.from_pretrained(folder + "/vision-classifier", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            print((model.eval()(pixel_values=io["pixel_values"]).logits - io["logits"]).abs().max().item())
        """,
        cwd=tmp_path,
    )
    assert float(stdout.strip().splitlines()[-1]) < 1e-6
