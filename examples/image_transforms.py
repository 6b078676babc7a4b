"""Image transforms for training and evaluation, with PIL and the model's image processor (no torchvision).

Training: a random resized crop (the area share drawn from ``[min_scale, 1]``, the aspect ratio log-uniformly from
3/4 to 4/3, bicubic, as DeiT trains) and a horizontal flip with probability 1/2, then the processor's rescaling and
normalisation only. Evaluation: the processor's own pipeline (for LION checkpoints DeiT's resize and centre crop).
Randomness comes from Python's ``random``, which ``Trainer`` seeds in every data-loader worker.
"""

from __future__ import annotations

import math
import random

from PIL import Image

ASPECT_RATIOS = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10


def random_resized_crop(image: Image.Image, size: int, min_scale: float, rng=random) -> Image.Image:
    """A random crop of ``image`` resized to ``size x size``; after ``CROP_ATTEMPTS`` misses, its largest centred crop
    of an aspect ratio within ``ASPECT_RATIOS``."""
    width, height = image.size
    log_low, log_high = (math.log(r) for r in ASPECT_RATIOS)
    for _ in range(CROP_ATTEMPTS):
        area = width * height * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(log_low, log_high))
        crop_width, crop_height = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            left, top = rng.randint(0, width - crop_width), rng.randint(0, height - crop_height)
            return image.resize((size, size), Image.BICUBIC, box=(left, top, left + crop_width, top + crop_height))
    ratio = min(max(width / height, ASPECT_RATIOS[0]), ASPECT_RATIOS[1])
    crop_width, crop_height = (
        (width, round(width / ratio)) if width / height < ratio else (round(height * ratio), height)
    )
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return image.resize((size, size), Image.BICUBIC, box=(left, top, left + crop_width, top + crop_height))


def augment(image: Image.Image, size: int, min_scale: float, rng=random) -> Image.Image:
    image = random_resized_crop(image.convert("RGB"), size, min_scale, rng)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def train_transform(processor, size: int, min_scale: float, image_column: str, label_column: str):
    """A ``datasets`` batch transform: augmented, normalised ``pixel_values`` and ``labels``."""

    def transform(batch):
        images = [augment(image, size, min_scale) for image in batch[image_column]]
        pixels = processor(images, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": batch[label_column]}

    return transform


def eval_transform(processor, image_column: str, label_column: str):
    """A ``datasets`` batch transform: the processor's evaluation pipeline and ``labels``."""

    def transform(batch):
        images = [image.convert("RGB") for image in batch[image_column]]
        return {"pixel_values": processor(images, return_tensors="pt")["pixel_values"], "labels": batch[label_column]}

    return transform
