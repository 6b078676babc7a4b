"""What the training scripts share: model flags, configs built from them, input checks, offline metrics, outputs.

The scripts import this file as ``common`` (``python examples/run_mlm.py`` puts ``examples/`` on the path).
Every check here runs before the ``Trainer`` exists, so bad input stops a run before it writes anything.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import huggingface_hub
import torch
import transformers
from transformers import CONFIG_MAPPING, AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.trainer_utils import get_last_checkpoint

import lion_hf
from lion_hf.hub import LOGIN_HELP, check_repo_id

logger = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
TEXT_FILE_BUILDERS = {"txt": "text", "csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json"}
# Inside output_dir: the exported, Hub-ready folder of a LION run.
HUB_FOLDER = "hub"


class InputError(ValueError):
    """Bad input found before training; ``main`` of each script turns it into an error message and exit status 2."""


@dataclass
class ModelArguments:
    """Where the model comes from: a checkpoint to fine-tune, or a config to train from scratch."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A checkpoint (folder or Hub id) to start from. Leave out to train from scratch."},
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "Train from scratch with this model type's default config (lion, bert, vit, ...), changed "
                  "by --config_overrides."},
    )  # fmt: skip
    config_name: str | None = field(
        default=None, metadata={"help": "Train from scratch with this config (a folder, a config.json or a Hub id)."}
    )
    preset: str | None = field(
        default=None,
        metadata={
            "help": f"Train a LION model from scratch in the shape of an original one: {', '.join(lion_hf.PRESETS)}."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated key=value config fields applied on top of the config, e.g. "
                  "'variant=s,hidden_size=256,num_hidden_layers=4,num_attention_heads=4'."},
    )  # fmt: skip
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are stored."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the code of Hub checkpoints that ship their own."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Initialise anew the checkpoint's weights whose shapes differ from the config's (e.g. a "
                  "classifier trained on other labels); otherwise such a checkpoint is refused."},
    )  # fmt: skip


@dataclass
class TextModelArguments(ModelArguments):
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "The tokenizer (folder or Hub id), if not the checkpoint's own."}
    )


@dataclass
class OutputArguments:
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into --output_dir even if it holds another run (otherwise a run with checkpoints "
                  "is resumed, and any other non-empty folder is refused)."},
    )  # fmt: skip


@dataclass
class DataArguments:
    """What every script takes about its data: a Hub dataset, and limits on the examples used."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset of the Hub (through `datasets`)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N examples only."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N examples only."})


@dataclass
class TextDataArguments(DataArguments):
    """The text scripts' data: local files as well, their tokenization and batching."""

    train_file: str | None = field(default=None, metadata={"help": "A .txt, .csv, .tsv, .json or .jsonl file."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data, in the same formats."})
    column_names: str | None = field(
        default=None, metadata={"help": "Comma-separated column names for csv/tsv files without a header row."}
    )
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "Pad batches to a multiple of this."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})


