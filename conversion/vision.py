"""Original DeiT-based LION image classifiers (``{"model", "epoch", "args"}`` .pth) -> LionForImageClassification.

The model's hyper-parameters are the original ``Lion_VisionTransformer(...)`` constructor arguments. They are
gathered, later sources winning, from: the registered model named by ``args.model`` (``lion_tiny_patch16_224``
...), the checkpoint's own ``args`` (the training command line), a JSON of constructor arguments, and flags.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

from lion_hf import PRESETS, LionConfig, LionForImageClassification
from lion_hf.modeling.lion_attention import check_choice

from .pipeline import ConversionResult, load_weights, read_json_object, run_conversion
from .state_dict import Source

SOURCE_FORMAT = "deit-lion-vision"
MASK_TYPES = {"Lit": "lit", "Decay": "d", "Selective": "s"}
ORDERS = {"Normal": "raster", "S": "snake"}
FORMATS = {"Attention": "parallel", "Chunk": "chunk", "RNN": "recurrent"}

CONSTRUCTOR_ARGUMENTS = (
    "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
    "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "norm_layer_eps",
    "mask_type", "format", "order", "chunk_size", "pos_emb", "cls_tok",
)  # fmt: skip
REQUIRED = (
    "img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_classes", "mask_type", "order", "pos_emb",
    "cls_tok",
)  # fmt: skip
# What the original code fixes for every model it registers (lion_*_patch16_224). These are also the defaults for
# arguments no source gives: the bare constructor's qkv_bias=False and LayerNorm eps 1e-5 serve no registered
# model; the weights reveal a wrong qkv_bias, a JSON or --norm-layer-eps sets another eps.
REGISTERED = dict(patch_size=16, mlp_ratio=4, qkv_bias=True, norm_layer_eps=1e-6)
DEFAULTS = dict(
    in_chans=3, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, format="Attention",
    chunk_size=32, **REGISTERED,
)  # fmt: skip
REGISTERED_MODELS = {
    name: dict(
        embed_dim=p["hidden_size"], depth=p["num_hidden_layers"], num_heads=p["num_attention_heads"], **REGISTERED
    )
    for name, p in PRESETS.items()
    if p["modality"] == "vision"
}
# The training script's flags (args.<name>) and the constructor argument each becomes.
FROM_TRAINING_ARGS = {
    "input_size": "img_size", "nb_classes": "num_classes", "mask_type": "mask_type", "order": "order",
    "format": "format", "chunk_size": "chunk_size", "pos_emb": "pos_emb", "cls_tok": "cls_tok", "drop": "drop_rate",
    "drop_path": "drop_path_rate",
}  # fmt: skip
# Original parameter names of the decay of each path: a_i along the first (row-snake or raster) order, a2_i
# along the column snake.
PATH_PARAMETERS = ("a_i", "a2_i")
RENAMES = (
    (r"lion\.embeddings\.cls_token", r"cls_token"),
    (r"lion\.embeddings\.position_embeddings", r"pos_embed"),
    (r"lion\.embeddings\.patch_embeddings\.projection\.(\w+)", r"patch_embed.proj.\1"),
    (r"lion\.encoder\.layer\.(\d+)\.layernorm_before\.(\w+)", r"blocks.\1.norm1.\2"),
    (r"lion\.encoder\.layer\.(\d+)\.layernorm_after\.(\w+)", r"blocks.\1.norm2.\2"),
    (r"lion\.encoder\.layer\.(\d+)\.attention\.(qkv|proj)\.(\w+)", r"blocks.\1.attn.\2.\3"),
    (r"lion\.encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.(\w+)", r"blocks.\1.mlp.\2.\3"),
    (r"lion\.layernorm\.(\w+)", r"norm.\1"),
    (r"classifier\.(\w+)", r"head.\1"),
)


def read_constructor_json(path: str | Path) -> dict:
    """Constructor arguments from a JSON file: either the arguments themselves or ``{"constructor": {...}}``."""
    return read_json_object(path, "constructor", "Lion_VisionTransformer arguments")


def original_arguments(
    training_args: argparse.Namespace | Mapping | None = None,
    constructor: Mapping | None = None,
    overrides: Mapping | None = None,
) -> dict:
    """The complete ``Lion_VisionTransformer`` arguments of the original model.

    ``overrides`` are constructor arguments too, plus ``model`` (a registered model name).
    """
    training_args = dict(vars(training_args) if isinstance(training_args, argparse.Namespace) else training_args or {})
    constructor, overrides = dict(constructor or {}), dict(overrides or {})
    unknown = sorted(set(constructor) - set(CONSTRUCTOR_ARGUMENTS))
    if unknown:
        raise ValueError(
            f"Unknown Lion_VisionTransformer argument(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(CONSTRUCTOR_ARGUMENTS)}."
        )
    model_name = overrides.pop("model", None) or training_args.get("model")
    arguments = dict(DEFAULTS)
    arguments.update(REGISTERED_MODELS.get(model_name, {}))
    arguments.update({FROM_TRAINING_ARGS[k]: v for k, v in training_args.items() if k in FROM_TRAINING_ARGS})
    arguments.update(constructor)
    arguments.update(overrides)
    missing = [name for name in REQUIRED if arguments.get(name) is None]
    if missing:
        registered = ", ".join(REGISTERED_MODELS)
        if model_name in REGISTERED_MODELS:
            why = ""
        elif model_name:
            why = f" (the model name {model_name!r} is not a registered one: {registered})"
        else:
            why = f" (no model name is given; registered ones: {registered})"
        raise ValueError(
            f"Cannot tell the original model's {', '.join(missing)}{why}. Give the Lion_VisionTransformer arguments "
            "as JSON (--original-config, e.g. the run's NAME.json) or as flags (--model, --embed-dim, --depth, "
            "--num-heads, --patch-size, --img-size, --num-classes, --mask-type, --order, --pos-emb, --cls-tok)."
        )
    check_choice("mask_type", arguments["mask_type"], MASK_TYPES)
    check_choice("order", arguments["order"], ORDERS)
    check_choice("format", arguments["format"], FORMATS)
    if arguments["qk_scale"] is not None:
        raise ValueError(
            f"qk_scale={arguments['qk_scale']!r} is not supported: LION models scale scores by head_dim ** -0.5 "
            "(qk_scale=None)."
        )
    return arguments


def lion_config(arguments: Mapping) -> LionConfig:
    """The LionConfig of an original model given its complete constructor ``arguments``."""
    embed_dim = arguments["embed_dim"]
    return LionConfig(
        modality="vision",
        variant=MASK_TYPES[arguments["mask_type"]],
        patch_order=ORDERS[arguments["order"]],
        attention_form=FORMATS[arguments["format"]],
        chunk_size=arguments["chunk_size"],
        hidden_size=embed_dim,
        num_hidden_layers=arguments["depth"],
        num_attention_heads=arguments["num_heads"],
        intermediate_size=int(embed_dim * arguments["mlp_ratio"]),
        hidden_act="gelu",
        hidden_dropout_prob=arguments["drop_rate"],
        # The original never drops attention scores (its attn_drop_rate is unused).
        attention_probs_dropout_prob=0.0,
        drop_path_rate=arguments["drop_path_rate"],
        layer_norm_eps=arguments["norm_layer_eps"],
        image_size=arguments["img_size"],
        patch_size=arguments["patch_size"],
        num_channels=arguments["in_chans"],
        qkv_bias=arguments["qkv_bias"],
        use_position_embeddings=arguments["pos_emb"],
        pooling="cls" if arguments["cls_tok"] else "mean",
        num_labels=arguments["num_classes"],
    )


def source_for(target: str, num_paths: int) -> Source:
    """The original tensor(s) behind the LION tensor ``target``."""
    for pattern, template in RENAMES:
        match = re.fullmatch(pattern, target)
        if match:
            return Source((match.expand(template),))
    match = re.fullmatch(r"lion\.encoder\.layer\.(\d+)\.attention\.decay_logits", target)
    if match:
        return Source(tuple(f"blocks.{match[1]}.attn.{p}" for p in PATH_PARAMETERS[:num_paths]), "stack")
    match = re.fullmatch(r"lion\.encoder\.layer\.(\d+)\.attention\.decay_gate\.(\w+)", target)
    if match:
        return Source(tuple(f"blocks.{match[1]}.attn.{p}.{match[2]}" for p in PATH_PARAMETERS[:num_paths]), "cat")
    raise KeyError(f"No original vision parameter is known for {target!r}.")


def split_checkpoint(checkpoint) -> tuple[dict, argparse.Namespace | None]:
    """The state dict and training args of a DeiT checkpoint."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"Not a DeiT-style LION checkpoint: expected a dict with 'model' (the state dict), 'epoch' and 'args'; "
            f"found {found}."
        )
    return dict(checkpoint["model"]), checkpoint.get("args")


