"""lion_triton.launch: a kernel launched through Triton once per kind of arguments, later launches through the
compiled kernel's launcher with every argument (the constexprs after the others, in signature order; through its
runner while a launch hook is set), and through Triton again whenever anything Triton specialises on changes.
Stand-ins for Triton's JITFunction, compiled kernel and driver record the calls; no GPU needed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import triton

from lion_hf.modeling import lion_triton


class _Compiled:
    function, packed_metadata = "function", "metadata"

    def __init__(self, calls):
        self.calls = calls

    def run(self, grid_x, grid_y, grid_z, stream, function, metadata, launch_metadata, enter, exit, *args):
        assert (function, metadata, launch_metadata, enter, exit) == ("function", "metadata", None, None, None)
        self.calls.append(("compiled", (grid_x, grid_y, grid_z), args, stream))

    def __getitem__(self, grid):
        # Triton's runner reads three grid dims.
        dims = grid[0], grid[1], grid[2]
        return lambda *args, stream=None: self.calls.append(("runner", dims, args, stream))


class _Kernel(triton.runtime.JITFunction):
    """A JITFunction whose launch path records instead of compiling."""

    def __init__(self):
        def kernel(X, n, scale, BLOCK: triton.language.constexpr, FLAG: triton.language.constexpr):
            pass

        super().__init__(kernel)
        self.calls = []

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.calls.append(("jit", grid, args, meta))
            return _Compiled(self.calls)

        return run


@pytest.fixture
def kernel(monkeypatch):
    streams = {0: 7}
    driver = SimpleNamespace(get_current_device=lambda: 0, get_current_stream=streams.__getitem__)
    monkeypatch.setattr(triton.runtime, "driver", SimpleNamespace(active=driver))
    monkeypatch.setattr(lion_triton, "_COMPILED", {})
    return _Kernel()


def test_a_second_launch_goes_through_the_compiled_kernel_with_every_argument(kernel):
    x, y = torch.zeros(64), torch.ones(64)
    lion_triton.launch(kernel, (3, 2), x, 32, 0.5, BLOCK=16, FLAG=True, num_warps=4)
    lion_triton.launch(kernel, (5, 2), y, 32, 0.5, BLOCK=16, FLAG=True, num_warps=4)
    lion_triton.launch(kernel, (9,), x, 32, 0.5, BLOCK=16, FLAG=True, num_warps=4)
    assert kernel.calls[0] == ("jit", (3, 2), (x, 32, 0.5), {"BLOCK": 16, "FLAG": True, "num_warps": 4})
    # The launch options are not arguments of the kernel; the constexprs are, after the others.
    assert kernel.calls[1] == ("compiled", (5, 2, 1), (y, 32, 0.5, 16, True), 7)
    assert kernel.calls[2] == ("compiled", (9, 1, 1), (x, 32, 0.5, 16, True), 7)
    assert len(kernel.calls) == 3


def test_while_a_launch_hook_is_set_the_runner_launches_so_that_the_hook_gets_its_metadata(kernel):
    x = torch.zeros(64)
    hooks = triton.knobs.runtime.launch_enter_hook
    hook = lambda metadata: None  # noqa: E731
    for _ in range(2):
        lion_triton.launch(kernel, (3,), x, 32, 0.5, BLOCK=16, FLAG=True)
    hooks.add(hook)
    try:
        lion_triton.launch(kernel, (3,), x, 32, 0.5, BLOCK=16, FLAG=True)
    finally:
        hooks.remove(hook)
    lion_triton.launch(kernel, (3,), x, 32, 0.5, BLOCK=16, FLAG=True)
    assert [call[0] for call in kernel.calls] == ["jit", "compiled", "runner", "compiled"]
    assert kernel.calls[2] == ("runner", (3, 1, 1), (x, 32, 0.5, 16, True), 7)


def test_the_cache_starts_again_rather_than_grow_without_bound(kernel, monkeypatch):
    monkeypatch.setattr(lion_triton, "_MAX_COMPILED", 2)
    x = torch.zeros(64)
    for n in (32, 48, 64, 32):
        lion_triton.launch(kernel, (1,), x, n, 0.5, BLOCK=16, FLAG=True)
    # The third kind of arguments cleared the cache, so the first kind goes through Triton again.
    assert [call[0] for call in kernel.calls] == ["jit"] * 4
    assert len(lion_triton._COMPILED) == 2


@pytest.mark.parametrize(
    "change",
    ["misaligned tensor", "other dtype", "integer not a multiple of 16", "integer 1", "integer past 32 bits",
     "other float", "other constexpr", "other launch option"],
)  # fmt: skip
def test_what_triton_specialises_on_compiles_again(kernel, change):
    x = torch.zeros(64)
    args, meta = [x, 32, 0.5], {"BLOCK": 16, "FLAG": True, "num_warps": 4}
    lion_triton.launch(kernel, (1,), *args, **meta)
    if change == "misaligned tensor":
        args[0] = x[1:]  # 4 bytes past a 16-byte boundary
    elif change == "other dtype":
        args[0] = x.double()
    elif change.startswith("integer"):
        args[1] = {"integer not a multiple of 16": 33, "integer 1": 1, "integer past 32 bits": 2**32}[change]
    elif change == "other float":
        args[2] = 0.25
    elif change == "other constexpr":
        meta["FLAG"] = False
    else:
        meta["num_warps"] = 8
    lion_triton.launch(kernel, (1,), *args, **meta)
    assert [call[0] for call in kernel.calls] == ["jit", "jit"]


def test_kernels_that_are_not_jit_functions_launch_as_given(monkeypatch):
    calls = []

    class Interpreted:
        def __getitem__(self, grid):
            return lambda *args, **meta: calls.append((grid, args, meta))

    lion_triton.launch(Interpreted(), (2,), 1, 2, BLOCK=4)
    lion_triton.launch(Interpreted(), (2,), 1, 2, BLOCK=4)
    assert calls == [((2,), (1, 2), {"BLOCK": 4})] * 2
