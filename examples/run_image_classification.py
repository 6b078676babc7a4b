"""Train or fine-tune any image classifier (LION, ViT, ...) with `Trainer`, optionally distilled from a teacher.

From scratch on folders of images (one sub-folder per class), e.g. CIFAR-size images with 4-pixel patches:

    python examples/run_image_classification.py --model_type lion --config_overrides \\
        variant=d,patch_order=snake,image_size=32,patch_size=4,hidden_size=192,num_attention_heads=3 \\
        --train_dir ../shared/data/images/cifar10-mini/train --train_val_split 0.1 \\
        --do_train --do_eval --output_dir out/lion-d-snake-cifar

Training augments with a random resized crop and a horizontal flip (PIL), then normalises with the image processor;
evaluation uses the processor as it is (the checkpoint's own, or DeiT's evaluation transform for a new model).
`--teacher_model PATH` trains a LION student with a distillation token against any image classifier
(`DistillationTrainer`). Runs unchanged under `accelerate launch`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import datasets
from common import (
    DataArguments,
    InputError,
    ModelArguments,
    OutputArguments,
    build_config,
    build_model,
    check_output_dir,
    first_samples,
    has_trained_head,
    load_hub_dataset,
    load_metric,
    parse_arguments,
    require_columns,
    run,
    save_final_model,
    script_command,
    set_labels,
    setup_logging,
    split_off_validation,
    take_over_push,
    train_and_evaluate,
)
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from distillation import DistillationTrainer
from image_transforms import eval_transform, train_transform
from PIL import Image
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments, set_seed
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # 5.17 exports it only with torchvision

import lion_hf

logger = logging.getLogger(__name__)

HEAD = "ForImageClassification"
PROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class ImageModelArguments(ModelArguments):
    image_processor_name: str | None = field(
        default=None,
        metadata={"help": "The image processor (folder or Hub id); default: the checkpoint's own, or DeiT's "
                  "evaluation transform at the model's image size for a new model."},
    )  # fmt: skip


@dataclass
class ImageDataArguments(DataArguments):
    train_dir: str | None = field(default=None, metadata={"help": "Training images, one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Evaluation images, the same layout."})
    train_val_split: float = field(
        default=0.15,
        metadata={"help": "Share of the training images held out (per class) when there is no validation data."},
    )
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the labels."})
    min_crop_scale: float = field(
        default=0.08, metadata={"help": "Smallest share of the image area a training crop covers (DeiT: 0.08)."}
    )


@dataclass
class DistillationArguments:
    teacher_model: str | None = field(
        default=None,
        metadata={"help": "An image classifier (folder or Hub id) to distil from; the student must have a "
                  "distillation token (a new LION model gets one)."},
    )  # fmt: skip
    distillation_type: str = field(default="hard", metadata={"help": f"One of {', '.join(lion_hf.DISTILLATION_TYPES)}."})
    distillation_alpha: float = field(default=0.5, metadata={"help": "Weight of the distillation term, in [0, 1]."})
    distillation_tau: float = field(default=1.0, metadata={"help": "Temperature of the soft distillation."})


def image_files(folder: str, flag: str) -> list[str]:
    """The images under ``folder``, refusing a folder without any and images outside the class sub-folders."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--{flag} {folder} is not a folder.")
    extensions = {extension.lower() for extension in ImageFolder.EXTENSIONS}
    files = sorted(path for path in root.rglob("*") if path.is_file() and path.suffix.lower() in extensions)
    if not files:
        raise InputError(
            f"--{flag} {folder} holds no images (files ending in .png, .jpg, .jpeg, ... of `datasets`' imagefolder)."
        )
    loose = [path.name for path in files if path.parent == root]
    if loose:
        raise InputError(
            f"--{flag} {folder}: images belong in one sub-folder per class, but {loose[0]} lies in the folder itself."
        )
    return [str(path) for path in files]


