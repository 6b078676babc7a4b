"""Running the original code's reference inputs through a converted model in every attention form."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lion_hf import ATTENTION_FORMS, LionPreTrainedModel

MODEL_INPUTS = {"text": ("input_ids", "attention_mask", "token_type_ids"), "vision": ("pixel_values",)}
# Reference outputs an io file may hold: the head's logits and what the backbone hands to it.
REFERENCE_OUTPUTS = ("logits", "last_hidden_state", "pooled_features")


@dataclass
class VerificationReport:
    """Max absolute difference to each reference output, per attention form; ``passed`` when all are within
    ``tolerance``."""

    reference: Path
    tolerance: float
    differences: dict[str, dict[str, float]] = field(default_factory=dict)
    not_compared: tuple[str, ...] = ()

    @property
    def outputs(self) -> list[str]:
        return [name for name in REFERENCE_OUTPUTS if any(name in row for row in self.differences.values())]

    @property
    def passed(self) -> bool:
        return all(value <= self.tolerance for row in self.differences.values() for value in row.values())

    def to_text(self) -> str:
        width = max(len(label) for label in self.differences) + 2
        lines = [
            f"verification against {self.reference.name} (float32, max abs difference, tolerance {self.tolerance:g}):",
            "  " + "form".ljust(width) + "".join(name.rjust(20) for name in self.outputs),
        ]
        for label, row in self.differences.items():
            lines.append("  " + label.ljust(width) + "".join(f"{row[name]:20.3e}" for name in self.outputs))
        if self.not_compared:
            lines.append(f"  not compared (not a known model output): {', '.join(self.not_compared)}")
        lines.append("  PASSED" if self.passed else "  FAILED: above the tolerance")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = ["| form | " + " | ".join(self.outputs) + " |", "|---" * (len(self.outputs) + 1) + "|"]
        for label, row in self.differences.items():
            lines.append(f"| {label} | " + " | ".join(f"{row[name]:.2e}" for name in self.outputs) + " |")
        return "\n".join(lines)


class VerificationError(ValueError):
    """The converted model does not reproduce the reference outputs within the tolerance."""

    def __init__(self, report: VerificationReport):
        super().__init__(report.to_text())
        self.report = report


def _sequence_length(model: LionPreTrainedModel, inputs: dict[str, torch.Tensor]) -> int:
    config = model.config
    if config.modality == "text":
        return inputs["input_ids"].shape[1]
    rows, cols = (side // config.patch_size for side in inputs["pixel_values"].shape[-2:])
    return model.base_model.embeddings.num_prefix_tokens + rows * cols


def _forms(model: LionPreTrainedModel, length: int) -> list[tuple[str, str, int]]:
    """(label, form, chunk size). The chunk form runs at the configured size when that splits the sequence;
    otherwise at a size giving three chunks, so the carried states are exercised rather than one full chunk."""
    chunk = model.config.chunk_size if model.config.chunk_size < length else max(1, math.ceil(length / 3))
    labels = {"chunk": f"chunk (chunk_size={chunk})"}
    return [(labels.get(form, form), form, chunk) for form in ATTENTION_FORMS]


def verify_model(model: LionPreTrainedModel, io_path: str | Path, tolerance: float = 1e-5) -> VerificationReport:
    """Compare ``model`` (in float32, eval mode) with the outputs stored in ``io_path`` in every attention form."""
    io_path = Path(io_path)
    try:
        tensors = load_file(io_path)
    except SafetensorError as error:
        raise ValueError(f"Cannot read the reference io file {str(io_path)!r} as safetensors: {error}.") from None
    modality = model.config.modality
    names = MODEL_INPUTS[modality]
    if names[0] not in tensors or "logits" not in tensors:
        raise ValueError(
            f"{io_path.name} must hold {names[0]!r} (the model input) and 'logits' (the reference output) for a "
            f"{modality} model; it holds {', '.join(sorted(tensors)) or 'nothing'}."
        )
    inputs = {name: tensors[name] for name in names if name in tensors}
    references = {name: tensors[name].float() for name in REFERENCE_OUTPUTS if name in tensors}
    report = VerificationReport(
        io_path, tolerance, not_compared=tuple(sorted(set(tensors) - set(inputs) - set(references)))
    )

    backbone = {}
    hook = model.base_model.register_forward_hook(lambda module, args, output: backbone.update(output=output))
    saved_form, saved_chunk = model.config.attention_form, model.config.chunk_size
    model.float().eval()
    try:
        for label, form, chunk in _forms(model, _sequence_length(model, inputs)):
            model.set_attention_form(form, chunk)
            with torch.no_grad():
                logits = model(**inputs).logits
            observed = {
                "logits": logits,
                "last_hidden_state": backbone["output"].last_hidden_state,
                "pooled_features": backbone["output"].pooler_output,
            }
            row = {}
            for name, reference in references.items():
                if observed[name] is None or observed[name].shape != reference.shape:
                    got = None if observed[name] is None else tuple(observed[name].shape)
                    raise ValueError(
                        f"{io_path.name}: reference {name!r} has shape {tuple(reference.shape)}, the converted model "
                        f"gives {got}; the io file does not belong to this checkpoint."
                    )
                row[name] = (observed[name].float() - reference).abs().max().item()
            report.differences[label] = row
    finally:
        hook.remove()
        model.set_attention_form(saved_form, saved_chunk)
    return report
