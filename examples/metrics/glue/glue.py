"""The GLUE metrics as an `evaluate` module shipped with the examples: loading it by path needs no network.

The configuration is the task name, and each task reports what the GLUE benchmark reports for it:

    metric = evaluate.load("examples/metrics/glue", "mrpc")
    metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {"accuracy": ..., "f1": ...}

cola, ax: Matthews correlation; mrpc, qqp: accuracy and F1 of the positive class; stsb (regression): Pearson and
Spearman correlation; every other task: accuracy.
"""

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

TASK_METRICS = {
    "cola": ("matthews_correlation",),
    "ax": ("matthews_correlation",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    **{task: ("accuracy",) for task in ("sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli")},
}

SCORES = {
    "accuracy": lambda refs, preds: accuracy_score(refs, preds),
    "f1": lambda refs, preds: f1_score(refs, preds),
    "matthews_correlation": lambda refs, preds: matthews_corrcoef(refs, preds),
    "pearson": lambda refs, preds: pearsonr(refs, preds)[0],
    "spearmanr": lambda refs, preds: spearmanr(refs, preds)[0],
}


class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in TASK_METRICS:
            raise KeyError(f"Unknown GLUE task {self.config_name!r}; allowed: {', '.join(TASK_METRICS)}.")
        value = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description="The metrics the GLUE benchmark reports for each task.",
            citation="Wang et al., 2019, GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language "
            "Understanding, ICLR.",
            inputs_description="predictions, references: class indices, or scores for stsb.",
            features=datasets.Features({"predictions": datasets.Value(value), "references": datasets.Value(value)}),
        )

    def _compute(self, predictions, references):
        return {name: float(SCORES[name](references, predictions)) for name in TASK_METRICS[self.config_name]}
