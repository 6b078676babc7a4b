"""The fused parallel-form kernels through Triton's interpreter, in a process of their own.

Triton builds its interpreter only when ``TRITON_INTERPRET=1`` is set before its first import, which ``import
lion_hf`` already does in this session; tests/interpreted/kernels_parallel.py (not collected here) holds the cases.
"""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO


def test_fused_parallel_kernels_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("LION_HF_ATTENTION_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/interpreted/kernels_parallel.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
