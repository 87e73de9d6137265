"""The one row schema of ``report.json``: every model of a run (teacher, student, int8, ONNX, ...) is a row.

Every row has every key below (``None`` where it does not apply or was not measured):

=========================  =======================================================================
``model``                  row name: ``teacher``, ``student``, ``student_int8_qat``, ``student_onnx_int8``, ...
``format``                 how it is stored: ``pytorch``, ``torchao``, ``onnx``, ...
``precision``              ``fp32``, ``int8``, ...
``runtime``                what runs it: ``torch``, ``onnxruntime``, ...
``metric``                 the task's main metric name (``accuracy``, ``matthews``, ``pearson``, ...)
``score``                  the main metric's value on the evaluated split
``metrics``                ``{metric name: value}``: every metric of the task
``parameters``             parameter count (shared tensors counted once)
``parameters_embeddings``  of which embedding tables (word, position, token type)
``parameters_other``       the rest (``parameters_embeddings + parameters_other == parameters``)
``geometry``               the model's shape, from its config: ``L<layers> H<hidden> A<heads> F<FFN width>``
                           (a cut or neuron-pruned student shows its smaller widths here)
``sparsity``               share of exact zeros in the stored weights of its linear layers (task head and
                           pooler excluded: what magnitude pruning prunes), measured on the model itself
                           (:mod:`distill.prune.sparsity`); for an artifact that runs outside torch, on the
                           module it was exported from (``params_of``)
``size_mb``                weight files on disk, MB (10⁶ bytes); tokenizer and config not counted
``latency_ms``             median CPU latency, ms per example at batch 1 (the p50)
``latency_p90_ms``         90th percentile of the same runs
``throughput_eps``         examples per second at the settings' throughput batch
``threads``                intra-op threads the timing ran with
``load_ms``                time to load the artifact in its runtime, in a fresh process (edge exports)
``peak_memory_mb``         MiB of resident memory the runtime added while loading and running it at batch 1
``parity``                 ``{reference, max_abs_logit_diff, agreement}`` against the fp32 ``student``
                           over the whole evaluated split (agreement: share of identical predictions)
``retention``              score ÷ the teacher's score
``compression_params``     teacher parameters ÷ these parameters
``compression_size``       teacher size on disk ÷ this size
``speedup_latency``        teacher latency ÷ this latency
``path``                   where the weights lie
``notes``                  anything the producer of the entry states (e.g. ONNX export parity)
=========================  =======================================================================
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.data.tasks import TaskSpec
from distill.prune.sparsity import model_sparsity
from distill.report.entry import ModelEntry
from distill.report.timing import size_on_disk_mb

SPEED_KEYS = ("latency_ms", "latency_p90_ms", "throughput_eps", "threads")
RUNTIME_KEYS = ("load_ms", "peak_memory_mb")  # measured by the producer of the entry (distill/export/memory.py)
RATIO_KEYS = ("retention", "compression_params", "compression_size", "speedup_latency")


def _is_embedding(module: nn.Module) -> bool:
    # nn.Embedding and its QAT subclass, and int8 tables (distill.quant.Int8Embedding) that are not subclasses
    return isinstance(module, nn.Embedding) or (hasattr(module, "num_embeddings") and hasattr(module, "weight"))


def parameter_split(model: nn.Module | None) -> dict[str, int | None]:
    """``{"parameters", "parameters_embeddings", "parameters_other"}`` of ``model``; a tensor shared by
    several modules (tied embeddings) is counted once, as an embedding if any of them is an embedding."""
    if model is None:
        return {"parameters": None, "parameters_embeddings": None, "parameters_other": None}
    unique = {id(p): p for p in model.parameters()}
    embedding_ids = {id(m.weight) for m in model.modules() if _is_embedding(m) and isinstance(m.weight, nn.Parameter)}
    emb = sum(p.numel() for i, p in unique.items() if i in embedding_ids)
    total = sum(p.numel() for p in unique.values())
    return {"parameters": total, "parameters_embeddings": emb, "parameters_other": total - emb}


def geometry(model: nn.Module | None) -> str | None:
    """``"L4 H312 A12 F1200"`` from ``model.config`` (layers, hidden size, heads, FFN width); the FFN width is
    read off the first layer's ``intermediate.dense`` where there is one (what neuron pruning slices)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    fields = {"L": "num_hidden_layers", "H": "hidden_size", "A": "num_attention_heads", "F": "intermediate_size"}
    values = {k: getattr(config, name, None) for k, name in fields.items()}
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    first = next(iter(getattr(encoder, "layer", None) or []), None)
    ffn = getattr(getattr(first, "intermediate", None), "dense", None)
    if isinstance(ffn, nn.Linear):
        values["F"] = ffn.out_features
    return " ".join(f"{k}{v}" for k, v in values.items() if isinstance(v, int)) or None


def _runtime(entry: ModelEntry) -> str | None:
    return entry.runtime or ("torch" if isinstance(entry.model, nn.Module) else None)


def make_row(entry: ModelEntry, task: TaskSpec, metrics: dict[str, float], speed: dict[str, Any] | None,
             parity: dict[str, Any] | None) -> dict[str, Any]:
    """One row of the schema above; ratios stay ``None`` until :func:`add_ratios`."""
    row: dict[str, Any] = {
        "model": entry.name, "format": entry.format, "precision": entry.precision, "runtime": _runtime(entry),
        "metric": task.main_metric, "score": metrics.get(task.main_metric), "metrics": dict(metrics),
        **parameter_split(entry.counted), "geometry": geometry(entry.counted),
        "sparsity": model_sparsity(entry.counted),
        "size_mb": size_on_disk_mb(entry.path) if entry.path is not None else None,
    }
    row.update({key: (speed or {}).get(key) for key in SPEED_KEYS})
    row.update({key: entry.notes.get(key) for key in RUNTIME_KEYS})
    row["parity"] = parity
    row.update(dict.fromkeys(RATIO_KEYS))
    row["path"] = str(entry.path) if entry.path is not None else None
    row["notes"] = dict(entry.notes)
    return row


def _ratio(numerator: Any, denominator: Any) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def add_ratios(rows: list[dict[str, Any]], reference: str = "teacher") -> list[dict[str, Any]]:
    """Fill each row's retention (score ÷ reference score) and the reference ÷ row size, parameter and
    latency ratios (in place; rows are returned). Without a ``reference`` row the ratios stay ``None``."""
    ref = next((r for r in rows if r["model"] == reference), None)
    if ref is None:
        return rows
    for row in rows:
        row["retention"] = _ratio(row.get("score"), ref.get("score"))
        row["compression_params"] = _ratio(ref.get("parameters"), row.get("parameters"))
        row["compression_size"] = _ratio(ref.get("size_mb"), row.get("size_mb"))
        row["speedup_latency"] = _ratio(ref.get("latency_ms"), row.get("latency_ms"))
    return rows
