"""Vision LION models against a float64 reference forward (the naive operator), plus heads, processor and bad input."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FORMS, deit_eval_transform, randomized, some_images, tiny_vision_config
from PIL import Image

from lion_hf import (
    LionConfig,
    LionForImageClassification,
    LionForImageClassificationWithTeacher,
    LionForSequenceClassification,
    LionModel,
    distillation_loss,
    lion_image_processor,
    snake_orders,
)
from lion_hf.modeling.naive import naive_lion_attention


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol, rtol=tol)


# ------------------------------------------------------------------------------------ independent reference


def grid_snakes(rows: int, cols: int, prefix: int) -> tuple[list[int], list[int]]:
    """Row-wise and column-wise boustrophedons, built by walking the grid coordinate by coordinate."""
    row_walk, col_walk = [], []
    for r in range(rows):
        for c in range(cols) if r % 2 == 0 else reversed(range(cols)):
            row_walk.append(prefix + r * cols + c)
    for c in range(cols):
        for r in range(rows) if c % 2 == 0 else reversed(range(rows)):
            col_walk.append(prefix + r * cols + c)
    head = list(range(prefix))
    return head + row_walk, head + col_walk


def feature_map(x: torch.Tensor, variant: str) -> torch.Tensor:
    if variant == "lit":
        return F.elu(x) + 1
    x = F.silu(x) + 0.5
    return x / x.norm(dim=-1, keepdim=True)


def reference_forward(model, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The vision model in float64, from the formulas, with ``model``'s weights: last hidden state, pooled features."""
    config = model.config
    w = {k: v.double() for k, v in model.state_dict().items()}
    backbone = "lion." if any(k.startswith("lion.") for k in w) else ""
    d, heads = config.hidden_size, config.num_attention_heads
    head_dim = d // heads
    prefix = 2 if config.use_distillation_token else 1
    x = pixel_values.double()
    batch = x.shape[0]

    emb = backbone + "embeddings."
    projection = emb + "patch_embeddings.projection."
    patches = F.conv2d(x, w[projection + "weight"], w[projection + "bias"], stride=config.patch_size)
    rows, cols = patches.shape[-2:]
    tokens = [w[emb + "cls_token"]] + ([w[emb + "distillation_token"]] if prefix == 2 else [])
    h = torch.cat([t.expand(batch, 1, d) for t in tokens] + [patches.flatten(2).transpose(1, 2)], dim=1)
    if config.use_position_embeddings:
        table = w[emb + "position_embeddings"]
        side = config.image_size // config.patch_size
        grid = table[:, prefix:].reshape(1, side, side, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        h = h + torch.cat([table[:, :prefix], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, d)], dim=1)
    n = h.shape[1]

    if config.variant == "lit":
        walks = []
    elif config.patch_order == "snake":
        walks = list(grid_snakes(rows, cols, prefix))
    else:
        walks = [list(range(n))]

    def layer_norm(t, name):
        return F.layer_norm(t, (d,), w[name + ".weight"], w[name + ".bias"], config.layer_norm_eps)

    for i in range(config.num_hidden_layers):
        p = f"{backbone}encoder.layer.{i}."
        a_in = layer_norm(h, p + "layernorm_before")
        q, k, v = (a_in @ w[p + "attention.qkv.weight"].T + w[p + "attention.qkv.bias"]).view(
            batch, n, 3, heads, head_dim
        ).permute(2, 0, 3, 1, 4)
        q, k = feature_map(q, config.variant) * head_dim**-0.5, feature_map(k, config.variant)
        log_decays = None
        if walks:
            log_decays = []
            for path in range(len(walks)):
                if config.variant == "d":
                    decay = torch.sigmoid(w[p + "attention.decay_logits"][path]).view(1, heads, 1).expand(1, heads, n)
                else:
                    gate = a_in @ w[p + "attention.decay_gate.weight"].T + w[p + "attention.decay_gate.bias"]
                    gate = gate[..., path * heads : (path + 1) * heads]
                    decay = (1 - torch.sigmoid(gate)).transpose(1, 2).clone()
                    decay[..., :prefix] = 1.0  # special tokens pass everything on
                log_decays.append(decay.log())
        orders = [torch.tensor(walk) for walk in walks] if walks else None
        out = naive_lion_attention(q, k, v, log_decays, orders, normalize=True, eps=1e-6)
        out = out.transpose(1, 2).reshape(batch, n, d) @ w[p + "attention.proj.weight"].T + w[p + "attention.proj.bias"]
        h = h + out
        mlp = F.gelu(layer_norm(h, p + "layernorm_after") @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"])
        h = h + mlp @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"]

    h = layer_norm(h, backbone + "layernorm")
    pooled = h[:, 0] if config.pooling == "cls" else h.mean(dim=1)
    return {"last_hidden_state": h, "pooled": pooled}


# -------------------------------------------------------------------------------------------- snake orders


@pytest.mark.parametrize("rows, cols", [(5, 5), (7, 7), (3, 5), (6, 4), (1, 4), (4, 1)])
@pytest.mark.parametrize("prefix", [1, 2])
def test_snake_orders_match_grid_walks(rows, cols, prefix):
    expected = grid_snakes(rows, cols, prefix)
    got = snake_orders(rows, cols, prefix)
    for order, walk in zip(got, expected):
        assert order.tolist() == walk
        # consecutive patches of a snake are grid neighbours
        coords = [divmod(t - prefix, cols) for t in order[prefix:].tolist()]
        assert all(abs(r0 - r1) + abs(c0 - c1) == 1 for (r0, c0), (r1, c1) in zip(coords, coords[1:]))


# ------------------------------------------------------------------------------------ forms vs reference


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("order", ["raster", "snake"])
@pytest.mark.parametrize("variant", ["lit", "d", "s"])
def test_forms_match_float64_reference(variant, order, pooling):
    model = randomized(LionModel(tiny_vision_config(variant=variant, patch_order=order, pooling=pooling)))
    generator = torch.Generator().manual_seed(1)
    # the trained 4x4 grid, and a 6x4 grid through interpolated position embeddings and rebuilt snakes
    for height, width in [(16, 16), (24, 16)]:
        pixels = torch.randn(2, 3, height, width, generator=generator)
        reference = reference_forward(model, pixels)
        for form in FORMS:
            model.set_attention_form(form)
            with torch.no_grad():
                out = model(pixel_values=pixels, interpolate_pos_encoding=True)
            assert_close(out.last_hidden_state, reference["last_hidden_state"])
            assert_close(out.pooler_output, reference["pooled"])


def test_distillation_token_model_matches_reference():
    """With a distillation token both special tokens lead every path and pass decays on unchanged."""
    config = tiny_vision_config(variant="s", patch_order="snake", use_distillation_token=True, pooling="mean")
    model = randomized(LionForImageClassificationWithTeacher(config))
    pixels = torch.randn(2, 3, 20, 12, generator=torch.Generator().manual_seed(2))
    reference = reference_forward(model, pixels)
    w = {k: v.double() for k, v in model.state_dict().items()}
    cls_logits = reference["pooled"] @ w["cls_classifier.weight"].T + w["cls_classifier.bias"]
    distillation_logits = reference["last_hidden_state"][:, 1] @ w["distillation_classifier.weight"].T
    distillation_logits = distillation_logits + w["distillation_classifier.bias"]
    for form in FORMS:
        model.set_attention_form(form)
        with torch.no_grad():
            out = model(pixel_values=pixels, interpolate_pos_encoding=True)
        assert_close(out.cls_logits, cls_logits)
        assert_close(out.distillation_logits, distillation_logits)
        assert_close(out.logits, (cls_logits + distillation_logits) / 2)


# ------------------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize(
    "preset, width, heads",
    [("lion_tiny_patch16_224", 192, 3), ("lion_small_patch16_224", 384, 6), ("lion_base_patch16_224", 768, 12)],
)
@pytest.mark.parametrize("variant, order", [("lit", "raster"), ("d", "snake"), ("s", "snake")])
def test_presets_have_the_original_shapes(preset, width, heads, variant, order):
    config = LionConfig.from_preset(preset, variant=variant, patch_order=order, num_labels=1000)
    assert (config.modality, config.image_size, config.patch_size, config.num_hidden_layers) == ("vision", 224, 16, 12)
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (width, heads, 4 * width)
    assert config.qkv_bias and config.layer_norm_eps == 1e-6
    with torch.device("meta"):
        model = LionForImageClassification(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    layer = "lion.encoder.layer.11."
    assert shapes["lion.embeddings.patch_embeddings.projection.weight"] == (width, 3, 16, 16)
    assert shapes["lion.embeddings.position_embeddings"] == (1, 1 + 14 * 14, width)
    assert shapes[layer + "attention.qkv.weight"] == (3 * width, width)
    assert shapes[layer + "attention.qkv.bias"] == (3 * width,)
    assert shapes[layer + "mlp.fc1.weight"] == (4 * width, width)
    assert shapes["classifier.weight"] == (1000, width)
    paths = 2 if order == "snake" else 1
    decay = {"lit": 0, "d": paths * heads, "s": paths * heads * (width + 1)}[variant]
    if variant == "d":
        assert shapes[layer + "attention.decay_logits"] == (paths, heads)
    if variant == "s":
        assert shapes[layer + "attention.decay_gate.weight"] == (paths * heads, width)
    # DeiT's parameter count (patch embedding, class token, position table, 12 blocks, final norm, head) plus decays
    block = 4 * width + (3 * width * width + 3 * width) + (width * width + width) + 2 * (4 * width * width) + 5 * width
    deit = (3 * 256 * width + width) + width + 197 * width + 12 * block + 2 * width + (1000 * width + 1000)
    assert sum(p.numel() for p in model.parameters()) == deit + 12 * decay


# -------------------------------------------------------------------------------------------------- heads


def test_image_classification_losses_follow_vit():
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(4, 3, 16, 16, generator=generator)
    cases = {
        "regression": (1, torch.randn(4, generator=generator)),
        "single_label_classification": (3, torch.tensor([0, 2, 1, 2])),
        "multi_label_classification": (3, torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]])),
    }
    for problem, (num_labels, labels) in cases.items():
        model = LionForImageClassification(tiny_vision_config(num_labels=num_labels)).eval()
        out = model(pixel_values=pixels, labels=labels)
        assert model.config.problem_type == problem
        z = out.logits.detach().double()
        if problem == "regression":
            expected = ((z.squeeze(-1) - labels.double()) ** 2).mean()
        elif problem == "single_label_classification":
            expected = -(z - z.logsumexp(-1, keepdim=True))[torch.arange(4), labels].mean()
        else:
            p = torch.sigmoid(z)
            expected = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
        assert_close(out.loss.detach(), expected, tol=1e-6)