def parse_arguments(argument_classes: tuple, argv: list[str] | None):
    """The dataclasses filled from the command line, or from a single ``.json`` file of arguments."""
    parser = transformers.HfArgumentParser(argument_classes)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def run(main) -> None:
    """Run a script's ``main``; bad input ends it with the message alone and exit status 2.

    After a run that succeeded, the process group that ``Trainer`` started under ``accelerate launch`` or
    ``torchrun`` is destroyed before the interpreter shuts down: left to the interpreter's exit, gloo's worker
    threads can abort the process (``terminate called without an active exception``) after training went
    well. After a failure it is left alone, since destroying it can wait on processes that are stuck.
    """
    try:
        main()
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def setup_logging(training_args, script_logger: logging.Logger) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    # The scripts' own messages (what was cut or left out of the data, resuming) show on the main process.
    for module_logger in (logger, script_logger):
        module_logger.setLevel(min(level, logging.INFO) if training_args.should_log else level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


# ----------------------------------------------------------------------------------------------- configs


def _parse_value(key: str, text: str, current):
    """``text`` as the type of the field's current value (JSON for fields that are None or strings)."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false"):
            raise InputError(f"--config_overrides: {key} takes true or false, got {text!r}.")
        return text.lower() == "true"
    try:
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise InputError(f"--config_overrides: {key} takes a {type(current).__name__}, got {text!r}.") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (bool, int, float)) or value is None else text


def parse_config_overrides(text: str | None, defaults: PretrainedConfig) -> dict:
    """``"key=value,..."`` as a dict, each value typed like the field of ``defaults``; unknown keys are refused."""
    overrides = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, separator, value = (part.strip() for part in item.partition("="))
        if not separator or not key:
            raise InputError(f"--config_overrides entry {item!r} is not of the form key=value.")
        if not hasattr(defaults, key):
            fields = ", ".join(sorted(k for k in defaults.to_dict() if not k.startswith("_")))
            raise InputError(
                f"--config_overrides: {type(defaults).__name__} has no field {key!r}; its fields: {fields}."
            )
        overrides[key] = _parse_value(key, value, getattr(defaults, key))
    return overrides


def build_config(args: ModelArguments, scratch_defaults: dict | None = None) -> PretrainedConfig:
    """The config the model flags name, with ``--config_overrides`` applied and validated by the config class.

    ``scratch_defaults`` (e.g. the tokenizer's vocabulary size, or ``modality="vision"`` for a LION image model)
    apply only to a model trained from scratch, and ``--config_overrides`` win over them.
    """
    sources = [
        f"--{name}" for name in ("model_name_or_path", "config_name", "model_type", "preset") if getattr(args, name)
    ]
    if args.preset and args.model_type == lion_hf.LionConfig.model_type:
        sources.remove("--model_type")  # a preset is a LION model; saying so is allowed
    if len(sources) != 1:
        raise InputError(
            f"Name the model with exactly one of --model_name_or_path, --config_name, --model_type or --preset "
            f"(got {', '.join(sources) or 'none'})."
        )
    scratch_defaults = {} if args.model_name_or_path else dict(scratch_defaults or {})
    loaded = args.model_name_or_path or args.config_name
    if loaded:
        config = AutoConfig.from_pretrained(loaded, cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code)
        base = {**config.to_dict(), **scratch_defaults}
        config_class = type(config)
    elif args.preset:
        if args.preset not in lion_hf.PRESETS:
            raise InputError(f"Unknown --preset {args.preset!r}; allowed: {', '.join(lion_hf.PRESETS)}.")
        config_class = lion_hf.LionConfig
        base = {**lion_hf.PRESETS[args.preset], **scratch_defaults}
    else:
        if args.model_type not in CONFIG_MAPPING:
            raise InputError(f"Unknown --model_type {args.model_type!r}; allowed: {', '.join(sorted(CONFIG_MAPPING))}.")
        config_class = CONFIG_MAPPING[args.model_type]
        base = scratch_defaults
    overrides = parse_config_overrides(args.config_overrides, config_class(**base))
    try:
        config = config_class.from_dict({**base, **overrides})
    except ValueError as error:
        raise InputError(f"Invalid config: {error}") from None
    return config


def build_model(auto_class, args: ModelArguments, config: PretrainedConfig):
    """The checkpoint of ``--model_name_or_path`` loaded with ``config``, or a new model of ``config``."""
    if args.model_name_or_path:
        model = auto_class.from_pretrained(
            args.model_name_or_path,
            config=config,
            cache_dir=args.cache_dir,
            trust_remote_code=args.trust_remote_code,
            ignore_mismatched_sizes=args.ignore_mismatched_sizes,
        )
    else:
        model = auto_class.from_config(config, trust_remote_code=args.trust_remote_code)
    logger.info(f"{type(model).__name__}: {model.num_parameters() / 1e6:.2f}M parameters")
    return model


def text_tokenizer_and_config(args: TextModelArguments):
    """The tokenizer, and the model's config: a new model's vocabulary and padding id are the tokenizer's."""
    source = args.tokenizer_name or args.model_name_or_path
    if source is None:
        raise InputError("A model trained from scratch needs --tokenizer_name.")
    tokenizer = AutoTokenizer.from_pretrained(
        source, cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code
    )
    config = build_config(args, {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id})
    if getattr(config, "vocab_size", len(tokenizer)) < len(tokenizer):
        raise InputError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {config.vocab_size}."
        )
    return tokenizer, config


def has_trained_head(args: ModelArguments, config: PretrainedConfig, head_suffix: str) -> bool:
    """Whether the model starts from a checkpoint saved by a task head (``head_suffix``: ``ForSequenceClassification``,
    ...)."""
    return bool(args.model_name_or_path) and any(name.endswith(head_suffix) for name in config.architectures or ())


def set_labels(config: PretrainedConfig, labels: list[str], trained_head: bool, ignore_mismatched_sizes: bool) -> None:
    """Give ``config`` the data's labels, or check them against those of a checkpoint's trained classifier.

    A classifier trained on other labels is refused unless ``ignore_mismatched_sizes`` (then it is initialised
    anew). A trained classifier with the same labels keeps its own label order.
    """
    if trained_head and not ignore_mismatched_sizes:
        unnamed = config.id2label == PretrainedConfig(num_labels=config.num_labels).id2label
        theirs = [config.id2label[i] for i in sorted(config.id2label)]
        if config.num_labels != len(labels) or (not unnamed and sorted(theirs) != sorted(labels)):
            raise InputError(
                f"The checkpoint's classifier has {config.num_labels} labels ({', '.join(map(str, theirs))}) but "
                f"the data has {len(labels)} ({', '.join(labels)}); pass --ignore_mismatched_sizes to train a new "
                "classifier instead."
            )
        if not unnamed:
            return
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}


