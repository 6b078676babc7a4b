"""The metric modules of examples/metrics load by path and score as their formulas say (conftest sets
HF_HUB_OFFLINE=1, so a module that needed the Hub would fail to load here)."""

from __future__ import annotations

import math

import examples_support  # noqa: F401 (puts examples/ on the path)
import numpy as np
import pytest

from common import load_metric


def test_accuracy():
    assert load_metric("accuracy").compute(predictions=[0, 2, 1, 1], references=[0, 1, 1, 1]) == {"accuracy": 0.75}


def test_glue_classification_metrics():
    # Counted by hand: TP 2 (positions 0, 4), FP 1 (1), TN 1 (2), FN 1 (3).
    predictions, references = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert load_metric("glue", "sst2").compute(predictions=predictions, references=references) == {"accuracy": 0.6}
    mrpc = load_metric("glue", "mrpc").compute(predictions=predictions, references=references)
    assert mrpc == {"accuracy": 0.6, "f1": pytest.approx(2 / 3)}  # precision 2/3, recall 2/3
    cola = load_metric("glue", "cola").compute(predictions=predictions, references=references)
    assert cola == {"matthews_correlation": pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))}


def test_glue_regression_metrics():
    predictions, references = [0.5, 1.0, 3.5, 2.0, 4.9], [0.0, 1.5, 4.0, 2.5, 3.0]
    scores = load_metric("glue", "stsb").compute(predictions=predictions, references=references)
    assert scores["pearson"] == pytest.approx(np.corrcoef(predictions, references)[0, 1], abs=1e-6)
    # Ranks: predictions 1 2 4 3 5, references 1 2 5 3 4; Spearman = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6*2/120.
    assert scores["spearmanr"] == pytest.approx(0.9)


def test_unknown_glue_task_is_refused():
    with pytest.raises(KeyError, match=r"Unknown GLUE task 'sst3'; allowed: cola, ax, mrpc"):
        load_metric("glue", "sst3")
