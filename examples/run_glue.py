"""Fine-tune any text checkpoint (LION, BERT, ...) for sequence classification or regression with `Trainer`.

A GLUE task from the Hub (`--task_name sst2`), or local files (txt/csv/tsv/json(l), with or without a header row):

    python examples/run_glue.py --model_name_or_path out/lion-s-mlm --task_name sst2 \\
        --train_file ../shared/data/text/sst2/train.tsv --validation_file ../shared/data/text/sst2/dev.tsv \\
        --do_train --do_eval --output_dir out/lion-s-sst2
    python examples/run_glue.py --model_name_or_path out/lion-s-mlm --train_file agnews.tsv \\
        --column_names text,label --text_column_names text --do_train --do_eval --output_dir out/agnews

With `--task_name`, the task picks the text columns and the GLUE metric (accuracy, F1, Matthews, Pearson/Spearman;
STS-B is regression); files given with it replace the Hub download. Labels are saved in the config (`id2label`);
`--do_predict` writes `predict_results.txt`. Runs unchanged under `accelerate launch`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from common import (
    InputError,
    OutputArguments,
    TextDataArguments,
    TextModelArguments,
    build_model,
    check_max_seq_length,
    check_output_dir,
    first_samples,
    has_trained_head,
    load_hub_dataset,
    load_metric,
    load_text_files,
    parse_arguments,
    require_columns,
    run,
    save_final_model,
    script_command,
    set_labels,
    setup_logging,
    take_over_push,
    text_tokenizer_and_config,
    train_and_evaluate,
)
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

logger = logging.getLogger(__name__)

GLUE_DATASET = "nyu-mll/glue"
TASK_TEXT_COLUMNS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
REGRESSION_TASKS = ("stsb",)
HEAD = "ForSequenceClassification"
SPLIT_FLAGS = {"train": "do_train", "validation": "do_eval", "test": "do_predict"}
PREDICTIONS_FILE = "predict_results.txt"
DEFAULT_MAX_SEQ_LENGTH = 128


@dataclass
class GlueDataArguments(TextDataArguments):
    task_name: str | None = field(
        default=None, metadata={"help": f"A GLUE task: its columns and metric ({', '.join(TASK_TEXT_COLUMNS)})."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Data to predict (labels optional)."})
    text_column_names: str | None = field(
        default=None,
        metadata={"help": "One or two comma-separated text columns (default: the task's, else sentence1,sentence2, "
                  "sentence or text)."},
    )  # fmt: skip
    label_column_name: str = field(default="label", metadata={"help": "The column holding the labels."})
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": f"Tokens per example, special tokens included (default {DEFAULT_MAX_SEQ_LENGTH}, or the "
                  "position table if shorter); longer examples are cut (the count is logged). Longer than the "
                  "model's position table is refused."},
    )  # fmt: skip
    max_predict_samples: int | None = field(default=None, metadata={"help": "Predict the first N examples only."})


def load_raw(data_args: GlueDataArguments, model_args: TextModelArguments) -> datasets.DatasetDict:
    if data_args.task_name is not None and data_args.task_name not in TASK_TEXT_COLUMNS:
        raise InputError(f"Unknown --task_name {data_args.task_name!r}; allowed: {', '.join(TASK_TEXT_COLUMNS)}.")
    files = {split: getattr(data_args, f"{split}_file") for split in SPLIT_FLAGS if getattr(data_args, f"{split}_file")}
    if files:
        return load_text_files(files, data_args.column_names, model_args.cache_dir)
    name, config_name = data_args.dataset_name, data_args.dataset_config_name
    if name is None and data_args.task_name is not None:
        name, config_name = GLUE_DATASET, data_args.task_name
    if name is None:
        raise InputError(
            "Give the data with --task_name, --dataset_name or --train_file / --validation_file / --test_file."
        )
    raw = load_hub_dataset(name, config_name, model_args)
    if data_args.task_name == "mnli":
        raw = datasets.DatasetDict(
            {"train": raw["train"], "validation": raw["validation_matched"], "test": raw["test_matched"]}
        )
    return raw


def text_columns(data_args: GlueDataArguments, dataset: datasets.Dataset) -> list[str]:
    if data_args.text_column_names:
        names = [name.strip() for name in data_args.text_column_names.split(",")]
        if not 1 <= len(names) <= 2:
            raise InputError(
                f"--text_column_names takes one or two columns, got {len(names)}: {data_args.text_column_names}."
            )
        return names
    if data_args.task_name:
        return list(TASK_TEXT_COLUMNS[data_args.task_name])
    for names in (["sentence1", "sentence2"], ["sentence"], ["text"]):
        if all(name in dataset.column_names for name in names):
            return names
    raise InputError(
        f"Which columns hold the text? Pass --text_column_names; the columns are: {', '.join(dataset.column_names)}."
    )


def labelled(dataset: datasets.Dataset, label_column: str) -> bool:
    """Whether a split carries labels (GLUE's test splits hold -1 in place of a label)."""
    return label_column in dataset.column_names and any(value != -1 for value in dataset.unique(label_column))


def label_names(dataset: datasets.Dataset, label_column: str) -> list[str]:
    """The split's labels as strings: a ClassLabel's names, else its distinct values in sorted order."""
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [str(value) for value in sorted(dataset.unique(label_column))]


def label_ids(dataset: datasets.Dataset, label_column: str, label2id: dict[str, int], split: str) -> list[int]:
    feature = dataset.features[label_column]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    unknown = sorted({str(names[v] if names else v) for v in dataset.unique(label_column)} - set(label2id), key=str)
    if unknown:
        raise InputError(
            f"The {split} data has labels the model does not know: {', '.join(unknown)}; the model's labels: "
            f"{', '.join(label2id)}."
        )
    return [label2id[str(names[v] if names else v)] for v in dataset[label_column]]


def prepare_labels(config, raw, data_args, model_args, training_args, regression: bool) -> None:
    """Put the data's labels into ``config`` (``id2label``), checked against the checkpoint's classifier."""
    if regression:
        if (
            has_trained_head(model_args, config, HEAD)
            and config.num_labels != 1
            and not model_args.ignore_mismatched_sizes
        ):
            raise InputError(
                f"Regression needs one output but the checkpoint's classifier has {config.num_labels} labels; pass "
                "--ignore_mismatched_sizes to train a new one."
            )
        config.id2label, config.label2id = {0: "score"}, {"score": 0}
        return
    if training_args.do_train:
        names = label_names(raw["train"], data_args.label_column_name)
    elif has_trained_head(model_args, config, HEAD):
        return  # evaluation and prediction of a trained classifier use its own labels
    else:
        raise InputError(f"{model_args.model_name_or_path or 'The model'} has no trained classifier; pass --do_train.")
    set_labels(config, names, has_trained_head(model_args, config, HEAD), model_args.ignore_mismatched_sizes)


ARGUMENTS = (TextModelArguments, GlueDataArguments, OutputArguments, TrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    model_args, data_args, output_args, training_args = parse_arguments(ARGUMENTS, argv)
    setup_logging(training_args, logger)
    wanted = [split for split, flag in SPLIT_FLAGS.items() if getattr(training_args, flag)]
    if not wanted:
        raise InputError("Nothing to do: pass --do_train, --do_eval and/or --do_predict.")
    last_checkpoint = check_output_dir(training_args, output_args.overwrite_output_dir)
    push = take_over_push(training_args)
    set_seed(training_args.seed)

    raw = load_raw(data_args, model_args)
    for split in wanted:
        if split not in raw:
            raise InputError(f"--{SPLIT_FLAGS[split]} needs {split} data; the data has: {', '.join(raw) or 'nothing'}.")
    columns = text_columns(data_args, raw[wanted[0]])
    for split in wanted:
        require_columns(raw[split], columns, "--text_column_names", f"the {split} data")
        if split != "test":
            require_columns(raw[split], [data_args.label_column_name], "--label_column_name", f"the {split} data")
    reference = raw["train" if training_args.do_train else wanted[0]]
    regression = data_args.task_name in REGRESSION_TASKS or (
        data_args.label_column_name in reference.column_names
        and reference.features[data_args.label_column_name].dtype in ("float32", "float64")
    )

    tokenizer, config = text_tokenizer_and_config(model_args)
    prepare_labels(config, raw, data_args, model_args, training_args, regression)
    max_length = check_max_seq_length(data_args.max_seq_length, config, DEFAULT_MAX_SEQ_LENGTH)

    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }
    label_column = data_args.label_column_name

    def tokenize(batch):
        texts = [batch[name] for name in columns]
        lengths = [len(ids) for ids in tokenizer(*texts, return_attention_mask=False)["input_ids"]]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        return {**encoded, "was_cut": [length > max_length for length in lengths]}

    processed = {}
    with training_args.main_process_first(desc="tokenizing"):
        for split in wanted:
            dataset = first_samples(raw[split], limits[split])
            if labelled(dataset, label_column):
                if regression:
                    labels = [float(value) for value in dataset[label_column]]
                else:
                    labels = label_ids(dataset, label_column, config.label2id, split)
                dataset = dataset.remove_columns([name for name in ("labels",) if name in dataset.column_names])
                dataset = dataset.add_column("labels", labels)
            dataset = dataset.map(
                tokenize,
                batched=True,
                num_proc=data_args.preprocessing_num_workers,
                remove_columns=[name for name in dataset.column_names if name != "labels"],
                desc=f"Tokenizing the {split} data",
            )
            cut = sum(dataset["was_cut"])
            if cut:
                logger.info(f"{cut} of {len(dataset)} {split} examples cut to {max_length} tokens.")
            processed[split] = dataset.remove_columns("was_cut")

    model = build_model(AutoModelForSequenceClassification, model_args, config)

    if data_args.task_name:
        metric = load_metric("glue", data_args.task_name)
    else:
        metric = load_metric("glue", "stsb") if regression else load_metric("accuracy")

    def compute_metrics(eval_prediction):
        logits, labels = eval_prediction
        predictions = logits.squeeze(-1) if regression else logits.argmax(-1)
        return metric.compute(predictions=predictions, references=labels)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=data_args.pad_to_multiple_of),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )

    results = train_and_evaluate(trainer, training_args, last_checkpoint)
    if training_args.do_predict:
        test_set = processed["test"]
        output = trainer.predict(test_set, metric_key_prefix="test")
        if "labels" in test_set.column_names:
            results["test"] = {**output.metrics, "test_samples": len(test_set)}
        if trainer.is_world_process_zero():
            write_predictions(
                Path(training_args.output_dir) / PREDICTIONS_FILE, output.predictions, model.config, regression
            )
    command = script_command(__file__, argv)
    save_final_model(trainer, results, trained=training_args.do_train, command=command, push=push)
    return results


def write_predictions(path: Path, logits: np.ndarray, config, regression: bool) -> None:
    """``index<TAB>prediction`` per test example: the label name, or the score for regression."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if regression:
        rows = [f"{value:.3f}" for value in logits.squeeze(-1)]
    else:
        rows = [config.id2label[int(index)] for index in logits.argmax(-1)]
    path.write_text("index\tprediction\n" + "".join(f"{i}\t{row}\n" for i, row in enumerate(rows)), encoding="utf-8")


if __name__ == "__main__":
    run(main)
