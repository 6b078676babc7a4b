"""LionConfig and the text models: configuration, padding, heads and their losses, recorded outputs, bad input."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import (
    FORMS,
    VARIANTS,
    VOCAB,
    assert_close,
    build,
    right_padded_mask,
    run_in_form,
    tiny_text_config,
    token_ids,
)

from lion_hf import (
    LionConfig,
    LionForMaskedLM,
    LionForMultipleChoice,
    LionForQuestionAnswering,
    LionForSequenceClassification,
    LionForTokenClassification,
    LionModel,
)
from lion_hf.modeling.naive import naive_attention_weights


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="x"), "Unknown variant 'x'; allowed: 'lit', 'd', 's'"),
        (dict(attention_form="fast"), "Unknown attention_form 'fast'; allowed: 'parallel', 'chunk', 'recurrent'"),
        (dict(modality="audio"), "Unknown modality 'audio'; allowed: 'text', 'vision'"),
        (dict(feature_map="relu"), "Unknown feature_map 'relu'; allowed: 'identity', 'elu_plus_one', 'silu_shift_l2'"),
        (dict(pooling="max"), "Unknown pooling 'max'; allowed: 'cls', 'mean'"),
        (dict(patch_order="hilbert"), "Unknown patch_order 'hilbert'; allowed: 'raster', 'snake'"),
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size (30) must be a multiple of num_attention_heads (4)"),
        (dict(patch_order="snake"), "patch_order='snake' applies to vision models only"),
        (dict(chunk_size=0), "chunk_size must be a positive integer, got 0"),
        (dict(chunk_size=-2), "chunk_size must be a positive integer, got -2"),
        (dict(num_attention_heads=0), "num_attention_heads must be a positive integer, got 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LionConfig(**kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_presets(variant):
    base = LionConfig.from_preset("bert-base", variant=variant)
    large = LionConfig.from_preset("bert-large", variant=variant)
    for config, (hidden, layers, heads) in [(base, (768, 12, 12)), (large, (1024, 24, 16))]:
        assert config.modality == "text" and config.variant == variant
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (hidden, layers, heads)
        assert config.intermediate_size == 4 * hidden
        assert (config.vocab_size, config.max_position_embeddings, config.layer_norm_eps) == (30522, 512, 1e-12)
        assert config.layer_norm_after is (variant == "lit")
        assert config.feature_map == "identity" and config.normalize_attention is False
    assert LionConfig.from_preset("bert-base", variant=variant, layer_norm_after=True).layer_norm_after is True
    with pytest.raises(ValueError, match=re.escape("Unknown preset 'bert-huge'; allowed: 'bert-base'")):
        LionConfig.from_preset("bert-huge")


# -------------------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_gives_the_outputs_of_the_sequence_alone(variant):
    """A row padded on the left or on the right equals the unpadded sequence on its real tokens, in every form."""
    model = build(LionModel, tiny_text_config(variant))
    length, pad = 7, 4
    ids = token_ids(1, length)
    filler = token_ids(1, pad, seed=5)
    left = torch.cat([filler, ids], dim=1)
    right = torch.cat([ids, filler], dim=1)
    batch = torch.cat([left, right])
    mask = torch.tensor([[0] * pad + [1] * length, [1] * length + [0] * pad])
    for form in FORMS:
        alone = run_in_form(model, form, input_ids=ids)
        padded = run_in_form(model, form, input_ids=batch, attention_mask=mask)
        assert_close(padded.last_hidden_state[0, pad:], alone.last_hidden_state[0])
        assert_close(padded.last_hidden_state[1, :length], alone.last_hidden_state[0])
        # The pooler reads the first real token, wherever the padding is.
        assert_close(padded.pooler_output[0], alone.pooler_output[0])
        assert_close(padded.pooler_output[1], alone.pooler_output[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_tokens_do_not_influence_real_tokens(variant):
    model = build(LionForMaskedLM, tiny_text_config(variant))
    ids = token_ids(2, 9)
    mask = torch.tensor([[1] * 6 + [0] * 3, [0] * 2 + [1] * 7])
    real = mask.bool()
    changed_padding = torch.where(real, ids, token_ids(2, 9, seed=8))
    assert (changed_padding != ids).any()
    changed_real = ids.clone()
    changed_real[0, 5] = changed_real[0, 5] % (VOCAB - 1) + 1
    for form in FORMS:
        logits = run_in_form(model, form, input_ids=ids, attention_mask=mask).logits
        other = run_in_form(model, form, input_ids=changed_padding, attention_mask=mask).logits
        assert_close(other[real], logits[real])
        # The same comparison sees a change of one real token on the other real tokens of its row.
        moved = run_in_form(model, form, input_ids=changed_real, attention_mask=mask).logits
        assert (moved[0, :5] - logits[0, :5]).abs().max() > 1e-3


def test_mask_with_gaps_is_rejected():
    model = build(LionModel, tiny_text_config())
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 1, 1, 0, 0], [0, 1, 0, 1, 0]])
    with pytest.raises(ValueError, match=re.escape("attention_mask rows [1, 3] have gaps")):
        model(token_ids(4, 5), attention_mask=mask)


def test_inputs_embeds_equal_input_ids():
    model = build(LionModel, tiny_text_config())
    ids, mask = token_ids(2, 6), right_padded_mask([6, 3], 6)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        assert_close(model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state,
                     model(ids, attention_mask=mask).last_hidden_state)


# ---------------------------------------------------------------------------------------------- heads


def test_sequence_classification_losses():
    ids, mask = token_ids(4, 6), right_padded_mask([6, 5, 3, 6], 6)

    model = build(LionForSequenceClassification, tiny_text_config(num_labels=1))
    labels = torch.randn(4)
    out = model(ids, attention_mask=mask, labels=labels)
    assert model.config.problem_type == "regression"
    assert_close(out.loss, ((out.logits[:, 0] - labels) ** 2).mean())

    for dtype in (torch.long, torch.int):
        model = build(LionForSequenceClassification, tiny_text_config(num_labels=3))
        labels = torch.tensor([0, 2, 1, 2], dtype=dtype)
        out = model(ids, attention_mask=mask, labels=labels)
        assert model.config.problem_type == "single_label_classification"
        log_probs = out.logits.log_softmax(-1)
        assert_close(out.loss, -log_probs[torch.arange(4), labels.long()].mean())

    model = build(LionForSequenceClassification, tiny_text_config(num_labels=3))
    labels = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float)
    out = model(ids, attention_mask=mask, labels=labels)
    assert model.config.problem_type == "multi_label_classification"
    p = torch.sigmoid(out.logits)
    assert_close(out.loss, -(labels * p.log() + (1 - labels) * (1 - p).log()).mean())

    # An explicit problem_type wins over the label dtype: regression on 3 outputs.
    model = build(LionForSequenceClassification, tiny_text_config(num_labels=3, problem_type="regression"))
    labels = torch.randn(4, 3)
    out = model(ids, attention_mask=mask, labels=labels)
    assert_close(out.loss, ((out.logits - labels) ** 2).mean())


def test_sequence_classification_pools_the_first_token():
    model = build(LionForSequenceClassification, tiny_text_config(num_labels=2))
    ids, mask = token_ids(2, 6), right_padded_mask([6, 4], 6)
    with torch.no_grad():
        hidden = model.lion(ids, attention_mask=mask).last_hidden_state
        expected = model.classifier(torch.tanh(model.lion.pooler.dense(hidden[:, 0])))
        assert_close(model(ids, attention_mask=mask).logits, expected)


def test_token_classification():
    model = build(LionForTokenClassification, tiny_text_config(num_labels=5))
    ids, mask = token_ids(2, 7), right_padded_mask([7, 4], 7)
    labels = torch.randint(0, 5, (2, 7), generator=torch.Generator().manual_seed(3))
    labels[1, 4:] = -100
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 7, 5)
    kept = labels != -100
    log_probs = out.logits.log_softmax(-1)[kept]
    assert_close(out.loss, -log_probs[torch.arange(int(kept.sum())), labels[kept]].mean())


def test_question_answering():
    model = build(LionForQuestionAnswering, tiny_text_config())
    ids = token_ids(4, 8)
    start = torch.tensor([1, 8, 3, 100])  # 8 and 100 lie outside the 8 tokens: ignored
    end = torch.tensor([2, 5, 30, 7])
    out = model(ids, start_positions=start, end_positions=end)
    assert out.start_logits.shape == out.end_logits.shape == (4, 8)

    def by_hand(logits, positions):
        kept = positions < logits.shape[1]
        return -logits.log_softmax(-1)[kept, positions[kept]].mean()

    assert_close(out.loss, (by_hand(out.start_logits, start) + by_hand(out.end_logits, end)) / 2)


def test_multiple_choice():
    model = build(LionForMultipleChoice, tiny_text_config())
    ids = token_ids(6, 5).view(2, 3, 5)
    mask = right_padded_mask([5, 4, 3, 5, 2, 5], 5).view(2, 3, 5)
    labels = torch.tensor([2, 0])
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 3)
    with torch.no_grad():
        for b in range(2):
            for c in range(3):
                pooled = model.lion(ids[b, c : c + 1], attention_mask=mask[b, c : c + 1]).pooler_output
                assert_close(out.logits[b, c], model.classifier(pooled)[0, 0])
    assert_close(out.loss, -out.logits.log_softmax(-1)[torch.arange(2), labels].mean())
    with pytest.raises(ValueError, match=re.escape("input_ids of shape (batch, num_choices, length)")):
        model(ids[0])


def test_masked_lm_loss_and_tied_decoder(tmp_path):
    model = build(LionForMaskedLM, tiny_text_config())
    embeddings = model.lion.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is embeddings
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    ids = token_ids(2, 6)
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4] = 7, 11
    out = model(ids, labels=labels)
    log_probs = out.logits.log_softmax(-1)
    assert_close(out.loss, -(log_probs[0, 2, 7] + log_probs[1, 4, 11]) / 2)

    model.save_pretrained(tmp_path)
    loaded = LionForMaskedLM.from_pretrained(tmp_path).eval()
    assert loaded.cls.predictions.decoder.weight is loaded.lion.embeddings.word_embeddings.weight
    assert loaded.cls.predictions.decoder.bias is loaded.cls.predictions.bias
    assert torch.equal(loaded.lion.embeddings.word_embeddings.weight, embeddings)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------------ model switches


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    config = tiny_text_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    ids = token_ids(2, 8)
    mask = right_padded_mask([8, 5], 8)
    labels = torch.where(mask.bool(), ids, -100)
    results = []
    for checkpointing in (False, True):
        model = build(LionForMaskedLM, config).train()
        if checkpointing:
            # transformers 5.23 renamed the switch; 5.17 only has the old name.
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        layer_calls = []
        model.lion.encoder.layer[0].attention.register_forward_hook(lambda *_: layer_calls.append(1))
        torch.manual_seed(42)  # the same dropout masks in both runs
        loss = model(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        # Checkpointing recomputes the layer during the backward pass.
        assert len(layer_calls) == (2 if checkpointing else 1)
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert_close(grads_ckpt[name], grads[name])


def test_hidden_states_and_tuples():
    config = tiny_text_config(num_hidden_layers=3, num_labels=2)
    ids, mask = token_ids(2, 6), right_padded_mask([6, 4], 6)
    model = build(LionModel, config)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True)
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
        positions = torch.arange(6).expand(2, 6)
        embedded = model.embeddings(ids, torch.zeros_like(ids), positions, None)
        assert torch.equal(out.hidden_states[0], embedded)
        assert model(ids, attention_mask=mask).hidden_states is None

    for model_class in (LionModel, LionForMaskedLM, LionForSequenceClassification):
        model = build(model_class, config)
        with torch.no_grad():
            as_dict = model(ids, attention_mask=mask, output_hidden_states=True)
            as_tuple = model(ids, attention_mask=mask, output_hidden_states=True, return_dict=False)
        assert isinstance(as_tuple, tuple)
        expected = as_dict.to_tuple()
        assert len(as_tuple) == len(expected)
        for got, want in zip(as_tuple, expected):
            if isinstance(want, tuple):
                assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
            else:
                assert torch.equal(got, want)


def test_bfloat16_loading(tmp_path):
    model = build(LionForMaskedLM, tiny_text_config())
    model.save_pretrained(tmp_path)
    loaded = LionForMaskedLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    ids, mask = token_ids(2, 9), right_padded_mask([9, 6], 9)
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).logits
        for form in FORMS:
            logits = run_in_form(loaded, form, input_ids=ids, attention_mask=mask).logits
            assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
            # bfloat16 keeps about 3 significant digits through two layers.
            assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_attentions_are_the_matrices_each_layer_applies(variant):
    model = build(LionModel, tiny_text_config(variant, num_hidden_layers=2))
    ids, mask = token_ids(2, 7), right_padded_mask([7, 5], 7)
    contexts = []
    attention = model.encoder.layer[1].attention.self
    attention.register_forward_hook(lambda module, args, output: contexts.append((args[0], output[0])))
    per_form = {}
    for form in FORMS:
        out = run_in_form(model, form, input_ids=ids, attention_mask=mask, output_attentions=True)
        assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 7, 7)
        per_form[form] = out.attentions
    for form in ("chunk", "recurrent"):
        for got, want in zip(per_form[form], per_form["parallel"]):
            assert_close(got, want)
    # The second layer's matrix from its own input, by the naive reference, and applied to its values.
    layer_input, context = contexts[-1]
    with torch.no_grad():
        q, k, v = (attention.split_heads(p(layer_input)) for p in (attention.query, attention.key, attention.value))
        expected = naive_attention_weights(
            q * attention.scale, k, attention.log_decays(layer_input, 0), key_padding_mask=mask.bool()
        )
        # LION-LIT's LayerNorm after the heads is applied with the output projection (LionSelfOutput).
        applied = (per_form["recurrent"][1] @ v).transpose(1, 2).reshape(2, 7, 32)
    assert_close(per_form["recurrent"][1], expected)
    assert_close(context, applied)
    assert model(ids, attention_mask=mask).attentions is None


def test_softmax_attention_implementations_are_refused_with_lions_own_switches(tmp_path):
    config = tiny_text_config()
    LionForMaskedLM(config).save_pretrained(tmp_path)
    for implementation in ("sdpa", "flash_attention_2", "flex_attention"):
        with pytest.raises(ValueError, match=rf"attn_implementation='{implementation}' does not apply to LION.*attention_form"):
            LionForMaskedLM.from_pretrained(tmp_path, attn_implementation=implementation)
    assert LionForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager").config._attn_implementation == "eager"


def test_masked_lm_loss_is_normalised_by_the_tokens_of_the_whole_batch():
    """Trainer passes num_items_in_batch (labelled tokens over all accumulated micro-batches), as for BERT."""
    model = build(LionForMaskedLM, tiny_text_config())
    ids = token_ids(2, 6)
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[0, 3], labels[1, 4] = 5, 9, 11
    with torch.no_grad():
        out = model(ids, labels=labels, num_items_in_batch=torch.tensor(10))
        log_probs = out.logits.log_softmax(-1)
    picked = log_probs[0, 1, 5] + log_probs[0, 3, 9] + log_probs[1, 4, 11]
    assert_close(out.loss, -picked / 10)


# ------------------------------------------------------------------------------------------ bad input


def test_bad_inputs():
    model = build(LionForMaskedLM, tiny_text_config())
    ids = token_ids(2, 6)
    with pytest.raises(ValueError, match="Specify exactly one of input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="Specify exactly one of input_ids or inputs_embeds"):
        model(ids, inputs_embeds=torch.zeros(2, 6, 32))
    with pytest.raises(ValueError, match=re.escape("Sequence length 25 exceeds max_position_embeddings=24")):
        model(token_ids(1, 25))
    for shape in [(2, 5), (1, 6), (2, 6, 1)]:
        message = f"attention_mask must have shape (batch, length) = (2, 6) like input_ids, got {shape}"
        with pytest.raises(ValueError, match=re.escape(message)):
            model(ids, attention_mask=torch.ones(shape, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("input_ids must be (batch, length), got shape (6,)")):
        model(ids[0])
    with pytest.raises(ValueError, match=re.escape("pixel_values given to a text LionModel")):
        model.lion(ids, pixel_values=torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(
    "head", [LionForMaskedLM, LionForSequenceClassification, LionForTokenClassification, LionForQuestionAnswering, LionForMultipleChoice]
)
def test_text_head_rejects_vision_config(head):
    config = LionConfig(modality="vision", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    with pytest.raises(ValueError, match=re.escape(f"{head.__name__} needs config.modality='text', got 'vision'")):
        head(config)


def _saved_activations(model, projections: tuple[str, ...], run) -> dict[str, list[torch.Tensor]]:
    """Per layer, the activations that its ``projections`` (linear layers, by attribute name) saved for the
    backward while ``run()`` ran the forward pass: tensors of the size of the layer's hidden states."""
    hidden = model.config.hidden_size
    current, saved = [], {}

    def enter(name):
        return lambda module, args: current.append((name, args[0].numel()))

    def leave(module, args, output):
        current.pop()

    handles = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in projections:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))

    def pack(t):
        if current and t.numel() == current[-1][1] and t.shape[-1] == hidden:
            layer = current[-1][0].rsplit(".", 2)[0]
            saved.setdefault(layer, []).append(t)
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        for handle in handles:
            handle.remove()
    return saved


