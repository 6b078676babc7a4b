"""The models under test and their softmax baselines, built with matching shapes from one shape description."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BertConfig, BertForMaskedLM, ViTConfig, ViTForImageClassification

from lion_hf import LionConfig, LionForImageClassification, LionForMaskedLM


@dataclass(frozen=True)
class EncoderShape:
    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class VisionShape(EncoderShape):
    image_size: int
    patch_size: int
    num_labels: int


@dataclass(frozen=True)
class TextShape(EncoderShape):
    vocab_size: int
    max_position_embeddings: int


def _encoder_kwargs(shape: EncoderShape) -> dict:
    return dict(
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
    )


def _vision_kwargs(shape: VisionShape) -> dict:
    return dict(
        _encoder_kwargs(shape), image_size=shape.image_size, patch_size=shape.patch_size, num_labels=shape.num_labels
    )


def _text_kwargs(shape: TextShape) -> dict:
    return dict(
        _encoder_kwargs(shape), vocab_size=shape.vocab_size, max_position_embeddings=shape.max_position_embeddings
    )


def _build(model_class, config, device: torch.device):
    # Initialising on the target device avoids seconds of CPU-side random init per model.
    with torch.device(device):
        if model_class in (ViTForImageClassification, BertForMaskedLM):
            return model_class._from_config(config, attn_implementation="sdpa")
        return model_class(config)


def lion_vision(shape: VisionShape, variant: str, order: str, device: torch.device, **overrides):
    config = LionConfig(modality="vision", variant=variant, patch_order=order, **_vision_kwargs(shape), **overrides)
    return _build(LionForImageClassification, config, device)


def vit_sdpa(shape: VisionShape, device: torch.device):
    return _build(ViTForImageClassification, ViTConfig(qkv_bias=True, **_vision_kwargs(shape)), device)


def lion_mlm(shape: TextShape, variant: str, device: torch.device, **overrides):
    config = LionConfig(modality="text", variant=variant, **_text_kwargs(shape), **overrides)
    return _build(LionForMaskedLM, config, device)


def bert_sdpa(shape: TextShape, device: torch.device):
    return _build(BertForMaskedLM, BertConfig(**_text_kwargs(shape)), device)


def timm_vit(shape: VisionShape, image_size: int, device: torch.device):
    """timm's ViT (fused qkv, SDPA) of this shape at ``image_size``, or ``None`` where timm is not installed."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    with torch.device(device):
        model = VisionTransformer(
            img_size=image_size, patch_size=shape.patch_size, embed_dim=shape.hidden_size,
            depth=shape.num_hidden_layers, num_heads=shape.num_attention_heads,
            mlp_ratio=shape.intermediate_size / shape.hidden_size, num_classes=shape.num_labels,
        )  # fmt: skip
    return model.eval()
