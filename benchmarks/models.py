"""The models under test and their softmax baselines, built with matching shapes from one shape description."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, ViTConfig, ViTForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

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


def comma_separated(known, what: str = "models") -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma-separated list of names, each one of ``known`` (``what`` they are)."""

    def parse(text: str) -> list[str]:
        names = text.split(",")
        unknown = [name for name in names if name not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {', '.join(known)}")
        return names

    return parse


def timm_available() -> bool:
    """timm is an optional baseline: measured where it is installed (the GPU machines), never required."""
    return importlib.util.find_spec("timm") is not None


class TimmClassifier(nn.Module):
    """timm's ``VisionTransformer`` behind the interface of transformers' classifiers: ``(pixel_values, labels)``
    in, an output with ``.loss`` and ``.logits`` out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, labels=None):
        logits = self.model(pixel_values)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


def timm_vit(shape: VisionShape, device: torch.device, image_size: int | None = None):
    """timm's ViT (fused qkv projection, ``F.scaled_dot_product_attention``); at the ViT-B/16 shape this is
    ``vit_base_patch16_224``. The fastest softmax vision model a user would pick. ``image_size``: built for that
    resolution (its position table), default the shape's."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.device(device):
        model = VisionTransformer(
            img_size=image_size or shape.image_size,
            patch_size=shape.patch_size,
            num_classes=shape.num_labels,
            embed_dim=shape.hidden_size,
            depth=shape.num_hidden_layers,
            num_heads=shape.num_attention_heads,
            mlp_ratio=shape.intermediate_size / shape.hidden_size,
            qkv_bias=True,
        )
    return TimmClassifier(model)