@pytest.mark.parametrize("modality", ["text", "vision"])
def test_projections_of_one_input_keep_one_autocast_copy_of_it_for_the_backward(modality):
    """Autocast casts an activation for every linear layer that reads it, and each keeps its copy: the query, key,
    value and LION-S gate projections share one copy instead (one activation per layer, not three or four)."""
    from helpers import tiny_vision_config

    if modality == "text":
        model = build(LionForMaskedLM, tiny_text_config("s")).train()
        projections = ("query", "key", "value", "decay_gate")
        ids = token_ids(2, 20)

        def run():
            return model(input_ids=ids, labels=ids).loss
    else:
        from lion_hf import LionForImageClassification

        model = build(LionForImageClassification, tiny_vision_config(variant="s")).train()
        projections = ("qkv", "decay_gate")
        pixels = torch.randn(2, 3, 16, 16)

        def run():
            return model(pixel_values=pixels, labels=torch.tensor([0, 1])).loss

    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved = _saved_activations(model, projections, run)
    assert len(saved) == model.config.num_hidden_layers
    for layer, tensors in saved.items():
        assert len(tensors) == len(projections), layer
        assert {t.untyped_storage().data_ptr() for t in tensors} == {tensors[0].untyped_storage().data_ptr()}, layer
        assert all(t.dtype == torch.bfloat16 for t in tensors), layer


