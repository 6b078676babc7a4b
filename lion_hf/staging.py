"""Writing a folder all at once or not at all: every folder the project publishes is staged, then moved into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def check_inputs_outside(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output folder that is, or contains, one of the ``inputs`` (files or folders the job reads):
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


def check_output_folder(output: str | Path, overwrite: bool) -> None:
    """Refuse a target that is a file, or a non-empty folder unless ``overwrite``."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"Output {str(output)!r} exists and is not a folder.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"Output folder {str(output)!r} exists and is not empty; pass --overwrite (overwrite=True) to replace it."
        )


@contextlib.contextmanager
def staged_folder(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A fresh folder beside ``output`` to write into; moved to ``output`` only when the block succeeds.

    On any error the staged folder is deleted and ``output`` is left as it was, so nothing half-written is ever
    left behind. An existing non-empty ``output`` is replaced only with ``overwrite=True``. An ``output`` that is a
    symbolic link is followed: the folder it points to is replaced and the link kept.
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
