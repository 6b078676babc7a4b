"""Training through transformers.Trainer: gradient accumulation must not change the update."""

import torch
from transformers import Trainer, TrainingArguments

from lion_hf import LionConfig, LionForMaskedLM, LionForMultipleChoice


def _train_one_step(tmp_path, name, batch_size, accumulation, features, head=LionForMaskedLM):
    torch.manual_seed(0)
    config = LionConfig(
        variant="s", vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = head(config)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    # SGD without clipping: a doubled gradient shows as a doubled step (Adam or clipping would hide it).
    args = TrainingArguments(
        output_dir=str(tmp_path / name), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, dataloader_drop_last=True, seed=0, max_grad_norm=0.0,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=features).train()
    return before, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_gives_the_same_sgd_step_as_one_large_batch(tmp_path):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (4, 12), generator=generator)
    # Every example has the same number of labelled tokens, so the mean of micro-batch means is the batch mean.
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    features = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels)]
    before, whole = _train_one_step(tmp_path, "whole", batch_size=4, accumulation=1, features=features)
    _, accumulated = _train_one_step(tmp_path, "accumulated", batch_size=2, accumulation=2, features=features)
    step = (whole - before).abs().max()
    assert step > 1e-3, "the SGD step did not move the weights"
    assert (accumulated - whole).abs().max() < 1e-4 * step


def test_gradient_accumulation_keeps_the_multiple_choice_step(tmp_path):
    """One label per example: the accumulated step must equal the large batch's, not be scaled by the steps."""
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 50, (4, 3, 10), generator=generator)
    features = [{"input_ids": i, "labels": torch.tensor(n % 3)} for n, i in enumerate(ids)]
    kwargs = dict(features=features, head=LionForMultipleChoice)
    before, whole = _train_one_step(tmp_path, "whole", batch_size=4, accumulation=1, **kwargs)
    _, accumulated = _train_one_step(tmp_path, "accumulated", batch_size=2, accumulation=2, **kwargs)
    step = (whole - before).abs().max()
    assert step > 1e-3, "the SGD step did not move the weights"
    assert (accumulated - whole).abs().max() < 1e-4 * step
