"""Model cards: the README.md of every folder the project writes, rendered from ``model_cards/lion.md``.

The metadata (licence, ``library_name``, ``pipeline_tag``, tags, datasets, base model, ``model-index``) is a
``huggingface_hub.ModelCardData``; the evaluation results come from the metrics JSON that transformers' example
scripts (and ours) write: a flat object of numbers keyed ``eval_<metric>`` (``eval_accuracy``, ``eval_loss``, ...),
plus ``perplexity`` for masked language models, as in ``eval_results.json`` or ``all_results.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .modeling.configuration_lion import LionConfig
from .modeling.modeling_lion import TEXT_AUTO_CLASSES, VISION_AUTO_CLASSES

TEMPLATE = "lion.md"
CODE_LICENSE = "apache-2.0"
VARIANT_NAMES = {"lit": "LION-LIT", "d": "LION-D", "s": "LION-S"}
VARIANT_DESCRIPTIONS = {
    "lit": "plain linear attention, no decay (the paper's LION-🔥).",
    "d": "a learned decay per head, so the mask is `a^|i-j|`.",
    "s": "a selective decay per token and head, from a gate on the layer input.",
}
# The task each head serves, as the Hub names it (the card's pipeline_tag); the Hub has none for multiple choice.
PIPELINE_TAGS = {
    "LionForMaskedLM": "fill-mask",
    "LionForSequenceClassification": "text-classification",
    "LionForTokenClassification": "token-classification",
    "LionForQuestionAnswering": "question-answering",
    "LionForImageClassification": "image-classification",
    "LionForImageClassificationWithTeacher": "image-classification",
}
BACKBONE_PIPELINE_TAGS = {"text": "feature-extraction", "vision": "image-feature-extraction"}
# The original LION repository (github.com/LIONS-EPFL/LION, LICENSE.txt, read at commit 32a0136) puts its code
# *and* EPFL's pre-trained weights under one non-commercial agreement; converted weights come from that code.
ORIGINAL_LICENSE_NAME = "epfl-lion-non-commercial"
ORIGINAL_LICENSE_LINK = "https://github.com/LIONS-EPFL/LION/blob/main/LICENSE.txt"
ORIGINAL_LICENSE_TERMS = (
    "converted from a checkpoint of the original LION code, whose repository puts its code and EPFL's pre-trained "
    f"LION weights under [EPFL's Non-Commercial License Agreement]({ORIGINAL_LICENSE_LINK}) (v1.0, Feb 2025): "
    "academic, non-commercial use only (clauses 1, 2, 6), and no distribution of the Program or of derivatives "
    "without EPFL's prior written permission (clause 6). Publishing EPFL's weights needs that permission. Whether "
    "weights you trained yourself with the original code are your own results (clause 8) or derivatives (clause 6) "
    "is for you to settle with the agreement; this card is not legal advice."
)
# Heads whose task transformers has no pipeline for (v5 removed question answering): the snippet runs the model.
DIRECT_USAGE = {
    "LionForQuestionAnswering": [
        'inputs = tokenizer("Where was Ada born?", "Ada Lovelace was born in London.", return_tensors="pt")',
        "with torch.no_grad():",
        "    outputs = model(**inputs)",
        "start, end = outputs.start_logits.argmax(), outputs.end_logits.argmax()",
        'print(tokenizer.decode(inputs["input_ids"][0, start : end + 1]))',
    ],
    "LionForMultipleChoice": [
        'choices = ["The cat sat on the mat.", "The cat sat on the moon."]',
        'inputs = tokenizer(["Where did the cat sit?"] * 2, choices, padding=True, return_tensors="pt")',
        "with torch.no_grad():",
        "    logits = model(**{name: tensor[None] for name, tensor in inputs.items()}).logits",
        "print(logits.softmax(-1))",
    ],
}
# Entries of a metrics JSON that describe the run rather than the model.
BOOKKEEPING = ("runtime", "samples_per_second", "steps_per_second", "samples", "epoch", "jit_compilation_time")
LIMITATIONS = {
    "text": [
        "Inputs longer than `max_position_embeddings` ({max_position_embeddings} tokens) are refused, not truncated; "
        "padding may be left or right, but the real tokens of a row must be one contiguous run.",
    ],
    "vision": [
        "Images are expected as the processor prepares them ({image_size}x{image_size}, ImageNet mean and std); "
        "other sizes need `interpolate_pos_encoding=True`.",
    ],
    "any": [
        "`output_attentions=True` builds each layer's full (length x length) matrix in every form, so its memory "
        "grows with the square of the length.",
        "Attention score dropout applies only in the `parallel` form; fine-tune in that form if you rely on it.",
        "transformers' softmax attention switches (`attn_implementation=...`) do not apply and are refused.",
    ],
}


@dataclass
class Provenance:
    """Where a model's weights come from, as its card tells it.

    ``command``: the command line that produced the weights. ``data``: the training data in words;
    ``datasets``: their Hub ids (card metadata). ``base_model``: the Hub id the weights were fine-tuned from.
    ``converted_from``: the original checkpoint's file name, for weights converted from the original LION code
    (their licence is then the original repository's, see ``ORIGINAL_LICENSE_TERMS``); ``source_format`` names
    its format. ``license``: the Hub licence id of trained weights. ``limitations``: what the producer knows
    limits these weights (e.g. a short training run).
    """

    command: str | None = None
    data: str | None = None
    datasets: Sequence[str] = ()
    base_model: str | None = None
    converted_from: str | None = None
    source_format: str | None = None
    license: str = CODE_LICENSE
    limitations: Sequence[str] = ()


@dataclass
class Evaluation:
    """The data the metrics were measured on: a Hub dataset id, with a readable name, config and split."""

    dataset: str
    name: str | None = None
    config: str | None = None
    split: str | None = None


def read_metrics(metrics: str | Path | Mapping | None) -> tuple[dict, str] | None:
    """A metrics JSON (path) or dict, with a description of where it came from for the card."""
    if metrics is None:
        return None
    if isinstance(metrics, Mapping):
        return dict(metrics), "the metrics given"
    path = Path(metrics)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Metrics file {str(path)!r} does not exist.") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"Metrics file {str(path)!r} is not valid JSON: {error}.") from None
    if not isinstance(content, dict):
        raise ValueError(
            f"Metrics file {str(path)!r} must hold a JSON object of numbers (e.g. {{\"eval_accuracy\": 0.91}}), "
            f"not a {type(content).__name__}."
        )
    return content, f"`{path.name}`"


def evaluation_metrics(metrics: Mapping) -> dict[str, float]:
    """The evaluation numbers of a transformers-script metrics dict: ``eval_<name>`` entries and ``perplexity``,
    keyed by metric name; run bookkeeping (runtime, samples per second, epoch, ...) left out."""
    found = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval_") if key.startswith("eval_") else key if key == "perplexity" else None
        if name and name not in BOOKKEEPING and isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = float(value)
    return found


def pipeline_tag_for(architecture: str, modality: str) -> str | None:
    return BACKBONE_PIPELINE_TAGS[modality] if architecture == "LionModel" else PIPELINE_TAGS.get(architecture)


def auto_class_for(architecture: str, modality: str) -> str:
    """The Auto class that loads ``architecture``, from the model's Auto-class tables."""
    table = TEXT_AUTO_CLASSES if modality == "text" else VISION_AUTO_CLASSES
    for auto_class, heads in table.items():
        if architecture in [head.__name__ for head in heads]:
            return auto_class
    raise ValueError(f"{architecture!r} is not a LION {modality} model class.")


# The line of the card's usage snippet that names what it loads (see usage_snippet).
MODEL_ID_LINE = re.compile(r'^model_id = (".*")$', flags=re.M)


def _model_name(model_id: str) -> str:
    """The name a card shows for ``model_id`` (a repo id or a folder path): its last component."""
    return model_id.rstrip("/").rsplit("/", 1)[-1]


def retarget_card(text: str, model_id: str) -> str:
    """A card written by :func:`render_card` for another ``model_id``, made to show and load ``model_id``: its
    title, its ``model-index`` name and its usage snippet."""
    card = ModelCard(text)
    match = MODEL_ID_LINE.search(card.text)
    if match is None:
        raise ValueError(f"the card has no `model_id = ...` line in its usage snippet to point at {model_id!r}.")
    old_name, name = _model_name(json.loads(match.group(1))), _model_name(model_id)
    body = MODEL_ID_LINE.sub(lambda _: f"model_id = {json.dumps(model_id)}", card.text, count=1)
    card.text = re.sub(rf"^# {re.escape(old_name)}$", lambda _: f"# {name}", body, count=1, flags=re.M)
    if card.data.model_name is not None:
        card.data.model_name = name
    return str(card)


def render_card(
    config: LionConfig,
    *,
    model_id: str,
    provenance: Provenance | None = None,
    metrics: str | Path | Mapping | None = None,
    evaluation: Evaluation | None = None,
    verification: str | None = None,
    has_preprocessor: bool = True,
) -> ModelCard:
    """The model card of a LION folder for ``config`` (its ``architectures[0]`` names the head).

    ``model_id``: what the usage snippet loads (the Hub repo id, or a folder path). ``metrics``: a metrics JSON
    (path) or dict, see the module docstring; when it names no evaluation result the card says what is missing.
    ``evaluation``: the dataset the metrics were measured on, needed for the ``model-index``. ``verification``:
    markdown of a check against the original code's outputs (conversion). ``has_preprocessor``: the folder has a
    tokenizer (text) or image processor (vision), so the snippet can use ``pipeline``.
    """
    provenance = provenance or Provenance()
    modality = config.modality
    architecture = (config.architectures or ["LionModel"])[0]
    pipeline_tag = pipeline_tag_for(architecture, modality)
    model_name = _model_name(model_id)
    variant = VARIANT_NAMES[config.variant]
    read = read_metrics(metrics)
    results = evaluation_metrics(read[0]) if read else {}
    converted = provenance.converted_from is not None

    licence = (
        dict(license="other", license_name=ORIGINAL_LICENSE_NAME, license_link=ORIGINAL_LICENSE_LINK)
        if converted
        else dict(license=provenance.license)
    )
    eval_results = None
    if results and evaluation is not None:
        eval_results = [
            EvalResult(
                task_type=pipeline_tag or "multiple-choice",
                dataset_type=evaluation.dataset,
                dataset_name=_dataset_name(evaluation),
                dataset_config=evaluation.config,
                dataset_split=evaluation.split,
                metric_type=name,
                metric_value=value,
            )
            for name, value in results.items()
        ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["lion", "linear-attention", variant.lower()],
        datasets=list(provenance.datasets) or None,
        base_model=provenance.base_model,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
        **licence,
    )
    template = resources.files("lion_hf.model_cards").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        title=model_name,
        summary=_summary(config, architecture, variant, pipeline_tag),
        variant_name=variant,
        variant_description=VARIANT_DESCRIPTIONS[config.variant],
        modality=modality,
        attention_form=config.attention_form,
        chunk_size=config.chunk_size,
        image_size=getattr(config, "image_size", None),
        patch_size=getattr(config, "patch_size", None),
        patch_order=getattr(config, "patch_order", None),
        usage=usage_snippet(config, architecture, model_id, has_preprocessor),
        results=[(name, f"{value:.4g}") for name, value in results.items()],
        results_note=_results_note(read, results, evaluation, converted),
        provenance_title="Conversion" if converted else "Training",
        provenance=_provenance_lines(provenance),
        verification=verification,
        weights_licence=ORIGINAL_LICENSE_TERMS if converted else f"`{provenance.license}` (as given by the producer).",
        limitations=[
            *provenance.limitations,
            *(line.format(**config.to_dict()) for line in LIMITATIONS[modality] + LIMITATIONS["any"]),
        ],
    )


