"""The README's main job, examples/demo_mlm.py, shortened: it trains, saves a Hub folder and reloads it without lion_hf."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from helpers import REPO


def test_demo_trains_saves_and_reloads_in_a_fresh_process(tmp_path):
    out = tmp_path / "demo"
    command = [
        sys.executable, str(REPO / "examples" / "demo_mlm.py"), "--output-dir", str(out), "--steps", "6",
        "--batch-size", "4", "--vocab-size", "600", "--hidden-size", "32", "--layers", "2", "--variant", "s",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    folder = out / "model"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_lion.py", "lion_attention.py", "configuration_lion.py",
            "tokenizer.json", "tokenizer_config.json"} <= names  # fmt: skip
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth"))], names
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_lion.LionForMaskedLM"
    assert config["variant"] == "s" and config["vocab_size"] == 600

    stdout = result.stdout
    assert "loaded LionForMaskedLM from transformers_modules." in stdout
    assert "lion_hf imported: False" in stdout
    assert re.search(r"hidden word in the top 3: \d+ of 8", stdout), stdout[-2000:]
    differences = dict(re.findall(r"^  (chunk|recurrent)\s+(\S+)$", stdout, flags=re.M))
    assert set(differences) == {"chunk", "recurrent"}, stdout[-2000:]
    assert all(float(value) < 1e-4 for value in differences.values()), differences
