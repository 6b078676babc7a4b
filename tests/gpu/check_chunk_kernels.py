"""GPU check of the fused chunk/recurrent kernels (not collected by pytest: it needs a CUDA device).

    python tests/gpu/check_chunk_kernels.py [--out DIR] [--skip-timing] [--cases 0,1,...]

1. Correctness on real shapes, float32 and bfloat16: outputs and every gradient of the Triton chunk form, and the
   output of the Triton recurrent form, against the PyTorch parallel form in float64 (itself tested against the
   naive oracle in CI), by relative error ``|x - ref| / |ref|``. Fresh random inputs per case.
2. The two ceilings of the device (a device-to-device copy, a bf16 matrix product).
3. The operator forward + backward (B 4, H 12, D 64, normalised, bf16) at 4k and 16k tokens against SDPA and the
   PyTorch chunk form, time (median of CUDA-event timings) and peak memory; forward-only and recurrent
   inference too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from lion_hf import lion_attention

# bf16 products and states: the relative errors of bf16 operands (METHOD.md: 1e-3 to 1e-2).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def relative_error(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


DEVICE = "cuda"


def make_case(variant, paths, batch, heads, length, dim, dtype, padded):
    device = DEVICE
    q = (torch.rand(batch, heads, length, dim, device=device) + 0.1).mul_(dim**-0.5).to(dtype).requires_grad_()
    k = (torch.rand(batch, heads, length, dim, device=device) + 0.1).to(dtype).requires_grad_()
    v = torch.randn(batch, heads, length, dim, device=device).to(dtype).requires_grad_()
    params = [q, k, v]
    if variant == "lit":
        decays = lambda: None  # noqa: E731
    elif variant == "d":
        logit = (torch.randn(paths, 1, heads, 1, device=device) + 3).requires_grad_()
        params.append(logit)
        decays = lambda: [F.logsigmoid(logit[p]).expand(1, heads, length) for p in range(paths)]  # noqa: E731
    else:
        logit = (torch.randn(paths, batch, heads, length, device=device) + 3).requires_grad_()
        params.append(logit)
        decays = lambda: [F.logsigmoid(logit[p]) for p in range(paths)]  # noqa: E731
    orders = None if paths == 1 else [torch.randperm(length, device=device) for _ in range(paths)]
    kpm = None
    if padded:
        kpm = torch.arange(length, device=device)[None, :] < torch.tensor([[length], [length * 2 // 3]], device=device)
    return params, decays, orders, kpm


def check(results, variant, paths, dtype, chunk, normalize, padded, length):
    torch.manual_seed(len(results))
    params, decays, orders, kpm = make_case(variant, paths, 2, 4, length, 64, dtype, padded)
    options = dict(normalize=normalize, key_padding_mask=kpm)
    ref = lion_attention(*(p.double() for p in params[:3]), *_double(decays(), orders), form="parallel",
                         backend="pytorch", **options)  # fmt: skip
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, params, grad)
    out = lion_attention(*params[:3], decays(), orders, form="chunk", chunk_size=chunk, backend="triton", **options)
    grads = torch.autograd.grad(out, params, grad.to(out.dtype))
    with torch.no_grad():
        rec = lion_attention(*params[:3], decays(), orders, form="recurrent", chunk_size=chunk, backend="triton",
                             **options)  # fmt: skip
    errors = {"out": relative_error(out, ref), "recurrent": relative_error(rec, ref)}
    for name, g, r in zip(("dq", "dk", "dv", "ddecay"), grads, ref_grads):
        errors[name] = relative_error(g, r)
    finite = all(torch.isfinite(t).all().item() for t in (out, rec, *grads))
    ok = finite and all(e < TOLERANCE[dtype] for e in errors.values())
    name = f"{variant} paths={paths} {str(dtype)[6:]} C={chunk} norm={normalize} pad={padded}"
    results.append({"case": name, "ok": ok, **errors})
    print(f"{'ok ' if ok else 'BAD'} {name}: " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()), flush=True)


def _double(decays, orders):
    return (None if decays is None else [d.double() for d in decays]), orders


def correctness(results, length, only=None):
    cases = [
        ("lit", 1, torch.float32, 64, True, True),
        ("d", 1, torch.float32, 64, True, False),
        ("s", 1, torch.float32, 64, True, True),
        ("s", 1, torch.float32, 128, False, True),
        ("d", 2, torch.float32, 32, True, False),
        ("s", 2, torch.float32, 256, False, True),
        ("lit", 1, torch.bfloat16, 64, True, False),
        ("d", 1, torch.bfloat16, 64, True, False),
        ("s", 1, torch.bfloat16, 64, True, True),
        ("s", 2, torch.bfloat16, 64, True, False),
        ("d", 1, torch.bfloat16, 128, False, False),
    ]
    for index, case in enumerate(cases):
        if only is not None and index not in only:
            continue
        try:
            check(results, *case, length)
        except Exception:  # one failing case must not hide the others' results
            results.append({"case": str(case), "ok": False, "error": traceback.format_exc()[-2000:]})
            print("ERROR", case, traceback.format_exc()[-1500:], flush=True)


def median_ms(fn, repeats=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mb(fn):
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def ceilings(timings):
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), repeats=10)
    timings.append({"what": "copy 1 GiB", "ms": ms, "TB/s": 2 * 2**30 / ms / 1e9})
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ a, repeats=10)
    timings.append({"what": "bf16 matmul 8192^3", "ms": ms, "TFLOP/s": 2 * 8192**3 / ms / 1e9})
    print(timings[-2], timings[-1], flush=True)


def operator_timings(timings, lengths, chunks):
    batch, heads, dim = 4, 12, 64
    for length in lengths:
        gen = torch.Generator(device="cuda").manual_seed(length)
        shape = (batch, heads, length, dim)
        q = (torch.rand(shape, device="cuda", generator=gen) + 0.1).bfloat16().requires_grad_()
        k = (torch.rand(shape, device="cuda", generator=gen) + 0.1).bfloat16().requires_grad_()
        v = (torch.rand(shape, device="cuda", generator=gen) - 0.5).bfloat16().requires_grad_()
        grad = torch.randn(shape, device="cuda", generator=gen).bfloat16()
        logit = (torch.randn(1, heads, 1, device="cuda", generator=gen) + 3).requires_grad_()
        gate = (torch.randn(batch, heads, length, device="cuda", generator=gen) + 3).requires_grad_()

        def sdpa():
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad)

        configs = [("SDPA", None, None, None, sdpa)]
        for variant in ("lit", "d", "s"):
            for backend, form, chunk in [("pytorch", "chunk", 64)] + [("triton", "chunk", c) for c in chunks] + [
                ("triton", "recurrent", chunks[0])
            ]:

                def lion(variant=variant, backend=backend, form=form, chunk=chunk, train=True):
                    params = (q, k, v)
                    if variant == "lit":
                        decays = None
                    elif variant == "d":
                        decays, params = [F.logsigmoid(logit).expand(1, heads, length)], params + (logit,)
                    else:
                        decays, params = [F.logsigmoid(gate)], params + (gate,)
                    with torch.set_grad_enabled(train):
                        out = lion_attention(q * dim**-0.5, k, v, decays, form=form, chunk_size=chunk, normalize=True,
                                             backend=backend, check_values=False)  # fmt: skip
                    if train:
                        torch.autograd.grad(out, params, grad)

                configs.append((f"{variant} {backend} {form}/{chunk}", variant, form, backend, lion))
        for name, variant, form, backend, fn in configs:
            try:
                row = {"seq_len": length, "config": name}
                if form != "recurrent":
                    row.update(fwd_bwd_ms=median_ms(fn), fwd_bwd_peak_mb=peak_mb(fn))
                if variant is not None:
                    infer = lambda fn=fn: fn(train=False)  # noqa: E731
                    row.update(fwd_ms=median_ms(infer), fwd_peak_mb=peak_mb(infer))
                timings.append(row)
                print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
            except Exception:
                timings.append({"seq_len": length, "config": name, "error": traceback.format_exc()[-1500:]})
                print("ERROR", name, traceback.format_exc()[-1500:], flush=True)
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run under TRITON_INTERPRET=1")
    parser.add_argument("--length", type=int, default=1000, help="tokens of the correctness cases")
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--chunks", default="64,128")
    parser.add_argument("--cases", default=None, help="comma-separated indices of the correctness cases to run")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    results, timings = [], []
    correctness(results, args.length, None if args.cases is None else {int(i) for i in args.cases.split(",")})
    if not args.skip_timing:
        ceilings(timings)
        operator_timings(timings, [int(n) for n in args.lengths.split(",")], [int(c) for c in args.chunks.split(",")])
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "check_chunk_kernels.json").write_text(
            json.dumps({"device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, "torch": torch.__version__,
                        "correctness": results, "timings": timings}, indent=1)  # fmt: skip
        )
    bad = [r["case"] for r in results if not r["ok"]]
    print(f"{len(results) - len(bad)}/{len(results)} correctness cases passed" + (f"; failed: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
