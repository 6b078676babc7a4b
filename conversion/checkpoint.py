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
    """The checkpoint needs a class outside the allow-list to be unpickled."""


def _allowing(globals_):
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(list(globals_))
    # torch 2.4 has only the process-wide allow-list.
    torch.serialization.add_safe_globals(list(globals_))
    return contextlib.nullcontext()


def load_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> object:
    """``torch.load`` on the CPU with ``weights_only=True`` and only ``ALLOWED_GLOBALS`` allowed.

    A file that needs any other class raises :class:`UnsafeCheckpointError` naming it. ``trust_checkpoint=True``
    unpickles everything, which can run code stored in the file: only for files from a trusted source.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    # Memory-mapping keeps a large checkpoint out of RAM until its tensors are used (zip format only).
    mmap = zipfile.is_zipfile(path)
    if trust_checkpoint:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    try:
        with _allowing(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        needed = found.group(1) if found else str(error).strip().splitlines()[-1]
        allowed = ", ".join(f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS)
        raise UnsafeCheckpointError(
            f"Refusing to load {str(path)!r}: unpickling it needs {needed}, which is not allowed (allowed beyond "
            f"tensors and plain containers: {allowed}). Unpickling can run code stored in the file; only if you "
            "trust its source, pass --trust-checkpoint (trust_checkpoint=True)."
        ) from None
