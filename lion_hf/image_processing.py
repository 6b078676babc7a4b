"""The image processor that goes with a vision LION checkpoint: the original DeiT evaluation transform.

Models do not save processors (as in transformers); the code that writes a vision folder (conversion, export,
the training scripts) saves this one beside the model.
"""

from __future__ import annotations

from transformers import BitImageProcessorPil
from transformers.image_utils import PILImageResampling
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .modeling.configuration_lion import LionConfig

# DeiT evaluates on a centre crop covering 87.5% of the shorter side after resizing.
EVAL_CROP_RATIO = 0.875


def lion_image_processor(config: LionConfig) -> BitImageProcessorPil:
    """The standard transformers image processor for a vision ``config``: DeiT's evaluation transform.

    RGB conversion, bicubic resize of the shorter side to ``int(image_size / 0.875)``, centre crop to
    ``image_size x image_size``, rescale to [0, 1] and normalisation with the ImageNet mean and std, as the original
    LION/DeiT code evaluates. It is transformers' PIL-backed ``BitImageProcessorPil``; saved, it reloads with
    ``AutoImageProcessor`` (which picks the torchvision-backed twin when torchvision is installed).
    """
    if config.modality != "vision":
        raise ValueError(f"lion_image_processor needs a config with modality='vision', got {config.modality!r}.")
    if config.num_channels != 3:
        raise ValueError(
            f"lion_image_processor normalises RGB images with the ImageNet mean and std; config.num_channels="
            f"{config.num_channels} needs a processor of its own."
        )
    return BitImageProcessorPil(
        do_convert_rgb=True,
        do_resize=True,
        size={"shortest_edge": int(config.image_size / EVAL_CROP_RATIO)},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": config.image_size, "width": config.image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )
