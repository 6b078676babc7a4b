"""The one export path: a LION model, or a folder holding one, becomes a Hub-ready folder, all at once or not at all.

An exported folder holds nothing but ``config.json`` (with the ``auto_map`` of ``lion_auto_map``), the weights as
safetensors (sharded with an index above ``max_shard_size``), the model's code (``modeling_lion.py`` and every file
it imports relatively, as ``save_pretrained`` copies them), the tokenizer or image processor, and ``README.md``
(the model card). Conversion, the demo and the training scripts all write their folders through
:func:`export_folder`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer
from transformers.dynamic_module_utils import get_relative_import_files

# transformers 5.17 to 5.22 import the top-level AutoImageProcessor only with torchvision; this path works in all.
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.utils import logging as transformers_logging

from .cards import Evaluation, Provenance, read_metrics, render_card
from .image_processing import lion_image_processor
from .modeling.configuration_lion import LionConfig
from .modeling.modeling_lion import TEXT_AUTO_CLASSES, VISION_AUTO_CLASSES, LionPreTrainedModel, lion_auto_map
from .progress import Steps
from .staging import check_inputs_outside, check_output_folder, staged_folder

logger = transformers_logging.get_logger(__name__)

CARD = "README.md"
CONFIG = "config.json"
MODEL_CODE = "modeling_lion.py"
WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
# What tokenizers and image processors save (transformers' file names; vocabularies by tokenizer family).
PREPROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "vocab.txt", "vocab.json", "merges.txt", "*.model", "preprocessor_config.json", "processor_config.json",
)  # fmt: skip
# Every file (pattern) of an exported folder besides the model's code.
DATA_FILES = (CONFIG, CARD, *WEIGHTS, *PREPROCESSOR_FILES)
DEFAULT_MAX_SHARD_SIZE = "5GB"
HEADS = {
    head.__name__: head
    for table in (TEXT_AUTO_CLASSES, VISION_AUTO_CLASSES)
    for heads in table.values()
    for head in heads
}


class NotALionFolderError(ValueError):
    """A folder that does not hold a LION checkpoint, or whose weights do not fit its config."""


@dataclass
class ExportResult:
    folder: Path
    model: LionPreTrainedModel
    files: list[str]


def model_code_files(folder: str | Path) -> list[str]:
    """``modeling_lion.py`` and every file it imports relatively, as transformers finds them in ``folder``
    (names only); a missing one raises ``FileNotFoundError``."""
    return sorted({MODEL_CODE, *(Path(p).name for p in get_relative_import_files(str(Path(folder) / MODEL_CODE)))})


def folder_problems(folder: str | Path) -> list[str]:
    """Why ``folder`` is not an exported LION folder (empty when it is one): files that do not belong there,
    and the parts it lacks."""
    folder = Path(folder)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    problems, code = [], set()
    try:
        code = set(model_code_files(folder))
    except FileNotFoundError as error:
        problems.append(f"no {Path(error.filename).name} (the model's code)")
    for required, what in ((CONFIG, "the config"), (CARD, "the model card")):
        if required not in names:
            problems.append(f"no {required} ({what})")
    shards = [name for name in names if fnmatch.fnmatch(name, WEIGHTS[1])]
    if WEIGHTS[0] not in names and not shards:
        problems.append("no safetensors weights")
    if shards and WEIGHTS[2] not in names:
        problems.append(f"weight shards without their index {WEIGHTS[2]}")
    stray = [name for name in names if name not in code and not any(fnmatch.fnmatch(name, p) for p in DATA_FILES)]
    if stray:
        problems.append("files an exported folder does not hold: " + ", ".join(stray))
    return problems


def export_folder(
    model_or_src: LionPreTrainedModel | str | Path,
    dst: str | Path,
    *,
    tokenizer=None,
    image_processor=None,
    provenance: Provenance | None = None,
    metrics: str | Path | Mapping | None = None,
    evaluation: Evaluation | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    verify: Callable[[Path], str] | None = None,
    progress: bool | Steps = True,
) -> ExportResult:
    """Write a Hub-ready folder for a LION model at ``dst``.

    ``model_or_src``: a LION model, or a folder holding one (a training run's output or checkpoint, a converted
    or exported folder): its model, tokenizer and image processor are read from it; everything else there
    (optimizer and scheduler states, ``training_args.bin``, ...) stays behind. ``tokenizer`` / ``image_processor``
    replace what the folder has; a vision model without either gets :func:`lion_image_processor`.
    ``provenance``, ``metrics`` (a metrics JSON path or dict, transformers-script format), ``evaluation`` (the
    dataset of those metrics): what the model card says, see :func:`lion_hf.cards.render_card`. ``repo_id``:
    the Hub id the card's usage snippet loads (default: the folder's name). ``max_shard_size``: larger weights
    are split into shards with an index. ``verify``: called with the written folder before the card is written;
    it raises to abort the export and returns markdown for the card. ``progress``: a progress bar (or the
    :class:`~lion_hf.progress.Steps` of a larger job to continue).

    Everything is written beside ``dst`` and moved into place only when all of it succeeded; an existing
    non-empty ``dst`` is replaced only with ``overwrite=True``, and a ``dst`` that is or contains the source
    folder or the metrics file is refused (replacing it would delete them).
    """
    dst = Path(dst)
    from_folder = not isinstance(model_or_src, LionPreTrainedModel)
    if from_folder and not isinstance(model_or_src, (str, os.PathLike)):
        raise TypeError(
            f"export_folder takes a LION model or a folder holding one, not a {type(model_or_src).__name__} "
            "(unwrap a distributed model first, or export the folder Trainer.save_model wrote)."
        )
    inputs = [model_or_src if from_folder else None, metrics if not isinstance(metrics, Mapping) else None]
    check_inputs_outside(dst, inputs)
    check_output_folder(dst, overwrite)
    read_metrics(metrics)  # a bad metrics file is refused before any work
    count = int(from_folder) + 3 + int(verify is not None)  # loading, weights, preprocessor, verifying, card
    own_steps = not isinstance(progress, Steps)
    steps = Steps(f"export {dst.absolute().name}", count, enabled=bool(progress)) if own_steps else progress
    with steps if own_steps else contextlib.nullcontext():
        if not own_steps:
            steps.add(count)
        if from_folder:
            steps.start("loading")
            model, found_tokenizer, found_processor = load_folder(model_or_src)
            tokenizer = tokenizer if tokenizer is not None else found_tokenizer
            image_processor = image_processor if image_processor is not None else found_processor
        else:
            model = model_or_src
        config = model.config
        if tokenizer is not None and config.modality == "text" and len(tokenizer) > config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {config.vocab_size}: "
                "it is not this model's tokenizer."
            )
        if config.modality == "vision" and image_processor is None:
            image_processor = _default_image_processor(config)
        with staged_folder(dst, overwrite) as stage:
            steps.start("saving weights")
            # The one auto_map: every Auto class of the model's head, from the Auto-class tables.
            config.auto_map = lion_auto_map(config)
            model.save_pretrained(stage, max_shard_size=max_shard_size)
            steps.start("saving tokenizer" if config.modality == "text" else "saving image processor")
            if tokenizer is not None:
                _save_tokenizer(tokenizer, config, stage)
            if image_processor is not None:
                image_processor.save_pretrained(stage)
            verification = None
            if verify is not None:
                steps.start("verifying")
                verification = verify(stage)
            steps.start("writing the card")
            card = render_card(
                config,
                model_id=repo_id or dst.absolute().name,
                provenance=provenance,
                metrics=metrics,
                evaluation=evaluation,
                verification=verification,
                has_preprocessor=(tokenizer if config.modality == "text" else image_processor) is not None,
            )
            card.save(stage / CARD)
            problems = folder_problems(stage)
            if problems:
                raise RuntimeError(f"The export wrote an incomplete or unexpected folder: {'; '.join(problems)}.")
            files = sorted(p.name for p in stage.iterdir())
    return ExportResult(dst.absolute(), model, files)


def load_folder(src: str | Path):
    """The LION model of a folder, with its tokenizer and image processor (None where the folder has none).

    Refuses a folder without a LION ``config.json``, and weights that do not fit the config (every missing,
    unexpected and misshapen key named).
    """
    src = Path(src)
    if not src.is_dir():
        raise NotALionFolderError(
            f"{str(src)!r} is not a folder: export reads a local folder (download a Hub repo first, e.g. `hf download`)."
        )
    config_file = src / CONFIG
    if not config_file.is_file():
        raise NotALionFolderError(f"{str(src)!r} is not a LION checkpoint: it has no {CONFIG}.")
    try:
        content = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise NotALionFolderError(f"{str(config_file)!r} is not valid JSON: {error}.") from None
    model_type = content.get("model_type") if isinstance(content, dict) else None
    if model_type != LionConfig.model_type:
        raise NotALionFolderError(
            f"{str(src)!r} is not a LION checkpoint: its {CONFIG} has model_type {model_type!r}, not "
            f"{LionConfig.model_type!r}."
        )
    architecture = (content.get("architectures") or ["LionModel"])[0]
    if architecture not in HEADS:
        raise NotALionFolderError(
            f"{str(src)!r}: architecture {architecture!r} is not a LION model class; allowed: {', '.join(HEADS)}."
        )
    if not any(src.glob("*.safetensors")) and not any(src.glob("pytorch_model*.bin")):
        raise NotALionFolderError(f"{str(src)!r} has a LION {CONFIG} but no weights (*.safetensors).")
    with _transformers_verbosity(transformers_logging.ERROR):
        # Mismatched shapes are collected into the report below instead of raising transformers' bare error.
        model, info = HEADS[architecture].from_pretrained(src, output_loading_info=True, ignore_mismatched_sizes=True)
    problems = [f"missing from the weights: {key}" for key in sorted(info["missing_keys"])]
    problems += [f"unexpected in the weights: {key}" for key in sorted(info["unexpected_keys"])]
    problems += [
        f"shape mismatch: {key} is {tuple(saved)} in the weights, the config needs {tuple(needed)}"
        for key, saved, needed in sorted(info["mismatched_keys"])
    ]
    if problems:
        raise NotALionFolderError(
            f"The weights in {str(src)!r} do not match its {CONFIG} ({architecture}):\n  " + "\n  ".join(problems)
        )
    tokenizer = processor = None
    if (src / "tokenizer_config.json").is_file() or (src / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(src)
    if (src / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(src)
    return model.eval(), tokenizer, processor


@contextlib.contextmanager
def _transformers_verbosity(level: int) -> Iterator[None]:
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity(level)
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


def _save_tokenizer(tokenizer, config: LionConfig, folder: Path) -> None:
    # Pipelines truncate to model_max_length; the model cannot take more than its position table.
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = min(saved, config.max_position_embeddings)
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = saved


def _default_image_processor(config: LionConfig):
    """DeiT's evaluation transform, so that AutoImageProcessor and pipeline("image-classification") work."""
    if config.num_channels != 3:
        logger.warning(
            f"No image processor saved: num_channels={config.num_channels} has no standard ImageNet processor; "
            "pass image_processor= to export one."
        )
        return None
    return lion_image_processor(config)
