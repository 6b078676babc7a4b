"""Saved checkpoints carry their code: round trips in-process and loads with lion_hf hidden."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_without_lion_hf
from safetensors.torch import load_file
from test_text_models import tiny_config
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from lion_hf import LionForMaskedLM

MODEL_FILES = ("configuration_lion.py", "modeling_lion.py", "lion_attention.py", "lion_triton.py")
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
    model = LionForMaskedLM(tiny_config("s", vocab_size=30522, max_position_embeddings=64, chunk_size=4)).eval()
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
    run_without_lion_hf(code, cwd=tmp_path)
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
