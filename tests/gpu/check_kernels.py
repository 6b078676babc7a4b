"""GPU check of the fused parallel-form kernels (modeling/lion_triton.py) and the fused feature maps
(modeling/lion_triton_features.py) on real shapes, float32 and bfloat16.

Not collected by pytest (CI has no GPU; tests/test_kernels.py runs the same kernels through Triton's
interpreter there). On a CUDA machine: ``python tests/gpu/check_kernels.py``; exit status 1 when a check fails.

Every output and gradient (q, k, v, the decay parameters) is compared with the PyTorch path in float64 (exact;
itself tested against modeling/naive.py) by ||got - want|| / ||want||. Tolerances: float32 1e-5 (outputs and
gradients of q, k, v) and 1e-4 (decay parameters: sums of many signed terms); bfloat16 1e-2 (outputs) and 3e-2
(every gradient), next to the error of the PyTorch path in bfloat16 on the same inputs, printed for comparison.
Score dropout: the kernel's factors (0 or the kept scale), read back through the kernel itself, are used by the
float64 reference.
Feature maps (ViT-B's queries and keys, 2 x 64 x 12 x 197 rows of 64, read as views of one qkv projection, the
queries scaled): map and gradient against float64, same tolerances, next to the PyTorch functions' own error in
that dtype; then LION-S attention from those raw views, the map fused into the kernels' node, against float64.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from lion_hf import lion_attention
from lion_hf.modeling.lion_attention import FEATURE_MAP_FUNCTIONS, select_implementation
from lion_hf.modeling.lion_triton_features import feature_maps
from lion_hf.modeling.naive import naive_attention_weights

DEVICE = "cuda"
TOLERANCES = {torch.float32: (1e-5, 1e-5, 1e-4), torch.bfloat16: (1e-2, 3e-2, 3e-2)}  # out, q/k/v, decays

# variant, paths, normalize, padded, batch, heads, length, head dim, value dim
CASES = [
    ("lit", 1, True, False, 4, 3, 197, 64, 64),
    ("d", 1, True, False, 4, 3, 197, 64, 64),
    ("s", 1, True, False, 4, 3, 197, 64, 64),
    ("d", 2, True, False, 4, 3, 197, 64, 64),
    ("s", 2, True, False, 4, 3, 197, 64, 64),
    ("lit", 1, False, True, 4, 3, 333, 64, 64),
    ("d", 1, False, True, 4, 3, 128, 64, 64),
    ("s", 1, False, True, 4, 3, 512, 64, 64),
    ("s", 1, True, False, 2, 2, 1000, 128, 128),
    ("d", 2, True, False, 2, 2, 77, 32, 32),
]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    got, want = got.double().cpu(), want.double().cpu()
    return ((got - want).norm() / want.norm()).item()


def make_inputs(variant, paths, normalize, padded, batch, heads, length, dim, value_dim, generator):
    def rand(*shape, low=0.0):
        return (torch.rand(*shape, generator=generator, device=DEVICE) + low).requires_grad_()

    q = rand(batch, heads, length, dim, low=0.1 if normalize else -0.5)
    k = rand(batch, heads, length, dim, low=0.1 if normalize else -0.5)
    v = rand(batch, heads, length, value_dim, low=-0.5)
    params = [q, k, v]
    if variant == "d":
        params.append((torch.randn(paths, heads, generator=generator, device=DEVICE) + 2).requires_grad_())
    elif variant == "s":
        params.append((torch.randn(paths, batch, heads, length, generator=generator, device=DEVICE) + 2).requires_grad_())
    orders = None if paths == 1 else [torch.randperm(length, generator=generator, device=DEVICE) for _ in range(paths)]
    mask = None
    if padded:
        lengths = torch.randint(length // 2, length + 1, (batch, 1), generator=generator, device=DEVICE)
        mask = torch.arange(length, device=DEVICE) < lengths
    return params, orders, mask


def decays(variant, params, length):
    if variant == "lit":
        return None
    logits = params[3]
    if variant == "d":
        return [F.logsigmoid(x).view(1, -1, 1).expand(1, x.shape[0], length) for x in logits]
    return [F.logsigmoid(x) for x in logits]


def run(params, variant, orders, normalize, mask, dtype, backend, grad, dropout_p=0.0):
    q, k, v = (p.to(dtype) for p in params[:3])
    length = q.shape[2]
    out = lion_attention(
        q, k, v, decays(variant, params, length), orders, normalize=normalize, key_padding_mask=mask,
        dropout_p=dropout_p, training=dropout_p > 0, backend=backend,
    )  # fmt: skip
    return [out, *torch.autograd.grad(out, params, grad.to(out.dtype))]


def check_case(case, dtype, generator, failures):
    variant, paths, normalize, padded, *shape = case
    params, orders, mask = make_inputs(variant, paths, normalize, padded, *shape, generator)
    # The reference sees exactly the inputs the kernel sees (rounded to dtype).
    exact = [p.detach().to(dtype).double().requires_grad_() for p in params[:3]] + [p for p in params[3:]]
    grad = torch.randn(shape[0], shape[1], shape[2], shape[4], generator=generator, device=DEVICE)
    want = run(exact, variant, orders, normalize, mask, torch.float64, "pytorch", grad)
    implementation = select_implementation(
        "parallel", "auto", params[0].to(dtype), params[1].to(dtype), params[2].to(dtype),
        decays(variant, params, shape[2]), orders or ([None] * paths if variant != "lit" else None),
        chunk_size=64, normalize=normalize, eps=1e-6, key_padding_mask=mask, dropout_p=0.0,
    )  # fmt: skip
    assert implementation.backend == "triton", implementation
    got = run(params, variant, orders, normalize, mask, dtype, "triton", grad)
    torch_path = run(params, variant, orders, normalize, mask, dtype, "pytorch", grad) if dtype != torch.float32 else None
    names = ["out", "dq", "dk", "dv", "ddecay"][: len(got)]
    limits = TOLERANCES[dtype]
    row = []
    for index, name in enumerate(names):
        error = relative_error(got[index], want[index])
        limit = limits[0] if index == 0 else limits[1] if index < 4 else limits[2]
        reference = "" if torch_path is None else f" (pytorch {relative_error(torch_path[index], want[index]):.1e})"
        row.append(f"{name} {error:.1e}{reference}")
        if not error <= limit:
            failures.append(f"{dtype} {case} {name}: {error:.2e} > {limit}")
    print(f"{str(dtype):15s} {variant}{paths} norm={int(normalize)} pad={int(padded)} {shape}: " + ", ".join(row))


def kernel_dropout(batch, heads, length, p, seed):
    """The kernel's dropout under ``torch.manual_seed(seed)``, read back by running it on ``q k^T = 1`` with identity
    values: each score's factor, 0 where dropped and the kept scale elsewhere."""
    q = torch.ones(batch, heads, length, 16, device=DEVICE)
    k = torch.zeros_like(q)
    k[..., 0] = 1
    v = torch.eye(length, device=DEVICE).expand(batch, heads, length, length).contiguous()
    torch.manual_seed(seed)
    return lion_attention(q, k, v, None, dropout_p=p, training=True, backend="triton")