def build_model(checkpoint, constructor: Mapping | None = None, overrides: Mapping | None = None):
    state, training_args = split_checkpoint(checkpoint)
    arguments = original_arguments(training_args, constructor, overrides)
    config = lion_config(arguments)
    described = ", ".join(
        f"{name}={arguments[name]!r}" for name in ("mask_type", "order", "pos_emb", "depth", "embed_dim")
    )
    return load_weights(
        LionForImageClassification(config),
        state,
        lambda target: source_for(target, config.num_paths),
        described_as=f"the original model given by its arguments ({described}, ...)",
    )


def convert_vision(
    checkpoint: str | Path,
    output: str | Path,
    *,
    original_config: str | Path | Mapping | None = None,
    overrides: Mapping | None = None,
    **options,
) -> ConversionResult:
    """Convert an original LION image classifier into a Hub folder at ``output``.

    ``original_config``: the constructor arguments (a dict, or a JSON file as the fixtures' NAME.json);
    ``overrides``: constructor arguments (and ``model``) that win over everything else. ``options`` (``verify``,
    ``tolerance``, ``trust_checkpoint``, ``overwrite``, ``progress``) are those of
    :func:`~lion_hf.conversion.pipeline.run_conversion`; ``verify`` names an io safetensors file whose
    ``pixel_values`` must give its ``logits`` (and ``pooled_features``) in every form.
    """
    constructor = original_config
    read = []  # the output must not contain the JSON either
    if original_config is not None and not isinstance(original_config, Mapping):
        constructor = read_constructor_json(original_config)
        read.append(original_config)
    return run_conversion(
        checkpoint,
        output,
        lambda loaded: build_model(loaded, constructor, overrides),
        command="vision",
        source_format=SOURCE_FORMAT,
        inputs=read,
        **options,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vision`` subcommand's own flags (constructor arguments); the shared ones come from the CLI."""
    parser.add_argument(
        "--original-config",
        metavar="JSON",
        help="Lion_VisionTransformer arguments of the run, as a JSON object or {'constructor': {...}} (NAME.json)",
    )
    shape = parser.add_argument_group("original model arguments (override the checkpoint's args and the JSON)")
    shape.add_argument("--model", choices=sorted(REGISTERED_MODELS), help="a registered original model (its shape)")
    for flag, kind in (
        ("img-size", int), ("patch-size", int), ("in-chans", int), ("embed-dim", int), ("depth", int),
        ("num-heads", int), ("mlp-ratio", float), ("num-classes", int), ("chunk-size", int),
        ("norm-layer-eps", float), ("drop-rate", float), ("drop-path-rate", float),
    ):  # fmt: skip
        shape.add_argument(f"--{flag}", type=kind)
    shape.add_argument("--mask-type", choices=list(MASK_TYPES))
    shape.add_argument("--order", choices=list(ORDERS))
    shape.add_argument("--format", choices=list(FORMATS), help="the attention form the converted model starts in")
    for flag in ("pos-emb", "cls-tok", "qkv-bias"):
        shape.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None)


def overrides_from(args: argparse.Namespace) -> dict:
    names = ("model",) + CONSTRUCTOR_ARGUMENTS
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
