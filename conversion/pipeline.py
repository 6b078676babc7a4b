"""The steps every conversion shares: load safely, map the weights, then export (save, verify, publish the folder)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lion_hf import LionPreTrainedModel, Provenance, export_folder
from lion_hf.progress import Steps
from lion_hf.staging import check_inputs_outside, check_output_folder

from .checkpoint import load_checkpoint
from .state_dict import Source, remap_state_dict
from .verify import VerificationError, VerificationReport, verify_model


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
    command_line: str | None = None,
) -> ConversionResult:
    """Load ``checkpoint``, turn it into a model with ``build``, and export it to ``output`` (verified first).

    ``verify``: an io safetensors file (the original code's inputs and outputs) run through the written folder in
    every attention form; any output further than ``tolerance`` (max abs, float32) from its reference raises a
    :class:`VerificationError` carrying the report. ``trust_checkpoint``: unpickle everything (trusted files
    only). ``overwrite``: replace a non-empty ``output``. ``progress``: a progress bar over the steps.
    ``inputs``: the other files and folders the conversion reads (a JSON config, a tokenizer folder).
    ``command_line``: the command the model card records (the CLI passes its own).

    The folder is written by :func:`lion_hf.export_folder`: beside ``output``, moved into place only when
    everything succeeded, verification included, so a failure at any step leaves nothing behind. An ``output``
    that is, or contains, the checkpoint, ``verify`` or one of ``inputs`` is refused before anything is written.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}.")
    check_inputs_outside(output, [checkpoint, verify, *inputs])
    check_output_folder(output, overwrite)
    if verify is not None and not Path(verify).is_file():
        raise FileNotFoundError(f"Reference io file {str(verify)!r} does not exist.")
    reports = []

    def verified(folder: Path) -> str:
        reloaded = type(model).from_pretrained(folder, dtype=torch.float32)
        report = verify_model(reloaded, verify, tolerance)
        if not report.passed:
            raise VerificationError(report)
        reports.append(report)
        return (
            f"Maximum absolute difference to the original code's outputs on `{report.reference.name}` (float32), "
            f"in every attention form (tolerance {tolerance:g}):\n\n{report.to_markdown()}"
        )

    with Steps(f"convert {command}", 2, enabled=progress) as steps:
        steps.start("loading")
        original = load_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
        steps.start("mapping")
        model = build(original)
        export_folder(
            model,
            output,
            tokenizer=tokenizer,
            provenance=Provenance(command=command_line, converted_from=checkpoint.name, source_format=source_format),
            overwrite=overwrite,
            verify=verified if verify is not None else None,
            progress=steps,
        )
    return ConversionResult(output, model, reports[0] if reports else None)
