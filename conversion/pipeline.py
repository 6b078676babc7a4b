"""The steps every conversion shares: load safely, map the weights, save, verify, then publish the folder."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from lion_hf import LionPreTrainedModel, lion_image_processor

from .checkpoint import load_checkpoint
from .export import check_inputs_outside, check_output_folder, model_card, staged_folder
from .state_dict import Source, remap_state_dict
from .verify import VerificationError, VerificationReport, verify_model

logger = logging.get_logger(__name__)


@dataclass
class ConversionResult:
    output: Path
    model: LionPreTrainedModel
    report: VerificationReport | None


def read_json_object(path: str | Path, wrapper: str, what: str) -> dict:
    """The JSON object in ``path``: ``what`` itself, or ``{wrapper: {...}}`` around it."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}); it should hold {what}.") from None
    if isinstance(content, dict) and wrapper in content:
        content = content[wrapper]
    if not isinstance(content, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object of {what}.")
    return content


def load_weights(
    model: LionPreTrainedModel,
    original: Mapping[str, torch.Tensor],
    source_for: Callable[[str], Source],
    ignored=(),
    described_as: str = "the model",
) -> LionPreTrainedModel:
    """Fill every tensor of ``model`` from the original tensors ``source_for(its key)`` names; keep the
    checkpoint's floating dtype. The model is returned in eval mode, as ``from_pretrained`` gives it."""
    expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
    plan = {key: source_for(key) for key in expected}
    state = remap_state_dict(original, plan, expected, ignored=ignored, described_as=described_as)
    model.load_state_dict(state, strict=True)
    dtypes = {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    return model.eval()


def run_conversion(
    checkpoint: str | Path,
    output: str | Path,
    build: Callable[[object], LionPreTrainedModel],
    *,
    command: str,
    source_format: str,
    tokenizer=None,
    verify: str | Path | None = None,
    tolerance: float = 1e-5,
    trust_checkpoint: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    inputs: Iterable[str | Path | None] = (),
) -> ConversionResult:
    """Load ``checkpoint``, turn it into a model with ``build``, write the folder, verify it, publish it.

    ``verify``: an io safetensors file (the original code's inputs and outputs) run through the written folder in
    every attention form; any output further than ``tolerance`` (max abs, float32) from its reference raises a
    :class:`VerificationError` carrying the report. ``trust_checkpoint``: unpickle everything (trusted files
    only). ``overwrite``: replace a non-empty ``output``. ``progress``: a progress bar over the steps.
    ``inputs``: the other files and folders the conversion reads (a JSON config, a tokenizer folder).

    The folder is written beside ``output`` and moved into place only when everything succeeded, verification
    included: a failure at any step leaves nothing behind. An ``output`` that is, or contains, the checkpoint,
    ``verify`` or one of ``inputs`` is refused before anything is written.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}.")
    check_inputs_outside(output, [checkpoint, verify, *inputs])
    check_output_folder(output, overwrite)
    if verify is not None and not Path(verify).is_file():
        raise FileNotFoundError(f"Reference io file {str(verify)!r} does not exist.")
    total_steps = 4 if verify is not None else 3  # loading, mapping, saving, verifying
    report = None
    with tqdm(total=total_steps, desc=f"convert {command}", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("loading")
        original = load_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
        bar.update()
        bar.set_postfix_str("mapping")
        model = build(original)
        if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                f"{model.config.vocab_size}: it is not this model's tokenizer."
            )
        bar.update()
        with staged_folder(output, overwrite) as stage:
            bar.set_postfix_str("saving")
            model.save_pretrained(stage)
            if model.config.modality == "vision":
                _save_image_processor(model.config, stage)
            if tokenizer is not None:
                # Pipelines truncate to model_max_length; the model cannot take more than its position table.
                tokenizer.model_max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
                tokenizer.save_pretrained(stage)
            bar.update()
            if verify is not None:
                bar.set_postfix_str("verifying")
                reloaded = type(model).from_pretrained(stage, dtype=torch.float32)
                report = verify_model(reloaded, verify, tolerance)
                bar.update()
                if not report.passed:
                    raise VerificationError(report)
            card = model_card(
                model,
                source=checkpoint,
                source_format=source_format,
                command=command,
                report=report,
                has_tokenizer=tokenizer is not None,
            )
            (stage / "README.md").write_text(card, encoding="utf-8")
    return ConversionResult(output, model, report)


def _save_image_processor(config, folder: Path) -> None:
    """DeiT's evaluation transform, so that AutoImageProcessor and pipeline("image-classification") work."""
    if config.num_channels != 3:
        logger.warning(
            f"No image processor saved: num_channels={config.num_channels} has no standard ImageNet processor; "
            "save your own into the folder."
        )
        return
    lion_image_processor(config).save_pretrained(folder)
