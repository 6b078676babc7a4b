"""Writing a converted model as a complete Hub folder, all at once or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from lion_hf import LionPreTrainedModel

from .verify import VerificationReport

VARIANT_NAMES = {"lit": "LION-LIT", "d": "LION-D", "s": "LION-S"}
PIPELINE_TAGS = {
    "LionForMaskedLM": ("fill-mask", "AutoModelForMaskedLM"),
    "LionForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
    "LionForImageClassification": ("image-classification", "AutoModelForImageClassification"),
}


def check_inputs_outside(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output folder that is, or contains, one of the ``inputs`` (files or folders the conversion reads):
    replacing it would delete them. Symbolic links are followed on both sides."""
    folder = Path(output).resolve()
    for path in inputs:
        if path is None:
            continue
        source = Path(path).resolve()
        if source == folder or folder in source.parents:
            relation = "is" if source == folder else "contains"
            raise ValueError(
                f"The output folder {str(output)!r} {relation} the input {str(path)!r}; replacing the folder would "
                "delete it. Write to another folder."
            )


def check_output_folder(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"Output {str(output)!r} exists and is not a folder.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"Output folder {str(output)!r} exists and is not empty; pass --overwrite (overwrite=True) to replace it."
        )


@contextlib.contextmanager
def staged_folder(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A fresh folder beside ``output`` to write into; moved to ``output`` only when the block succeeds.

    On any error the staged folder is deleted and ``output`` is left as it was, so a conversion never leaves a
    half-written model behind. An existing non-empty ``output`` is replaced only with ``overwrite=True``. An
    ``output`` that is a symbolic link is followed: the folder it points to is replaced and the link kept.
    """
    output = Path(output).resolve()
    check_output_folder(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    # mkdtemp makes a private folder; the published one gets the permissions of any folder the user creates.
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)
    try:
        yield stage
        check_output_folder(output, overwrite)
        _replace(stage, output)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _replace(stage: Path, output: Path) -> None:
    if not output.exists():
        os.rename(stage, output)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".previous", dir=output.parent))
    previous.rmdir()
    os.rename(output, previous)
    try:
        os.rename(stage, output)
    except BaseException:
        os.rename(previous, output)
        raise
    shutil.rmtree(previous)


def model_card(
    model: LionPreTrainedModel,
    *,
    source: Path,
    source_format: str,
    command: str,
    report: VerificationReport | None,
    has_tokenizer: bool,
) -> str:
    """A short README.md for the converted folder: what it is, where it came from, how to load it."""
    config = model.config
    class_name = type(model).__name__
    pipeline_tag, auto_class = PIPELINE_TAGS[class_name]
    variant = VARIANT_NAMES[config.variant]
    shape = f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}, {config.num_attention_heads} heads"
    if config.modality == "vision":
        pooling = "class token" if config.pooling == "cls" else "mean of all tokens"
        shape += (
            f", {config.image_size}x{config.image_size} images in {config.patch_size}x{config.patch_size} patches, "
            f"{config.patch_order} patch order, {pooling} pooling"
        )
    else:
        shape += f", vocabulary {config.vocab_size}, up to {config.max_position_embeddings} tokens"
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {pipeline_tag}",
        "tags:",
        "- lion",
        "- linear-attention",
        f"- {variant.lower()}",
        "---",
        "",
        f"# {variant} {class_name}",
        "",
        f"Converted from the original LION research checkpoint `{source.name}` ({source_format}) with "
        f"`lion-hf convert {command}`: {shape}.",
        "",
        "LION (Afzal et al., 2025, [arXiv 2502.16249](https://arxiv.org/abs/2502.16249)) is bidirectional linear "
        "attention under a decay mask. The same weights run as full masked attention (`parallel`), chunkwise "
        "(`chunk`) or as a bidirectional RNN (`recurrent`) with the same outputs.",
        "",
        "## Usage",
        "",
        "```python",
        f"from transformers import {auto_class}",
        "",
        f'model = {auto_class}.from_pretrained("path/to/this/folder", trust_remote_code=True)',
        'model.set_attention_form("recurrent")  # or "parallel" (default), "chunk"',
        "```",
    ]
    if config.modality == "text" and not has_tokenizer:
        lines += ["", "This folder has no tokenizer: use the one the original model was trained with."]
    if report is not None:
        lines += [
            "",
            "## Verification",
            "",
            f"Maximum absolute difference to the original code's outputs on `{report.reference.name}` (float32):",
            "",
            report.to_markdown(),
        ]
    return "\n".join(lines) + "\n"