def check_dropout(generator, failures):
    p, batch, heads, length = 0.1, 2, 3, 128
    factors = kernel_dropout(batch, heads, length, p, seed=11)
    keep = factors > 0
    dropped = 1 - keep.double().mean().item()
    scale = factors.max().item() * (1 - p)  # 1 to within the draws' resolution, 2**-16
    same = torch.equal(factors, kernel_dropout(batch, heads, length, p, seed=11))
    differs = not torch.equal(factors, kernel_dropout(batch, heads, length, p, seed=12))
    print(
        f"dropout p={p}: dropped {dropped:.4f}, kept scale x (1 - p) {scale:.6f}, same seed same mask {same}, "
        f"other seed other mask {differs}"
    )
    if not (abs(dropped - p) < 0.01 and abs(scale - 1) < 2**-15 and same and differs and factors.unique().numel() == 2):
        failures.append(f"dropout statistics: dropped {dropped}, scale {scale}, same {same}, differs {differs}")
    for dtype in (torch.float32, torch.bfloat16):
        params, orders, _ = make_inputs("s", 2, True, False, batch, heads, length, 64, 64, generator)
        grad = torch.randn(batch, heads, length, 64, generator=generator, device=DEVICE)
        torch.manual_seed(11)
        got = run(params, "s", orders, True, None, dtype, "triton", grad, dropout_p=p)
        # The float64 oracle on the CPU, given the kernel's dropout factors.
        exact = [x.detach().to(dtype).double().cpu().requires_grad_() for x in params]
        cpu_orders = [o.cpu() for o in orders]
        weights = naive_attention_weights(exact[0], exact[1], decays("s", exact, length), cpu_orders)
        dropped_weights = weights * factors.double().cpu()
        out = (dropped_weights @ exact[2]) / (dropped_weights.sum(-1, keepdim=True) + 1e-6)
        want = [out, *torch.autograd.grad(out, exact, grad.double().cpu())]
        errors = [relative_error(g, w) for g, w in zip(got, want)]
        print(f"dropout {dtype}: " + ", ".join(f"{e:.1e}" for e in errors))
        limits = TOLERANCES[dtype]
        if not (errors[0] <= limits[0] and max(errors[1:4]) <= limits[1] and errors[4] <= limits[2]):
            failures.append(f"dropout {dtype}: {errors}")


