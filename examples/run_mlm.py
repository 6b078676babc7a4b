"""Masked-language-model pretraining or fine-tuning of any `AutoModelForMaskedLM` (LION, BERT, ...) with `Trainer`.

From scratch (the tokenizer sets the vocabulary size and padding id):

    python examples/run_mlm.py --model_type lion --config_overrides variant=s,num_hidden_layers=4 \\
        --tokenizer_name ../shared/data/tokenizers/bert-base-uncased --train_file corpus.txt \\
        --max_seq_length 128 --mlm_probability 0.3 --do_train --do_eval --output_dir out/lion-s-mlm

Evaluation reports the loss, perplexity and masked-token accuracy. Runs unchanged under `accelerate launch`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import datasets
from common import (
    InputError,
    OutputArguments,
    TextDataArguments,
    TextModelArguments,
    build_model,
    check_max_seq_length,
    check_output_dir,
    first_samples,
    load_hub_dataset,
    load_metric,
    load_text_files,
    parse_arguments,
    require_columns,
    run,
    save_final_model,
    script_command,
    setup_logging,
    text_tokenizer_and_config,
    split_off_validation,
    take_over_push,
    train_and_evaluate,
)
from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
    set_seed,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LENGTH = 512


@dataclass
class MLMDataArguments(TextDataArguments):
    text_column_name: str | None = field(
        default=None, metadata={"help": "The column holding the text (default: 'text', or the only column)."}
    )
    validation_split_percentage: float = field(
        default=5, metadata={"help": "Percent of the training data held out when there is no validation data."}
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": f"Tokens per example, special tokens included (default: the position table, at most "
                  f"{DEFAULT_MAX_SEQ_LENGTH}). Longer than the position table is refused."},
    )  # fmt: skip
    line_by_line: bool = field(
        default=False,
        metadata={"help": "One example per non-empty line, cut to --max_seq_length (the count is logged); by "
                  "default all text runs together and is cut into blocks of --max_seq_length tokens."},
    )  # fmt: skip
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked (the LION paper: 0.3)."})
    mask_replace_prob: float = field(default=0.8, metadata={"help": "Share of masked tokens replaced by [MASK]."})
    random_replace_prob: float = field(default=0.1, metadata={"help": "Share of masked tokens replaced at random."})


def load_raw_text(data_args: MLMDataArguments, model_args: TextModelArguments, training_args) -> datasets.DatasetDict:
    if data_args.dataset_name:
        raw = load_hub_dataset(data_args.dataset_name, data_args.dataset_config_name, model_args)
    else:
        files = {
            split: path
            for split, path in (("train", data_args.train_file), ("validation", data_args.validation_file))
            if path
        }
        if not files:
            raise InputError("Give the text with --train_file / --validation_file or --dataset_name.")
        raw = load_text_files(files, data_args.column_names, model_args.cache_dir)
    if not training_args.do_eval:
        return raw
    share = data_args.validation_split_percentage / 100
    return split_off_validation(raw, share, training_args.seed, "--validation_split_percentage")


def text_column(dataset: datasets.Dataset, name: str | None) -> str:
    if name is None:
        if "text" in dataset.column_names:
            return "text"
        if len(dataset.column_names) != 1:
            columns = ", ".join(dataset.column_names)
            raise InputError(f"Which column holds the text? Pass --text_column_name; the columns are: {columns}.")
        return dataset.column_names[0]
    require_columns(dataset, [name], "--text_column_name", "the data")
    return name


def tokenized_examples(raw: datasets.Dataset, tokenizer, data_args: MLMDataArguments, column: str, max_length: int):
    """Examples of at most ``max_length`` tokens, special tokens included, with their special-tokens masks.

    ``line_by_line``: one example per non-empty line, cut to ``max_length`` (how many were cut is logged). Otherwise
    the texts, each tokenized with its special tokens, run together and are cut into blocks of exactly
    ``max_length`` tokens, as transformers' own script does; the tail of each run of 1000 texts (one `datasets`
    batch) that fills no block is left out, and how many tokens that is is logged.
    """
    map_options = {"batched": True, "num_proc": data_args.preprocessing_num_workers, "remove_columns": raw.column_names}
    encode = {"return_special_tokens_mask": True, "return_attention_mask": False, "return_token_type_ids": False}

    def tokenize_lines(batch):
        lines = [text for text in batch[column] if text and text.strip()]
        encoded = tokenizer(lines, truncation=True, max_length=max_length, return_overflowing_tokens=True, **encode)
        sample = encoded["overflow_to_sample_mapping"]  # a cut line continues in the rows after its first
        first = [row for row in range(len(sample)) if row == 0 or sample[row - 1] != sample[row]]
        return {
            "input_ids": [encoded["input_ids"][row] for row in first],
            "special_tokens_mask": [encoded["special_tokens_mask"][row] for row in first],
            "was_cut": [row + 1 < len(sample) and sample[row + 1] == sample[row] for row in first],
        }

    def tokenize(batch):
        encoded = tokenizer(batch[column], **encode)
        return {**encoded, "num_tokens": [len(ids) for ids in encoded["input_ids"]]}

    def group_blocks(batch):
        blocks = {}
        for key in ("input_ids", "special_tokens_mask"):
            stream = [value for values in batch[key] for value in values]
            blocks[key] = [
                stream[start : start + max_length] for start in range(0, len(stream) - max_length + 1, max_length)
            ]
        return blocks

    if data_args.line_by_line:
        examples = raw.map(tokenize_lines, desc="Tokenizing lines", **map_options)
        logger.info(
            f"{len(examples)} examples from the {len(raw)} lines (empty lines left out); "
            f"{sum(examples['was_cut'])} lines cut to {max_length} tokens."
        )
        return examples.remove_columns("was_cut")
    tokens = raw.map(tokenize, desc="Tokenizing", **map_options)
    examples = tokens.map(
        group_blocks, desc="Grouping into blocks", **{**map_options, "remove_columns": tokens.column_names}
    )
    total = sum(tokens["num_tokens"])
    logger.info(
        f"{len(examples)} blocks of {max_length} tokens from {total} tokens "
        f"({total - len(examples) * max_length} at the ends of 1000-text runs fill no block)."
    )
    return examples


def masked_token_accuracy():
    accuracy = load_metric("accuracy")

    def compute_metrics(eval_prediction):
        predictions, labels = eval_prediction
        masked = labels != -100
        return accuracy.compute(predictions=predictions[masked], references=labels[masked])

    return compute_metrics


def argmax_logits(logits, labels):
    """Keeps only the predicted token ids, so evaluation does not hold the logits over the whole vocabulary."""
    return logits.argmax(dim=-1)


ARGUMENTS = (TextModelArguments, MLMDataArguments, OutputArguments, TrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    model_args, data_args, output_args, training_args = parse_arguments(ARGUMENTS, argv)
    setup_logging(training_args, logger)
    if not (training_args.do_train or training_args.do_eval):
        raise InputError("Nothing to do: pass --do_train and/or --do_eval.")
    last_checkpoint = check_output_dir(training_args, output_args.overwrite_output_dir)
    push = take_over_push(training_args)
    set_seed(training_args.seed)

    tokenizer, config = text_tokenizer_and_config(model_args)
    if tokenizer.mask_token is None:
        raise InputError(f"The tokenizer {tokenizer.name_or_path} has no mask token, which masked-LM training needs.")
    max_length = check_max_seq_length(data_args.max_seq_length, config, DEFAULT_MAX_SEQ_LENGTH)

    raw = load_raw_text(data_args, model_args, training_args)
    splits = {"train": training_args.do_train, "validation": training_args.do_eval}
    for split, needed in splits.items():
        if needed and split not in raw:
            raise InputError(f"The data has no {split} split (it has: {', '.join(raw)}).")
    column = text_column(raw["train" if training_args.do_train else "validation"], data_args.text_column_name)
    for split in raw:
        require_columns(raw[split], [column], "--text_column_name", f"the {split} data")

    with training_args.main_process_first(desc="tokenizing"):
        train_set = eval_set = None
        if training_args.do_train:
            train_set = tokenized_examples(raw["train"], tokenizer, data_args, column, max_length)
            train_set = first_samples(train_set, data_args.max_train_samples)
        if training_args.do_eval:
            eval_set = tokenized_examples(raw["validation"], tokenizer, data_args, column, max_length)
            eval_set = first_samples(eval_set, data_args.max_eval_samples)
    for name, examples in (("training", train_set), ("evaluation", eval_set)):
        if examples is not None and len(examples) == 0:
            raise InputError(f"The {name} data gives no example of {max_length} tokens.")

    model = build_model(AutoModelForMaskedLM, model_args, config)

    # Each process masks with its own seeds, so the processes of a multi-process run draw independent masks: the
    # collator adds its data-loader worker's index to the seed, hence one block of worker seeds per process.
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=data_args.mlm_probability,
        mask_replace_prob=data_args.mask_replace_prob,
        random_replace_prob=data_args.random_replace_prob,
        pad_to_multiple_of=data_args.pad_to_multiple_of,
        seed=training_args.seed + training_args.process_index * max(1, training_args.dataloader_num_workers),
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=masked_token_accuracy() if training_args.do_eval else None,
        preprocess_logits_for_metrics=argmax_logits if training_args.do_eval else None,
    )

    results = train_and_evaluate(trainer, training_args, last_checkpoint)
    if training_args.do_eval:
        loss = results["eval"]["eval_loss"]
        results["eval"]["eval_perplexity"] = math.exp(loss) if loss < 700 else math.inf
    command = script_command(__file__, argv)
    save_final_model(trainer, results, trained=training_args.do_train, command=command, push=push)
    return results


if __name__ == "__main__":
    run(main)
