"""The benchmark groups: vision and MLM training (eager and compiled), inference against resolution, the operator
alone, and the long-sequence groups of the fused chunk kernels (operator, ViT inference, MLM training)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lion_hf import lion_attention

from .models import TextShape, VisionShape, bert_sdpa, lion_mlm, lion_vision, timm_available, timm_vit, vit_sdpa
from .timing import measure, skipped

VIT_B = VisionShape("ViT-B/16", 768, 12, 12, 3072, 224, 16, 1000)
VIT_S = VisionShape("ViT-S/16", 384, 12, 6, 1536, 224, 16, 1000)
VISION_SHAPES = {shape.name: shape for shape in (VIT_B, VIT_S)}
BERT_BASE = TextShape("BERT-base", 768, 12, 12, 3072, 30522, 512)

VISION_VARIANTS = (("lit", "raster"), ("d", "raster"), ("s", "raster"), ("d", "snake"), ("s", "snake"))
TEXT_VARIANTS = ("lit", "d", "s")


@dataclass
class Settings:
    mode: str
    vision_shapes: tuple[VisionShape, ...]
    vision_batch: int
    text_shape: TextShape
    mlm_cases: tuple[tuple[int, int], ...]  # (sequence length, batch)
    inference_shape: VisionShape
    resolutions: tuple[int, ...]
    inference_batch: int
    inference_variants: tuple[str, ...]
    chunk_sizes: tuple[int, ...]
    operator_lengths: tuple[int, ...]
    operator_batch: int
    operator_heads: int
    operator_head_dim: int
    # The long-sequence groups (issue 14): the chunk and recurrent forms on the fused kernels.
    long_operator_lengths: tuple[int, ...]
    long_resolutions: tuple[int, ...]
    long_text_shape: TextShape
    long_mlm_cases: tuple[tuple[int, int], ...]
    long_chunk_size: int
    warmup: int
    repeats: int
    budget_s: float  # timed runs of one configuration
    max_call_s: float  # a configuration predicted to take longer per call is skipped
    autocast: bool = True


def full_settings(**overrides) -> Settings:
    defaults = dict(
        mode="full",
        vision_shapes=(VIT_B, VIT_S),
        vision_batch=64,
        text_shape=BERT_BASE,
        mlm_cases=((128, 128), (512, 32)),
        inference_shape=VIT_B,
        resolutions=(224, 512, 1024, 2048),
        inference_batch=8,
        inference_variants=("lit", "d", "s"),
        chunk_sizes=(64, 128, 256),
        operator_lengths=(197, 512, 1024, 2048, 4096, 8192, 16384),
        operator_batch=4,
        operator_heads=12,
        operator_head_dim=64,
        long_operator_lengths=(1024, 2048, 4096, 8192, 16384, 32768, 65536),
        long_resolutions=(512, 1024, 2048),
        long_text_shape=TextShape("BERT-base", 768, 12, 12, 3072, 30522, 16384),
        long_mlm_cases=((2048, 8), (8192, 2), (16384, 1)),
        long_chunk_size=64,
        warmup=3,
        repeats=10,
        budget_s=2.0,
        max_call_s=6.0,
    )
    return Settings(**{**defaults, **overrides})


def smoke_settings(**overrides) -> Settings:
    tiny_vision = VisionShape("tiny-vision", 32, 2, 2, 64, 32, 8, 10)
    defaults = dict(
        mode="smoke",
        vision_shapes=(tiny_vision,),
        vision_batch=2,
        text_shape=TextShape("tiny-text", 32, 2, 2, 64, 100, 64),
        mlm_cases=((16, 2),),
        inference_shape=tiny_vision,
        resolutions=(32, 64),
        inference_batch=2,
        inference_variants=("lit", "d", "s"),
        chunk_sizes=(8,),
        operator_lengths=(32, 64),
        operator_batch=1,
        operator_heads=2,
        operator_head_dim=8,
        long_operator_lengths=(64, 128),
        long_resolutions=(32, 64),
        long_text_shape=TextShape("tiny-text", 32, 2, 2, 64, 100, 128),
        long_mlm_cases=((64, 2), (128, 1)),
        long_chunk_size=16,
        warmup=1,
        repeats=1,
        budget_s=0.5,
        max_call_s=10.0,
    )
    return Settings(**{**defaults, **overrides})


def _label(variant: str, order: str = "raster") -> str:
    return f"LION-{variant.upper() if variant != 'lit' else 'LIT'}" + (" snake" if order == "snake" else "")


def _autocast(settings: Settings, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.autocast)


def _training_step(model, inputs: dict, settings: Settings, device: torch.device, compiled=False):
    model.train()
    if compiled:
        # Every model compiles afresh: the frames they share (transformers' output wrappers) would otherwise pile
        # up guards across models until dynamo's recompile limit sends the later ones back to eager.
        torch._dynamo.reset()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with _autocast(settings, device):
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _measure(fn, settings: Settings, device: torch.device) -> dict:
    return measure(fn, device, warmup=settings.warmup, repeats=settings.repeats, budget_s=settings.budget_s)


def vision_training(settings: Settings, device: torch.device) -> Iterator[dict]:
    """Forward + backward + AdamW step of image classifiers at the trained resolution."""
    yield from _vision_training(settings, device, settings.vision_shapes, VISION_VARIANTS, compiled=False)


def compiled_training(settings: Settings, device: torch.device) -> Iterator[dict]:
    """The vision training step of the first shape under ``torch.compile`` (compilation in the warm-up)."""
    yield from _vision_training(settings, device, settings.vision_shapes[:1], VISION_VARIANTS, compiled=True)


def _vision_training(settings, device, shapes, variants, compiled: bool) -> Iterator[dict]:
    for shape in shapes:
        batch = settings.vision_batch
        inputs = {
            "pixel_values": torch.randn(batch, 3, shape.image_size, shape.image_size, device=device),
            "labels": torch.randint(0, shape.num_labels, (batch,), device=device),
        }
        case = {"group": "compiled" if compiled else "vision", "shape": shape.name, "batch": batch}
        builders = [("ViT SDPA", None, None, lambda: vit_sdpa(shape, device))]
        if timm_available():
            builders.append(("timm ViT", None, None, lambda: timm_vit(shape, device)))
        builders += [(_label(v, o), v, o, lambda v=v, o=o: lion_vision(shape, v, o, device)) for v, o in variants]
        for name, variant, order, build in builders:
            model = build()
            result = _measure(_training_step(model, inputs, settings, device, compiled), settings, device)
            del model
            yield {**case, "model": name, "variant": variant, "order": order, **result}


def mlm_training(settings: Settings, device: torch.device) -> Iterator[dict]:
    """Forward + backward + AdamW step of masked-language models (15% of positions carry labels)."""
    yield from _mlm_training(settings, device, settings.mlm_cases, compiled=False)


def compiled_mlm_training(settings: Settings, device: torch.device) -> Iterator[dict]:
    """The MLM training step of the shortest sequence case under ``torch.compile``."""
    yield from _mlm_training(settings, device, settings.mlm_cases[:1], compiled=True)


def long_mlm_training(settings: Settings, device: torch.device) -> Iterator[dict]:
    """The MLM training step at long sequences, LION in the chunk form (the fused kernels where they run)."""
    lion = dict(attention_form="chunk", chunk_size=settings.long_chunk_size)
    yield from _mlm_training(settings, device, settings.long_mlm_cases, compiled=False, group="long_mlm",
                             shape=settings.long_text_shape, lion_overrides=lion)  # fmt: skip


def mlm_inputs(shape: TextShape, length: int, batch: int, device: torch.device) -> dict:
    """A masked-LM batch: random tokens, 15% of them labelled, no padding (the same batch on every call)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    input_ids = torch.randint(1, shape.vocab_size, (batch, length), generator=generator)
    labels = torch.where(torch.rand(batch, length, generator=generator) < 0.15, input_ids, -100)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
        "labels": labels.to(device),
    }


