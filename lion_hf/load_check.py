"""The load check: a folder loads with plain transformers, in a fresh process in which lion_hf cannot be imported.

That is how a Hub user meets the folder: no lion-hf, only transformers and ``trust_remote_code=True``, so only the
folder's own code and files can make it work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Run with the folder as argv[1]; prints what it loaded as one JSON line.
SCRIPT = """
import json, os, sys
sys.modules["lion_hf"] = None  # `import lion_hf` now fails: the folder's own code must do
import transformers
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # needs no torchvision

folder = sys.argv[1]
with open(os.path.join(folder, "config.json"), encoding="utf-8") as file:
    config = json.load(file)
architecture = config["architectures"][0]
auto_class = next((name for name, ref in config.get("auto_map", {}).items() if ref.endswith("." + architecture)), None)
if auto_class is None:
    raise SystemExit(f"config.json's auto_map has no entry for its architecture {architecture}")
model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True)
loaded = {"model": f"{auto_class} -> {type(model).__name__}"}
if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
    loaded["tokenizer"] = type(transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)).__name__
if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
    loaded["image_processor"] = type(AutoImageProcessor.from_pretrained(folder)).__name__
print(json.dumps(loaded))
"""


class LoadCheckError(RuntimeError):
    """The folder does not load with plain transformers."""


def check_loads(folder: str | Path, timeout: float = 600) -> dict[str, str]:
    """Load ``folder``'s model (and tokenizer or image processor) with ``trust_remote_code=True`` in a fresh
    Python process without lion_hf; return what loaded, or raise :class:`LoadCheckError` with the process's
    error output."""
    folder = Path(folder).absolute()
    with tempfile.TemporaryDirectory(prefix="lion-hf-load-check-") as modules:
        # A private modules cache: the folder's code is copied there, never mixed with code cached earlier.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": modules}
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(folder)],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise LoadCheckError(
            f"{folder} does not load with plain transformers (trust_remote_code=True, without lion_hf):\n  "
            + "\n  ".join(lines[-12:])
        )
    return json.loads(result.stdout.strip().splitlines()[-1])
