"""Each GLUE task's metric, built from torchmetrics."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryMatthewsCorrCoef,
    MulticlassAccuracy,
)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from distill.data.tasks import TaskSpec


class MatthewsCorrCoef(BinaryMatthewsCorrCoef):
    """Binary MCC as GLUE scores CoLA (scikit-learn's convention): 0 when the predictions or the targets hold
    a single class, where the coefficient is 0/0. torchmetrics fills that case with a small non-zero value
    (0.0256 for an all-"acceptable" predictor on CoLA dev), which would credit a collapsed student."""

    def compute(self) -> torch.Tensor:
        tn, fp, fn, tp = self.confmat.double().flatten()
        if ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) == 0:
            return torch.zeros((), dtype=torch.float32, device=self.confmat.device)
        return super().compute()


def build_metrics(task: TaskSpec) -> MetricCollection:
    """A ``MetricCollection`` keyed by the task's GLUE metric names (``accuracy``, ``f1``, ...).

    It takes predictions from :func:`predictions` — class ids (B,) or scores (B,) — and targets (B,).
    """
    factories = {
        "accuracy": (lambda: BinaryAccuracy()) if task.num_labels == 2 else (lambda: MulticlassAccuracy(task.num_labels)),
        "f1": BinaryF1Score,
        "matthews": MatthewsCorrCoef,
        "pearson": PearsonCorrCoef,
        "spearman": SpearmanCorrCoef,
    }
    return MetricCollection({name: factories[name]() for name in task.metrics})


def predictions(logits: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """Logits (B, C) → class ids (B,) int64, or scores (B,) float32 for a regression head (C = 1)."""
    return logits.squeeze(-1).float() if is_regression else logits.argmax(-1)