def _summary(config: LionConfig, architecture: str, variant: str, pipeline_tag: str | None) -> str:
    task = f" ({pipeline_tag})" if pipeline_tag else ""
    shape = f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}, {config.num_attention_heads} heads"
    if config.modality == "vision":
        pooling = "class-token" if config.pooling == "cls" else "mean"
        shape += (
            f", {config.image_size}x{config.image_size} images in {config.patch_size}x{config.patch_size} patches "
            f"({config.patch_order} order), {pooling} pooling"
        )
    else:
        shape += f", vocabulary {config.vocab_size}, up to {config.max_position_embeddings} tokens"
    return f"A {variant} `{architecture}`{task}: {shape}."


def _results_note(read, results: dict, evaluation: Evaluation | None, converted: bool) -> str:
    if read is None:
        if converted:
            return "Not evaluated on a benchmark here; the conversion is checked against the original code's outputs."
        return "No evaluation results were recorded with this checkpoint."
    metrics, source = read
    if not results:
        held = ", ".join(f"`{key}`" for key in metrics) or "nothing"
        return (
            f"Missing: {source} holds no evaluation result (no `eval_*` metric such as `eval_accuracy` or "
            f"`eval_loss`, and no `perplexity`); it holds {held}."
        )
    if evaluation is None:
        return (
            f"From {source}. Missing: the evaluation dataset is not named, so these results are not in the "
            "card's `model-index` metadata."
        )
    split = f", {evaluation.split} split" if evaluation.split else ""
    return (
        f"From {source}, measured on {_dataset_name(evaluation)} (`{evaluation.dataset}`{split}); also in the "
        "card's `model-index` metadata."
    )


