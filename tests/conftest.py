"""Test setup: an offline hub, the project's ../shared folder as fixtures, one random state per test, and skips
counted as failures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LION_HF_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def same_draws():
    """Each test's unseeded draws are the same whichever tests ran before it: a failure reproduces."""
    import torch

    torch.manual_seed(0)


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


# The training scripts' tests (tests/test_examples_*.py): small slices of the real data. Their helpers are
# imported when used, because examples_support puts examples/ on the path.


@pytest.fixture(scope="session")
def tokenizer_dir(data_dir: Path) -> Path:
    return data_dir / "tokenizers" / "bert-base-uncased"


@pytest.fixture(scope="session")
def text_data(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    """Slices of SST-2 (with its header) and AG News (without one), and a plain-text corpus of SST-2 sentences."""
    from examples_support import tsv_rows, write_tsv

    folder = tmp_path_factory.mktemp("text")
    sst2, agnews = data_dir / "text" / "sst2", data_dir / "text" / "agnews" / "dev.tsv"
    train, dev = tsv_rows(sst2 / "train.tsv", 160, skip_header=True), tsv_rows(sst2 / "dev.tsv", 48, skip_header=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("".join(f"{sentence}\n" for sentence, _ in tsv_rows(sst2 / "train.tsv", 400, True)), "utf-8")
    return {
        "corpus": corpus,
        "sst2_train": write_tsv(folder / "sst2_train.tsv", train, ["sentence", "label"]),
        "sst2_dev": write_tsv(folder / "sst2_dev.tsv", dev, ["sentence", "label"]),
        "agnews": write_tsv(folder / "agnews.tsv", tsv_rows(agnews, 80, skip_header=False), None),
    }


@pytest.fixture(scope="session")
def image_data(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    """Three CIFAR-10 classes: 12 training and 4 validation images each, in image-folder layout."""
    from examples_support import IMAGE_CLASSES

    root = tmp_path_factory.mktemp("images")
    source = data_dir / "images" / "cifar10-mini" / "train"
    for name in IMAGE_CLASSES:
        files = sorted((source / name).glob("*.png"))[:16]
        for split, chosen in (("train", files[:12]), ("validation", files[12:])):
            (root / split / name).mkdir(parents=True)
            for file in chosen:
                shutil.copy(file, root / split / name / file.name)
    return {"train": root / "train", "validation": root / "validation"}


def pytest_sessionfinish(session, exitstatus):
    """A skipped test is a failure here: every test must run, in CI too."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"{len(skipped)} test(s) skipped; skips count as failures in this project.", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