def _mlm_training(settings, device, cases, compiled: bool, group=None, shape=None, lion_overrides=None):
    shape = shape or settings.text_shape
    group = group or ("compiled_mlm" if compiled else "mlm")
    lion_overrides = lion_overrides or {}
    for length, batch in cases:
        inputs = mlm_inputs(shape, length, batch, device)
        case = {"group": group, "shape": shape.name, "seq_len": length, "batch": batch}
        builders = [("BERT SDPA", None, lambda: bert_sdpa(shape, device))]
        builders += [(_label(v), v, lambda v=v: lion_mlm(shape, v, device, **lion_overrides)) for v in TEXT_VARIANTS]
        for name, variant, build in builders:
            model = build()
            result = _measure(_training_step(model, inputs, settings, device, compiled), settings, device)
            del model
            yield {**case, "model": name, "variant": variant, **result}


class _SeriesGuard:
    """Skips the larger sizes of a series whose smaller size ran out of memory or was already too slow.

    The prediction assumes time grows at least linearly with the number of tokens, so it never skips a
    configuration that could have finished within ``max_call_s``.
    """

    def __init__(self, max_call_s: float):
        self.max_call_s = max_call_s
        self.last: dict[str, tuple[int, dict]] = {}

    def reason(self, series: str, size: int) -> str | None:
        if series not in self.last:
            return None
        previous_size, previous = self.last[series]
        if previous["status"] == "oom":
            return f"out of memory already at {previous_size}"
        if previous["status"] == "skipped":
            return previous["reason"]
        from_first = previous["first_call_ms"] / 4 > previous["median_ms"]
        basis_ms = previous["first_call_ms"] / 4 if from_first else previous["median_ms"]
        call_s = basis_ms / 1e3 * size / previous_size
        if call_s > self.max_call_s:
            what = "a quarter of the first call" if from_first else "the median call"
            basis = f"linear from {what}, {basis_ms:.3g} ms, at {previous_size}"
            return f"predicted >= {call_s:.3g} s per call ({basis})"
        return None

    def record(self, series: str, size: int, result: dict) -> None:
        self.last[series] = (size, result)


