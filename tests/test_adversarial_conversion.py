"""The conversion CLI under bad input: nothing lost, nothing half-written, a message naming the file or value,
and the documented exit status (1 verification failed, 2 refused, 3 unexpected)."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
from transformers import BertTokenizer

from lion_hf.cli import main as lion_hf_main
from lion_hf.conversion import UnreadableCheckpointError, convert_mlm, load_checkpoint

REFUSED, UNEXPECTED = 2, 3
CONVERTED_FILES = {"config.json", "model.safetensors", "README.md"}


@pytest.fixture()
def mlm(fixtures_dir, tmp_path) -> dict[str, Path]:
    """Copies of an MLM fixture's checkpoint, io file and JSON, and a tokenizer folder, in ``tmp_path / "in"``."""
    folder = tmp_path / "in"
    folder.mkdir()
    files = {
        "checkpoint": shutil.copy(fixtures_dir / "mlm_lion_d.pt", folder),
        "io": shutil.copy(fixtures_dir / "mlm_lion_d.io.safetensors", folder),
        "json": shutil.copy(fixtures_dir / "mlm_lion_d.json", folder),
    }
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a"]
    BertTokenizer(vocab={word: i for i, word in enumerate(words)}).save_pretrained(folder / "tokenizer")
    files["tokenizer"] = folder / "tokenizer"
    return {name: Path(path) for name, path in files.items()}


def convert(*arguments) -> int:
    return lion_hf_main(["convert", "mlm", *map(str, arguments), "--no-progress"])


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- an output holding an input


@pytest.mark.parametrize(
    "inside, flags",
    [
        ("checkpoint", []),
        ("io", ["--verify", "{io}"]),
        ("json", ["--bert-config", "{json}"]),
        ("tokenizer", ["--tokenizer", "{tokenizer}"]),
    ],
)
def test_overwrite_never_deletes_an_input_inside_the_output_folder(mlm, fixtures_dir, inside, flags, capsys):
    """Regression: `convert ... OUT --overwrite` with the checkpoint (or --verify, a JSON config, the tokenizer)
    inside OUT converted, then deleted OUT with the input in it."""
    folder = mlm["checkpoint"].parent
    before = contents(folder)
    checkpoint = mlm["checkpoint"] if inside == "checkpoint" else fixtures_dir / "mlm_lion_d.pt"
    flags = [flag.format(**mlm) for flag in flags]
    assert convert(checkpoint, folder, "--overwrite", *flags) == REFUSED
    message = f"The output folder {str(folder)!r} contains the input {str(mlm[inside])!r}; replacing the folder would delete it."
    assert message in capsys.readouterr().err
    assert contents(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["in"]  # no staging folder either


def test_an_output_folder_that_is_or_is_above_an_input_is_refused_too(mlm, fixtures_dir, monkeypatch, capsys):
    tokenizer = mlm["tokenizer"]
    assert convert(fixtures_dir / "mlm_lion_d.pt", tokenizer, "--overwrite", "--tokenizer", tokenizer) == REFUSED
    assert f"The output folder {str(tokenizer)!r} is the input {str(tokenizer)!r}" in capsys.readouterr().err
    monkeypatch.chdir(mlm["checkpoint"].parent.parent)
    assert convert(mlm["checkpoint"], ".", "--overwrite") == REFUSED
    assert "The output folder '.' contains the input" in capsys.readouterr().err
    # ... and the checkpoint reached through a symbolic link into the output folder.
    os.symlink(mlm["checkpoint"], "linked.pt")
    assert convert("linked.pt", "in", "--overwrite") == REFUSED
    assert "The output folder 'in' contains the input 'linked.pt'" in capsys.readouterr().err
    assert mlm["checkpoint"].is_file()


# ------------------------------------------------------------------------------------- symlinked output


def test_a_symlinked_output_folder_is_written_through_the_link(mlm, tmp_path, capsys):
    """Regression: the model was written in place of the link, the link moved aside, and the command exited 2."""
    target, link = tmp_path / "models" / "lion", tmp_path / "link"
    target.mkdir(parents=True)
    link.symlink_to(target)
    assert convert(mlm["checkpoint"], link) == 0
    assert link.is_symlink() and CONVERTED_FILES <= set(os.listdir(target))
    # Occupied now: refused without --overwrite, replaced with it; the link stays and nothing is left beside it.
    assert convert(mlm["checkpoint"], link) == REFUSED
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    (target / "notes.txt").write_text("old")
    assert convert(mlm["checkpoint"], link, "--overwrite") == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert not (target / "notes.txt").exists() and CONVERTED_FILES <= set(os.listdir(target))
    assert sorted(os.listdir(tmp_path / "models")) == ["lion"]
    assert sorted(os.listdir(tmp_path)) == ["in", "link", "models"]


def test_a_dangling_link_is_followed_and_a_link_to_a_file_refused(mlm, tmp_path, capsys):
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "new-model")
    assert convert(mlm["checkpoint"], dangling) == 0
    assert dangling.is_symlink() and CONVERTED_FILES <= set(os.listdir(tmp_path / "new-model"))
    to_file = tmp_path / "to-file"
    to_file.symlink_to(mlm["json"])
    assert convert(mlm["checkpoint"], to_file, "--overwrite") == REFUSED
    assert f"Output {str(to_file)!r} exists and is not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------- unreadable checkpoints


