"""Timings of the fused parallel-form kernels on a GPU: the device's ceilings, the operator against SDPA, and a sweep
of tile sizes per kernel. ``python tests/gpu/time_kernels.py [--sweep]``; ``--profile 4096,16384``: the GPU time
of each kernel of one operator call; ``--rates``: each parallel kernel's time and TFLOP/s at the ViT-B and
BERT-512 training shapes, score dropout 0 and 0.1; ``--chunk-sweep 16384 [--batch 4]``: the chunk kernels' launch
options; medians of ``triton.testing.do_bench``.

Not collected by pytest. What it printed on an H200 is in benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton

from lion_hf import lion_attention
from lion_hf.modeling import lion_triton

BATCH, HEADS, HEAD_DIM = 4, 12, 64


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def ceilings() -> None:
    """A device-to-device copy (bytes read + written) and a large bf16 matrix product, on random data."""
    x = torch.rand(2**29, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    print(f"copy: {2 * x.numel() * 4 / ms / 1e9:.2f} TB/s")
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = bench(lambda: a @ b)
    print(f"bf16 matmul 8192^3: {2 * 8192**3 / ms / 1e9:.0f} TFLOP/s")


def operator_inputs(length: int, batch=BATCH, generator=None):
    shape = (batch, HEADS, length, HEAD_DIM)
    q, k = ((torch.rand(*shape, device="cuda", generator=generator) + 0.1).bfloat16().requires_grad_() for _ in "qk")
    v = (torch.rand(*shape, device="cuda", generator=generator) - 0.5).bfloat16().requires_grad_()
    grad = torch.randn(*shape, device="cuda", generator=generator).bfloat16()
    decay_logit = (torch.randn(2, HEADS, 1, device="cuda") + 3).requires_grad_()
    gate = (torch.randn(2, batch, HEADS, length, device="cuda") + 3).requires_grad_()
    return q, k, v, grad, decay_logit, gate


def lion_call(variant, paths, backend, q, k, v, grad, decay_logit, gate, normalize=True, mask=None, dropout_p=0.0):
    length = q.shape[2]
    orders = None if paths == 1 else [torch.randperm(length, device="cuda") for _ in range(paths)]
    scale = HEAD_DIM**-0.5

    def call():
        params = (q, k, v)
        if variant == "lit":
            decays = None
        elif variant == "d":
            decays = [F.logsigmoid(decay_logit[p]).expand(1, HEADS, length) for p in range(paths)]
            params += (decay_logit,)
        else:
            decays = [F.logsigmoid(gate[p]) for p in range(paths)]
            params += (gate,)
        out = lion_attention(
            q * scale, k, v, decays, orders, normalize=normalize, key_padding_mask=mask, dropout_p=dropout_p,
            training=dropout_p > 0, backend=backend, check_values=False,  # as the models call it: no host sync
        )  # fmt: skip
        torch.autograd.grad(out, params, grad)

    return call


def operator_table(lengths) -> None:
    """Forward + backward, bf16, B 4, H 12, D 64, normalised (as the benchmark's operator group)."""
    print(f"\noperator fwd+bwd, B {BATCH} H {HEADS} D {HEAD_DIM}, bf16 (ms; ratio to SDPA)")
    for length in lengths:
        q, k, v, grad, decay_logit, gate = operator_inputs(length)

        def sdpa():
            out = F.scaled_dot_product_attention(q, k, v)
            torch.autograd.grad(out, (q, k, v), grad)

        base = bench(sdpa)
        sdpa_fwd = bench(lambda: F.scaled_dot_product_attention(q, k, v))
        flops = 4 * BATCH * HEADS * length**2 * HEAD_DIM
        row = [f"N={length}: SDPA {base:.3f} (fwd {sdpa_fwd:.3f}, {3.5 * flops / base / 1e9:.0f} TFLOP/s)"]
        for variant, paths in (("lit", 1), ("d", 1), ("s", 1), ("d", 2), ("s", 2)):
            name = variant.upper() + ("x2" if paths == 2 else "")
            ms = bench(lion_call(variant, paths, "triton", q, k, v, grad, decay_logit, gate))
            row.append(f"{name} {ms:.3f} ({ms / base:.2f})")
            if paths == 1:
                torch_ms = bench(lion_call(variant, paths, "pytorch", q, k, v, grad, decay_logit, gate))
                row.append(f"[pytorch {torch_ms:.3f}]")
        with torch.no_grad():
            fwd = bench(lambda: lion_attention(q, k, v, [F.logsigmoid(gate[0])], normalize=True, backend="triton",
                                             check_values=False))  # fmt: skip
        row.append(f"S fwd {fwd:.3f} ({flops / fwd / 1e9:.0f} TFLOP/s of qk+pv)")
        print("  " + " | ".join(row))


# Matrix products per kernel, in units of B H N^2 D multiply-adds: q k^T and p v; s, dp and dq; s, dp, dv and dk.
PRODUCTS = {"_forward_kernel": 2, "_backward_q_kernel": 3, "_backward_kv_kernel": 4}
REPEATS = 10
TRAINING_SHAPES = [("ViT-B (B64 N197, normalised)", 64, 197, True), ("BERT-512 (B32 N512, padded)", 32, 512, False)]


def kernel_rates() -> None:
    """Each parallel-form kernel's GPU time and TFLOP/s of its matrix products at the two training shapes, score
    dropout 0 and 0.1 (BERT trains with 0.1), LIT, D and S; SDPA's forward + backward beside them."""
    for label, batch, length, normalize in TRAINING_SHAPES:
        q, k, v, grad, decay_logit, gate = operator_inputs(length, batch=batch)
        mask = None if normalize else torch.ones(batch, length, dtype=torch.bool, device="cuda")
        unit = 2 * batch * HEADS * length**2 * HEAD_DIM / 1e9  # GFLOP of one B H N^2 D product
        for p in (0.0, 0.1):
            sdpa = bench(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, dropout_p=p), (q, k, v), grad))
            row = [f"SDPA fwd+bwd {sdpa:.3f} ms"]
            for variant in ("lit", "d", "s"):
                call = lion_call(variant, 1, "triton", q, k, v, grad, decay_logit, gate, normalize, mask, p)
                bench(call)
                kernels = kernel_times(call, REPEATS)
                for name, products in PRODUCTS.items():
                    ms = sum(sum(times) for key, times in kernels.items() if key.startswith(name)) / REPEATS
                    rate = f"{products * unit / ms:.0f} TFLOP/s" if ms > 0 else f"not launched: {sorted(kernels)}"
                    row.append(f"{variant} {name[1:-7]} {ms:.3f} ms ({rate})")
            print(f"{label}, dropout {p}: " + " | ".join(row))