# ------------------------------------------------------------------------------------------------- data


def load_hub_dataset(name: str, config_name: str | None, model_args: ModelArguments) -> datasets.DatasetDict:
    # No trust_remote_code here: datasets 4 and later run no dataset scripts (the flag is for checkpoints).
    return datasets.load_dataset(name, config_name, cache_dir=model_args.cache_dir)


def load_text_files(files: dict[str, str], column_names: str | None, cache_dir: str | None) -> datasets.DatasetDict:
    """Local text, csv, tsv or json(l) files as a ``DatasetDict`` keyed like ``files`` (split -> path).

    ``column_names`` (comma-separated) names the columns of csv/tsv files that have no header row.
    Cells are read as they are: no value is turned into a missing one ("NA", "null" stay text).
    """
    splits = {}
    for split, path in files.items():
        extension = Path(path).suffix.lstrip(".").lower()
        if extension not in TEXT_FILE_BUILDERS:
            raise InputError(f"--{split}_file {path}: unknown extension; allowed: {', '.join(TEXT_FILE_BUILDERS)}.")
        if not Path(path).is_file():
            raise InputError(f"--{split}_file {path} does not exist.")
        builder, options = TEXT_FILE_BUILDERS[extension], {}
        if builder == "csv":
            options = {"delimiter": "\t" if extension == "tsv" else ",", "na_filter": False}
            if column_names:
                options["column_names"] = [name.strip() for name in column_names.split(",")]
        elif column_names:
            raise InputError(f"--column_names applies to csv and tsv files, not to {path}.")
        splits[split] = datasets.load_dataset(builder, data_files={split: path}, cache_dir=cache_dir, **options)[split]
    return datasets.DatasetDict(splits)


def require_columns(dataset: datasets.Dataset, names: list[str], flag: str, source: str) -> None:
    missing = [name for name in names if name not in dataset.column_names]
    if missing:
        raise InputError(
            f"{flag}: no column {', '.join(map(repr, missing))} in {source}; its columns: "
            f"{', '.join(dataset.column_names)}."
        )


def split_off_validation(
    raw: datasets.DatasetDict, share: float, seed: int, flag: str, stratify_by_column: str | None = None
) -> datasets.DatasetDict:
    """``raw`` with a validation split of ``share`` of its train split (per class with ``stratify_by_column``) when
    it has none."""
    if "validation" in raw or "train" not in raw:
        return raw
    if not 0 < share < 1:
        raise InputError(f"{flag} must leave a held-out share strictly between none and all of the training data.")
    parts = raw["train"].train_test_split(test_size=share, seed=seed, stratify_by_column=stratify_by_column)
    return datasets.DatasetDict({**raw, "train": parts["train"], "validation": parts["test"]})


def first_samples(dataset: datasets.Dataset, count: int | None) -> datasets.Dataset:
    return dataset if count is None else dataset.take(count)


def check_max_seq_length(max_seq_length: int | None, config: PretrainedConfig, default: int) -> int:
    """``max_seq_length`` (``default`` when None, capped by the position table) checked against the position table."""
    table = getattr(config, "max_position_embeddings", None)
    if max_seq_length is None:
        return default if table is None else min(default, table)
    if max_seq_length <= 0:
        raise InputError(f"--max_seq_length must be positive, got {max_seq_length}.")
    if table is not None and max_seq_length > table:
        raise InputError(
            f"--max_seq_length {max_seq_length} is longer than the model's position table "
            f"(max_position_embeddings={table})."
        )
    return max_seq_length


# --------------------------------------------------------------------------------------- outputs, metrics


def take_over_push(training_args) -> bool:
    """Whether to push at the end; ``--push_to_hub`` is taken from ``Trainer`` (which would upload ``output_dir``
    with its checkpoints and ``training_args.bin``) so that ``save_final_model`` pushes the exported folder. The
    repo id and the token are checked now, before training."""
    if not training_args.push_to_hub:
        return False
    try:
        check_repo_id(training_args.hub_model_id or "")
    except ValueError as error:
        raise InputError(f"--push_to_hub needs --hub_model_id namespace/name: {error}") from None
    if huggingface_hub.get_token() is None:
        raise InputError(f"--push_to_hub needs a Hub token: {LOGIN_HELP}.")
    training_args.push_to_hub = False
    return True


