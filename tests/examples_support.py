"""What the tests of examples/ share: the scripts importable, small slices of ../shared/data, tiny model flags."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import REPO

EXAMPLES = REPO / "examples"
# The scripts import their siblings (`common`, `distillation`, ...) as `python examples/run_mlm.py` lets them.
sys.path.insert(0, str(EXAMPLES))

CPU_RUN = ["--use_cpu", "--report_to", "none", "--seed", "0", "--dataloader_num_workers", "0"]
TINY_TEXT_SHAPE = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,max_position_embeddings=64"
TINY_VISION_SHAPE = "image_size=32,patch_size=8,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
IMAGE_CLASSES = ("cat", "dog", "ship")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def tsv_rows(path: Path, count: int, skip_header: bool) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    return rows[1 : count + 1] if skip_header else rows[:count]


def write_tsv(path: Path, rows: list[list[str]], header: list[str] | None) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerows(([header] if header else []) + rows)
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(data_dir: Path) -> Path:
    return data_dir / "tokenizers" / "bert-base-uncased"


@pytest.fixture(scope="session")
def text_data(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    """Slices of SST-2 (with its header) and AG News (without one), and a plain-text corpus of SST-2 sentences."""
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
    root = tmp_path_factory.mktemp("images")
    source = data_dir / "images" / "cifar10-mini" / "train"
    for name in IMAGE_CLASSES:
        files = sorted((source / name).glob("*.png"))[:16]
        for split, chosen in (("train", files[:12]), ("validation", files[12:])):
            (root / split / name).mkdir(parents=True)
            for file in chosen:
                shutil.copy(file, root / split / name / file.name)
    return {"train": root / "train", "validation": root / "validation"}
