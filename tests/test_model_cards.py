"""Model cards: the metadata parses back with huggingface_hub (model-index included), every head gets its task, and a
metrics JSON without evaluation results still gives a card that says what is missing."""

from __future__ import annotations

import json

import pytest
from helpers import HEAD_AUTO_CLASSES, tiny_text_config, tiny_vision_config
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import eval_results_to_model_index

from lion_hf import Evaluation, Provenance, render_card
from lion_hf.modeling.modeling_lion import lion_auto_map

GLUE = Evaluation("nyu-mll/glue", name="GLUE SST-2", config="sst2", split="validation")
# transformers' run_glue.py writes eval_results.json like this: metrics and run bookkeeping in one flat object.
GLUE_METRICS = {
    "epoch": 3.0, "eval_accuracy": 0.9128, "eval_f1": 0.9150, "eval_loss": 0.2871, "eval_runtime": 2.41,
    "eval_samples": 872, "eval_samples_per_second": 361.8, "eval_steps_per_second": 45.2,
}  # fmt: skip


def config_of(architecture: str, **settings):
    config = tiny_vision_config(**settings) if "Image" in architecture else tiny_text_config(**settings)
    config.architectures = [architecture]
    return config


def test_a_card_parses_back_with_its_model_index_and_passes_huggingface_hubs_validation(tmp_path):
    provenance = Provenance(
        command="python examples/run_glue.py --task_name sst2", datasets=["nyu-mll/glue"], base_model="me/lion-s-mlm"
    )
    card = render_card(
        config_of("LionForSequenceClassification"), model_id="me/lion-s-sst2", provenance=provenance,
        metrics=GLUE_METRICS, evaluation=GLUE,
    )  # fmt: skip
    card.save(tmp_path / "README.md")
    # ModelCard.load validates the metadata as huggingface_hub does before a push (model-index parsed into
    # EvalResults, which check their own fields): a malformed card raises here.
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert (data.library_name, data.license, data.pipeline_tag) == ("transformers", "apache-2.0", "text-classification")
    assert data.tags == ["lion", "linear-attention", "lion-s"]
    assert (data.datasets, data.base_model, data.model_name) == (["nyu-mll/glue"], "me/lion-s-mlm", "lion-s-sst2")
    results = {result.metric_type: result for result in data.eval_results}
    assert {name: result.metric_value for name, result in results.items()} == {
        "accuracy": 0.9128, "f1": 0.9150, "loss": 0.2871
    }  # fmt: skip
    for result in results.values():
        assert (result.task_type, result.dataset_type, result.dataset_name) == ("text-classification", "nyu-mll/glue", "GLUE SST-2")
        assert (result.dataset_config, result.dataset_split) == ("sst2", "validation")
    raw = metadata_load(tmp_path / "README.md")
    assert raw["model-index"] == eval_results_to_model_index(data.model_name, data.eval_results)
    text = loaded.text
    assert "| accuracy | 0.9128 |" in text and "eval_runtime" not in text and "| samples" not in text
    assert "`python examples/run_glue.py --task_name sst2`" in text and "arXiv:2502.16249" in text
    assert "Apache-2.0" in text


def test_metrics_without_evaluation_results_give_a_card_that_says_what_is_missing(tmp_path):
    config = config_of("LionForMaskedLM")
    for metrics, held in (({"train_loss": 3.2, "epoch": 1.0}, "`train_loss`, `epoch`"), ({}, "nothing")):
        path = tmp_path / "all_results.json"
        path.write_text(json.dumps(metrics))
        card = render_card(config, model_id="me/x", metrics=path, evaluation=GLUE)
        assert "model-index" not in card.data.to_dict()
        assert (
            "Missing: `all_results.json` holds no evaluation result (no `eval_*` metric such as `eval_accuracy` or "
            f"`eval_loss`, and no `perplexity`); it holds {held}." in card.text
        )
        ModelCard(card.content)  # still a valid card
    named_nothing = render_card(config, model_id="me/x", metrics={"eval_loss": 2.0, "perplexity": 7.4})
    assert "model-index" not in named_nothing.data.to_dict()
    assert "| perplexity | 7.4 |" in named_nothing.text
    assert "Missing: the evaluation dataset is not named" in named_nothing.text


@pytest.mark.parametrize(
    "architecture, pipeline_tag",
    [
        ("LionModel", "feature-extraction"),
        ("LionForMaskedLM", "fill-mask"),
        ("LionForSequenceClassification", "text-classification"),
        ("LionForTokenClassification", "token-classification"),
        ("LionForQuestionAnswering", "question-answering"),
        ("LionForMultipleChoice", None),
        ("LionForImageClassification", "image-classification"),
        ("LionForImageClassificationWithTeacher", "image-classification"),
    ],
)
def test_each_head_gets_its_task_and_a_snippet_through_its_auto_class(architecture, pipeline_tag):
    settings = dict(use_distillation_token=True) if architecture.endswith("WithTeacher") else {}
    config = config_of(architecture, **settings)
    card = render_card(config, model_id="me/x")
    assert card.data.pipeline_tag == pipeline_tag
    auto_class = HEAD_AUTO_CLASSES[architecture]
    assert lion_auto_map(config)[auto_class] == f"modeling_lion.{architecture}"
    assert f"{auto_class}.from_pretrained(model_id, trust_remote_code=True" in card.text
    assert ("pipeline(" in card.text) == (architecture not in ("LionForQuestionAnswering", "LionForMultipleChoice"))


def test_the_vision_card_describes_the_images_and_the_snake_order():
    config = config_of("LionForImageClassification", image_size=32, patch_size=8, variant="d", patch_order="snake")
    text = render_card(config, model_id="me/x").text
    assert "32x32 images in 8x8 patches (snake order)" in text
    assert "snake order: a row-wise and a column-wise" in text and "interpolate_pos_encoding=True" in text
    assert "**LION-D**" in text