def check_output_dir(training_args, overwrite: bool) -> str | None:
    """The checkpoint to resume from; refuses an ``output_dir`` that holds anything but a run to resume."""
    resume = training_args.resume_from_checkpoint
    if resume:
        if not Path(resume).is_dir():
            raise InputError(f"--resume_from_checkpoint {resume} is not a folder.")
        return resume
    output_dir = Path(training_args.output_dir)
    if overwrite or not output_dir.is_dir() or not any(output_dir.iterdir()):
        return None
    last = get_last_checkpoint(str(output_dir))
    if last is None or not training_args.do_train:
        held = ", ".join(sorted(path.name for path in output_dir.iterdir())[:5])
        raise InputError(
            f"--output_dir {output_dir} already holds another run ({held}, ...); pass --overwrite_output_dir to write "
            "over it, or choose another folder."
        )
    logger.info(f"Resuming the run in {output_dir} from {last} (--overwrite_output_dir starts afresh).")
    return last


def load_metric(name: str, config_name: str | None = None) -> evaluate.EvaluationModule:
    """A metric module of ``examples/metrics`` by path: no network, kept in memory (safe in several processes)."""
    return evaluate.load(str(METRICS_DIR / name), config_name, keep_in_memory=True)


def train_and_evaluate(trainer, training_args, last_checkpoint: str | None) -> dict[str, dict]:
    """``--do_train`` and ``--do_eval`` as the flags say: each split's metrics, with its number of examples."""
    results = {}
    if training_args.do_train:
        results["train"] = trainer.train(resume_from_checkpoint=last_checkpoint).metrics
        results["train"]["train_samples"] = len(trainer.train_dataset)
    if training_args.do_eval:
        results["eval"] = trainer.evaluate()
        results["eval"]["eval_samples"] = len(trainer.eval_dataset)
    return results


def script_command(script: str, argv: list[str] | None) -> str:
    """The command line that ran ``script`` with ``argv`` (``None``: this process's own arguments), for the card."""
    arguments = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"examples/{Path(script).name}", *arguments])


def save_final_model(
    trainer, results: dict[str, dict], trained: bool, command: str | None = None, push: bool = False
) -> None:
    """Write the run's Hub-ready folder and its metrics into ``output_dir``: the one place that writes results.

    ``trained``: the model (safetensors, config with ``auto_map``, the model's code for LION models) and its
    tokenizer or image processor, gathered from every process under FSDP by ``Trainer.save_model``, then the
    ``Trainer`` state (``trainer_state.json``: the logged loss curve). Metrics: ``<split>_results.json`` for each
    split in ``results`` (``train``, ``eval``, ``test``) and ``all_results.json`` with all of them, each a flat
    JSON object of numbers keyed ``<split>_<metric>`` (``eval_loss``, ``eval_accuracy``, ...), as transformers'
    own scripts write them; model cards read ``eval_results.json``. A LION model is then exported through
    ``lion_hf.export_folder`` into ``output_dir/hub`` (only the Hub's files, with a model card of the run and its
    evaluation results), and pushed from there with ``--push_to_hub``.
    """
    # A softmax baseline (BERT, ViT) has no LION export: transformers' own upload of output_dir, which saves the
    # model itself (on every process: under FSDP all of them gather the weights) and uploads from the main one.
    transformers_push = trained and push and trainer.model.config.model_type != "lion"
    if trained:
        if not transformers_push:
            trainer.save_model()
        trainer.save_state()
    for split, metrics in results.items():
        trainer.save_metrics(split, metrics, combined=False)
    trainer.save_metrics(
        "all", {key: value for metrics in results.values() for key, value in metrics.items()}, combined=False
    )
    if transformers_push:
        trainer.push_to_hub(commit_message="End of training")
    args = trainer.args
    if not trained or not trainer.is_world_process_zero() or trainer.model.config.model_type != "lion":
        return
    exported = lion_hf.export_folder(
        args.output_dir,
        Path(args.output_dir) / HUB_FOLDER,
        metrics=results.get("eval"),
        provenance=lion_hf.Provenance(command=command),
        repo_id=args.hub_model_id,
        overwrite=True,
        progress=False,
    )
    logger.info(f"Hub-ready folder: {exported.folder}")
    if push:
        lion_hf.push_folder(
            exported.folder,
            args.hub_model_id,
            private=bool(args.hub_private_repo),
            revision=args.hub_revision,
            commit_message="End of training",
        )