def _inference_forms(settings: Settings, resolution: int) -> list[tuple[str, int | None]]:
    forms = [("parallel", None)] + [("chunk", c) for c in settings.chunk_sizes]
    forms.append(("recurrent", settings.chunk_sizes[0]))
    if resolution == settings.resolutions[0]:
        forms.append(("recurrent", 1))  # one RNN step per token, for reference
    return forms


def inference(settings: Settings, device: torch.device) -> Iterator[dict]:
    """Forward passes of image classifiers against resolution (position embeddings interpolated)."""
    shape, batch = settings.inference_shape, settings.inference_batch
    guard = _SeriesGuard(settings.max_call_s)
    models = {"ViT SDPA": vit_sdpa(shape, device).eval()}
    models.update({_label(v): lion_vision(shape, v, "raster", device).eval() for v in settings.inference_variants})
    for resolution in settings.resolutions:
        pixel_values = torch.randn(batch, 3, resolution, resolution, device=device)
        tokens = (resolution // shape.patch_size) ** 2 + 1
        case = {"group": "inference", "shape": shape.name, "resolution": resolution, "tokens": tokens, "batch": batch}
        for name, model in models.items():
            forms = [(None, None)] if name == "ViT SDPA" else _inference_forms(settings, resolution)
            for form, chunk_size in forms:
                series = f"{name}|{form}|{chunk_size}"
                reason = guard.reason(series, tokens)
                if reason is not None:
                    result = skipped(reason)
                else:
                    if form is not None:
                        model.set_attention_form(form, chunk_size)

                    def run(model=model):
                        with torch.inference_mode(), _autocast(settings, device):
                            model(pixel_values=pixel_values, interpolate_pos_encoding=True)

                    result = _measure(run, settings, device)
                guard.record(series, tokens, result)
                yield {**case, "model": name, "form": form, "chunk_size": chunk_size, **result}


def _operator_inputs(settings: Settings, length: int, device: torch.device, generator: torch.Generator):
    shape = (settings.operator_batch, settings.operator_heads, length, settings.operator_head_dim)

    def tensor(*size, low=0.0):
        t = torch.rand(*size, generator=generator).add_(low).to(device=device, dtype=torch.bfloat16)
        return t.requires_grad_()

    # Positive features, as after LION's feature maps, keep the row-sum normaliser away from zero.
    q, k = tensor(*shape, low=0.1), tensor(*shape, low=0.1)
    v = tensor(*shape, low=-0.5)
    grad = torch.randn(*shape, generator=generator).to(device=device, dtype=torch.bfloat16)
    return q, k, v, grad


def operator(settings: Settings, device: torch.device) -> Iterator[dict]:
    """The attention operator alone, forward + backward, against ``F.scaled_dot_product_attention``."""
    chunk = settings.chunk_sizes[0]
    configs = [("parallel", None, "auto"), ("chunk", chunk, "auto"), ("recurrent", chunk, "auto")]
    yield from _operator(settings, device, "operator", settings.operator_lengths, configs)


def long_operator(settings: Settings, device: torch.device) -> Iterator[dict]:
    """The operator at long sequences, forward + backward: the chunk form on the fused kernels (the "auto"
    backend, where they run) and on PyTorch, against SDPA."""
    chunk = settings.long_chunk_size
    configs = [("chunk", chunk, "auto"), ("chunk", chunk, "pytorch")]
    yield from _operator(settings, device, "long_operator", settings.long_operator_lengths, configs)


def _operator(settings, device, group, lengths, configs) -> Iterator[dict]:
    guard = _SeriesGuard(settings.max_call_s)
    batch, heads, head_dim = settings.operator_batch, settings.operator_heads, settings.operator_head_dim
    generator = torch.Generator(device="cpu").manual_seed(0)
    for length in lengths:
        q, k, v, grad = _operator_inputs(settings, length, device, generator)
        scale = head_dim**-0.5
        decay_logit = torch.randn(1, heads, 1, generator=generator).add_(3).to(device).requires_grad_()
        gate = torch.randn(batch, heads, length, generator=generator).add_(3).to(device).requires_grad_()
        case = {"group": group, "seq_len": length, "batch": batch, "heads": heads, "head_dim": head_dim}

        def sdpa():
            out = F.scaled_dot_product_attention(q, k, v)
            torch.autograd.grad(out, (q, k, v), grad)

        runs = [("SDPA", None, None, None, None, sdpa)]
        for variant in ("lit", "d", "s"):
            for form, chunk_size, backend in configs:

                def lion(variant=variant, form=form, chunk_size=chunk_size, backend=backend):
                    params = (q, k, v)
                    if variant == "lit":
                        log_decays = None
                    elif variant == "d":
                        log_decays = [F.logsigmoid(decay_logit).expand(1, heads, length)]
                        params += (decay_logit,)
                    else:
                        log_decays = [F.logsigmoid(gate)]
                        params += (gate,)
                    # As the models call it: the value checks (check_values=True) read a flag on the host, a
                    # sync per call that the models' decays, valid by construction, do not need.
                    out = lion_attention(
                        q, k, v, log_decays, scale=scale, form=form, chunk_size=chunk_size or 64, normalize=True,
                        backend=backend, check_values=False,
                    )
                    torch.autograd.grad(out, params, grad)

                runs.append((_label(variant), variant, form, chunk_size, backend, lion))
        for name, variant, form, chunk_size, backend, fn in runs:
            series = f"{name}|{form}|{backend}"
            reason = guard.reason(series, length)
            result = skipped(reason) if reason is not None else _measure(fn, settings, device)
            guard.record(series, length, result)
            record = {**case, "model": name, "variant": variant, "form": form, "chunk_size": chunk_size, **result}
            if backend not in (None, "auto"):
                record["backend"] = backend
            yield record


def long_inference(settings: Settings, device: torch.device) -> Iterator[dict]:
    """ViT-B/16 inference at high resolution: timm's ViT (when timm imports) and transformers' ViT against the
    chunk form (fused kernels where they run) and the recurrent form of LION-LIT/D/S; time and peak memory."""
    shape, batch, chunk = settings.inference_shape, settings.inference_batch, settings.long_chunk_size
    guard = _SeriesGuard(settings.max_call_s)
    lions = {_label(v): lion_vision(shape, v, "raster", device).eval() for v in settings.inference_variants}
    for resolution in settings.long_resolutions:
        pixel_values = torch.randn(batch, 3, resolution, resolution, device=device)
        tokens = (resolution // shape.patch_size) ** 2 + 1
        case = {"group": "long_inference", "shape": shape.name, "resolution": resolution, "tokens": tokens,
                "batch": batch}  # fmt: skip
        timm = timm_vit(shape, device, image_size=resolution).eval() if timm_available() else None
        baselines = {"timm ViT": timm, "ViT SDPA": vit_sdpa(shape, device).eval()}
        runs = [(name, model, None, None) for name, model in baselines.items()]
        runs += [(name, model, form, chunk) for name, model in lions.items() for form in ("chunk", "recurrent")]
        for name, model, form, chunk_size in runs:
            series = f"{name}|{form}"
            reason = guard.reason(series, tokens)
            if model is None:
                result = skipped("timm is not installed")
            elif reason is not None:
                result = skipped(reason)
            else:
                if form is not None:
                    model.set_attention_form(form, chunk_size)
                # timm's model is built at this resolution; the others interpolate their position embeddings.
                inputs = {"pixel_values": pixel_values}
                if name != "timm ViT":
                    inputs["interpolate_pos_encoding"] = True

                def run(model=model, inputs=inputs):
                    with torch.inference_mode(), _autocast(settings, device):
                        model(**inputs)

                result = _measure(run, settings, device)
            guard.record(series, tokens, result)
            yield {**case, "model": name, "form": form, "chunk_size": chunk_size, **result}
        del baselines, runs


GROUPS = {
    "vision": vision_training,
    "mlm": mlm_training,
    "inference": inference,
    "operator": operator,
    "compiled": compiled_training,
    "compiled_mlm": compiled_mlm_training,
    "long_operator": long_operator,
    "long_inference": long_inference,
    "long_mlm": long_mlm_training,
}