def _dataset_name(evaluation: Evaluation) -> str:
    return evaluation.name or " ".join(filter(None, (evaluation.dataset, evaluation.config)))


def _provenance_lines(provenance: Provenance) -> list[str]:
    lines = []
    if provenance.converted_from is not None:
        source = f" ({provenance.source_format})" if provenance.source_format else ""
        lines.append(f"Converted from the original LION checkpoint `{provenance.converted_from}`{source}.")
    if provenance.command:
        lines.append(f"Command: `{provenance.command}`")
    if provenance.base_model:
        lines.append(f"Fine-tuned from [`{provenance.base_model}`](https://huggingface.co/{provenance.base_model}).")
    if provenance.datasets:
        lines.append("Datasets: " + ", ".join(f"[`{d}`](https://huggingface.co/datasets/{d})" for d in provenance.datasets))
    if provenance.data:
        lines.append(f"Data: {provenance.data}")
    if not lines:
        lines.append("Not recorded: the producer of this folder gave no command or data.")
    elif provenance.converted_from is not None and not provenance.data:
        lines.append("Data: the original checkpoint does not record its training data; see the original run.")
    return lines


def usage_snippet(config: LionConfig, architecture: str, model_id: str, has_preprocessor: bool) -> str:
    """Python that loads ``model_id`` with plain transformers and runs it, exactly as written."""
    auto_class = auto_class_for(architecture, config.modality)
    pipeline_tag = pipeline_tag_for(architecture, config.modality)
    header = [f"model_id = {json.dumps(model_id)}"]
    reload = [
        "",
        "# The same weights in the recurrent form (same outputs, constant state per token):",
        f'model = {auto_class}.from_pretrained(model_id, trust_remote_code=True, attention_form="recurrent")',
    ]
    if not has_preprocessor:
        body = [
            "import torch",
            f"from transformers import {auto_class}",
            "",
            *header,
            f"model = {auto_class}.from_pretrained(model_id, trust_remote_code=True)",
        ]
        if config.modality == "text":
            body += [
                "# This folder has no tokenizer: use the one the weights were trained with (ids below vocab_size).",
                "input_ids = torch.randint(model.config.vocab_size, (1, 16))",
                "print(model(input_ids=input_ids)[0].shape)",
            ]
        else:
            size = config.image_size
            body += [
                "# This folder has no image processor: prepare images as the weights were trained.",
                f"pixel_values = torch.randn(1, {config.num_channels}, {size}, {size})",
                "print(model(pixel_values=pixel_values)[0].shape)",
            ]
        return "\n".join([*body, *reload])
    if architecture in DIRECT_USAGE:  # tasks without a transformers pipeline
        return "\n".join(
            [
                "import torch",
                f"from transformers import {auto_class}, AutoTokenizer",
                "",
                *header,
                "tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)",
                f"model = {auto_class}.from_pretrained(model_id, trust_remote_code=True)",
                *DIRECT_USAGE[architecture],
                *reload,
            ]
        )
    # (variable, call) per task; the call line names the pipeline through {run}.
    calls = {
        "fill-mask": ("fill_mask", 'print({run}(f"The capital of France is {{{run}.tokenizer.mask_token}}."))'),
        "text-classification": ("classify", 'print({run}("A delightful, well-acted film."))'),
        "token-classification": ("tag", 'print({run}("Ada Lovelace was born in London."))'),
        "feature-extraction": ("embed", 'print({run}("A sentence to embed.", return_tensors=True).shape)'),
        "image-classification": ("classify", "print({run}(image))"),
        "image-feature-extraction": ("embed", "print({run}(image, return_tensors=True).shape)"),
    }
    run, call = calls[pipeline_tag]
    lines = []
    if config.modality == "vision":
        lines += ["from PIL import Image"]
    lines += [f"from transformers import {auto_class}, pipeline", "", *header]
    lines += [f'{run} = pipeline("{pipeline_tag}", model=model_id, trust_remote_code=True)']
    if config.modality == "vision":
        lines += ['image = Image.new("RGB", (320, 240), "gray")  # any image, e.g. Image.open("photo.jpg")']
    return "\n".join([*lines, call.format(run=run), *reload])
