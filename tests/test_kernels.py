"""The fused Triton kernels through Triton's interpreter on the CPU, in processes of their own (one per file, side by
side).

Triton builds its interpreter only when ``TRITON_INTERPRET=1`` is set before its first import, which ``import
lion_hf`` already does in this session; tests/interpreted/ (not collected here) holds the cases:
kernels_parallel.py (modeling/lion_triton.py), kernels_chunk.py (modeling/lion_triton_chunk.py) and
kernels_features.py (modeling/lion_triton_features.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO

INTERPRETED = REPO / "tests" / "interpreted"


def _interpreter_problem() -> str | None:
    """Why this Triton's interpreter cannot run the kernels here, if it cannot: Triton 3.6's turns loop bounds
    into Python ints with ``int()`` of one-element arrays, which numpy 2.4 refuses ("only 0-dimensional arrays can
    be converted to Python scalars" at every ``range(n)`` of a kernel argument); Triton 3.7 and later take them."""
    import numpy
    import triton
    from packaging.version import Version

    if Version(triton.__version__).release < (3, 7) and Version(numpy.__version__).release >= (2, 4):
        return (
            f"Triton {triton.__version__}'s interpreter cannot run with numpy {numpy.__version__}: install "
            f"numpy<2.4 or triton>=3.7 (pip install 'numpy<2.4') to run these tests"
        )
    return None


def test_fused_kernels_under_the_triton_interpreter():
    problem = _interpreter_problem()
    assert problem is None, problem
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("LION_HF_ATTENTION_BACKEND", None)
    files = sorted(INTERPRETED.glob("kernels_*.py"))
    assert len(files) == 3
    # One process per file, side by side: the interpreter is single-threaded, and CI has two cores.
    runs = {
        path.name: subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for path in files
    }
    try:
        for name, run in runs.items():
            output = run.communicate(timeout=1200)[0]
            assert run.returncode == 0, f"{name}:\n{output[-8000:]}"
            assert " passed" in output and "skipped" not in output, f"{name}:\n{output[-2000:]}"
    finally:
        for run in runs.values():
            run.kill()  # the others, when one failed or ran too long
            run.wait()