def _truncated(path: Path, to: Path) -> Path:
    to.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return to


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda mlm, d: (d / "notes.pt").write_text("hello world\n") and d / "notes.pt", "KeyError: 101"),
        (lambda mlm, d: _truncated(mlm["checkpoint"], d / "half.pt"), "RuntimeError: PytorchStreamReader failed"),
        (lambda mlm, d: (d / "empty.pt").write_bytes(b"") or d / "empty.pt", "EOFError"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(mlm, tmp_path, make, why, capsys):
    """A text file printed `error: 101`; a truncated checkpoint gave a traceback and the exit status of a failed
    verification (1)."""
    path = make(mlm, tmp_path)
    assert convert(path, tmp_path / "out") == REFUSED
    error = capsys.readouterr().err
    assert f"error: Cannot read checkpoint {str(path)!r} ({path.stat().st_size} bytes): torch.load failed with" in error
    assert why in error and "Is the file complete, and a checkpoint written by torch.save?" in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnreadableCheckpointError):
        load_checkpoint(path, trust_checkpoint=True)


@pytest.mark.parametrize("content", [pickle.dumps({"model": {}}, protocol=4), bytes(range(256))])
def test_a_raw_pickle_or_junk_is_refused_in_plain_words(tmp_path, content, capsys):
    """The refusal read "unpickling it needs Check the documentation of torch.load ..."."""
    path = tmp_path / "state.pkl"
    path.write_bytes(content)
    assert convert(path, tmp_path / "out") == REFUSED
    error = capsys.readouterr().err
    assert re.search(r"the safe \(weights-only\) unpickler cannot read it \(Unsupported operand \d+\): it is not a file "
                     r"torch\.save wrote", error), error  # fmt: skip
    assert "needs Check the documentation" not in error and "--trust-checkpoint" in error
    # Trusted, torch.load still cannot read it: torch.save writes a zip archive or a magic number first.
    assert convert(path, tmp_path / "out", "--trust-checkpoint") == REFUSED
    assert f"Cannot read checkpoint {str(path)!r}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- other arguments


@pytest.mark.parametrize("tolerance", ["nan", "-1e-5", "inf"])
def test_a_tolerance_that_is_not_a_finite_non_negative_number_is_refused(mlm, tmp_path, tolerance, capsys):
    """--tolerance nan was accepted, and every comparison then failed."""
    assert convert(mlm["checkpoint"], tmp_path / "out", "--verify", mlm["io"], f"--tolerance={tolerance}") == REFUSED
    assert f"error: tolerance must be a finite number >= 0, got {float(tolerance)!r}." in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="tolerance must be a finite number >= 0"):
        convert_mlm(mlm["checkpoint"], tmp_path / "out", tolerance=float(tolerance), progress=False)


@pytest.mark.parametrize(
    "tokenizer, message",
    [
        ("missing", "Tokenizer folder '{d}/missing' does not exist; --tokenizer takes a folder a tokenizer was saved to."),
        ("in/mlm_lion_d.json", "Tokenizer folder '{d}/in/mlm_lion_d.json' is not a folder"),
        ("empty", "Cannot load a tokenizer from the folder '{d}/empty': "),
    ],
)
def test_a_tokenizer_folder_that_is_missing_or_holds_no_tokenizer_is_named(mlm, tmp_path, tokenizer, message, capsys):
    """A missing folder was answered with a Hub repo-id message."""
    (tmp_path / "empty").mkdir()
    assert convert(mlm["checkpoint"], tmp_path / "out", "--tokenizer", tmp_path / tokenizer) == REFUSED
    error = capsys.readouterr().err
    assert message.format(d=tmp_path) in error and "Repo id" not in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes"),
        ("[1, 2]", "must hold a JSON object of BERT config entries."),
    ],
)
def test_a_json_config_that_is_not_a_json_object_is_named(mlm, tmp_path, text, message, capsys):
    path = tmp_path / "config.json"
    path.write_text(text)
    assert convert(mlm["checkpoint"], tmp_path / "out", "--bert-config", path) == REFUSED
    error = capsys.readouterr().err
    assert str(path) in error and message in error


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_a_reference_io_file_that_is_not_safetensors_is_named_and_nothing_written(mlm, tmp_path, damage, capsys):
    path = tmp_path / "ref.io.safetensors"
    if damage == "text":
        path.write_text("inputs and outputs\n")
    else:
        _truncated(mlm["io"], path)
    assert convert(mlm["checkpoint"], tmp_path / "out", "--verify", path) == REFUSED
    assert f"error: Cannot read the reference io file {str(path)!r} as safetensors: " in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["in", "ref.io.safetensors"]


def test_an_unforeseen_failure_is_status_3_never_that_of_a_failed_verification(mlm, tmp_path, monkeypatch, capsys):
    from lion_hf.conversion import mlm as mlm_conversion

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(mlm_conversion, "build_model", broken)
    assert convert(mlm["checkpoint"], tmp_path / "out") == UNEXPECTED
    error = capsys.readouterr().err
    assert "RuntimeError: a bug" in error and "the conversion failed unexpectedly" in error
    assert sorted(os.listdir(tmp_path)) == ["in"]
