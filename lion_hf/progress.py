"""One progress display for a multi-step job (conversion, export): our bar, with the libraries' bars off meanwhile.

transformers draws its own bars while saving ("Writing model shards") and loading ("Loading weights"), and
huggingface_hub draws more; inside one of our steps they would interleave with our bar and leave half-drawn lines
before an error message. Within :class:`Steps` they are off; afterwards each is as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from huggingface_hub import utils as hub_utils
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars off within the block, each restored afterwards."""
    transformers_on = transformers_logging.is_progress_bar_enabled()
    hub_on = not hub_utils.are_progress_bars_disabled()
    if transformers_on or hub_on:
        transformers_logging.disable_progress_bar()  # turns huggingface_hub's off too
    try:
        yield
    finally:
        if transformers_on:
            transformers_logging.enable_progress_bar()  # turns huggingface_hub's on too
            if not hub_on:
                hub_utils.disable_progress_bars()
        elif hub_on:
            hub_utils.enable_progress_bars()


class Steps:
    """A bar over named steps: ``steps.start("saving")`` finishes the previous step and names the next one.

    Used as a context manager. On success the bar ends full; on an error it is erased, so that the error message
    starts on a clean line. ``add`` lets a job hand its bar to a sub-job that has steps of its own.
    """

    def __init__(self, description: str, total: int, enabled: bool = True):
        self.description, self.total, self.enabled = description, total, enabled
        self._bar = None
        self._running = False
        self._quiet = contextlib.ExitStack()

    def __enter__(self) -> Steps:
        self._quiet.enter_context(library_bars_off())
        self._bar = tqdm(total=self.total, desc=self.description, unit="step", disable=not self.enabled)
        return self

    def add(self, count: int) -> None:
        self._bar.total += count
        self._bar.refresh()

    def start(self, name: str) -> None:
        if self._running:
            self._bar.update()
        self._running = True
        self._bar.set_postfix_str(name)

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None and self._running:
            self._bar.update()
        else:
            self._bar.leave = False
        self._bar.close()
        self._quiet.close()
