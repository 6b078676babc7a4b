"""LION models: BERT-shaped text encoders and ViT/DeiT-shaped vision encoders built on the LION operator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs, maybe_install_capturing_hooks

from .configuration_lion import LionConfig
from .lion_attention import (
    ATTENTION_FORMS,
    as_dtype,
    check_attention_settings,
    check_that,
    compute_dtype,
    is_compiling,
    lion_attention,
    lion_attention_weights,
)

logger = logging.get_logger(__name__)

DISTILLATION_TYPES = ("hard", "soft")
# What a mask must be, in the words of both checks: eager (a ValueError naming the rows or values found) and
# compiled (an assertion in the graph, one message for all).
MASK_CONTRACT = (
    "attention_mask must hold 1 for real tokens and 0 for padding (any dtype, as a tokenizer returns it), with one "
    "contiguous run of at least one real token per row (right or left padding)"
)
# The original text models normalise the heads' output (layer_norm_after) with PyTorch's default LayerNorm eps.
HEADS_LAYER_NORM_EPS = 1e-5
# How LION's own switches are named where a user asks for transformers' attention implementations.
ATTENTION_SWITCHES = (
    f"LION layers are linear attention under a decay mask, not softmax attention: choose how they are computed "
    f"with config.attention_form / model.set_attention_form(form) (one of {', '.join(map(repr, ATTENTION_FORMS))}) "
    "and config.attention_backend"
)


def snake_orders(rows: int, cols: int, num_prefix_tokens: int = 1, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The row-wise and column-wise boustrophedon over a ``rows x cols`` patch grid, special tokens first.

    Each is a permutation of the ``num_prefix_tokens + rows * cols`` token indices: entry ``l`` is the token
    visited at step ``l``. The row snake runs left-to-right on even rows and right-to-left on odd rows; the
    column snake runs down even columns and up odd ones.
    """
    r = torch.arange(rows, device=device)[:, None]
    c = torch.arange(cols, device=device)[None, :]
    row_snake = (r * cols + torch.where(r % 2 == 0, c, cols - 1 - c)).flatten()
    col_snake = (torch.where(c % 2 == 0, r, rows - 1 - r) * cols + c).t().flatten()
    prefix = torch.arange(num_prefix_tokens, device=device)
    return tuple(torch.cat([prefix, num_prefix_tokens + order]) for order in (row_snake, col_snake))


