"""Test setup: an offline hub, the project's ../shared folder as fixtures, and skips counted as failures."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _kernels_for_the_interpreter() -> None:
    """Define Triton's jitted functions (its own, like ``tl.sum``, and the fused kernels) for its CPU interpreter.

    Triton decides at definition whether a function is interpreted, and ``torch._dynamo`` imports Triton early,
    so this runs before any test module is imported. TRITON_INTERPRET is unset again afterwards: only
    tests/test_kernels_chunk.py sets it while its tests run, every other test keeps the PyTorch forms on the CPU.
    """
    if importlib.util.find_spec("triton") is None:
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401

        from lion_hf.modeling import lion_triton_chunk  # noqa: F401
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_kernels_for_the_interpreter()

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LION_HF_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (or ``$LION_HF_SHARED``); a test that needs it fails, never skips, when it is missing."""
    if not (SHARED / "fixtures").is_dir() or not (SHARED / "data").is_dir():
        pytest.fail(
            f"The shared folder {SHARED} (with fixtures/ and data/) is missing: put the project's shared folder "
            "beside the repository or set LION_HF_SHARED."
        )
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "original"


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


def pytest_sessionfinish(session, exitstatus):
    """A skipped test is a failure here: every test must run, in CI too."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"{len(skipped)} test(s) skipped; skips count as failures in this project.", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
