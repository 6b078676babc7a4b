"""The models, their config and loading under bad and extreme input: every refusal by its message, every
accepted edge case against a reference (the same model on clean or unpadded input, eager against compiled)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import FORMS, VARIANTS, assert_close, build, run_in_form, tiny_text_config, tiny_vision_config, token_ids

from lion_hf import (
    LionConfig,
    LionForImageClassification,
    LionForImageClassificationWithTeacher,
    LionForMaskedLM,
    LionForMultipleChoice,
    LionForQuestionAnswering,
    LionForSequenceClassification,
    LionForTokenClassification,
    LionModel,
)

TEXT_HEADS = (
    LionModel,
    LionForMaskedLM,
    LionForSequenceClassification,
    LionForTokenClassification,
    LionForQuestionAnswering,
)
MASK_CONTRACT = "attention_mask must hold 1 for real tokens and 0 for padding"


# ------------------------------------------------------------------------------------- attention masks


@pytest.mark.parametrize(
    "mask, found",
    [
        ([[0.0, 0, 0, 0, -1e4, -1e4]], "[-10000.0]"),  # the additive convention: real tokens 0, padding -1e4
        ([[0.0, 0, 0, 0, float("-inf"), float("-inf")]], "[-inf]"),
        ([[1, 1, 2, 1, 0, 0]], "[2]"),
        ([[1.0, 1, 0.5, 1, 0, 0]], "[0.5]"),
        ([[1.0, 1, float("nan"), 1, 0, 0]], "[nan]"),
    ],
)
def test_a_mask_that_is_not_zero_one_is_refused(mask, found):
    """Regression: an additive mask was read as mask.bool(), so that real tokens and padding swapped."""
    model = build(LionModel, tiny_text_config())
    with pytest.raises(ValueError, match=re.escape(f"{MASK_CONTRACT} (any dtype); found {found}. An additive mask")):
        model(token_ids(1, 6), attention_mask=torch.tensor(mask))


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.float32, torch.float16, torch.bfloat16])
def test_zero_one_masks_of_every_dtype_give_the_outputs_of_the_long_mask(dtype):
    model = build(LionForTokenClassification, tiny_text_config(num_labels=3))
    ids, mask = token_ids(2, 6), torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask.to(dtype)).logits, model(ids, attention_mask=mask).logits)


def test_a_row_without_real_tokens_is_refused():
    """Its pooled output would be that of a padding token."""
    model = build(LionForSequenceClassification, tiny_text_config(num_labels=2))
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0]])
    with pytest.raises(ValueError, match=re.escape("attention_mask rows [1] have no real token; every row needs at least one.")):
        model(token_ids(3, 4), attention_mask=mask)


def test_mask_checks_hold_under_torch_compile():
    """Regression: compiled, the gap check was skipped and the output silently wrong. Now it is an assertion in
    the graph (no graph break: fullgraph=True), raised when the compiled model runs; good masks give eager's
    outputs."""
    model = build(LionForSequenceClassification, tiny_text_config("s", num_hidden_layers=1, num_labels=2))
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    ids = token_ids(2, 7)
    good = torch.tensor([[1.0, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        assert_close(compiled(ids, attention_mask=good).logits, model(ids, attention_mask=good).logits)
        for bad in (
            [[1.0, 1, 0, 1, 1, 0, 0], [1] * 7],  # a gap
            [[1.0] * 7, [0] * 7],  # a row without a real token
            [[0.0] * 5 + [-1e4] * 2, [0] * 7],  # additive
        ):
            with pytest.raises(RuntimeError, match=re.escape(MASK_CONTRACT)):
                compiled(ids, attention_mask=torch.tensor(bad))


# ------------------------------------------------------------------------ non-finite values at padding


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_embeddings_at_padded_positions_reach_no_real_token(variant, value):
    """NaN or inf in the embeddings of padded positions (left and right) turned every real token into NaN."""
    model = build(LionForSequenceClassification, tiny_text_config(variant, num_labels=2))
    ids = token_ids(2, 8)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]])
    real = mask.bool()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    poisoned = embeds.clone()
    poisoned[~real] = value
    for form in FORMS:
        clean = run_in_form(model, form, inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True,
                            output_attentions=True)  # fmt: skip
        dirty = run_in_form(model, form, inputs_embeds=poisoned, attention_mask=mask, output_hidden_states=True,
                            output_attentions=True)  # fmt: skip
        assert torch.isfinite(dirty.logits).all()
        assert_close(dirty.logits, clean.logits)
        assert_close(dirty.hidden_states[-1][real], clean.hidden_states[-1][real])
        for got, want in zip(dirty.attentions, clean.attentions):
            assert_close(got.transpose(1, 2)[real], want.transpose(1, 2)[real])


def test_the_masked_lm_loss_ignores_non_finite_padded_positions():
    model = build(LionForMaskedLM, tiny_text_config("s"))
    ids, mask = token_ids(2, 6), torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])
    labels = torch.where(mask.bool(), ids, -100)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        clean = model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        embeds[~mask.bool()] = float("nan")
        assert_close(model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss, clean)


# ------------------------------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("head", TEXT_HEADS)
def test_an_empty_batch_gives_empty_outputs_in_every_form(head):
    model = build(head, tiny_text_config(num_labels=3))
    ids = torch.zeros(0, 6, dtype=torch.long)
    for form in FORMS:
        out = run_in_form(model, form, input_ids=ids, attention_mask=torch.ones(0, 6))
        for tensor in out.values():
            assert tensor.shape[0] == 0
    model = build(LionForMultipleChoice, tiny_text_config())
    assert run_in_form(model, "chunk", input_ids=torch.zeros(0, 3, 6, dtype=torch.long)).logits.shape == (0, 3)


@pytest.mark.parametrize("head", TEXT_HEADS)
def test_sequences_of_no_tokens_are_refused(head):
    """The chunk and recurrent forms crashed (ZeroDivisionError), the pooler raised IndexError."""
    model = build(head, tiny_text_config(num_labels=3))
    message = "The input has no tokens (shape (2, 0)); a text LionModel needs at least one token per row."
    for form in FORMS:
        model.set_attention_form(form)
        with pytest.raises(ValueError, match=re.escape(message)):
            model(torch.zeros(2, 0, dtype=torch.long))
        with pytest.raises(ValueError, match=re.escape(message)):
            model(inputs_embeds=torch.zeros(2, 0, 32))


@pytest.mark.parametrize("head", [LionForImageClassification, LionForImageClassificationWithTeacher])
def test_an_empty_batch_of_images_gives_empty_outputs_in_every_form(head):
    config = tiny_vision_config(variant="s", patch_order="snake", use_distillation_token=head is not LionForImageClassification)
    model = build(head, config)
    for form in FORMS:
        out = run_in_form(model, form, pixel_values=torch.zeros(0, 3, 16, 16))
        assert out.logits.shape == (0, 3)


@pytest.mark.parametrize("size", [(0, 0), (0, 16), (16, 0)])
def test_images_without_pixels_are_refused(size):
    model = build(LionForImageClassification, tiny_vision_config())
    message = f"Image size {size[0]}x{size[1]} has no pixels; resize to a multiple of 4."
    with pytest.raises(ValueError, match=re.escape(message)):
        model(pixel_values=torch.zeros(1, 3, *size), interpolate_pos_encoding=True)


# ---------------------------------------------------------------------------------- shapes and dtypes


@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(token_type_ids=torch.zeros(2, 5, dtype=torch.long)),
         "token_type_ids must have shape (batch, length) = (2, 6) like the input (or (1, 6), one row for the whole batch); got (2, 5)."),
        (dict(token_type_ids=torch.zeros(6, dtype=torch.long)), "token_type_ids must have shape (batch, length) = (2, 6)"),
        (dict(position_ids=torch.zeros(2, 6, 1, dtype=torch.long)), "position_ids must have shape (batch, length) = (2, 6)"),
        (dict(position_ids=torch.zeros(3, 6, dtype=torch.long)), "got (3, 6)."),
    ],
)  # fmt: skip
def test_token_type_and_position_ids_of_the_wrong_shape_are_named(inputs, message):
    """They failed with a broadcast error deep in the embeddings."""
    model = build(LionModel, tiny_text_config())
    with pytest.raises(ValueError, match=re.escape(message)):
        model(token_ids(2, 6), **inputs)


def test_position_and_token_type_ids_shared_by_the_batch_are_accepted():
    model = build(LionModel, tiny_text_config())
    ids = token_ids(2, 6)
    with torch.no_grad():
        expected = model(ids, position_ids=torch.arange(6).expand(2, 6), token_type_ids=torch.ones(2, 6, dtype=torch.long))
        shared = model(ids, position_ids=torch.arange(6)[None], token_type_ids=torch.ones(1, 6, dtype=torch.long))
    assert torch.equal(shared.last_hidden_state, expected.last_hidden_state)


@pytest.mark.parametrize(
    "embeds, message",
    [
        (torch.zeros(2, 6, 8), "inputs_embeds must be (batch, length, hidden_size=32), got shape (2, 6, 8)."),
        (torch.zeros(2, 32), "inputs_embeds must be (batch, length, hidden_size=32), got shape (2, 32)."),
        (torch.zeros(1, 2, 6, 32), "inputs_embeds must be (batch, length, hidden_size=32), got shape (1, 2, 6, 32)."),
    ],
)
def test_inputs_embeds_of_the_wrong_shape_are_named(embeds, message):
    model = build(LionForMaskedLM, tiny_text_config())
    with pytest.raises(ValueError, match=re.escape(message)):
        model(inputs_embeds=embeds)


def test_float64_inputs_embeds_run_in_the_weights_dtype():
    """They failed with "mixed dtype" in the embeddings' LayerNorm."""
    model = build(LionModel, tiny_text_config())
    ids = token_ids(2, 6)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        out = model(inputs_embeds=embeds.double()).last_hidden_state
        assert out.dtype == torch.float32
        assert torch.equal(out, model(ids).last_hidden_state)


