"""Accuracy as an `evaluate` module shipped with the examples: loading it by path needs no network.

metric = evaluate.load("examples/metrics/accuracy")
metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {"accuracy": 0.666...}
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="The fraction of predictions equal to their references.",
            citation="",
            inputs_description="predictions, references: class indices (integers) of the same length.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(accuracy_score(references, predictions))}