def shared_autocast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` cast once to the autocast dtype (when autocast would cast it), so that the projections that all read
    ``x`` read, and keep for their backward, one copy: autocast casts an activation for every operation that
    reads it, and every linear layer saves the copy it was given."""
    return as_dtype(x, compute_dtype(x))


class _NormalizedProjection(torch.autograd.Function):
    """``linear(layer_norm(x))`` in ``x``'s dtype, keeping ``x`` (and the statistics) for the backward instead of
    the normalised ``x``: the backward forms it again, one elementwise kernel. ``x`` is the attention's output,
    which the attention's own backward keeps anyway, so the pair keeps no activation of its own; kept, the
    normalised heads cost LION-LIT's text models 25 MB per layer at BERT-base seq 128 batch 128, ~2% of the
    step's peak (benchmarks/NOTES.md, session 10)."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps, weight, bias):
        shape = (x.shape[-1],)
        # Weights in x's dtype (PyTorch's LayerNorm forms its statistics in float32 anyway); autocast would run
        # the norm in float32 and keep a float32 copy of x for it.
        norm_weight, norm_bias, weight = (as_dtype(p, x.dtype) for p in (norm_weight, norm_bias, weight))
        normalized, mean, rstd = torch.native_layer_norm(x, shape, norm_weight, norm_bias, eps)
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight)
        ctx.eps = eps
        return F.linear(normalized, weight, None if bias is None else as_dtype(bias, x.dtype))

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        shape = (x.shape[-1],)
        grad = as_dtype(grad, x.dtype)
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[4]:
            normalized = torch.native_layer_norm(x, shape, norm_weight, norm_bias, ctx.eps)[0]
            grad_weight = flat_grad.t() @ normalized.reshape(-1, shape[0])
        if ctx.needs_input_grad[5]:
            grad_bias = flat_grad.sum(0)
        grad_x, grad_norm_weight, grad_norm_bias = torch.ops.aten.native_layer_norm_backward(
            grad @ weight, x, shape, mean, rstd, norm_weight, norm_bias, [True, True, True]
        )
        return grad_x, grad_norm_weight, grad_norm_bias, None, grad_weight, grad_bias


def normalized_projection(norm: nn.LayerNorm, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(norm(x))`` computed in ``x``'s compute dtype (autocast's, where autocast is on), one autograd node
    that keeps no copy of the normalised ``x`` (``_NormalizedProjection``)."""
    x = as_dtype(x, compute_dtype(x))
    with torch.autocast(x.device.type, enabled=False):
        return _NormalizedProjection.apply(x, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias)


class LionMixer(nn.Module):
    """What every LION attention layer shares: the decay parameters and the call of the operator."""

    def __init__(self, config: LionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        # The architecture's settings, read once: a transformers config attribute goes through Python-level
        # __getattribute__ hooks, and every layer would read these on every call. The form, chunk size and backend are read on each call
        # from the config, where set_attention_form and users switch them.
        self.variant, self.num_paths = config.variant, config.num_paths
        self.gate_eps = config.selective_gate_eps
        self.attention_dropout = config.attention_probs_dropout_prob
        self.operator_options = dict(
            feature_map=config.feature_map, scale=self.scale, normalize=config.normalize_attention,
            eps=config.attention_eps,
        )  # fmt: skip
        if config.variant == "d":
            # One decay logit per path and head: a = sigmoid(decay_logits).
            self.decay_logits = nn.Parameter(torch.empty(config.num_paths, self.num_heads))
        elif config.variant == "s":
            # A gate per path and head from the layer input: a_t = 1 - sigmoid(decay_gate(x_t)).
            self.decay_gate = nn.Linear(config.hidden_size, config.num_paths * self.num_heads)

    def log_decays(self, gate_input: torch.Tensor, num_prefix_tokens: int) -> list[torch.Tensor] | None:
        batch, length = gate_input.shape[:2]
        if self.variant == "lit":
            return None
        if self.variant == "d":
            log_a = F.logsigmoid(as_dtype(self.decay_logits, torch.float32))
            return list(log_a.view(-1, 1, self.num_heads, 1).expand(-1, -1, -1, length).unbind(0))
        z = self.decay_gate(gate_input).float().view(batch, length, self.num_paths, self.num_heads)
        eps = self.gate_eps
        log_a = torch.log(1 - torch.sigmoid(z) + eps) if eps > 0 else F.logsigmoid(-z)
        if num_prefix_tokens:
            # Special tokens (class, distillation) do not decay what passes them. (In place: neither log nor
            # logsigmoid keeps its output for the backward pass.)
            log_a[:, :num_prefix_tokens] = 0
        return list(log_a.permute(2, 0, 3, 1).unbind(0))

    def mix(
        self, q, k, v, gate_input, key_padding_mask=None, orders=None, num_prefix_tokens=0, output_attentions=False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``q, k``: ``(B, H, N, D)`` after the feature map, ``v`` likewise; returns ``(B, N, H * D)`` and, when
        ``output_attentions``, the masked (and, where the model normalises, row-normalised) scores ``(B, H, N, N)``.
        ``q`` and ``k`` enter before the feature map, which the operator applies (in its kernels where it can)."""
        form = self.config.attention_form
        dropout = self.attention_dropout if self.training else 0.0
        if dropout > 0 and form != "parallel" and not is_compiling():
            logger.warning_once(
                f"attention_probs_dropout_prob={dropout} is applied only in the 'parallel' form; the "
                f"'{form}' form trains without score dropout."
            )
        log_decays = self.log_decays(gate_input, num_prefix_tokens)
        # Valid by construction: decays from logsigmoid / log(1 - sigmoid + eps), orders from snake_orders, and the
        # mask checked once per forward (_key_padding_mask); the operator need not read them back on the host.
        options = dict(self.operator_options, key_padding_mask=key_padding_mask, check_values=False)
        out = lion_attention(
            q,
            k,
            v,
            log_decays,
            orders,
            form=form,
            chunk_size=self.config.chunk_size,
            dropout_p=dropout,
            training=self.training,
            backend=self.config.attention_backend,
            **options,
        )
        # The matrix that every form multiplies the values with, built on request only: it is N x N.
        weights = lion_attention_weights(q, k, log_decays, orders, **options) if output_attentions else None
        batch, _, length, _ = out.shape
        # A view where the operator wrote its output as (B, N, H, D), as the fused kernels do.
        return out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim), weights

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)


# ----------------------------------------------------------------------------------------------- text


class LionTextEmbeddings(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        # In the weights' dtype, as pixel_values are (float64 embeddings would otherwise fail in the LayerNorm).
        inputs_embeds = inputs_embeds.to(self.word_embeddings.weight.dtype)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class LionSelfAttention(LionMixer):
    def __init__(self, config: LionConfig):
        super().__init__(config)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=HEADS_LAYER_NORM_EPS) if config.layer_norm_after else None

    def forward(self, hidden_states, key_padding_mask=None, output_attentions=False):
        hidden_states = shared_autocast_input(hidden_states)  # the residual keeps its own dtype (LionAttention)
        q, k, v = (self.split_heads(proj(hidden_states)) for proj in (self.query, self.key, self.value))
        context, weights = self.mix(
            q, k, v, hidden_states, key_padding_mask=key_padding_mask, output_attentions=output_attentions
        )
        # The heads' LayerNorm (self.layer_norm) is applied by LionSelfOutput, in one node with its projection.
        return context, weights


class LionSelfOutput(nn.Module):
    """Projection, dropout and post-LayerNorm residual, as BERT's self-output and output blocks."""

    def __init__(self, config: LionConfig, input_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor, norm: nn.LayerNorm | None = None):
        """``norm``: a LayerNorm applied to ``hidden_states`` before the projection."""
        if norm is None:
            projected = self.dense(hidden_states)
        else:
            projected = normalized_projection(norm, self.dense, hidden_states)
        return self.LayerNorm(self.dropout(projected) + input_tensor)


class LionAttention(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.self = LionSelfAttention(config)
        self.output = LionSelfOutput(config, config.hidden_size)

    def forward(self, hidden_states, key_padding_mask=None, output_attentions=False):
        context, _ = self.self(hidden_states, key_padding_mask, output_attentions)
        return self.output(context, hidden_states, self.self.layer_norm)


class LionIntermediate(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class LionTextLayer(GradientCheckpointingLayer):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.attention = LionAttention(config)
        self.intermediate = LionIntermediate(config)
        self.output = LionSelfOutput(config, config.intermediate_size)

    def forward(self, hidden_states, key_padding_mask=None, output_attentions=False):
        attention_output = self.attention(hidden_states, key_padding_mask, output_attentions)
        return self.output(self.intermediate(attention_output), attention_output)


class LionPooler(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states, key_padding_mask=None):
        if key_padding_mask is None:
            first = hidden_states[:, 0]
        else:
            # The first real token, so that left-padded rows pool their [CLS] and not a padding token.
            rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
            first = hidden_states[rows, key_padding_mask.int().argmax(dim=1)]
        return self.activation(self.dense(first))


# --------------------------------------------------------------------------------------------- vision


class LionPatchEmbeddings(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values must be (batch, {self.num_channels}, height, width) to match "
                f"config.num_channels={self.num_channels}; got shape {tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[-2:]
        if not height or not width:
            raise ValueError(f"Image size {height}x{width} has no pixels; resize to a multiple of {self.patch_size}.")
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Image size {height}x{width} is not divisible by patch_size={self.patch_size}; resize or pad to a "
                f"multiple of {self.patch_size}."
            )
        if not interpolate_pos_encoding and (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"Image size {height}x{width} does not match config.image_size={self.image_size}; pass "
                "interpolate_pos_encoding=True to run at another resolution."
            )
        patches = self.projection(pixel_values.to(self.projection.weight.dtype))
        return patches.flatten(2).transpose(1, 2), patches.shape[-2:]


class LionVisionEmbeddings(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.distillation_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_distillation_token else None
        )
        self.num_prefix_tokens = 2 if config.use_distillation_token else 1
        self.patch_embeddings = LionPatchEmbeddings(config)
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, self.patch_embeddings.num_patches + self.num_prefix_tokens, config.hidden_size))
            if config.use_position_embeddings
            else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, rows: int, cols: int) -> torch.Tensor:
        """Position embeddings for a ``rows x cols`` patch grid, bicubically resampled from the trained grid."""
        table = self.position_embeddings
        prefix, patches = table[:, : self.num_prefix_tokens], table[:, self.num_prefix_tokens :]
        side = int(patches.shape[1] ** 0.5)
        if (rows, cols) == (side, side):
            return table
        grid = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(rows, cols), mode="bicubic", align_corners=False).to(table.dtype)
        return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)

    def forward(self, pixel_values, interpolate_pos_encoding=False):
        patches, (rows, cols) = self.patch_embeddings(pixel_values, interpolate_pos_encoding)
        batch = patches.shape[0]
        prefix = [self.cls_token] + ([self.distillation_token] if self.distillation_token is not None else [])
        embeddings = torch.cat([t.expand(batch, -1, -1) for t in prefix] + [patches], dim=1)
        if self.position_embeddings is not None:
            embeddings = embeddings + self.interpolate_pos_encoding(rows, cols)
        return self.dropout(embeddings), (rows, cols)


class LionVisionAttention(LionMixer):
    def __init__(self, config: LionConfig):
        super().__init__(config)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, orders=None, num_prefix_tokens=1, output_attentions=False):
        batch, length, _ = hidden_states.shape
        hidden_states = shared_autocast_input(hidden_states)  # LION-S's gate reads it too
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        # Views, no copy: the fused kernels read the heads in place (the PyTorch forms copy them).
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        context, weights = self.mix(
            q, k, v, hidden_states, orders=orders, num_prefix_tokens=num_prefix_tokens, output_attentions=output_attentions
        )
        return self.proj_dropout(self.proj(context)), weights


class LionMLP(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states):
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


class LionDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class LionVisionLayer(GradientCheckpointingLayer):
    def __init__(self, config: LionConfig, drop_path: float = 0.0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = LionVisionAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = LionMLP(config)
        self.drop_path = LionDropPath(drop_path)

    def forward(self, hidden_states, orders=None, num_prefix_tokens=1, output_attentions=False):
        # The attention's output is not bound to a name: it would stay alive through the MLP, which is where
        # inference peaks, one activation above timm's block.
        hidden_states = hidden_states + self.drop_path(
            self.attention(self.layernorm_before(hidden_states), orders, num_prefix_tokens, output_attentions)[0]
        )
        return hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states)))


# ---------------------------------------------------------------------------------------------- models


class LionEncoder(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        if config.modality == "text":
            self.layer = nn.ModuleList(LionTextLayer(config) for _ in range(config.num_hidden_layers))
        else:
            # Stochastic depth grows linearly over the layers; plain floats, so that building under a meta or
            # CUDA default device needs no tensor round trip.
            last = max(config.num_hidden_layers - 1, 1)
            rates = [config.drop_path_rate * i / last for i in range(config.num_hidden_layers)]
            self.layer = nn.ModuleList(LionVisionLayer(config, rate) for rate in rates)

    def forward(self, hidden_states, **layer_kwargs):
        for layer in self.layer:
            hidden_states = layer(hidden_states, **layer_kwargs)
        return hidden_states


class LionPreTrainedModel(PreTrainedModel):
    config_class = LionConfig
    base_model_prefix = "lion"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LionTextLayer", "LionVisionLayer", "LionTextEmbeddings", "LionVisionEmbeddings"]
    # Recorded by transformers' output capturing, as in BERT and ViT: every layer's output (after the embeddings)
    # and the attention matrices that the attention modules compute on request.
    _can_record_outputs = {
        "hidden_states": [LionTextLayer, LionVisionLayer],
        "attentions": [LionSelfAttention, LionVisionAttention],
    }

    def __init__(self, config: LionConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        if getattr(config, "auto_map", None) is None:
            config.auto_map = lion_auto_map(config)

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if self.config.modality == "vision" and isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if isinstance(module, LionMixer) and hasattr(module, "decay_logits"):
            init.normal_(module.decay_logits, mean=0.0, std=1.0)
        elif isinstance(module, LionVisionEmbeddings):
            for token in (module.cls_token, module.distillation_token, module.position_embeddings):
                if token is not None:
                    init.trunc_normal_(token, std=std)
        elif isinstance(module, LionLMPredictionHead):
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``, naming a weights file that does not parse (safetensors does not)."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            damaged = _unreadable_safetensors(pretrained_model_name_or_path) or "its safetensors weights"
            raise OSError(
                f"Cannot load {str(pretrained_model_name_or_path)!r}: {damaged} cannot be read ({error}); the file is "
                "truncated or damaged: save or download it again."
            ) from error

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """LION has one attention of its own; transformers' softmax implementations do not apply."""
        if requested_attention not in (None, "eager"):
            raise ValueError(f"attn_implementation={requested_attention!r} does not apply to LION. {ATTENTION_SWITCHES}.")
        return "eager"

    def set_attention_form(self, form: str, chunk_size: int | None = None) -> None:
        """Switch every layer to the ``parallel``, ``chunk`` or ``recurrent`` form (same outputs)."""
        chunk_size = self.config.chunk_size if chunk_size is None else chunk_size
        check_attention_settings(form, chunk_size, self.config.attention_backend)
        self.config.attention_form, self.config.chunk_size = form, chunk_size

    def _require_modality(self, modality: str) -> None:
        if self.config.modality != modality:
            raise ValueError(
                f"{type(self).__name__} needs config.modality={modality!r}, got {self.config.modality!r}."
            )


class LionModel(LionPreTrainedModel):
    """The LION encoder: text (BERT-shaped) or vision (ViT/DeiT-shaped), chosen by ``config.modality``."""

    def __init__(self, config: LionConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        if config.modality == "text":
            self.embeddings = LionTextEmbeddings(config)
            self.pooler = LionPooler(config) if add_pooling_layer else None
        else:
            self.main_input_name = "pixel_values"
            self.embeddings = LionVisionEmbeddings(config)
            self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = LionEncoder(config)
        self.post_init()
        # Installed now rather than at the first call that asks for hidden states, which under
        # torch.compile(fullgraph=True) would have to take a lock inside the compiled region.
        maybe_install_capturing_hooks(self)

    def get_input_embeddings(self):
        if self.config.modality == "text":
            return self.embeddings.word_embeddings
        return self.embeddings.patch_embeddings

    def set_input_embeddings(self, value):
        self._require_modality("text")
        self.embeddings.word_embeddings = value

    # hidden_states end with the last layer's output, before the vision models' final LayerNorm (as in ViT).
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        output_attentions = kwargs.get("output_attentions", self.config.output_attentions)
        if self.config.modality == "vision":
            if pixel_values is None:
                raise ValueError("A vision LionModel needs pixel_values.")
            return self._forward_vision(pixel_values, interpolate_pos_encoding, output_attentions)
        if pixel_values is not None:
            raise ValueError("pixel_values given to a text LionModel; a vision model needs config.modality='vision'.")
        return self._forward_text(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions)

    def _forward_text(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions):
        shape = _text_input_shape(input_ids, inputs_embeds, self.config.hidden_size)
        batch, length = shape
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if length == 0:
            raise ValueError(f"The input has no tokens (shape {shape}); a text LionModel needs at least one token per row.")
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {length} exceeds max_position_embeddings={self.config.max_position_embeddings}; "
                "truncate the input (e.g. tokenizer(..., truncation=True))."
            )
        for name, ids in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
            if ids is not None and tuple(ids.shape) not in (shape, (1, length)):
                shared = f" (or (1, {length}), one row for the whole batch)" if batch != 1 else ""
                raise ValueError(
                    f"{name} must have shape (batch, length) = {shape} like the input{shared}; got {tuple(ids.shape)}."
                )
        key_padding_mask = None
        if attention_mask is not None:
            key_padding_mask = _key_padding_mask(attention_mask, shape)
        if position_ids is None:
            position_ids = torch.arange(length, device=device).expand(batch, length)
            if key_padding_mask is not None:
                # Left-padded rows number their real tokens from 0, so padding never shifts positions.
                position_ids = torch.where(key_padding_mask, key_padding_mask.cumsum(1) - 1, position_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros(shape, dtype=torch.long, device=device)
        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        hidden_states = self.encoder(
            hidden_states, key_padding_mask=key_padding_mask, output_attentions=output_attentions
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=self.pooler(hidden_states, key_padding_mask) if self.pooler is not None else None,
        )

    def _forward_vision(self, pixel_values, interpolate_pos_encoding, output_attentions):
        hidden_states, (rows, cols) = self.embeddings(pixel_values, interpolate_pos_encoding)
        num_prefix_tokens = self.embeddings.num_prefix_tokens
        orders = None
        if self.config.patch_order == "snake" and self.config.variant != "lit":
            orders = snake_orders(rows, cols, num_prefix_tokens, hidden_states.device)
        hidden_states = self.encoder(
            hidden_states, orders=orders, num_prefix_tokens=num_prefix_tokens, output_attentions=output_attentions
        )
        hidden_states = self.layernorm(hidden_states)
        pooled = hidden_states[:, 0] if self.config.pooling == "cls" else hidden_states.mean(dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)


def _text_input_shape(input_ids, inputs_embeds, hidden_size: int) -> tuple[int, int]:
    """``(batch, length)`` of exactly one of ``input_ids`` ``(B, N)`` and ``inputs_embeds`` ``(B, N, hidden)``."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Specify exactly one of input_ids or inputs_embeds.")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}.")
        return tuple(input_ids.shape)
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden_size:
        raise ValueError(
            f"inputs_embeds must be (batch, length, hidden_size={hidden_size}), got shape {tuple(inputs_embeds.shape)}."
        )
    return tuple(inputs_embeds.shape[:2])


def _key_padding_mask(attention_mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The boolean mask of real tokens, after checking ``MASK_CONTRACT``: one host sync in eager mode, none
    under torch.compile (see ``check_that``)."""
    if tuple(attention_mask.shape) != shape:
        raise ValueError(
            f"attention_mask must have shape (batch, length) = {shape} like input_ids, got {tuple(attention_mask.shape)}."
        )
    mask = attention_mask.bool()
    # A LION-S decay runs through every token between two real ones, so real tokens must be contiguous.
    runs = mask[:, :1].long() + (mask[:, 1:] & ~mask[:, :-1]).long().sum(1, keepdim=True)
    holds = (runs == 1).all()
    if attention_mask.dtype != torch.bool:
        # Read with .bool(), an additive mask (0 for real tokens, -inf or -1e4 for padding) would swap the two.
        holds = holds & ((attention_mask == 0) | (attention_mask == 1)).all()
    check_that(holds, MASK_CONTRACT + ".", lambda: _mask_problem(attention_mask, runs.flatten()))
    return mask


def _mask_problem(attention_mask: torch.Tensor, runs: torch.Tensor) -> str:
    """What is wrong with a mask that fails ``MASK_CONTRACT``, naming the values or rows."""
    values = attention_mask.unique()
    odd = values[(values != 0) & (values != 1)].tolist()
    if odd:
        return (
            f"attention_mask must hold 1 for real tokens and 0 for padding (any dtype); found {odd[:8]}. An additive "
            "mask (0 for real tokens, a large negative number for padding) reads as the opposite: pass "
            "(mask == 0).long() instead."
        )
    empty = (runs == 0).nonzero().flatten().tolist()
    if empty:
        return f"attention_mask rows {empty} have no real token; every row needs at least one."
    gaps = (runs > 1).nonzero().flatten().tolist()
    return (
        f"attention_mask rows {gaps} have gaps; each row must mark one contiguous run of real tokens "
        "(right or left padding)."
    )


def _unreadable_safetensors(location) -> str:
    """The safetensors files of a local folder whose header does not parse, for an error message."""
    folder = Path(location)
    damaged = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError:
            damaged.append(path.name)
    return ", ".join(damaged)


def _class_labels(labels: torch.Tensor) -> torch.Tensor:
    """Integer labels as int64, the only integer dtype cross-entropy takes (BERT accepts int32 labels too)."""
    return labels.long() if labels.dtype == torch.int32 else labels


# ----------------------------------------------------------------------------------------- text heads


class LionPredictionHeadTransform(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class LionLMPredictionHead(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.transform = LionPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states):
        return self.decoder(self.transform(hidden_states))


class LionOnlyMLMHead(nn.Module):
    def __init__(self, config: LionConfig):
        super().__init__()
        self.predictions = LionLMPredictionHead(config)

    def forward(self, sequence_output):
        return self.predictions(sequence_output)


class LionForMaskedLM(LionPreTrainedModel):
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "lion.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: LionConfig):
        super().__init__(config)
        self._require_modality("text")
        self.lion = LionModel(config, add_pooling_layer=False)
        self.cls = LionOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        **kwargs,
    ) -> MaskedLMOutput:
        outputs = self.lion(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class _LionTextHead(LionPreTrainedModel):
    """A text backbone with dropout in front of a task head."""

    add_pooling_layer = True

    def __init__(self, config: LionConfig):
        super().__init__(config)
        self._require_modality("text")
        self.lion = LionModel(config, add_pooling_layer=self.add_pooling_layer)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)

    def _backbone(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs):
        return self.lion(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )


class LionForSequenceClassification(_LionTextHead):
    def __init__(self, config: LionConfig):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        outputs = self._backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = self.loss_function(_class_labels(labels), logits, self.config, **kwargs)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class LionForTokenClassification(_LionTextHead):
    add_pooling_layer = False

    def __init__(self, config: LionConfig):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        **kwargs,
    ) -> TokenClassifierOutput:
        outputs = self._backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, _class_labels(labels), self.config, **kwargs)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class LionForQuestionAnswering(_LionTextHead):
    add_pooling_layer = False

    def __init__(self, config: LionConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput:
        outputs = self._backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            # Answers outside the sequence are ignored, as in BERT.
            loss = self.loss_function(
                start_logits, end_logits, _class_labels(start_positions), _class_labels(end_positions), **kwargs
            )
        return QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class LionForMultipleChoice(_LionTextHead):
    def __init__(self, config: LionConfig):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        **kwargs,
    ) -> MultipleChoiceModelOutput:
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None or reference.dim() < 3:
            raise ValueError("LionForMultipleChoice takes input_ids of shape (batch, num_choices, length).")
        num_choices = reference.shape[1]

        def flat(t):
            return None if t is None else t.reshape(-1, *t.shape[2:])

        outputs = self._backbone(
            flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids), flat(inputs_embeds), **kwargs
        )
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        # Cross-entropy over the choices, divided by Trainer's num_items_in_batch when it passes one (the model
        # takes **kwargs, so Trainer leaves the gradient-accumulation scaling to it).
        loss = fixed_cross_entropy(logits, _class_labels(labels), **kwargs) if labels is not None else None
        return MultipleChoiceModelOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# --------------------------------------------------------------------------------------- vision heads


class LionForImageClassification(LionPreTrainedModel):
    main_input_name = "pixel_values"

    def __init__(self, config: LionConfig):
        super().__init__(config)
        self._require_modality("vision")
        self.lion = LionModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values=None, labels=None, interpolate_pos_encoding=False, **kwargs) -> ImageClassifierOutput:
        outputs = self.lion(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(_class_labels(labels), logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


@dataclass
class LionImageClassifierWithTeacherOutput(ModelOutput):
    """Logits of a DeiT-style model: the average of the class-token and distillation-token heads, and both."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cls_logits: torch.Tensor | None = None
    distillation_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def distillation_loss(
    cls_logits: torch.Tensor,
    distillation_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    distillation_type: str = "hard",
    alpha: float = 0.5,
    tau: float = 1.0,
) -> torch.Tensor:
    """DeiT's objective: ``(1 - alpha) * CE(cls, labels) + alpha * distillation term`` on the distillation head.

    ``hard``: cross-entropy against the teacher's argmax. ``soft``: KL divergence to the teacher at temperature
    ``tau`` times ``tau**2``, summed and divided by the number of logits (batch x classes) exactly as DeiT's training
    code does, so DeiT's ``alpha``/``tau`` recipes carry over. ``labels`` may be class indices or (mixup-style)
    class probabilities.
    """
    if distillation_type not in DISTILLATION_TYPES:
        raise ValueError(f"Unknown distillation_type {distillation_type!r}; allowed: {', '.join(DISTILLATION_TYPES)}.")
    if teacher_logits.shape != distillation_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} does not match the student's "
            f"{tuple(distillation_logits.shape)}."
        )
    base = F.cross_entropy(cls_logits, labels)
    teacher_logits = teacher_logits.detach()
    if distillation_type == "hard":
        distill = F.cross_entropy(distillation_logits, teacher_logits.argmax(dim=-1))
    else:
        distill = F.kl_div(
            F.log_softmax(distillation_logits / tau, dim=-1),
            F.log_softmax(teacher_logits / tau, dim=-1),
            reduction="sum",
            log_target=True,
        ) * (tau * tau) / distillation_logits.numel()
    return (1 - alpha) * base + alpha * distill


class LionForImageClassificationWithTeacher(LionPreTrainedModel):
    """DeiT-style classifier: a class-token head and a distillation-token head, averaged at inference."""

    main_input_name = "pixel_values"
    # Its loss is a batch mean: Trainer must scale it for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config: LionConfig):
        super().__init__(config)
        self._require_modality("vision")
        if not config.use_distillation_token:
            raise ValueError("LionForImageClassificationWithTeacher needs config.use_distillation_token=True.")
        self.lion = LionModel(config)
        make_head = (lambda: nn.Linear(config.hidden_size, config.num_labels)) if config.num_labels > 0 else nn.Identity
        self.cls_classifier = make_head()
        self.distillation_classifier = make_head()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values=None,
        labels=None,
        teacher_logits=None,
        distillation_type="hard",
        alpha=0.5,
        tau=1.0,
        interpolate_pos_encoding=False,
        **kwargs,
    ) -> LionImageClassifierWithTeacherOutput:
        outputs = self.lion(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        cls_logits = self.cls_classifier(outputs.pooler_output)
        distillation_logits = self.distillation_classifier(outputs.last_hidden_state[:, 1])
        loss = None
        if labels is not None:
            if teacher_logits is None:
                raise ValueError("Training LionForImageClassificationWithTeacher with labels needs teacher_logits.")
            loss = distillation_loss(
                cls_logits, distillation_logits, labels, teacher_logits, distillation_type, alpha, tau
            )
        return LionImageClassifierWithTeacherOutput(
            loss=loss,
            logits=(cls_logits + distillation_logits) / 2,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# The Auto class that loads each head: the one table behind every saved config's auto_map and lion_hf's
# registration with the Auto classes. A text checkpoint loads into any text head (a new head is initialised).
# Auto class -> the heads it loads (two for images: a config's `architectures` picks, as for DeiT).
TEXT_AUTO_CLASSES = {
    "AutoModel": (LionModel,),
    "AutoModelForMaskedLM": (LionForMaskedLM,),
    "AutoModelForSequenceClassification": (LionForSequenceClassification,),
    "AutoModelForTokenClassification": (LionForTokenClassification,),
    "AutoModelForQuestionAnswering": (LionForQuestionAnswering,),
    "AutoModelForMultipleChoice": (LionForMultipleChoice,),
}
VISION_AUTO_CLASSES = {
    "AutoModel": (LionModel,),
    "AutoModelForImageClassification": (LionForImageClassification, LionForImageClassificationWithTeacher),
}


def lion_auto_map(config: LionConfig) -> dict[str, str]:
    """``auto_map`` for a checkpoint of ``config``: its config class and every head its Auto classes load."""
    table = TEXT_AUTO_CLASSES if config.modality == "text" else VISION_AUTO_CLASSES

    def name(cls) -> str:
        return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"

    auto_map = {"AutoConfig": name(type(config))}
    for auto_class, heads in table.items():
        # The head that `architectures` names (the distilled one has both classifiers).
        auto_map[auto_class] = name(heads[1] if len(heads) > 1 and config.use_distillation_token else heads[0])
    return auto_map


__all__ = [
    "LionModel",
    "LionPreTrainedModel",
    "LionForMaskedLM",
    "LionForSequenceClassification",
    "LionForTokenClassification",
    "LionForQuestionAnswering",
    "LionForMultipleChoice",
    "LionForImageClassification",
    "LionForImageClassificationWithTeacher",
    "distillation_loss",
    "lion_auto_map",
    "snake_orders",
]
