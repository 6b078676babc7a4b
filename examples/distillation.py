"""DeiT-style knowledge distillation as a `Trainer` subclass: the loss lives on the training side.

The student is a model with two heads, as transformers' DeiT keeps it (``LionForImageClassificationWithTeacher``:
``cls_logits`` from the class token, ``distillation_logits`` from the distillation token, their mean as ``logits``
at inference). The teacher is any image classifier; it runs on the student's pixels without gradients.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from lion_hf import distillation_loss


class DistillationTrainer(Trainer):
    """``Trainer`` whose loss is ``(1 - alpha) * CE(cls head, labels) + alpha * D(distillation head, teacher)``.

    ``D`` is the cross-entropy to the teacher's argmax (``"hard"``) or the temperature-``tau`` KL divergence
    (``"soft"``), computed by ``lion_hf.distillation_loss``. Evaluation reports the same loss and scores ``logits``.
    """

    def __init__(self, *args, teacher, distillation_type: str = "hard", alpha: float = 0.5, tau: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.distillation = {"distillation_type": distillation_type, "alpha": alpha, "tau": tau}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values, labels = inputs["pixel_values"], inputs["labels"]
        outputs = model(pixel_values=pixel_values)
        with torch.no_grad():
            teacher_logits = self.teacher(pixel_values=pixel_values).logits
        loss = distillation_loss(
            outputs.cls_logits, outputs.distillation_logits, labels, teacher_logits, **self.distillation
        )
        return (loss, outputs) if return_outputs else loss
