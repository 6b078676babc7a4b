"""Conversion of the original LION checkpoints: parity with the original outputs, loading without lion_hf, and
every refusal (unsafe pickle, unknown variant, missing/unexpected/misshapen weights, occupied output folder)."""

from __future__ import annotations

import argparse
import fractions
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import run_without_lion_hf
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertTokenizer

from lion_hf import ATTENTION_FORMS, LionForImageClassification, LionForMaskedLM, LionForSequenceClassification
from lion_hf.cli import main as lion_hf_main
from lion_hf.conversion import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    convert_mlm,
    convert_vision,
    load_checkpoint,
)
from lion_hf.conversion.vision import lion_config, original_arguments

TOLERANCE = 1e-5
CONVERTERS = {"deit-lion-vision": "vision", "composer-m2bert-lion": "mlm"}


@dataclass
class Fixture:
    name: str
    kind: str  # "vision" or "mlm"
    checkpoint: Path
    description: Path  # NAME.json
    io: Path


def discover(fixtures_dir: Path) -> list[Fixture]:
    found = []
    for description in sorted(fixtures_dir.glob("*.json")):
        name = description.name.removesuffix(".json")
        checkpoints = [p for p in fixtures_dir.glob(f"{name}.pt*") if p.suffix in (".pt", ".pth")]
        assert len(checkpoints) == 1, f"fixture {name}: expected one .pt/.pth beside its JSON, found {checkpoints}"
        kind = CONVERTERS[json.loads(description.read_text())["format"]]
        found.append(Fixture(name, kind, checkpoints[0], description, fixtures_dir / f"{name}.io.safetensors"))
    assert {f.kind for f in found} == {"vision", "mlm"}, f"fixtures of both formats expected in {fixtures_dir}"
    return found


def convert(fixture: Fixture, output: Path, **kwargs):
    if fixture.kind == "vision":
        return convert_vision(fixture.checkpoint, output, original_config=fixture.description, progress=False, **kwargs)
    return convert_mlm(fixture.checkpoint, output, progress=False, **kwargs)


def model_inputs(fixture: Fixture) -> dict[str, torch.Tensor]:
    tensors = load_file(fixture.io)
    names = ("pixel_values",) if fixture.kind == "vision" else ("input_ids", "attention_mask", "token_type_ids")
    return {name: tensors[name] for name in names}


@pytest.fixture(scope="module")
def fixtures(fixtures_dir) -> list[Fixture]:
    return discover(fixtures_dir)


@pytest.fixture(scope="module")
def converted(fixtures, tmp_path_factory) -> dict[str, tuple[Fixture, Path]]:
    root = tmp_path_factory.mktemp("converted")
    folders = {}
    for fixture in fixtures:
        result = convert(fixture, root / fixture.name, verify=fixture.io)
        assert result.report.passed, result.report.to_text()
        folders[fixture.name] = (fixture, result.output)
    return folders


MODEL_CLASSES = {
    "LionForImageClassification": LionForImageClassification,
    "LionForMaskedLM": LionForMaskedLM,
    "LionForSequenceClassification": LionForSequenceClassification,
}


def load_converted(folder: Path):
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    return MODEL_CLASSES[architecture].from_pretrained(folder).eval()


def capture_backbone_output(model) -> dict:
    """A dict that holds the backbone's output (``"output"``) of the model's latest forward pass."""
    captured = {}
    model.base_model.register_forward_hook(lambda module, args, output: captured.update(output=output))
    return captured


def test_every_fixture_reproduces_the_original_outputs_in_every_form(converted):
    for fixture, folder in converted.values():
        model = load_converted(folder)
        reference = load_file(fixture.io)
        backbone = capture_backbone_output(model)
        compared = ["logits", "pooled_features" if fixture.kind == "vision" else "last_hidden_state"]
        for form in ATTENTION_FORMS:
            # A chunk size smaller than every fixture's sequence, so the chunk form carries states across chunks.
            model.set_attention_form(form, chunk_size=5)
            with torch.no_grad():
                observed = {"logits": model(**model_inputs(fixture)).logits}
            observed["pooled_features"] = backbone["output"].pooler_output
            observed["last_hidden_state"] = backbone["output"].last_hidden_state
            for name in compared:
                difference = (observed[name] - reference[name]).abs().max().item()
                assert difference <= TOLERANCE, f"{fixture.name} {form} {name}: max abs difference {difference:.3e}"