FORWARD = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 4, 2), (128, 64, 8, 2), (128, 128, 8, 2), (64, 128, 4, 2), (128, 32, 4, 2)]
KEYS = [(64, 64, 4, 2), (32, 64, 4, 2), (32, 128, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 3), (64, 128, 4, 2)]
QUERIES = [(64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 2), (64, 32, 4, 2), (128, 64, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2)]


def sweep() -> None:
    """Each kernel's candidates with the others at their defaults: S, one path, bf16, at two training shapes."""
    default = lion_triton._blocks
    shapes = [(*shape, 0.0) for shape in TRAINING_SHAPES] + [(*TRAINING_SHAPES[1], 0.1)]
    for label, batch, length, normalize, p in shapes:
        q, k, v, grad, decay_logit, gate = operator_inputs(length, batch=batch)
        mask = None if normalize else torch.ones(batch, length, dtype=torch.bool, device="cuda")
        decays = [F.logsigmoid(gate[0])]
        terms = lion_triton._decay_terms(q, decays, [None], mask)
        seed = torch.randint(0, 2**62, (1,), device="cuda") if p > 0 else None
        args = (q, k, v, mask, *terms, seed, p, normalize, 1e-6, 1.0)
        out, z = lion_triton._forward(*args)
        print(f"\nsweep {label}, dropout {p}: (BLOCK_M, BLOCK_N, warps, stages) -> ms")
        for kernel, candidates in (("forward", FORWARD), ("backward_kv", KEYS), ("backward_q", QUERIES)):
            results = []
            for block_m, block_n, warps, stages in candidates:
                chosen = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
                lion_triton._blocks = lambda name, *a, c=chosen, k=kernel: c if name == k else default(name, *a)
                lion_triton._meta_of.cache_clear()  # it keeps what _blocks gave
                try:
                    if kernel == "forward":
                        ms = bench(lambda: lion_triton._forward(*args))
                    else:
                        ms = bench(lambda: lion_triton._backward(grad, q, k, v, out, z, *args[3:]))
                    results.append(((block_m, block_n, warps, stages), ms))
                except Exception as error:  # out of shared memory or registers: report and go on
                    print(f"  {kernel} {(block_m, block_n, warps, stages)}: {type(error).__name__} {str(error)[:80]}")
                finally:
                    lion_triton._blocks = default
                    lion_triton._meta_of.cache_clear()
            results.sort(key=lambda r: r[1])
            print(f"  {kernel}: " + ", ".join(f"{c} {ms:.3f}" for c, ms in results))