def load_raw(data_args: ImageDataArguments, model_args: ImageModelArguments, training_args) -> datasets.DatasetDict:
    if data_args.dataset_name:
        raw = load_hub_dataset(data_args.dataset_name, data_args.dataset_config_name, model_args)
    else:
        folders = {"train": data_args.train_dir, "validation": data_args.validation_dir}
        files = {split: image_files(folder, f"{split}_dir") for split, folder in folders.items() if folder}
        if not files:
            raise InputError("Give the images with --train_dir / --validation_dir or --dataset_name.")
        raw = datasets.load_dataset("imagefolder", data_files=files, cache_dir=model_args.cache_dir)
        if "train" in raw and "validation" in raw:
            train_classes = set(raw["train"].unique(data_args.label_column_name))
            extra = sorted(set(raw["validation"].unique(data_args.label_column_name)) - train_classes)
            names = raw["train"].features[data_args.label_column_name].names
            if extra:
                raise InputError(
                    f"--validation_dir {data_args.validation_dir} has classes that --train_dir lacks: "
                    f"{', '.join(names[i] for i in extra)}."
                )
    if training_args.do_eval and training_args.do_train:
        stratify = isinstance(raw["train"].features.get(data_args.label_column_name), datasets.ClassLabel)
        raw = split_off_validation(
            raw, data_args.train_val_split, training_args.seed, "--train_val_split",
            stratify_by_column=data_args.label_column_name if stratify else None,
        )  # fmt: skip
    return raw


def check_images(dataset: datasets.Dataset, column: str, split: str) -> None:
    """Decode every image once, so that an unreadable file stops the run before training, by name."""
    for item in dataset.cast_column(column, datasets.Image(decode=False))[column]:
        source = item.get("path") or "an image stored in the dataset"
        try:
            with Image.open(BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as image:
                image.load()
        except Exception as error:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...) for bad files
            raise InputError(f"Cannot read the {split} image {source}: {error}") from None


def image_processor(model_args: ImageModelArguments, image_size: int):
    source = model_args.image_processor_name
    if source is None and model_args.model_name_or_path:
        if (Path(model_args.model_name_or_path) / PROCESSOR_FILE).is_file() or not Path(
            model_args.model_name_or_path
        ).exists():
            source = model_args.model_name_or_path
        else:
            logger.warning(
                f"{model_args.model_name_or_path} has no {PROCESSOR_FILE}: using DeiT's evaluation transform."
            )
    if source is not None:
        return AutoImageProcessor.from_pretrained(source, cache_dir=model_args.cache_dir)
    # The same pixels for every architecture, so LION and ViT trained by this script see identical inputs.
    return lion_hf.lion_image_processor(
        lion_hf.LionConfig(modality="vision", image_size=image_size, patch_size=image_size)
    )


def load_teacher(distill_args: DistillationArguments, model_args: ImageModelArguments, student_config):
    if distill_args.distillation_type not in lion_hf.DISTILLATION_TYPES:
        raise InputError(
            f"Unknown --distillation_type {distill_args.distillation_type!r}; allowed: {', '.join(lion_hf.DISTILLATION_TYPES)}."
        )
    if not 0 <= distill_args.distillation_alpha <= 1 or distill_args.distillation_tau <= 0:
        raise InputError(
            f"--distillation_alpha must lie in [0, 1] and --distillation_tau be positive, got "
            f"{distill_args.distillation_alpha} and {distill_args.distillation_tau}."
        )
    if not getattr(student_config, "use_distillation_token", False):
        raise InputError(
            "Distillation needs a student with a distillation token: a LION model from scratch, or a LION checkpoint "
            "saved with use_distillation_token=True."
        )
    teacher = AutoModelForImageClassification.from_pretrained(
        distill_args.teacher_model, cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code
    )
    theirs = [teacher.config.id2label[i] for i in sorted(teacher.config.id2label)]
    ours = [student_config.id2label[i] for i in sorted(student_config.id2label)]
    if theirs != ours:
        raise InputError(
            f"The teacher {distill_args.teacher_model} predicts other labels than the student: "
            f"teacher {', '.join(theirs)}; student {', '.join(ours)}."
        )
    if getattr(teacher.config, "image_size", None) != student_config.image_size:
        raise InputError(
            f"The teacher takes {teacher.config.image_size}-pixel images and the student {student_config.image_size}; "
            "distillation feeds both the same pixels."
        )
    return teacher