def test_converted_folders_are_complete_and_load_without_lion_hf(converted, tmp_path):
    for fixture, folder in converted.values():
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "README.md", "modeling_lion.py", "configuration_lion.py",
                "lion_attention.py"} <= files, f"{fixture.name}: {sorted(files)}"  # fmt: skip
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoConfig"] == "configuration_lion.LionConfig"
        assert f"modeling_lion.{config['architectures'][0]}" in config["auto_map"].values()
        if fixture.kind == "vision":
            processor = json.loads((folder / "preprocessor_config.json").read_text())
            assert processor["crop_size"] == {"height": config["image_size"], "width": config["image_size"]}
        assert fixture.checkpoint.name in (folder / "README.md").read_text()
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folders left behind"
    jobs = [
        (
            str(folder),
            str(fixture.io),
            fixture.kind,
            json.loads((folder / "config.json").read_text())["architectures"][0],
        )
        for fixture, folder in converted.values()
    ]
    out = run_without_lion_hf(
        f"""
        import json, torch, transformers
        from safetensors.torch import load_file
        AUTO = {{"LionForImageClassification": transformers.AutoModelForImageClassification,
                 "LionForMaskedLM": transformers.AutoModelForMaskedLM,
                 "LionForSequenceClassification": transformers.AutoModelForSequenceClassification}}
        result = {{}}
        for folder, io, kind, architecture in {jobs!r}:
            model = AUTO[architecture].from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__name__ == architecture, type(model)
            tensors = load_file(io)
            names = ["pixel_values"] if kind == "vision" else ["input_ids", "attention_mask", "token_type_ids"]
            for form in ("parallel", "chunk", "recurrent"):
                model.set_attention_form(form, chunk_size=5)
                with torch.no_grad():
                    logits = model(**{{n: tensors[n] for n in names}}).logits
                result[folder + " " + form] = (logits - tensors["logits"]).abs().max().item()
        print(json.dumps(result))
        """,
        cwd=tmp_path,
    )
    differences = json.loads(out.strip().splitlines()[-1])
    assert len(differences) == len(jobs) * len(ATTENTION_FORMS)
    worst = {key: value for key, value in differences.items() if value > TOLERANCE}
    assert not worst, worst


# --------------------------------------------------------------------------------------------- refusals


def original(fixture: Fixture):
    return load_checkpoint(fixture.checkpoint)


def vision_fixture(fixtures, mask_type: str, order: str | None = None) -> Fixture:
    for fixture in fixtures:
        if fixture.kind == "vision":
            args = original(fixture)["args"]
            if args.mask_type == mask_type and order in (None, args.order):
                return fixture
    pytest.fail(f"no vision fixture with mask_type {mask_type!r} and order {order!r}")


def mlm_fixture(fixtures, task: str = "masked-lm", arch_type: str | None = None) -> Fixture:
    prefix = "model.cls." if task == "masked-lm" else "model.classifier."
    for fixture in fixtures:
        if fixture.kind == "mlm":
            checkpoint = original(fixture)
            content = checkpoint["state"]["integrations"]["huggingface"]["model"]["config"]["content"]
            if any(k.startswith(prefix) for k in checkpoint["state"]["model"]) and arch_type in (
                None,
                content["arch_type"],
            ):
                return fixture
    pytest.fail(f"no {task} fixture with arch_type {arch_type!r}")


def mlm_weights(checkpoint) -> dict:
    return checkpoint["state"]["model"]


def mlm_content(checkpoint) -> dict:
    return checkpoint["state"]["integrations"]["huggingface"]["model"]["config"]["content"]


def test_a_pickle_needing_a_class_outside_the_allow_list_is_refused_unless_trusted(fixtures, tmp_path):
    fixture = vision_fixture(fixtures, "Decay")
    checkpoint = original(fixture)
    checkpoint["args"].lr = fractions.Fraction(1, 2000)  # a class torch's weights-only unpickler does not allow
    path = tmp_path / "odd.pth"
    torch.save(checkpoint, path)
    with pytest.raises(UnsafeCheckpointError, match=r"fractions\.Fraction.*--trust-checkpoint"):
        convert_vision(path, tmp_path / "out", original_config=fixture.description, progress=False)
    assert not (tmp_path / "out").exists()
    result = convert_vision(
        path, tmp_path / "out", original_config=fixture.description, verify=fixture.io, trust_checkpoint=True,
        progress=False,
    )  # fmt: skip
    assert result.report.passed


