"""lion-hf: LION bidirectional linear-attention models for the Hugging Face ecosystem.

Importing this package registers `LionConfig` and every LION model with the transformers Auto classes, so
installed users need no `trust_remote_code`; saved checkpoints carry the model code for those who do not
install it.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .modeling.configuration_lion import PRESETS, LionConfig
from .modeling.lion_attention import ATTENTION_FORMS, lion_attention
from .modeling.modeling_lion import (
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
    lion_image_processor,
    snake_orders,
)

__version__ = "0.1.0"

AUTO_CLASSES = {
    AutoModel: LionModel,
    AutoModelForMaskedLM: LionForMaskedLM,
    AutoModelForSequenceClassification: LionForSequenceClassification,
    AutoModelForTokenClassification: LionForTokenClassification,
    AutoModelForQuestionAnswering: LionForQuestionAnswering,
    AutoModelForMultipleChoice: LionForMultipleChoice,
    AutoModelForImageClassification: LionForImageClassification,
}


def _register() -> None:
    AutoConfig.register(LionConfig.model_type, LionConfig, exist_ok=True)
    LionConfig.register_for_auto_class()
    for auto_class, model_class in AUTO_CLASSES.items():
        auto_class.register(LionConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
    # Saved with the image-classification auto class in its auto_map. Locally, as for DeiT, a checkpoint's
    # `architectures` picks between the two heads, so a distilled checkpoint keeps both of its classifiers.
    LionForImageClassificationWithTeacher.register_for_auto_class(AutoModelForImageClassification.__name__)
    AutoModelForImageClassification.register(
        LionConfig, (LionForImageClassification, LionForImageClassificationWithTeacher), exist_ok=True
    )


_register()

__all__ = [
    "ATTENTION_FORMS",
    "PRESETS",
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
    "distillation_loss",
    "lion_attention",
    "lion_image_processor",
    "snake_orders",
]
