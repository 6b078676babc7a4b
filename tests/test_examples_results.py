"""The results driver: every command it plans, real and smoke, parses with its script's own arguments."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from examples_support import EXAMPLES
from transformers import HfArgumentParser

import results.run_all as run_all  # examples/ is on the path


@pytest.mark.parametrize("settings", ["full", "smoke"])
def test_every_planned_command_parses(settings, tmp_path):
    runs = run_all.plan(run_all.SETTINGS[settings], Path("../shared/data"), tmp_path, tmp_path / "corpus.txt")
    assert {run["group"] for run in runs} >= {"mlm", "sst2", "cifar10", "distillation", "scaleout"}
    for run in runs:
        module = importlib.import_module(Path(run["script"]).stem)
        assert (EXAMPLES / run["script"]).is_file()
        _, unknown = HfArgumentParser(module.ARGUMENTS).parse_known_args(run["argv"])
        assert unknown == [], f"{run['group']} {run['name']}: {unknown}"