@pytest.mark.parametrize(
    "inputs",
    [
        dict(input_ids=torch.tensor([[1, 2, 97]])),  # the vocabulary has 97 tokens
        dict(input_ids=torch.tensor([[1, -2, 3]])),
        dict(input_ids=torch.tensor([[1, 2, 3]]), token_type_ids=torch.tensor([[0, 2, 0]])),  # 2 token types
        dict(input_ids=torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0, 1, 24]])),  # 24 positions
    ],
)
def test_out_of_range_ids_keep_pytorchs_index_error(inputs):
    """As in BERT (the README's input contract says so): the embedding lookup raises IndexError."""
    model = build(LionModel, tiny_text_config())
    with pytest.raises(IndexError, match="index out of range"):
        model(**inputs)


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_act="swishy"), "Unknown hidden_act 'swishy'; allowed: 'gelu',"),
        (dict(type_vocab_size=0), "type_vocab_size must be a positive integer, got 0."),
        (dict(intermediate_size=0), "intermediate_size must be a positive integer, got 0."),
        (dict(layer_norm_eps=-1e-5), "layer_norm_eps must be a number >= 0, got -1e-05."),
        (dict(attention_eps=float("nan")), "attention_eps must be a number >= 0, got nan."),
        (dict(variant="s", selective_gate_eps=-0.1), "selective_gate_eps must be a number >= 0, got -0.1."),
        (dict(attention_probs_dropout_prob=1.0), "attention_probs_dropout_prob must be a probability in [0, 1), got 1.0."),
        (dict(attention_probs_dropout_prob=-0.1), "attention_probs_dropout_prob must be a probability in [0, 1), got -0.1."),
        (dict(modality="vision", drop_path_rate=1.5), "drop_path_rate must be a probability in [0, 1), got 1.5."),
        (dict(modality="vision", hidden_act="geluu"), "Unknown hidden_act 'geluu'"),
    ],
)  # fmt: skip
def test_config_values_that_would_fail_at_the_first_forward_are_refused(kwargs, message):
    """hidden_act and type_vocab_size built and then crashed with KeyError / IndexError at the first forward."""
    with pytest.raises(ValueError, match=re.escape(message)):
        LionConfig(**kwargs)


@pytest.mark.parametrize(
    "entry, message",
    [
        (dict(hidden_act="nope"), "Unknown hidden_act 'nope'"),
        (dict(chunk_size=0), "chunk_size must be a positive integer, got 0."),
        (dict(variant="gated"), "Unknown variant 'gated'; allowed: 'lit', 'd', 's'."),
        (dict(attention_form="scan"), "Unknown attention_form 'scan'"),
    ],
)
def test_a_saved_config_with_a_bad_value_is_refused_at_load(tmp_path, entry, message):
    build(LionForMaskedLM, tiny_text_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **entry}))
    with pytest.raises(ValueError, match=re.escape(message)):
        LionForMaskedLM.from_pretrained(tmp_path)


def test_a_truncated_weights_file_is_named(tmp_path):
    """safetensors' own message ("incomplete metadata, file not fully covered") names no file."""
    build(LionForMaskedLM, tiny_text_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    message = f"Cannot load {str(tmp_path)!r}: model.safetensors cannot be read (Error while deserializing header"
    with pytest.raises(OSError, match=re.escape(message)):
        LionForMaskedLM.from_pretrained(tmp_path)
