"""examples/run_image_classification.py on CIFAR-10 images: LION and ViT from scratch, distillation, bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_without_lion_hf
from examples_support import CPU_RUN, IMAGE_CLASSES, TINY_VISION_SHAPE, read_json
from PIL import Image
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification
from transformers.models.auto.image_processing_auto import AutoImageProcessor

import run_image_classification
from common import InputError
from distillation import DistillationTrainer
from image_transforms import augment, random_resized_crop
from lion_hf import LionConfig, LionForImageClassificationWithTeacher


def image_flags(output_dir, image_data, model_type, overrides, *extra):
    return [
        "--model_type", model_type, "--config_overrides", overrides, "--train_dir", str(image_data["train"]),
        "--validation_dir", str(image_data["validation"]), "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "12", "--learning_rate", "1e-3", *CPU_RUN, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory, image_data):
    """The softmax baseline, trained by the same script; the teacher of the distillation tests."""
    output_dir = tmp_path_factory.mktemp("vit") / "run"
    results = run_image_classification.main(
        image_flags(output_dir, image_data, "vit", TINY_VISION_SHAPE, "--do_train", "--do_eval", "--max_steps", "3")
    )
    return output_dir, results


def validation_accuracy(model, processor, image_data) -> float:
    """Top-1 accuracy on the validation folder, computed here image by image with the saved processor."""
    correct = total = 0
    for label, name in enumerate(IMAGE_CLASSES):
        for path in sorted((image_data["validation"] / name).glob("*.png")):
            pixels = processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                correct += int(model(pixel_values=pixels).logits.argmax(-1).item() == label)
            total += 1
    return correct / total


def test_lion_from_scratch_trains_evaluates_and_saves_a_folder_that_loads_without_lion_hf(tmp_path, image_data):
    output_dir = tmp_path / "lion"
    results = run_image_classification.main(
        image_flags(output_dir, image_data, "lion", f"variant=s,patch_order=snake,{TINY_VISION_SHAPE}",
                    "--do_train", "--do_eval", "--max_steps", "3")
    )  # fmt: skip
    assert read_json(output_dir / "all_results.json") == {**results["train"], **results["eval"]}
    assert results["train"]["train_samples"] == 36 and results["eval"]["eval_samples"] == 12
    config = read_json(output_dir / "config.json")
    assert config["architectures"] == ["LionForImageClassification"] and config["patch_order"] == "snake"
    assert config["id2label"] == {str(i): name for i, name in enumerate(IMAGE_CLASSES)}

    from lion_hf import LionForImageClassification

    model = LionForImageClassification.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert processor.crop_size["height"] == 32 and processor.size["shortest_edge"] == int(32 / 0.875)
    assert results["eval"]["eval_accuracy"] == pytest.approx(validation_accuracy(model, processor, image_data))

    image = image_data["validation"] / "ship" / sorted(p.name for p in (image_data["validation"] / "ship").iterdir())[0]
    with torch.no_grad():
        expected = model(**processor(Image.open(image).convert("RGB"), return_tensors="pt")).logits[0]
    printed = run_without_lion_hf(
        f"""
        import json
        from transformers import pipeline
        classify = pipeline("image-classification", model={str(output_dir)!r}, trust_remote_code=True)
        scores = {{item["label"]: item["score"] for item in classify({str(image)!r}, top_k=3)}}
        print("RESULT", json.dumps({{"class": type(classify.model).__name__, "scores": scores}}))
        """,
        cwd=tmp_path,
    )
    loaded = json.loads(printed.split("RESULT", 1)[1])
    assert loaded["class"] == "LionForImageClassification"
    probabilities = expected.softmax(-1)
    for label, name in enumerate(IMAGE_CLASSES):
        assert loaded["scores"][name] == pytest.approx(probabilities[label].item(), abs=1e-5)


def test_vit_baseline_trains_from_the_same_script(vit_run, image_data):
    output_dir, results = vit_run
    config = read_json(output_dir / "config.json")
    assert config["model_type"] == "vit" and config["architectures"] == ["ViTForImageClassification"]
    model = ViTForImageClassification.from_pretrained(output_dir).eval()
    assert model.config._attn_implementation == "sdpa"
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert results["eval"]["eval_accuracy"] == pytest.approx(validation_accuracy(model, processor, image_data))


def test_distils_a_lion_student_from_the_vit_teacher(tmp_path, vit_run, image_data):
    output_dir = tmp_path / "student"
    results = run_image_classification.main(
        image_flags(output_dir, image_data, "lion", f"variant=d,{TINY_VISION_SHAPE}", "--do_train", "--do_eval",
                    "--max_steps", "2", "--teacher_model", str(vit_run[0]), "--distillation_type", "soft")
    )  # fmt: skip
    config = read_json(output_dir / "config.json")
    assert config["architectures"] == ["LionForImageClassificationWithTeacher"] and config["use_distillation_token"]
    student = LionForImageClassificationWithTeacher.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert results["eval"]["eval_accuracy"] == pytest.approx(validation_accuracy(student, processor, image_data))


@pytest.mark.parametrize("distillation_type", ["hard", "soft"])
def test_distillation_loss_combines_both_heads_and_leaves_the_teacher_without_gradient(tmp_path, distillation_type):
    torch.manual_seed(0)
    shape = dict(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_labels=3)
    student = LionForImageClassificationWithTeacher(
        LionConfig(modality="vision", variant="d", use_distillation_token=True, **shape)
    )
    teacher = ViTForImageClassification(ViTConfig(intermediate_size=32, **shape))
    args = TrainingArguments(str(tmp_path / "never"), use_cpu=True, report_to="none")
    trainer = DistillationTrainer(
        model=student, args=args, teacher=teacher, distillation_type=distillation_type, alpha=0.3, tau=2.0
    )
    inputs = {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0, 2, 1, 2])}
    loss, outputs = trainer.compute_loss(student, inputs, return_outputs=True)

    cls_logits, distillation_logits = outputs.cls_logits, outputs.distillation_logits
    with torch.no_grad():
        teacher_logits = teacher(pixel_values=inputs["pixel_values"]).logits
    if distillation_type == "hard":
        distill = F.cross_entropy(distillation_logits, teacher_logits.argmax(-1))
    else:  # DeiT: KL(teacher || student) at temperature tau, summed, times tau^2, over batch x classes
        teacher_p = (teacher_logits / 2.0).softmax(-1)
        distill = (teacher_p * (teacher_p.log() - (distillation_logits / 2.0).log_softmax(-1))).sum() * 4.0 / 12
    expected = 0.7 * F.cross_entropy(cls_logits, inputs["labels"]) + 0.3 * distill
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(outputs.logits, (cls_logits + distillation_logits) / 2)

    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    for head in (student.cls_classifier, student.distillation_classifier):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_training_augmentation_crops_resizes_and_flips():
    halves = np.zeros((40, 60, 3), dtype=np.uint8)
    halves[:, 30:] = 255
    image = Image.fromarray(halves)
    rng = random.Random(0)
    crops = [random_resized_crop(image, 24, 0.08, rng) for _ in range(20)]
    assert all(crop.size == (24, 24) for crop in crops)
    assert len({crop.tobytes() for crop in crops}) > 1
    # Whole-image crops (scale 1): each comes out as the image resized, or its mirror image, and both occur.
    square = Image.fromarray(halves[:, 10:50])
    resized = np.asarray(square.resize((24, 24), Image.BICUBIC))
    seen = set()
    for _ in range(20):
        out = np.asarray(augment(square, 24, 1.0, rng))
        mirrored = np.array_equal(out, resized[:, ::-1])
        assert mirrored or np.array_equal(out, resized)
        seen.add(mirrored)
    assert seen == {True, False}


def class_folders(tmp_path, image_data, name, classes=IMAGE_CLASSES):
    """Two training images of each of ``classes``, in a new image folder ``name``."""
    folder = tmp_path / name
    for label in classes:
        (folder / label).mkdir(parents=True)
        for path in sorted((image_data["train"] / label).glob("*.png"))[:2]:
            (folder / label / path.name).write_bytes(path.read_bytes())
    return folder


def with_truncated_image(tmp_path, image_data):
    folder = class_folders(tmp_path, image_data, "broken")
    (folder / "dog" / "truncated.png").write_bytes(next(iter(sorted(folder.glob("dog/*.png")))).read_bytes()[:60])
    return folder


def without_images(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images here")
    return tmp_path / "empty"


def with_loose_images(tmp_path, image_data):
    folder = class_folders(tmp_path, image_data, "loose")
    (folder / "stray.png").write_bytes((image_data["train"] / "cat").glob("*.png").__next__().read_bytes())
    return folder


def teacher_of_other_labels(tmp_path):
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        id2label={0: "cat", 1: "dog", 2: "truck"},
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


LION = f"variant=d,{TINY_VISION_SHAPE}"
BAD_INPUTS = {
    "a missing folder": (
        lambda tmp, data: ["--train_dir", str(tmp / "nowhere")],
        r"--train_dir .*nowhere is not a folder",
    ),
    "a folder without images": (lambda tmp, data: ["--train_dir", str(without_images(tmp))], r"empty holds no images"),
    "an unreadable image": (
        lambda tmp, data: ["--train_dir", str(with_truncated_image(tmp, data))],
        r"Cannot read the train image .*broken/dog/truncated\.png",
    ),
    "images outside the class folders": (
        lambda tmp, data: ["--train_dir", str(with_loose_images(tmp, data))],
        r"images belong in one sub-folder per class, but stray\.png lies in the folder itself",
    ),
    "validation classes unknown to training": (
        lambda tmp, data: ["--train_dir", str(class_folders(tmp, data, "two", ("cat", "dog")))],
        r"--validation_dir .* has classes that --train_dir lacks: ship\.",
    ),
    "a teacher of other labels": (
        lambda tmp, data: ["--teacher_model", str(teacher_of_other_labels(tmp))],
        r"The teacher .* predicts other labels than the student: teacher cat, dog, truck; student cat, dog, ship\.",
    ),
    "an unknown distillation type": (
        lambda tmp, data: ["--teacher_model", str(tmp), "--distillation_type", "fuzzy"],
        r"Unknown --distillation_type 'fuzzy'; allowed: hard, soft\.",
    ),
    "a student without a distillation token": (
        lambda tmp, data: ["--model_type", "vit", "--config_overrides", TINY_VISION_SHAPE, "--teacher_model", str(tmp)],
        r"Distillation needs a student with a distillation token",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_before_anything_is_written(case, tmp_path, image_data):
    extra, message = BAD_INPUTS[case]
    output_dir = tmp_path / "run"
    with pytest.raises(InputError, match=message):
        run_image_classification.main(
            image_flags(
                output_dir, image_data, "lion", LION, "--do_train", "--max_steps", "1", *extra(tmp_path, image_data)
            )
        )
    assert not output_dir.exists()