def _log_softmax(z):
    return z - z.logsumexp(-1, keepdim=True)


@pytest.mark.parametrize("distillation_type", ["hard", "soft"])
def test_distillation_loss_by_hand(distillation_type):
    config = tiny_vision_config(use_distillation_token=True, num_labels=5)
    model = LionForImageClassificationWithTeacher(config).train()
    generator = torch.Generator().manual_seed(4)
    pixels = torch.randn(3, 3, 16, 16, generator=generator)
    labels = torch.tensor([4, 0, 2])
    teacher = 3 * torch.randn(3, 5, generator=generator)
    alpha, tau = 0.3, 2.0
    out = model(pixel_values=pixels, labels=labels, teacher_logits=teacher, distillation_type=distillation_type,
                alpha=alpha, tau=tau)
    cls, dist, t = out.cls_logits.detach().double(), out.distillation_logits.detach().double(), teacher.double()
    base = -_log_softmax(cls)[torch.arange(3), labels].mean()
    if distillation_type == "hard":
        term = -_log_softmax(dist)[torch.arange(3), t.argmax(-1)].mean()
    else:
        log_pt, log_ps = _log_softmax(t / tau), _log_softmax(dist / tau)
        # DeiT: summed KL times tau^2, divided by batch x classes
        term = (log_pt.exp() * (log_pt - log_ps)).sum() * tau**2 / dist.numel()
    assert_close(out.loss.detach(), (1 - alpha) * base + alpha * term, tol=1e-6)
    torch.testing.assert_close(out.logits, (out.cls_logits + out.distillation_logits) / 2)
    cls_logits, distillation_logits = out.cls_logits, out.distillation_logits
    functional = distillation_loss(cls_logits, distillation_logits, labels, teacher, distillation_type, alpha, tau)
    assert_close(functional.detach(), (1 - alpha) * base + alpha * term, tol=1e-6)
    out.loss.backward()  # the teacher is a constant; both of the student's heads get gradients
    assert model.cls_classifier.weight.grad.abs().sum() > 0
    assert model.distillation_classifier.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ image processor + Hub


