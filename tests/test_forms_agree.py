"""The three forms give the same outputs on whole models, and the form switches at run time."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import VARIANTS, assert_close, build, right_padded_mask, run_in_form, tiny_text_config, token_ids

from lion_hf import LionForMaskedLM, LionForSequenceClassification, LionModel


@pytest.mark.parametrize("layer_norm_after", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_forms_agree_on_full_models(variant, layer_norm_after):
    config = tiny_text_config(variant, layer_norm_after=layer_norm_after)
    ids = token_ids(3, 11)
    mask = right_padded_mask([11, 7, 4], 11)
    for model_class, key in [(LionModel, "last_hidden_state"), (LionForMaskedLM, "logits")]:
        model = build(model_class, config)
        reference = run_in_form(model, "parallel", input_ids=ids, attention_mask=mask)[key]
        for form in ("chunk", "recurrent"):
            assert_close(run_in_form(model, form, input_ids=ids, attention_mask=mask)[key], reference)
        if model_class is LionModel:
            assert_close(
                run_in_form(model, "recurrent", input_ids=ids, attention_mask=mask).pooler_output,
                run_in_form(model, "parallel", input_ids=ids, attention_mask=mask).pooler_output,
            )



def test_attention_form_switches_at_run_time():
    model = build(LionForSequenceClassification, tiny_text_config(num_labels=2))
    ids, mask = token_ids(2, 10), right_padded_mask([10, 7], 10)
    forms_seen = []
    attention = model.lion.encoder.layer[0].attention.self
    hook = attention.register_forward_hook(lambda *_: forms_seen.append(model.config.attention_form))
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).logits
        model.set_attention_form("chunk", chunk_size=4)
        assert (model.config.attention_form, model.config.chunk_size) == ("chunk", 4)
        assert_close(model(ids, attention_mask=mask).logits, reference)
        model.config.attention_form = "recurrent"
        assert_close(model(ids, attention_mask=mask).logits, reference)
    hook.remove()
    assert forms_seen == ["parallel", "chunk", "recurrent"]
    # The layers read the model's config, so editing it reaches them.
    assert attention.config is model.config

    with pytest.raises(ValueError, match=re.escape("Unknown attention_form 'fast'; allowed: 'parallel', 'chunk', 'recurrent'")):
        model.set_attention_form("fast")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=re.escape(f"chunk_size must be a positive integer, got {bad!r}")):
            model.set_attention_form("chunk", chunk_size=bad)
    assert (model.config.attention_form, model.config.chunk_size) == ("recurrent", 4)
    model.config.attention_form = "fast"
    with pytest.raises(ValueError, match="Unknown attention_form 'fast'"):
        model(ids, attention_mask=mask)
