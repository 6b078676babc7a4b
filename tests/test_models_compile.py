"""The models under torch.compile: the same outputs as eager, and no graph break in any form."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, build, tiny_text_config, token_ids

from lion_hf import LionConfig, LionForImageClassification, LionForMaskedLM, LionForSequenceClassification


def test_torch_compile_matches_eager():
    model = build(LionForSequenceClassification, tiny_text_config("s", num_hidden_layers=1, num_labels=3))
    ids = token_ids(2, 9)
    mask = torch.tensor([[1] * 5 + [0] * 4, [0] * 3 + [1] * 6])
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        got = compiled(ids, attention_mask=mask, output_hidden_states=True)
        expected = model(ids, attention_mask=mask, output_hidden_states=True)
    assert_close(got.hidden_states[-1], expected.hidden_states[-1])
    assert_close(got.logits, expected.logits)


def _explain(model, **inputs):
    import torch._dynamo as dynamo

    dynamo.reset()
    return dynamo.explain(model)(**inputs)


@pytest.mark.parametrize("form", ["parallel", "chunk", "recurrent"])
def test_models_trace_without_graph_breaks(form):
    torch.manual_seed(7)
    for variant, order in (("lit", "raster"), ("s", "snake")):
        config = LionConfig(
            modality="vision", variant=variant, patch_order=order, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, num_labels=10,
            attention_form=form, chunk_size=8,
        )
        pixels, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
        explanation = _explain(LionForImageClassification(config), pixel_values=pixels, labels=labels)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    config = LionConfig(
        variant="d", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=32, attention_form=form, chunk_size=8,
    )
    ids = torch.randint(1, 100, (2, 16))
    explanation = _explain(
        LionForMaskedLM(config).train(), input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons
