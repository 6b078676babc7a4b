"""lion-hf: LION bidirectional linear-attention models for the Hugging Face ecosystem.

Importing this package registers `LionConfig` and every LION model with the transformers Auto classes, so
installed users need no `trust_remote_code`; saved checkpoints carry the model code for those who do not
install it. `export_folder` writes Hub-ready folders (with their model card), `push_folder` publishes them.
"""

import transformers

from .cards import Evaluation, Provenance, render_card
from .export import export_folder
from .hub import push_folder
from .image_processing import lion_image_processor
from .modeling.configuration_lion import PRESETS, LionConfig
from .modeling.lion_attention import ATTENTION_BACKENDS, ATTENTION_FORMS, lion_attention, lion_attention_weights
from .modeling.modeling_lion import (
    DISTILLATION_TYPES,
    TEXT_AUTO_CLASSES,
    VISION_AUTO_CLASSES,
    LionForImageClassification,
    LionForImageClassificationWithTeacher,
    LionForMaskedLM,
    LionForMultipleChoice,
    LionForQuestionAnswering,
    LionForSequenceClassification,
    LionForTokenClassification,
    LionModel,
    LionPreTrainedModel,
    distillation_loss,
    snake_orders,
)

__version__ = "0.1.0"


def _register() -> None:
    """Every head of the model's Auto-class tables, registered with transformers and for saving its code."""
    transformers.AutoConfig.register(LionConfig.model_type, LionConfig, exist_ok=True)
    LionConfig.register_for_auto_class()
    heads_by_auto_class: dict[str, tuple] = {}
    for table in (TEXT_AUTO_CLASSES, VISION_AUTO_CLASSES):
        for auto_class, heads in table.items():
            heads_by_auto_class[auto_class] = tuple(dict.fromkeys(heads_by_auto_class.get(auto_class, ()) + heads))
    for auto_class, heads in heads_by_auto_class.items():
        for head in heads:
            head.register_for_auto_class(auto_class)
        # Several heads for one Auto class (the two image classifiers): a config's `architectures` picks, as for DeiT.
        getattr(transformers, auto_class).register(LionConfig, heads[0] if len(heads) == 1 else tuple(heads), exist_ok=True)


_register()

__all__ = [
    "ATTENTION_BACKENDS",
    "ATTENTION_FORMS",
    "PRESETS",
    "Evaluation",
    "LionConfig",
    "LionForImageClassification",
    "LionForImageClassificationWithTeacher",
    "LionForMaskedLM",
    "LionForMultipleChoice",
    "LionForQuestionAnswering",
    "LionForSequenceClassification",
    "LionForTokenClassification",
    "LionModel",
    "LionPreTrainedModel",
    "Provenance",
    "DISTILLATION_TYPES",
    "distillation_loss",
    "export_folder",
    "lion_attention",
    "lion_attention_weights",
    "lion_image_processor",
    "push_folder",
    "render_card",
    "snake_orders",
]
