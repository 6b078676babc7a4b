"""Original LION checkpoints -> Hugging Face folders.

``convert_vision`` reads the DeiT-based image classifiers (``.pth``), ``convert_mlm`` the M2-BERT/Composer MLM
and GLUE checkpoints (``.pt``); both write a complete folder (config with auto_map, safetensors, remote code,
tokenizer or image processor, model card) and can verify it against the original code's outputs. From the shell:
``lion-hf convert {vision,mlm} ...`` or ``python -m lion_hf.conversion {vision,mlm} ...``.
"""

from .checkpoint import ALLOWED_GLOBALS, UnreadableCheckpointError, UnsafeCheckpointError, load_checkpoint
from .mlm import convert_mlm
from .pipeline import ConversionResult
from .state_dict import CheckpointMismatchError
from .verify import VerificationError, VerificationReport, verify_model
from .vision import convert_vision

__all__ = [
    "ALLOWED_GLOBALS",
    "CheckpointMismatchError",
    "ConversionResult",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "VerificationError",
    "VerificationReport",
    "convert_mlm",
    "convert_vision",
    "load_checkpoint",
    "verify_model",
]