def kernel_times(call, repeats=1) -> dict[str, list[float]]:
    """``kernel name -> [ms of each launch]`` in ``repeats`` calls of ``call()`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for _ in range(repeats):
            call()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and not event.is_user_annotation:
            kernels.setdefault(event.name[:60], []).append(event.time_range.elapsed_us() / 1e3)
    return kernels


def kernel_profile(lengths) -> None:
    """Where the GPU time of one operator call goes (forward + backward, the kernels' summed durations), per
    variant, at lengths that take the chunk kernels."""
    for length in lengths:
        inputs = operator_inputs(length)
        for variant in ("lit", "d", "s"):
            call = lion_call(variant, 1, "triton", *inputs)
            total = bench(call)
            kernels = kernel_times(call)
            rows = sorted(kernels.items(), key=lambda item: -sum(item[1]))
            summed = sum(sum(t) for t in kernels.values())
            print(f"\nprofile N={length} {variant}: {total:.3f} ms per call (do_bench), kernels {summed:.3f} ms")
            for name, times in rows[:12]:
                print(f"  {sum(times):7.3f} ms  x{len(times):<3} {name}")


def chunk_sweep(length: int, batch: int) -> None:
    """LION-D at ``length`` tokens through the chunk kernels, forward + backward: how ``_states`` splits its sweeps
    into runs (the call's time and ``_states``' GPU time per call), then each kernel's launch options, varied with
    the others at their defaults."""
    from lion_hf.modeling import lion_triton_chunk as chunk

    call = lion_call("d", 1, "triton", *operator_inputs(length, batch=batch))
    default_launch, defaults = chunk.launch, (chunk._STATE_PROGRAMS, chunk._MIN_RUN_CHUNKS)
    print(f"\nchunk sweep, LION-D, N={length}, B={batch}: defaults {bench(call):.3f} ms")
    for programs in (0, 256, 512, 1024, 2048):
        for min_chunks in (8, 16):
            chunk._STATE_PROGRAMS, chunk._MIN_RUN_CHUNKS = programs, min_chunks
            ms = bench(call)
            states = sum(kernel_times(call).get("_states", []))
            print(f"  _states in runs of >= {min_chunks} chunks up to {programs} programs (0: one sweep): call "
                  f"{ms:.3f} ms, _states {states:.3f} ms")
    chunk._STATE_PROGRAMS, chunk._MIN_RUN_CHUNKS = defaults
    for name in ("_states", "_output", "_gradients"):
        results = []
        for warps in (2, 4, 8):
            for stages in (1, 2, 3, 4):

                def patched(kernel, grid, *args, _name=name, _options=dict(num_warps=warps, num_stages=stages), **meta):
                    if getattr(kernel, "fn", kernel).__name__ == _name:
                        meta = {**meta, **_options}
                    default_launch(kernel, grid, *args, **meta)

                chunk.launch = patched
                try:
                    results.append(((warps, stages), bench(call)))
                except Exception as error:  # out of shared memory or registers: report and go on
                    print(f"  {name} {(warps, stages)}: {type(error).__name__} {str(error)[:80]}")
                finally:
                    chunk.launch = default_launch
        results.sort(key=lambda r: r[1])
        print(f"  {name} (warps, stages): " + ", ".join(f"{c} {ms:.3f}" for c, ms in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", action="store_true", help="also sweep the tile sizes of each kernel")
    parser.add_argument("--profile", metavar="N,N,...", help="only the per-kernel GPU time at these lengths")
    parser.add_argument("--rates", action="store_true", help="only each parallel kernel's time and TFLOP/s at training shapes")
    parser.add_argument("--chunk-sweep", type=int, metavar="N", help="only the chunk kernels' launch options at N tokens")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"batch of --chunk-sweep (default {BATCH})")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    if args.chunk_sweep:
        chunk_sweep(args.chunk_sweep, args.batch)
        return
    if args.rates:
        kernel_rates()
        return
    if args.profile:
        kernel_profile([int(n) for n in args.profile.split(",")])
        return
    ceilings()
    operator_table((197, 512, 1024))
    kernel_rates()
    if args.sweep:
        sweep()


if __name__ == "__main__":
    main()
