"""Shared test setup: offline hub, the project's ../shared folder, and a process without lion_hf."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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


_BLOCK_LION_HF = """
import sys

class _BlockLionHF:
    def find_spec(self, name, path=None, target=None):
        if name == "lion_hf" or name.startswith("lion_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden for this test)")
        return None

sys.meta_path.insert(0, _BlockLionHF())
"""


def run_without_lion_hf(code: str, cwd: Path, timeout: int = 600) -> str:
    """Run ``code`` in a fresh Python process in which ``import lion_hf`` fails; return its stdout.

    The process asserts at exit that nothing imported lion_hf, so a passing run proves the code path works
    for users who only have transformers and a checkpoint folder.
    """
    script = _BLOCK_LION_HF + textwrap.dedent(code) + "\nassert 'lion_hf' not in sys.modules\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "hf_modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def pytest_sessionfinish(session, exitstatus):
    """A skipped test is a failure here: every test must run, in CI too."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"{len(skipped)} test(s) skipped; skips count as failures in this project.", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
