"""One evaluator for every model kind (torch fp32, torch int8, ONNX, ...): logits once, then metrics and parity.

Batches are the GLUE datamodule's dicts: ``input_ids`` / ``attention_mask`` [/ ``token_type_ids``] (B, T)
int64 and ``labels`` (B,) (int64 classes, float32 scores for STS-B); a model marked by :func:`reads_student_inputs`
reads the batch's ``student_*`` inputs instead when it has them (a student with its own tokenizer). The task metrics are updated batch by
batch exactly as ``TaskModule.validation_step`` does, so the values equal ``trainer.validate``'s.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from distill.data.glue import student_view
from distill.data.tasks import MODEL_INPUTS, TaskSpec
from distill.metrics import build_metrics, predictions

INPUT_NAMES = MODEL_INPUTS
LABEL_KEYS = ("labels", "label")
STUDENT_INPUTS = "distill_reads_student_inputs"


def reads_student_inputs(model: Any) -> Any:
    """Mark ``model`` (a module or a runtime callable made from the student) as one that reads the student's
    own inputs (``student_*`` keys) of batches that carry them; returns ``model``."""
    if model is not None:
        setattr(model, STUDENT_INPUTS, True)
    return model


def model_inputs(model: nn.Module | Any, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The token inputs of ``batch`` that ``model`` takes (a module: those its ``forward`` names); the student's
    own inputs for a model marked by :func:`reads_student_inputs`."""
    if getattr(model, STUDENT_INPUTS, False):
        batch = student_view(batch)
    names = INPUT_NAMES
    if isinstance(model, nn.Module):
        params = inspect.signature(model.forward).parameters
        names = tuple(n for n in INPUT_NAMES if n in params)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return {k: batch[k].to(device) for k in names if k in batch}
    return {k: batch[k] for k in names if k in batch}


@torch.inference_mode()
def logits_of(model: nn.Module | Any, batch: Mapping[str, Any]) -> torch.Tensor:
    """Logits (B, C) float32 on CPU of a module or a runtime callable on one batch (extra keys dropped)."""
    out = model(**model_inputs(model, batch))
    logits = out.logits if hasattr(out, "logits") else out  # (B, C)
    return torch.as_tensor(logits).detach().float().cpu()


def run_model(model: nn.Module | Any, batches: Iterable[Mapping[str, Any]]) -> list[torch.Tensor]:
    """Logits (B, C) of ``model`` for each batch, in order (a module is put in eval mode first)."""
    if isinstance(model, nn.Module):
        model.eval()
    return [logits_of(model, batch) for batch in batches]


def labels_of(batches: Iterable[Mapping[str, Any]]) -> list[torch.Tensor]:
    """The labels (B,) of each batch, in order."""
    return [torch.as_tensor(next(batch[k] for k in LABEL_KEYS if k in batch)).cpu() for batch in batches]


def task_metrics(logits: list[torch.Tensor], labels: list[torch.Tensor], task: TaskSpec) -> dict[str, float]:
    """The task's GLUE metrics (``{"accuracy": ..., "f1": ...}``) of per-batch logits (B, C) vs labels (B,).

    Updated batch by batch like the validation loop (streaming correlations depend on the batching).
    """
    if not logits:
        return {}
    metrics = build_metrics(task)
    for batch_logits, batch_labels in zip(logits, labels, strict=True):
        metrics.update(predictions(batch_logits, task.is_regression), batch_labels)
    return {name: float(value) for name, value in metrics.compute().items()}


def parity(logits: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float | None]:
    """``max_abs_logit_diff`` (largest |Δlogit| over every example and class) and ``agreement`` (share of
    examples with the same argmax class; ``None`` for a regression head, C = 1) against ``reference``."""
    got, ref = torch.cat(logits), torch.cat(reference)  # (N, C)
    if got.shape != ref.shape:
        raise ValueError(f"parity needs logits of the same shape; got {tuple(got.shape)} vs {tuple(ref.shape)}.")
    diff = (got.double() - ref.double()).abs().max().item() if got.numel() else 0.0
    agreement = None if got.shape[-1] == 1 else (got.argmax(-1) == ref.argmax(-1)).double().mean().item()
    return {"max_abs_logit_diff": diff, "agreement": agreement}


def evaluate_classifier(model: nn.Module | Any, dataloader: Iterable[Mapping[str, Any]], task: TaskSpec) -> dict[str, float]:
    """The task's metrics of one model over ``dataloader`` (one pass)."""
    batches = list(dataloader)
    return task_metrics(run_model(model, batches), labels_of(batches), task)