def check_feature_maps(generator, failures):
    qkv = torch.randn(64, 197, 3, 12, 64, device=DEVICE, generator=generator) * 2
    grads = [torch.randn(64, 12, 197, 64, device=DEVICE, generator=generator) for _ in range(3)]
    scale = 64**-0.5

    def maps_and_gradients(fn, dtype, inputs=2):
        """Outputs of ``fn(q, k, v)`` and the gradients of the first ``inputs`` of q, k, v."""
        q, k, v = (t.transpose(1, 2).to(dtype).detach().requires_grad_() for t in qkv.unbind(2))
        out = fn(q, k, v)
        return [*out, *torch.autograd.grad(out, (q, k, v)[:inputs], [g.to(dtype) for g in grads[: len(out)]])]

    def pytorch_maps(kind):
        return lambda q, k, v: (FEATURE_MAP_FUNCTIONS[kind](q) * scale, FEATURE_MAP_FUNCTIONS[kind](k))

    for kind in ("elu_plus_one", "silu_shift_l2"):
        want = maps_and_gradients(pytorch_maps(kind), torch.float64)
        for dtype in (torch.float32, torch.bfloat16):
            got = maps_and_gradients(lambda q, k, v: feature_maps(kind, q, k, scale), dtype)
            pytorch = maps_and_gradients(pytorch_maps(kind), dtype)
            errors = [relative_error(g, w) for g, w in zip(got, want)]
            own = [relative_error(p, w) for p, w in zip(pytorch, want)]
            print(f"feature maps {kind} {dtype}: maps {max(errors[:2]):.1e}, gradients {max(errors[2:]):.1e} "
                  f"(PyTorch in that dtype: {max(own[:2]):.1e}, {max(own[2:]):.1e})")
            out_limit, grad_limit, _ = TOLERANCES[dtype]
            if not (max(errors[:2]) <= out_limit and max(errors[2:]) <= grad_limit):
                failures.append(f"feature maps {kind} {dtype}: {errors}")
    log_decays = [F.logsigmoid(torch.randn(64, 12, 197, device=DEVICE, generator=generator) + 2)]
    options = dict(feature_map="silu_shift_l2", scale=scale, normalize=True)

    def attention(backend):
        return lambda q, k, v: (lion_attention(q, k, v, log_decays, backend=backend, **options),)

    want = maps_and_gradients(attention("pytorch"), torch.float64, inputs=3)
    for dtype in (torch.float32, torch.bfloat16):
        got = maps_and_gradients(attention("triton"), dtype, inputs=3)
        errors = [relative_error(g, w) for g, w in zip(got, want)]
        print(f"LION-S from raw qkv views, map fused, {dtype}: out {errors[0]:.1e}, q/k/v {max(errors[1:]):.1e}")
        out_limit, grad_limit, _ = TOLERANCES[dtype]
        if not (errors[0] <= out_limit and max(errors[1:]) <= grad_limit):
            failures.append(f"fused map attention {dtype}: {errors}")


def main() -> int:
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    failures: list[str] = []
    try:
        check_feature_maps(generator, failures)
    except Exception as error:
        failures.append(f"feature maps: {type(error).__name__}: {error}")
    for dtype in (torch.float32, torch.bfloat16):
        for case in CASES:
            try:
                check_case(case, dtype, generator, failures)
            except Exception as error:  # report every case, then fail
                failures.append(f"{dtype} {case}: {type(error).__name__}: {error}")
                print(failures[-1])
    try:
        check_dropout(generator, failures)
    except Exception as error:
        failures.append(f"dropout: {type(error).__name__}: {error}")
    print("\n".join(["FAILED:"] + failures) if failures else "all kernel checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