def _norm_and_projection(dtype=torch.float32):
    norm, linear = torch.nn.LayerNorm(32), torch.nn.Linear(32, 24)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    return norm.to(dtype), linear.to(dtype)


def test_the_heads_layer_norm_and_projection_match_their_modules_in_float64():
    """LION-LIT's LayerNorm after the heads and the projection after it, one node that forms the normalised heads
    again in its backward: the output and every gradient as the two modules give them."""
    from lion_hf.modeling.modeling_lion import normalized_projection

    norm, linear = _norm_and_projection(torch.float64)
    x = (torch.randn(3, 5, 32, dtype=torch.float64) * 3 + 1).requires_grad_()
    grad = torch.randn(3, 5, 24, dtype=torch.float64)
    params = [x, norm.weight, norm.bias, linear.weight, linear.bias]
    fused = torch.autograd.grad(normalized_projection(norm, linear, x), params, grad)
    expected = linear(norm(x))
    assert_close(normalized_projection(norm, linear, x), expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(fused, torch.autograd.grad(expected, params, grad)):
        assert_close(got, want, rtol=1e-10, atol=1e-10)
    # A frozen projection (fine-tuning the rest) gets no gradient, the others stay the same.
    linear.requires_grad_(False)
    (dx,) = torch.autograd.grad(normalized_projection(norm, linear, x), [x], grad)
    assert_close(dx, fused[0], rtol=1e-12, atol=1e-12)


def test_the_heads_layer_norm_runs_in_the_input_dtype_and_keeps_only_its_input():
    """On bf16 heads under autocast: the bf16 output that float32 statistics and weights round to, gradients for
    the float32 weights, and nothing of the heads' size kept for the backward but the heads themselves (which the
    attention's backward keeps anyway): neither the normalised heads nor a float32 copy (each 25 MB per layer of
    BERT-base at seq 128, batch 128; their peak memory measured on a GPU in benchmarks/NOTES.md, sessions 9-10)."""
    from lion_hf.modeling.modeling_lion import normalized_projection

    norm, linear = _norm_and_projection()
    x = (torch.randn(2, 5, 32) * 3 + 1).bfloat16().requires_grad_()
    saved = []

    def pack(t):
        if t.numel() == x.numel():
            saved.append(t)
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = normalized_projection(norm, linear, x)
    weights = [p.double() for p in (norm.weight, norm.bias, linear.weight, linear.bias)]
    normalized = torch.nn.functional.layer_norm(x.double(), (32,), weights[0], weights[1], norm.eps)
    assert out.dtype == torch.bfloat16
    assert_close(out.double(), torch.nn.functional.linear(normalized, *weights[2:]), rtol=2**-6, atol=2**-6)
    assert [t.untyped_storage().data_ptr() for t in saved] == [x.untyped_storage().data_ptr()]
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    for param in (norm.weight, norm.bias, linear.weight, linear.bias):
        assert param.grad.dtype == torch.float32 and param.grad.abs().sum() > 0