def test_image_processor_is_deit_eval_transform(data_dir):
    for size in (224, 64):
        processor = lion_image_processor(LionConfig.from_preset("lion_tiny_patch16_224", image_size=size))
        for path in some_images(data_dir, 3):
            with Image.open(path) as image:
                got = processor(image, return_tensors="pt")["pixel_values"][0].numpy()
                np.testing.assert_allclose(got, deit_eval_transform(image, size), atol=1e-5)


def test_models_do_not_write_processors_the_folder_writers_do(tmp_path):
    """As in transformers, save_pretrained saves a model; conversion, export and the training scripts add the
    processor (see test_conversion and test_remote_code)."""
    LionForImageClassification(tiny_vision_config()).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not (tmp_path / "preprocessor_config.json").exists()


def test_models_without_a_standard_processor():
    text = LionConfig(modality="text", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    with pytest.raises(ValueError, match="modality='vision'"):
        lion_image_processor(text)
    with pytest.raises(ValueError, match="num_channels=1"):
        lion_image_processor(tiny_vision_config(num_channels=1))


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_rejected_clearly():
    model = LionForImageClassification(tiny_vision_config()).eval()
    with pytest.raises(ValueError, match=r"num_channels=3.*\(2, 1, 16, 16\)"):
        model(pixel_values=torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="24x16 does not match config.image_size=16.*interpolate_pos_encoding=True"):
        model(pixel_values=torch.randn(1, 3, 24, 16))
    with pytest.raises(ValueError, match="18x16 is not divisible by patch_size=4"):
        model(pixel_values=torch.randn(1, 3, 18, 16), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match=r"patch_size \(5\) must divide image_size \(16\)"):
        tiny_vision_config(patch_size=5)
    with pytest.raises(ValueError, match="needs pixel_values"):
        model.lion(input_ids=torch.ones(1, 4, dtype=torch.long))


def test_modality_mismatches_are_rejected():
    text = LionConfig(modality="text", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    with pytest.raises(ValueError, match="LionForImageClassification needs config.modality='vision', got 'text'"):
        LionForImageClassification(text)
    with pytest.raises(ValueError, match="LionForImageClassificationWithTeacher needs config.modality='vision'"):
        LionForImageClassificationWithTeacher(text)
    with pytest.raises(ValueError, match="LionForSequenceClassification needs config.modality='text', got 'vision'"):
        LionForSequenceClassification(tiny_vision_config())
    with pytest.raises(ValueError, match="pixel_values given to a text LionModel"):
        LionModel(text)(pixel_values=torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="use_distillation_token=True applies to vision models only"):
        LionConfig(modality="text", use_distillation_token=True)


def test_distillation_misuse_is_rejected():
    with pytest.raises(ValueError, match="needs config.use_distillation_token=True"):
        LionForImageClassificationWithTeacher(tiny_vision_config())
    model = LionForImageClassificationWithTeacher(tiny_vision_config(use_distillation_token=True))
    pixels, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="needs teacher_logits"):
        model(pixel_values=pixels, labels=labels)
    with pytest.raises(ValueError, match=r"teacher_logits shape \(2, 4\).*\(2, 3\)"):
        model(pixel_values=pixels, labels=labels, teacher_logits=torch.randn(2, 4))
    with pytest.raises(ValueError, match="Unknown distillation_type 'medium'; allowed: hard, soft"):
        model(pixel_values=pixels, labels=labels, teacher_logits=torch.randn(2, 3), distillation_type="medium")


def _live_activations_at_mlp_entry(blocks: torch.nn.Module, mlps: list, x: torch.Tensor) -> list[int]:
    """How many distinct tensors of the residual stream's shape are alive as each block's MLP starts."""
    counts = []

    def count(module, args):
        # type(), not isinstance(): the latter reads __class__, which a dead weak proxy among the objects raises on.
        storages = {
            o.untyped_storage().data_ptr()
            for o in gc.get_objects()
            if issubclass(type(o), torch.Tensor) and o.shape == x.shape
        }  # fmt: skip
        counts.append(len(storages))

    handles = [mlp.register_forward_pre_hook(count) for mlp in mlps]
    try:
        with torch.no_grad():
            blocks(x)
    finally:
        for handle in handles:
            handle.remove()
    return counts


class _TimmStyleBlock(torch.nn.Module):
    """The residual structure of timm's ViT block (token mixing stood in for by a linear map)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.attn = torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def test_vision_layers_hold_no_more_activations_through_the_mlp_than_timms_block():
    """The MLP is where a ViT's inference peaks: a layer must not keep its attention output alive through it."""
    config = tiny_vision_config(num_hidden_layers=3)
    encoder = randomized(LionModel(config)).eval().encoder
    x = torch.randn(2, (config.image_size // config.patch_size) ** 2 + 1, config.hidden_size)
    lion = _live_activations_at_mlp_entry(encoder, [layer.mlp for layer in encoder.layer], x)
    reference = torch.nn.Sequential(*[_TimmStyleBlock(config.hidden_size) for _ in range(3)])
    timm_like = _live_activations_at_mlp_entry(reference, [block.mlp for block in reference], x)
    assert len(lion) == len(timm_like) == 3
    assert lion == timm_like
