"""Helpers shared by the test modules: tiny configs and inputs, comparisons, a process without lion_hf."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lion_hf import LionConfig

REPO = Path(__file__).resolve().parents[1]
FORMS = ("parallel", "chunk", "recurrent")
VARIANTS = ("lit", "d", "s")
VOCAB = 97
# The Auto class that loads each head, written out (not read from the model's tables, which these tests check).
HEAD_AUTO_CLASSES = {
    "LionModel": "AutoModel",
    "LionForMaskedLM": "AutoModelForMaskedLM",
    "LionForSequenceClassification": "AutoModelForSequenceClassification",
    "LionForTokenClassification": "AutoModelForTokenClassification",
    "LionForQuestionAnswering": "AutoModelForQuestionAnswering",
    "LionForMultipleChoice": "AutoModelForMultipleChoice",
    "LionForImageClassification": "AutoModelForImageClassification",
    "LionForImageClassificationWithTeacher": "AutoModelForImageClassification",
}


# --------------------------------------------------------------------------------------- comparisons


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 2e-5) -> None:
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), rtol=rtol, atol=atol)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rtol: float, floor: float = 1e-6) -> None:
    """Elementwise within ``rtol`` relative, and absolutely within ``rtol`` of the largest expected entry.

    ``floor`` bounds the absolute tolerance from below: a gradient that is zero in exact arithmetic (the
    normalised output of one key does not depend on its query) is float32 rounding noise of O(1) terms.
    """
    expected = expected.detach().double()
    atol = max(rtol * expected.abs().max().item(), floor)
    torch.testing.assert_close(actual.detach().double(), expected, rtol=rtol, atol=atol)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# --------------------------------------------------------------------------------------- text models


def tiny_text_config(variant: str = "s", **kwargs) -> LionConfig:
    """A two-layer text config; a large initializer range makes attention matter next to the residual."""
    settings = dict(
        variant=variant,
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=24,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,
        chunk_size=3,
    )
    settings.update(kwargs)
    return LionConfig(**settings)


def build(model_class, config, seed=0):
    torch.manual_seed(seed)
    return model_class(config).eval()


def token_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def right_padded_mask(lengths, length):
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()


def run_in_form(model, form, **inputs):
    model.set_attention_form(form)
    with torch.no_grad():
        return model(**inputs)


# -------------------------------------------------------------------------------------- vision models


def tiny_vision_config(**kwargs) -> LionConfig:
    base = dict(
        modality="vision",
        image_size=16,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        chunk_size=5,
    )
    if "id2label" not in kwargs:
        base["num_labels"] = 3
    return LionConfig(**{**base, **kwargs})


def randomized(model):
    """Weights far from their init, so that decays, gates and position embeddings all matter."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 1.0 if any(part in name for part in ("decay", "token", "position")) else 0.3
            offset = 1.0 if "layernorm" in name and name.endswith("weight") else 0.0
            param.copy_(offset + scale * torch.randn(param.shape, generator=generator))
    return model.eval()


def deit_eval_transform(image: Image.Image, size: int) -> np.ndarray:
    """DeiT's evaluation transform with PIL: shorter side to int(size / 0.875) (bicubic), centre crop, ImageNet norm."""
    image = image.convert("RGB")
    width, height = image.size
    short = int(size / 0.875)
    if width <= height:
        new_size = (short, int(short * height / width))
    else:
        new_size = (int(short * width / height), short)
    image = image.resize(new_size, Image.BICUBIC)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((pixels - mean) / std).transpose(2, 0, 1).astype(np.float32)


def some_images(data_dir: Path, count: int) -> list[Path]:
    images = sorted((data_dir / "images" / "hymenoptera" / "val").glob("*/*.jpg"))
    assert len(images) >= count, f"expected hymenoptera photos under {data_dir}"
    return images[:: len(images) // count][:count]


# ------------------------------------------------------------------------------- a process without us


def _blocker(modules: tuple[str, ...]) -> str:
    return f"""
import sys

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in {modules!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden for this test)")
        return None

sys.meta_path.insert(0, _Blocker())
"""


def run_without_lion_hf(code: str, cwd: Path, timeout: int = 600, also_hidden: tuple[str, ...] = ()) -> str:
    """Run ``code`` in a fresh Python process in which ``import lion_hf`` fails; return its stdout.

    The process asserts at exit that nothing imported lion_hf, so a passing run proves the code path works
    for users who only have transformers and a checkpoint folder. ``also_hidden``: more packages to hide.
    """
    hidden = ("lion_hf", *also_hidden)
    checks = "".join(f"\nassert {name!r} not in sys.modules" for name in hidden)
    script = _blocker(hidden) + textwrap.dedent(code) + checks + "\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "hf_modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout
