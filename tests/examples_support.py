"""What the tests of examples/ share: the scripts importable, small slices of ../shared/data, tiny model flags."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from helpers import REPO

EXAMPLES = REPO / "examples"
# The scripts import their siblings (`common`, `distillation`, ...) as `python examples/run_mlm.py` lets them.
sys.path.insert(0, str(EXAMPLES))

CPU_RUN = ["--use_cpu", "--report_to", "none", "--seed", "0", "--dataloader_num_workers", "0"]
TINY_TEXT_SHAPE = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,max_position_embeddings=64"
)
TINY_VISION_SHAPE = (
    "image_size=32,patch_size=8,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
)
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