ARGUMENTS = (ImageModelArguments, ImageDataArguments, DistillationArguments, OutputArguments, TrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    model_args, data_args, distill_args, output_args, training_args = parse_arguments(ARGUMENTS, argv)
    setup_logging(training_args, logger)
    if not (training_args.do_train or training_args.do_eval):
        raise InputError("Nothing to do: pass --do_train and/or --do_eval.")
    if not 0 < data_args.min_crop_scale <= 1:
        raise InputError(f"--min_crop_scale must lie in (0, 1], got {data_args.min_crop_scale}.")
    last_checkpoint = check_output_dir(training_args, output_args.overwrite_output_dir)
    push = take_over_push(training_args)
    set_seed(training_args.seed)

    raw = load_raw(data_args, model_args, training_args)
    wanted = [
        split for split, flag in (("train", "do_train"), ("validation", "do_eval")) if getattr(training_args, flag)
    ]
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    splits = {}
    for split in wanted:
        if split not in raw:
            raise InputError(f"The data has no {split} split (it has: {', '.join(raw)}).")
        columns = [data_args.image_column_name, data_args.label_column_name]
        require_columns(raw[split], columns, "--image_column_name / --label_column_name", f"the {split} data")
        splits[split] = first_samples(raw[split], limits[split])
        check_images(splits[split], data_args.image_column_name, split)
    label_feature = raw[wanted[0]].features[data_args.label_column_name]
    if not isinstance(label_feature, datasets.ClassLabel):
        raise InputError(f"The label column {data_args.label_column_name!r} holds no class labels ({label_feature}).")

    new_lion = model_args.model_type == lion_hf.LionConfig.model_type or model_args.preset is not None
    scratch = (
        {"modality": "vision", "use_distillation_token": distill_args.teacher_model is not None} if new_lion else {}
    )
    config = build_config(model_args, scratch)
    trained_head = has_trained_head(model_args, config, HEAD)
    set_labels(config, list(label_feature.names), trained_head, model_args.ignore_mismatched_sizes)
    for split in splits:  # a fine-tuned classifier keeps its own label order: the data's ids follow it
        splits[split] = splits[split].align_labels_with_mapping(config.label2id, data_args.label_column_name)
    image_size = getattr(config, "image_size", None)
    if not isinstance(image_size, int):
        raise InputError(f"{type(config).__name__} has no square image_size; this script trains square images.")
    teacher = load_teacher(distill_args, model_args, config) if distill_args.teacher_model else None

    model = build_model(AutoModelForImageClassification, model_args, config)

    processor = image_processor(model_args, image_size)
    image_column, label_column = data_args.image_column_name, data_args.label_column_name
    if "train" in splits:
        splits["train"].set_transform(
            train_transform(processor, image_size, data_args.min_crop_scale, image_column, label_column)
        )
    if "validation" in splits:
        splits["validation"].set_transform(eval_transform(processor, image_column, label_column))
    if training_args.remove_unused_columns:
        logger.info("Keeping the image column for the on-the-fly transforms (remove_unused_columns=False).")
        training_args.remove_unused_columns = False

    accuracy = load_metric("accuracy")

    def compute_metrics(eval_prediction):
        return accuracy.compute(predictions=eval_prediction.predictions, references=eval_prediction.label_ids)

    def predicted_classes(logits, labels):
        # A distilled student returns (logits, cls_logits, distillation_logits): `logits` is the mean of both heads.
        return (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)

    trainer_class, extra = Trainer, {}
    if teacher is not None:
        trainer_class = DistillationTrainer
        extra = {
            "teacher": teacher,
            "distillation_type": distill_args.distillation_type,
            "alpha": distill_args.distillation_alpha,
            "tau": distill_args.distillation_tau,
        }
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=splits.get("train"),
        eval_dataset=splits.get("validation"),
        processing_class=processor,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=predicted_classes,
        **extra,
    )

    results = train_and_evaluate(trainer, training_args, last_checkpoint)
    command = script_command(__file__, argv)
    save_final_model(trainer, results, trained=training_args.do_train, command=command, push=push)
    return results


if __name__ == "__main__":
    run(main)
