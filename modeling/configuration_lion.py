"""LionConfig: one configuration for the text (BERT-shaped) and vision (ViT/DeiT-shaped) LION models."""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from .lion_attention import check_attention_settings, check_choice, check_positive_int

MODALITIES = ("text", "vision")
VARIANTS = ("lit", "d", "s")
PATCH_ORDERS = ("raster", "snake")
POOLINGS = ("cls", "mean")
FEATURE_MAPS = ("identity", "elu_plus_one", "silu_shift_l2")

# Shapes of the original models: M2-BERT-based MLM (BERT base/large) and DeiT-based image classifiers.
PRESETS = {
    "bert-base": dict(modality="text", hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "bert-large": dict(modality="text", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "lion_tiny_patch16_224": dict(modality="vision", hidden_size=192, num_hidden_layers=12, num_attention_heads=3),
    "lion_small_patch16_224": dict(modality="vision", hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "lion_base_patch16_224": dict(modality="vision", hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
}


class LionConfig(PretrainedConfig):
    r"""Configuration of a LION model (Afzal et al., 2025, arXiv 2502.16249).

    LION layers replace softmax attention by bidirectional linear attention under a decay mask; the same weights
    run as full masked attention, chunkwise, or as a bidirectional RNN with identical outputs.

    Args:
        modality (`str`, *optional*, defaults to `"text"`):
            `"text"`: a BERT-shaped encoder (post-LayerNorm, separate q/k/v, un-normalised attention over
            padding-masked keys). `"vision"`: a ViT/DeiT-shaped encoder (patch embedding, class token,
            pre-LayerNorm, fused qkv, row-normalised attention).
        variant (`str`, *optional*, defaults to `"d"`):
            `"lit"` (LION-LIT: no decay), `"d"` (LION-D: one learned decay per head), `"s"` (LION-S: a decay per
            token and head, from a linear gate on the layer input).
        attention_form (`str`, *optional*, defaults to `"parallel"`):
            `"parallel"`, `"chunk"` or `"recurrent"`; changeable at any time (`model.set_attention_form`). The
            forms compute the same function; from `lion_attention.CHUNK_KERNELS_FROM_LENGTH` (3072) tokens on,
            `"parallel"` without score dropout runs the fused chunk kernels where they can (they are faster there).
        chunk_size (`int`, *optional*, defaults to 64): tokens per chunk of the `"chunk"` form (and per step of
            the `"recurrent"` form).
        attention_backend (`str`, *optional*, defaults to `"auto"`):
            which implementation computes the form: `"auto"` (the fastest that can run the inputs on their device,
            see `lion_attention.IMPLEMENTATIONS`; `$LION_HF_ATTENTION_BACKEND` overrides it) or one by name
            (`"pytorch"`, or `"triton"`: the fused kernels of the parallel form, on CUDA).
        patch_order (`str`, *optional*, defaults to `"raster"`):
            vision only. `"snake"` builds the decay mask along a row-wise and a column-wise boustrophedon of the
            patch grid (each with its own decay parameters or gate) and averages the two masks.
        layer_norm_after (`bool`, *optional*):
            text only: a LayerNorm over the heads' output before the attention output projection. Defaults to
            `True` for `"lit"` and `False` otherwise, as in the original models.
        feature_map (`str`, *optional*):
            applied to queries and keys: `"identity"`, `"elu_plus_one"` or `"silu_shift_l2"` (SiLU + 0.5,
            L2-normalised over the head dimension). Defaults: text `"identity"`; vision `"elu_plus_one"` for
            `"lit"`, `"silu_shift_l2"` otherwise.
        normalize_attention (`bool`, *optional*):
            divide by the row sums of the masked scores (plus `attention_eps`). Defaults: text `False`, vision `True`.
        attention_eps (`float`, *optional*, defaults to 1e-6): the row-sum normaliser's epsilon.
        selective_gate_eps (`float`, *optional*):
            LION-S log-decay is `log(1 - sigmoid(z) + selective_gate_eps)`; `0` means `logsigmoid(-z)`.
            Defaults: text `1e-7`, vision `0.0`, as in the original models.
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        hidden_dropout_prob, attention_probs_dropout_prob, max_position_embeddings, type_vocab_size,
        initializer_range, layer_norm_eps, pad_token_id, classifier_dropout:
            as in `BertConfig` (vision: `intermediate_size` is the MLP width; `attention_probs_dropout_prob`
            drops masked scores in the `"parallel"` form only). `intermediate_size` defaults to 4 x `hidden_size`;
            the dropouts default to 0.1 (text) and 0.0 (vision); `layer_norm_eps` to 1e-12 (text), 1e-6 (vision).
        image_size, patch_size, num_channels (vision): input geometry. `qkv_bias`: bias of the fused qkv projection.
        use_position_embeddings (`bool`, vision): learned absolute position embeddings.
        pooling (`str`, vision): `"cls"` (class token) or `"mean"` (mean of all tokens, class token included).
        use_distillation_token (`bool`, vision): a DeiT-style distillation token after the class token, used by
            `LionForImageClassificationWithTeacher`.
        drop_path_rate (`float`, vision): stochastic depth, increasing linearly over the layers.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`): the MLM decoder shares the word embeddings.
    """

    model_type = "lion"

    def __init__(
        self,
        modality: str = "text",
        variant: str = "d",
        attention_form: str = "parallel",
        chunk_size: int = 64,
        attention_backend: str = "auto",
        patch_order: str = "raster",
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float | None = None,
        attention_probs_dropout_prob: float | None = None,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float | None = None,
        pad_token_id: int = 0,
        layer_norm_after: bool | None = None,
        classifier_dropout: float | None = None,
        feature_map: str | None = None,
        normalize_attention: bool | None = None,
        attention_eps: float = 1e-6,
        selective_gate_eps: float | None = None,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        qkv_bias: bool = True,
        use_position_embeddings: bool = True,
        pooling: str = "cls",
        use_distillation_token: bool = False,
        drop_path_rate: float = 0.0,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        text = modality == "text"
        self.modality = modality
        self.variant = variant
        self.attention_form = attention_form
        self.chunk_size = chunk_size
        self.attention_backend = attention_backend
        self.patch_order = patch_order
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.classifier_dropout = classifier_dropout
        self.attention_eps = attention_eps
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.qkv_bias = qkv_bias
        self.use_position_embeddings = use_position_embeddings
        self.pooling = pooling
        self.use_distillation_token = use_distillation_token
        self.drop_path_rate = drop_path_rate
        self.tie_word_embeddings = tie_word_embeddings

        # Defaults that depend on the modality (and variant): those of the original text and vision models.
        def default(value, text_default, vision_default):
            return value if value is not None else (text_default if text else vision_default)

        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.hidden_dropout_prob = default(hidden_dropout_prob, 0.1, 0.0)
        self.attention_probs_dropout_prob = default(attention_probs_dropout_prob, 0.1, 0.0)
        self.layer_norm_eps = default(layer_norm_eps, 1e-12, 1e-6)
        self.layer_norm_after = default(layer_norm_after, variant == "lit", False)
        self.feature_map = default(feature_map, "identity", "elu_plus_one" if variant == "lit" else "silu_shift_l2")
        self.normalize_attention = default(normalize_attention, False, True)
        self.selective_gate_eps = default(selective_gate_eps, 1e-7, 0.0)
        if not text and kwargs.get("architectures") is None:
            # Auto classes pick between the two image heads by `architectures` (as for DeiT); a fresh config names
            # the head its distillation token implies, so that `from_config` works too.
            head = "LionForImageClassificationWithTeacher" if use_distillation_token else "LionForImageClassification"
            kwargs["architectures"] = [head]
        self._check()
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def _check(self) -> None:
        check_choice("modality", self.modality, MODALITIES)
        check_choice("variant", self.variant, VARIANTS)
        check_attention_settings(self.attention_form, self.chunk_size, self.attention_backend)
        check_choice("patch_order", self.patch_order, PATCH_ORDERS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("feature_map", self.feature_map, FEATURE_MAPS)
        check_choice("hidden_act", self.hidden_act, tuple(ACT2FN))
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("layer_norm_eps", "attention_eps", "selective_gate_eps"):
            _check_at_least_zero(name, getattr(self, name))
        # Dropped with probability p and the rest scaled by 1 / (1 - p): p = 1 has no such scale.
        for name in ("attention_probs_dropout_prob", "drop_path_rate"):
            _check_probability_below_one(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.modality == "text":
            if self.patch_order != "raster":
                raise ValueError(
                    f"patch_order={self.patch_order!r} applies to vision models only; text models use 'raster'."
                )
            if self.use_distillation_token:
                raise ValueError("use_distillation_token=True applies to vision models only.")
            for name in ("vocab_size", "max_position_embeddings", "type_vocab_size"):
                check_positive_int(name, getattr(self, name))
        else:
            for name in ("image_size", "patch_size", "num_channels"):
                check_positive_int(name, getattr(self, name))
            if self.image_size % self.patch_size:
                raise ValueError(f"patch_size ({self.patch_size}) must divide image_size ({self.image_size}).")
            if self.layer_norm_after:
                raise ValueError("layer_norm_after=True applies to text models only.")

    @property
    def num_paths(self) -> int:
        """How many token orders the decay mask is averaged over (2 for the snake order)."""
        return 2 if self.patch_order == "snake" else 1

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> LionConfig:
        """A config with the shape of an original model, e.g. `from_preset("bert-base", variant="s")`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; allowed: {', '.join(map(repr, PRESETS))}.")
        return cls(**{**PRESETS[name], **kwargs})


def _check_at_least_zero(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")


def _check_probability_below_one(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}.")
