"""Building a LION state dict from an original one, with every missing, unexpected or misshapen key reported."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

COMBINES = ("copy", "stack", "cat")


@dataclass(frozen=True)
class Source:
    """Where one LION tensor comes from: one original tensor (``copy``), or one per decay path joined along a
    new leading dimension (``stack``) or along the first dimension (``cat``)."""

    keys: tuple[str, ...]
    combine: str = "copy"

    def __post_init__(self):
        if self.combine not in COMBINES:
            raise ValueError(f"Unknown combine {self.combine!r}; allowed: {', '.join(COMBINES)}.")
        if self.combine == "copy" and len(self.keys) != 1:
            raise ValueError(f"A copied tensor has exactly one source key, got {list(self.keys)}.")

    def piece_shape(self, target_shape: torch.Size) -> tuple[int, ...]:
        """The shape each original tensor must have to give ``target_shape``."""
        if self.combine == "copy":
            return tuple(target_shape)
        if self.combine == "stack":
            return tuple(target_shape[1:])
        return (target_shape[0] // len(self.keys), *target_shape[1:])

    def join(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        if self.combine == "copy":
            return pieces[0]
        return torch.stack(pieces) if self.combine == "stack" else torch.cat(pieces)


class CheckpointMismatchError(ValueError):
    """The original weights do not fit the model described by the configuration."""


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def remap_state_dict(
    original: Mapping[str, torch.Tensor],
    plan: Mapping[str, Source],
    expected_shapes: Mapping[str, torch.Size],
    ignored: Iterable[str] = (),
    described_as: str = "the model",
) -> dict[str, torch.Tensor]:
    """The LION state dict: ``plan[target]`` says which original tensors make ``target``.

    Every original key must be used by the plan or listed in ``ignored``; every source must exist and have the
    shape its target needs. All problems are collected and raised together in one
    :class:`CheckpointMismatchError`, naming the keys (original and LION) and both shapes.
    """
    missing, misshapen, converted = [], [], {}
    for target, source in plan.items():
        absent = [key for key in source.keys if key not in original]
        if absent:
            missing += [f"{key} (for {target})" for key in absent]
            continue
        wanted = source.piece_shape(expected_shapes[target])
        wrong = [key for key in source.keys if tuple(original[key].shape) != wanted]
        if wrong:
            misshapen += [
                f"{key} has shape {_shape(original[key].shape)}, {target} needs {_shape(wanted)}" for key in wrong
            ]
            continue
        converted[target] = source.join([original[key] for key in source.keys])
    used = {key for source in plan.values() for key in source.keys} | set(ignored)
    unexpected = sorted(key for key in original if key not in used)
    if missing or unexpected or misshapen:
        lines = [f"The checkpoint's weights do not match {described_as}:"]
        for title, items in (
            ("missing from the checkpoint", missing),
            ("unexpected in the checkpoint", unexpected),
            ("shape mismatch", misshapen),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items]
        lines.append(
            "Check the variant (arch_type / mask_type), patch order, position embeddings and shape arguments "
            "against the original run."
        )
        raise CheckpointMismatchError("\n".join(lines))
    return converted
