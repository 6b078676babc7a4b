"""Original M2-BERT/Composer LION checkpoints (MLM and GLUE .pt) -> LionForMaskedLM / LionForSequenceClassification.

The BERT config comes from the checkpoint's own ``state.integrations.huggingface.model.config.content``; a JSON
config and flags override its entries. ``arch_type`` (lion-lit / lion-d / lion-s) picks the variant.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from lion_hf import LionConfig, LionForMaskedLM, LionForSequenceClassification

from .pipeline import ConversionResult, load_weights, read_json_object, run_conversion
from .state_dict import Source

SOURCE_FORMAT = "composer-m2bert-lion"
ARCH_TYPES = {"lion-lit": "lit", "lion-d": "d", "lion-s": "s"}
TASKS = {"masked-lm": LionForMaskedLM, "sequence-classification": LionForSequenceClassification}
PREFIX = "model."
# The original BertConfig's defaults, for entries a config leaves out (arch_type has none worth keeping: the
# original's default is softmax attention).
BERT_DEFAULTS = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0, classifier_dropout=None,
    position_embedding_type="absolute", layer_norm_after=False,
)  # fmt: skip
# BertConfig entries that carry over to LionConfig unchanged.
SHARED_ENTRIES = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "pad_token_id", "classifier_dropout", "layer_norm_after", "problem_type",
)  # fmt: skip
# Buffers the original BertEmbeddings saves; LION computes them.
BUFFERS = re.compile(r"model\.bert\.embeddings\.(position_ids|token_type_ids)")
# Each decoder tensor of the MLM head and the tensor it is tied to.
TIED = {
    "cls.predictions.decoder.weight": "model.bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "model.cls.predictions.bias",
}


def read_bert_config_json(path: str | Path) -> dict:
    """A BERT config from JSON: the config itself (e.g. a config.json) or ``{"bert_config": {...}}``."""
    return read_json_object(path, "bert_config", "BERT config entries")


def split_checkpoint(checkpoint) -> tuple[dict, dict | None]:
    """The ``model.``-prefixed state dict of a Composer checkpoint and its stored BERT config (if any)."""
    state = checkpoint.get("state") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not isinstance(state.get("model"), Mapping):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"Not a Composer checkpoint: expected {{'state': {{'model': state_dict, ...}}, ...}}; found {found}."
        )
    weights = dict(state["model"])
    if not any(key.startswith(PREFIX) for key in weights):
        raise ValueError(
            f"The Composer state dict has no {PREFIX!r}-prefixed keys (found e.g. {sorted(weights)[:3]}); it does not "
            "hold a HuggingFace BERT model."
        )
    try:
        stored = state["integrations"]["huggingface"]["model"]["config"]["content"]
    except (KeyError, TypeError):
        stored = None
    return weights, stored


def bert_config(stored: Mapping | None, json_config: Mapping | None = None, overrides: Mapping | None = None) -> dict:
    """The BERT config: the original defaults, then the checkpoint's, the JSON's and the flags' entries."""
    config = dict(BERT_DEFAULTS)
    for layer in (stored, json_config, overrides):
        config.update(layer or {})
    if "arch_type" not in config:
        raise ValueError(
            f"The BERT config has no arch_type; give it with --arch-type (allowed: {', '.join(map(repr, ARCH_TYPES))})."
        )
    if config["arch_type"] not in ARCH_TYPES:
        raise ValueError(f"Unknown arch_type {config['arch_type']!r}; allowed: {', '.join(map(repr, ARCH_TYPES))}.")
    if config["position_embedding_type"] != "absolute":
        raise ValueError(
            f"position_embedding_type {config['position_embedding_type']!r} is not supported; allowed: 'absolute'."
        )
    num_labels = config.get("num_labels")
    if num_labels is not None and len(config.get("id2label") or {}) != num_labels:
        config["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
        config.pop("label2id", None)
    return config


def detect_task(weights: Mapping[str, torch.Tensor]) -> str:
    """``masked-lm`` (an MLM head under ``model.cls.``) or ``sequence-classification`` (``model.classifier.``)."""
    heads = [
        task
        for task, prefix in (("masked-lm", "model.cls."), ("sequence-classification", "model.classifier."))
        if any(key.startswith(prefix) for key in weights)
    ]
    if len(heads) != 1:
        raise ValueError(
            f"Cannot tell the task from the checkpoint's heads ({' and '.join(heads) or 'none found'}: expected "
            "model.cls.* for BertForMaskedLM or model.classifier.* for BertForSequenceClassification); pass "
            f"--task ({', '.join(TASKS)})."
        )
    return heads[0]


def decoder_is_tied(weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether the MLM decoder equals the tensors it is normally tied to (or is left out, as tied copies are)."""

    def same(key, partner):
        own = weights.get(PREFIX + key)
        other = weights.get(partner)
        return own is None or (other is not None and own.shape == other.shape and torch.equal(own, other))

    return all(same(key, partner) for key, partner in TIED.items())


def source_for(target: str, weights: Mapping[str, torch.Tensor], tied: bool) -> Source:
    """The original tensor behind the LION tensor ``target``."""
    if target in TIED and (tied or PREFIX + target not in weights):
        return Source((TIED[target],))
    if not target.startswith("lion."):
        return Source((PREFIX + target,))
    name = target[len("lion.") :]
    if name.endswith(".attention.self.decay_logits"):
        # One decay logit per head, (H,), becomes the (paths=1, H) parameter.
        return Source((f"{PREFIX}bert.{name.removesuffix('.decay_logits')}.ai",), "stack")
    return Source((f"{PREFIX}bert.{name.replace('.attention.self.decay_gate.', '.attention.self.Wa_i.')}",))


def lion_config(config: Mapping, tie_word_embeddings: bool) -> LionConfig:
    shared = {name: config[name] for name in SHARED_ENTRIES if name in config}
    labels = {name: config[name] for name in ("id2label", "label2id") if config.get(name)}
    return LionConfig(
        modality="text",
        variant=ARCH_TYPES[config["arch_type"]],
        tie_word_embeddings=tie_word_embeddings,
        **shared,
        **labels,
    )


def build_model(checkpoint, json_config: Mapping | None = None, overrides: Mapping | None = None, task=None):
    weights, stored = split_checkpoint(checkpoint)
    overrides = dict(overrides or {})
    config = bert_config(stored, json_config, overrides)
    if task is None:
        task = detect_task(weights)
    elif task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; allowed: {', '.join(map(repr, TASKS))}.")
    tied = decoder_is_tied(weights)
    model_class = TASKS[task]
    model = model_class(lion_config(config, tie_word_embeddings=tied))
    ignored = [key for key in weights if BUFFERS.fullmatch(key)]
    if tied:
        ignored += [PREFIX + key for key in TIED if PREFIX + key in weights]
    described = ", ".join(
        f"{name}={config[name]!r}" for name in ("arch_type", "layer_norm_after", "num_hidden_layers", "hidden_size")
    )
    return load_weights(
        model,
        weights,
        lambda target: source_for(target, weights, tied),
        ignored=ignored,
        described_as=f"{model_class.__name__} built from the BERT config ({described}, ...)",
    )


def convert_mlm(
    checkpoint: str | Path,
    output: str | Path,
    *,
    bert_config_json: str | Path | Mapping | None = None,
    overrides: Mapping | None = None,
    task: str | None = None,
    tokenizer: str | Path | None = None,
    **options,
) -> ConversionResult:
    """Convert an original LION MLM or GLUE checkpoint into a Hub folder at ``output``.

    ``bert_config_json``: a BERT config (dict or JSON file) whose entries win over the checkpoint's own;
    ``overrides``: config entries that win over both; ``task``: ``masked-lm`` or ``sequence-classification``
    (detected from the heads when left out); ``tokenizer``: a tokenizer folder saved with the model.
    ``options`` (``verify``, ``tolerance``, ``trust_checkpoint``, ``overwrite``, ``progress``) are those of
    :func:`~lion_hf.conversion.pipeline.run_conversion`; ``verify`` names an io safetensors file whose inputs
    must give its ``logits`` (and ``last_hidden_state``) in every form.
    """
    json_config = bert_config_json
    read = []  # the files and folders read besides the checkpoint: the output must not contain them
    if bert_config_json is not None and not isinstance(bert_config_json, Mapping):
        json_config = read_bert_config_json(bert_config_json)
        read.append(bert_config_json)
    loaded_tokenizer = None
    if tokenizer is not None:
        loaded_tokenizer = load_tokenizer(tokenizer)
        read.append(tokenizer)
    return run_conversion(
        checkpoint,
        output,
        lambda loaded: build_model(loaded, json_config, overrides, task),
        command="mlm",
        source_format=SOURCE_FORMAT,
        tokenizer=loaded_tokenizer,
        inputs=read,
        **options,
    )


def load_tokenizer(folder: str | Path):
    """The tokenizer saved in ``folder`` (a local folder only: conversion never downloads)."""
    from transformers import AutoTokenizer

    if not Path(folder).is_dir():
        what = "is not a folder" if Path(folder).exists() else "does not exist"
        raise FileNotFoundError(
            f"Tokenizer folder {str(folder)!r} {what}; --tokenizer takes a folder a tokenizer was saved to."
        )
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # transformers reports a folder without a usable tokenizer in several ways (OSError, ValueError, ...).
    except Exception as error:
        raise ValueError(f"Cannot load a tokenizer from the folder {str(folder)!r}: {error}") from error


OVERRIDE_FLAGS = (
    ("vocab-size", int), ("hidden-size", int), ("num-hidden-layers", int), ("num-attention-heads", int),
    ("intermediate-size", int), ("max-position-embeddings", int), ("type-vocab-size", int), ("num-labels", int),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mlm`` subcommand's own flags; the shared ones come from the CLI."""
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder to save with the model")
    parser.add_argument("--task", choices=list(TASKS), help="the head (default: detected from the checkpoint)")
    parser.add_argument(
        "--bert-config", metavar="JSON", help="BERT config entries (a config.json or {'bert_config': {...}})"
    )
    entries = parser.add_argument_group("BERT config entries (override the checkpoint's and the JSON's)")
    entries.add_argument("--arch-type", choices=list(ARCH_TYPES))
    entries.add_argument("--layer-norm-after", action=argparse.BooleanOptionalAction, default=None)
    for flag, kind in OVERRIDE_FLAGS:
        entries.add_argument(f"--{flag}", type=kind)


def overrides_from(args: argparse.Namespace) -> dict:
    names = ["arch_type", "layer_norm_after"] + [flag.replace("-", "_") for flag, _ in OVERRIDE_FLAGS]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