def test_only_argparse_namespace_is_allowed_beyond_tensors(fixtures):
    from lion_hf.conversion import ALLOWED_GLOBALS

    assert ALLOWED_GLOBALS == (argparse.Namespace,)
    for fixture in fixtures:
        load_checkpoint(fixture.checkpoint)  # every original checkpoint loads safely


def test_unknown_mask_type_names_the_allowed_ones(fixtures, tmp_path):
    fixture = vision_fixture(fixtures, "Decay")
    checkpoint = original(fixture)
    checkpoint["args"].mask_type = "Gated"
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"Unknown mask_type 'Gated'; allowed: 'Lit', 'Decay', 'Selective'"):
        convert_vision(tmp_path / "bad.pth", tmp_path / "out", progress=False, overrides=_shape_of(fixture))


def _shape_of(fixture: Fixture) -> dict:
    """The shape entries of a vision fixture's constructor JSON (not its mask type), as flags would give them."""
    constructor = json.loads(fixture.description.read_text())["constructor"]
    return {k: constructor[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}


def test_unknown_arch_type_names_the_allowed_ones(fixtures, tmp_path):
    checkpoint = original(mlm_fixture(fixtures))
    mlm_content(checkpoint)["arch_type"] = "hydra"
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"Unknown arch_type 'hydra'; allowed: 'lion-lit', 'lion-d', 'lion-s'"):
        convert_mlm(tmp_path / "bad.pt", tmp_path / "out", progress=False)


