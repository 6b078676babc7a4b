"""Loading original checkpoints without running arbitrary pickled code."""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
import zipfile
from pathlib import Path

import torch

# Beyond torch's own tensor types and plain containers, the original training scripts pickle exactly one class:
# DeiT stores its command line as an argparse.Namespace. Composer checkpoints of the MLM code need nothing more.
ALLOWED_GLOBALS = (argparse.Namespace,)


class UnsafeCheckpointError(ValueError):
    """The checkpoint needs a class outside the allow-list (or pickle opcodes the safe unpickler lacks)."""


class UnreadableCheckpointError(ValueError):
    """The file is not a checkpoint ``torch.load`` can read: truncated, empty, or not written by ``torch.save``."""


def _allowing(globals_):
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(list(globals_))
    # torch 2.4 has only the process-wide allow-list.
    torch.serialization.add_safe_globals(list(globals_))
    return contextlib.nullcontext()


def load_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> object:
    """``torch.load`` on the CPU with ``weights_only=True`` and only ``ALLOWED_GLOBALS`` allowed.

    A file that needs any other class raises :class:`UnsafeCheckpointError` naming it; a file ``torch.load`` cannot
    read at all raises :class:`UnreadableCheckpointError` naming the file. ``trust_checkpoint=True`` unpickles
    everything, which can run code stored in the file: only for files from a trusted source.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    # Memory-mapping keeps a large checkpoint out of RAM until its tensors are used (zip format only).
    mmap = zipfile.is_zipfile(path)
    try:
        if trust_checkpoint:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with _allowing(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if trust_checkpoint or "Weights only load failed" not in str(error):
            raise _unreadable(path, error) from None
        raise _unsafe(path, str(error)) from None
    # torch.load reports a file it cannot parse by whatever its parser met first: KeyError for a text file,
    # EOFError for an empty one, RuntimeError for a truncated zip archive, ...
    except Exception as error:
        raise _unreadable(path, error) from None


def _unsafe(path: Path, message: str) -> UnsafeCheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        needs = f"unpickling it needs {found.group(1)}, which is not allowed"
    else:
        # e.g. "Unsupported operand 149": a plain pickle (not torch.save's format) the safe unpickler cannot read.
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", message, re.DOTALL)
        detail = f" ({reason.group(1).strip()})" if reason else ""
        needs = f"the safe (weights-only) unpickler cannot read it{detail}: it is not a file torch.save wrote, or needs more"
    allowed = ", ".join(f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS)
    return UnsafeCheckpointError(
        f"Refusing to load {str(path)!r}: {needs} (allowed beyond tensors and plain containers: {allowed}). "
        "Unpickling can run code stored in the file; only if you trust its source, pass --trust-checkpoint "
        "(trust_checkpoint=True)."
    )


def _unreadable(path: Path, error: Exception) -> UnreadableCheckpointError:
    reason = f"{type(error).__name__}: {str(error).rstrip('.')}" if str(error) else type(error).__name__
    return UnreadableCheckpointError(
        f"Cannot read checkpoint {str(path)!r} ({path.stat().st_size} bytes): torch.load failed with {reason}. "
        "Is the file complete, and a checkpoint written by torch.save?"
    )
