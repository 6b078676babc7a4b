"""Test setup: an offline hub, the project's ../shared folder as fixtures, and skips counted as failures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

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