def test_missing_and_unexpected_keys_are_listed_by_name_and_nothing_is_written(fixtures, tmp_path):
    checkpoint = original(mlm_fixture(fixtures))
    weights = mlm_weights(checkpoint)
    del weights["model.bert.encoder.layer.1.output.dense.bias"]
    weights["model.bert.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(3)
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as error:
        convert_mlm(tmp_path / "bad.pt", tmp_path / "out", progress=False)
    message = str(error.value)
    missing, unexpected = message.split("unexpected in the checkpoint")
    assert "model.bert.encoder.layer.1.output.dense.bias (for lion.encoder.layer.1.output.dense.bias)" in missing
    assert "model.bert.encoder.layer.0.attention.self.rotary.weight" in unexpected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"], "a failed conversion left files behind"


def test_a_shape_mismatch_names_the_key_and_both_shapes(fixtures, tmp_path):
    fixture = vision_fixture(fixtures, "Decay")
    checkpoint = original(fixture)
    checkpoint["model"]["blocks.0.attn.proj.weight"] = checkpoint["model"]["blocks.0.attn.proj.weight"][:, :-1]
    width = checkpoint["model"]["blocks.0.attn.proj.weight"].shape[0]
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as error:
        convert_vision(tmp_path / "bad.pth", tmp_path / "out", original_config=fixture.description, progress=False)
    assert (
        f"blocks.0.attn.proj.weight has shape ({width}, {width - 1}), "
        f"lion.encoder.layer.0.attention.proj.weight needs ({width}, {width})"
    ) in str(error.value)


def test_a_wrong_variant_shows_up_as_missing_and_unexpected_decay_parameters(fixtures, tmp_path):
    fixture = vision_fixture(fixtures, "Decay")
    with pytest.raises(CheckpointMismatchError) as error:
        convert_vision(
            fixture.checkpoint, tmp_path / "out", original_config=fixture.description, progress=False,
            overrides={"mask_type": "Selective"},
        )  # fmt: skip
    message = str(error.value)
    assert "blocks.0.attn.a_i.weight (for lion.encoder.layer.0.attention.decay_gate.weight)" in message
    assert "unexpected in the checkpoint (" in message and "    blocks.0.attn.a_i\n" in message


def test_an_existing_output_folder_is_kept_unless_overwrite(fixtures, tmp_path):
    fixture = mlm_fixture(fixtures)
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"exists and is not empty; pass --overwrite"):
        convert(fixture, output)
    assert (output / "notes.txt").read_text() == "mine"
    convert(fixture, output, overwrite=True)
    assert not (output / "notes.txt").exists() and (output / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_vision_arguments_from_a_registered_model_name_and_the_training_args():
    args = argparse.Namespace(
        model="lion_small_patch16_224", input_size=224, nb_classes=1000, mask_type="Selective", order="S",
        pos_emb=True, cls_tok=False, format="RNN", chunk_size=32,
    )  # fmt: skip
    config = lion_config(original_arguments(args))
    # lion_small_patch16_224: embed 384, 6 heads, depth 12, mlp ratio 4, qkv bias, patch 16.
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (384, 6, 12)
    assert (config.intermediate_size, config.qkv_bias, config.patch_size, config.image_size) == (1536, True, 16, 224)
    assert (config.variant, config.patch_order, config.pooling, config.num_labels) == ("s", "snake", "mean", 1000)
    assert (config.use_position_embeddings, config.attention_form, config.layer_norm_eps) == (True, "recurrent", 1e-6)
    flags = lion_config(original_arguments(args, overrides={"model": "lion_tiny_patch16_224", "cls_tok": True}))
    assert (flags.hidden_size, flags.num_attention_heads, flags.pooling) == (192, 3, "cls")
    args.model = "lion_custom"
    with pytest.raises(ValueError, match=r"embed_dim, depth, num_heads .*'lion_custom' is not a registered"):
        original_arguments(args)


def test_vision_snake_decay_and_raster_selective_checkpoints_map_their_path_parameters(fixtures, tmp_path):
    # LION-D with the snake order has a second decay per head, a2_i, for the column snake.
    fixture = vision_fixture(fixtures, "Decay", "Normal")
    checkpoint = original(fixture)
    checkpoint["args"].order = "S"
    depth = json.loads(fixture.description.read_text())["constructor"]["depth"]
    for layer in range(depth):
        a_i = checkpoint["model"][f"blocks.{layer}.attn.a_i"]
        checkpoint["model"][f"blocks.{layer}.attn.a2_i"] = torch.linspace(-2, 2, a_i.numel())
    torch.save(checkpoint, tmp_path / "d_snake.pth")
    constructor = {**json.loads(fixture.description.read_text())["constructor"], "order": "S"}
    model = convert_vision(tmp_path / "d_snake.pth", tmp_path / "d", original_config=constructor, progress=False).model
    logits = {}
    for layer in range(depth):
        expected = torch.stack([checkpoint["model"][f"blocks.{layer}.attn.{p}"] for p in ("a_i", "a2_i")])
        assert torch.equal(model.lion.encoder.layer[layer].attention.decay_logits.data, expected)
    for form in ATTENTION_FORMS:
        model.set_attention_form(form, chunk_size=5)
        with torch.no_grad():
            logits[form] = model(**model_inputs(fixture)).logits
    for form in ATTENTION_FORMS:
        assert (logits[form] - logits["parallel"]).abs().max() <= TOLERANCE

    # LION-S with the raster order has a single gate layer, a_i.
    fixture = vision_fixture(fixtures, "Selective", "S")
    checkpoint = original(fixture)
    checkpoint["args"].order = "Normal"
    for key in [k for k in checkpoint["model"] if ".a2_i." in k]:
        del checkpoint["model"][key]
    torch.save(checkpoint, tmp_path / "s_raster.pth")
    constructor = {**json.loads(fixture.description.read_text())["constructor"], "order": "Normal"}
    model = convert_vision(tmp_path / "s_raster.pth", tmp_path / "s", original_config=constructor, progress=False).model
    gate = model.lion.encoder.layer[0].attention.decay_gate
    assert torch.equal(gate.weight.data, checkpoint["model"]["blocks.0.attn.a_i.weight"])
    assert torch.equal(gate.bias.data, checkpoint["model"]["blocks.0.attn.a_i.bias"])


def test_mlm_config_from_json_when_the_checkpoint_has_none(fixtures, tmp_path):
    fixture = mlm_fixture(fixtures, "sequence-classification")
    checkpoint = original(fixture)
    del checkpoint["state"]["integrations"]
    torch.save(checkpoint, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"no arch_type; give it with --arch-type"):
        convert_mlm(tmp_path / "bare.pt", tmp_path / "none", progress=False)
    result = convert_mlm(
        tmp_path / "bare.pt", tmp_path / "out", bert_config_json=fixture.description, verify=fixture.io, progress=False
    )
    assert result.report.passed and isinstance(result.model, LionForSequenceClassification)


def test_an_untied_decoder_stays_untied(fixtures, tmp_path):
    fixture = mlm_fixture(fixtures, "masked-lm")
    checkpoint = original(fixture)
    weights = mlm_weights(checkpoint)
    decoder = weights["model.cls.predictions.decoder.weight"] = weights["model.cls.predictions.decoder.weight"] * 2
    torch.save(checkpoint, tmp_path / "untied.pt")
    convert_mlm(tmp_path / "untied.pt", tmp_path / "out", progress=False)
    model = LionForMaskedLM.from_pretrained(tmp_path / "out")
    assert model.config.tie_word_embeddings is False
    assert torch.equal(model.cls.predictions.decoder.weight.data, decoder)
    assert torch.equal(
        model.lion.embeddings.word_embeddings.weight.data, weights["model.bert.embeddings.word_embeddings.weight"]
    )


def test_the_tokenizer_is_saved_and_must_fit_the_vocabulary(fixtures, data_dir, tmp_path):
    fixture = mlm_fixture(fixtures)
    vocab_size = mlm_content(original(fixture))["vocab_size"]
    bert = data_dir / "tokenizers" / "bert-base-uncased"
    with pytest.raises(ValueError, match=rf"tokenizer has 30522 tokens but the model's vocabulary has {vocab_size}"):
        convert_mlm(fixture.checkpoint, tmp_path / "big", tokenizer=bert, progress=False)
    assert not (tmp_path / "big").exists()
    # A WordPiece vocabulary of the model's size: BERT's special tokens, then its words in order from "the".
    lines = (bert / "vocab.txt").read_text(encoding="utf-8").splitlines()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = specials + lines[lines.index("the") :][: vocab_size - len(specials)]
    BertTokenizer(vocab={word: i for i, word in enumerate(words)}).save_pretrained(tmp_path / "small")
    result = convert_mlm(fixture.checkpoint, tmp_path / "out", tokenizer=tmp_path / "small", progress=False)
    tokenizer = AutoTokenizer.from_pretrained(result.output)
    assert len(tokenizer) == vocab_size
    assert tokenizer.model_max_length == result.model.config.max_position_embeddings
    assert tokenizer("The")["input_ids"] == [words.index("[CLS]"), words.index("the"), words.index("[SEP]")]


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_converts_and_verifies_and_fails_on_a_tampered_reference(fixtures, tmp_path, capsys):
    fixture = vision_fixture(fixtures, "Selective")
    constructor = json.loads(fixture.description.read_text())["constructor"]
    flags = [
        "--img-size", str(constructor["img_size"]), "--patch-size", str(constructor["patch_size"]),
        "--embed-dim", str(constructor["embed_dim"]), "--depth", str(constructor["depth"]),
        "--num-heads", str(constructor["num_heads"]),
    ]  # fmt: skip
    command = ["convert", "vision", str(fixture.checkpoint), str(tmp_path / "ok"), "--no-progress", *flags]
    assert lion_hf_main([*command, "--verify", str(fixture.io)]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and all(form in out for form in ATTENTION_FORMS)
    assert (tmp_path / "ok" / "model.safetensors").is_file()

    tampered = load_file(fixture.io)
    tampered["logits"] = tampered["logits"].clone()
    tampered["logits"][0, 0] += 1e-3
    save_file(tampered, tmp_path / "tampered.io.safetensors")
    command[3] = str(tmp_path / "bad")
    assert lion_hf_main([*command, "--verify", str(tmp_path / "tampered.io.safetensors")]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "nothing written" in captured.err
    assert not (tmp_path / "bad").exists()

    # A refused conversion (occupied folder) is exit status 2 with the reason on stderr.
    assert lion_hf_main(["convert", "vision", str(fixture.checkpoint), str(tmp_path / "ok"), *flags]) == 2
    assert "--overwrite" in capsys.readouterr().err
