"""Cut a BERT classifier to a smaller geometry by keeping its most important units.

The result is a new plain ``BertForSequenceClassification`` (any ``*ForSequenceClassification`` of the BERT
layout) of the target config whose weights are slices of the source's:

- layers: the ``num_hidden_layers`` with the highest Block Importance (or evenly spaced: ``layers=stride``),
  in their original order;
- hidden (residual-stream) channels: one index set for every tensor that reads or writes the stream —
  the embedding tables and LayerNorms, the input columns of Q/K/V and the FFN, the output rows of each
  block, the pooler's input — so the cut model computes the source's stream on those channels (LayerNorm
  statistics then span the kept channels only: the one approximation of a width cut, as in Minitron);
- attention heads: the student's ``heads × head_dim`` columns come from the most important teacher heads.
  A student head no wider than the teacher's (``tiny``: 26 ≤ 32) is one teacher head keeping its ``head_dim``
  best query/key pairs and, independently, its best value columns; a wider one (``mini`` / ``micro``: 64)
  merges ``ceil(head_dim / teacher_head_dim)`` teacher heads, whose attention logits are then averaged.
  Queries are rescaled so the kept logits keep the teacher's temperature (``sqrt(head_dim)`` changes);
- FFN neurons: the ``intermediate_size`` most important of each kept layer;
- pooler outputs: the most used by the classifier; the classifier's input columns follow them.

Why hand slicing and not Torch-Pruning's dependency graph or transformers' ``prune_heads``: the BERT layout
is fixed and known, a width cut here must also shorten every head (312 / 12 = 26 from 32-dim heads) or merge
heads, which neither tool does, and the result must be a vanilla config that ``from_pretrained`` rebuilds —
``prune_heads`` leaves per-layer head counts that a plain config cannot express. The slicing is ~100 lines.
Every index set is sorted, so a cut that keeps everything is the identity (the tests check exact logits).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from distill.errors import ConfigError
from distill.prune.importance import Importance

LAYER_CHOICES = ("importance", "stride")


@dataclass(frozen=True)
class Geometry:
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def resolve_geometry(config, key: str = "student", whose: str = "teacher's", **target: int | None) -> Geometry:
    """The target geometry (``None`` = the source's value), checked against ``config`` (the ``whose`` model's);
    a ConfigError naming the key."""
    source = {k: getattr(config, k) for k in Geometry.__dataclass_fields__}
    values = {k: source[k] if target.get(k) is None else target[k] for k in source}
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= source[name]:
            raise ConfigError(f"{key}.{name}={value!r} must be a whole number from 1 to the {whose} {source[name]}.")
    geo = Geometry(**values)
    if geo.hidden_size % geo.num_attention_heads:
        raise ConfigError(f"{key}.hidden_size={geo.hidden_size} must be divisible by "
                          f"{key}.num_attention_heads={geo.num_attention_heads}.")
    t_dim = config.hidden_size // config.num_attention_heads
    need = geo.num_attention_heads * math.ceil(geo.head_dim / t_dim)
    if need > config.num_attention_heads:
        raise ConfigError(
            f"{key}.num_attention_heads={geo.num_attention_heads} with hidden_size={geo.hidden_size} gives "
            f"{geo.head_dim}-dim heads, which merge {need} of the {whose} {config.num_attention_heads} "
            f"{t_dim}-dim heads; use at most {config.num_attention_heads // math.ceil(geo.head_dim / t_dim)} heads.")
    return geo


def top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest scores, in increasing index order (ties: the lower index). (k,) int64"""
    order = torch.sort(scores.float(), descending=True, stable=True).indices[:k]
    return order.sort().values


def select_layers(importance: Importance, n: int, how: str = "importance") -> Tensor:
    """The kept layers: ``importance`` = highest Block Importance, ``stride`` = evenly spaced incl. first and last."""
    total = importance.layers.numel()
    if how == "importance":
        return top(importance.layers, n)
    if how == "stride":
        return torch.linspace(0, total - 1, n).round().long() if n > 1 else torch.tensor([total - 1])
    raise ConfigError(f"student.cut.layers={how!r} is not one of {', '.join(LAYER_CHOICES)}.")


def head_columns(importance: Importance, layer: int, heads: int, head_dim: int) -> tuple[Tensor, Tensor, float]:
    """Teacher Q/K columns and V columns for the student's ``heads × head_dim`` of one layer, and the query scale.

    Returns (qk_cols (heads·head_dim,), v_cols (heads·head_dim,), scale); columns index the teacher's
    ``all_head_size``. Student head j takes teacher heads ``group_j`` (by importance rank) and the best
    ``head_dim`` of their columns, in index order.
    """
    t_heads, t_dim = importance.qk_dims.shape[1:]
    group = math.ceil(head_dim / t_dim)
    ranked = torch.sort(importance.heads[layer].float(), descending=True, stable=True).indices[: heads * group]
    groups = ranked.view(heads, group).sort(dim=1).values.tolist()
    groups.sort(key=lambda g: g[0])  # the student's heads in the teacher's order: the identity when all are kept
    qk, v = [], []
    for g in groups:
        cols = torch.cat([torch.arange(h * t_dim, (h + 1) * t_dim) for h in g])  # (group · t_dim,)
        qk.append(cols[top(importance.qk_dims[layer, g].flatten(), head_dim)])
        v.append(cols[top(importance.v_dims[layer, g].flatten(), head_dim)])
    # logits q·k / sqrt(d): keep the teacher's 1/sqrt(t_dim) temperature, and average (not sum) merged heads
    return torch.cat(qk), torch.cat(v), math.sqrt(head_dim / t_dim) / group


def _linear(dst: nn.Linear, src: nn.Linear, rows: Tensor | None, cols: Tensor | None, scale: float = 1.0) -> None:
    w, b = src.weight, src.bias  # (out, in), (out,)
    if rows is not None:
        w, b = w[rows], (b[rows] if b is not None else None)
    if cols is not None:
        w = w[:, cols]
    dst.weight.copy_(w * scale)
    if b is not None:
        dst.bias.copy_(b * scale)


def _norm(dst: nn.LayerNorm, src: nn.LayerNorm, idx: Tensor) -> None:
    dst.weight.copy_(src.weight[idx])
    dst.bias.copy_(src.bias[idx])


@torch.no_grad()
def cut_model(model: PreTrainedModel, geometry: Geometry, importance: Importance, layers: str = "importance",
              attn_implementation: str | None = None) -> PreTrainedModel:
    """A new model of ``model``'s class with ``geometry``, its weights sliced from ``model`` by ``importance``.

    ``model`` is not changed. Dropout and every other config field are the source's.
    """
    config = copy.deepcopy(model.config)
    for name in Geometry.__dataclass_fields__:
        setattr(config, name, getattr(geometry, name))
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    student = type(model)._from_config(config, **kwargs).to(next(model.parameters()).device).eval()
    src, dst = model.base_model, student.base_model
    hid = top(importance.hidden, geometry.hidden_size)  # (D_s,)

    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        table = getattr(src.embeddings, name, None)
        if table is not None:
            getattr(dst.embeddings, name).weight.copy_(table.weight[:, hid])
    _norm(dst.embeddings.LayerNorm, src.embeddings.LayerNorm, hid)

    kept = select_layers(importance, geometry.num_hidden_layers, layers)
    for s_layer, t_index in zip(dst.encoder.layer, kept.tolist(), strict=True):
        t_layer = src.encoder.layer[t_index]
        qk, v, scale = head_columns(importance, t_index, geometry.num_attention_heads, geometry.head_dim)
        s_att, t_att = s_layer.attention, t_layer.attention
        _linear(s_att.self.query, t_att.self.query, qk, hid, scale)
        _linear(s_att.self.key, t_att.self.key, qk, hid)
        _linear(s_att.self.value, t_att.self.value, v, hid)
        _linear(s_att.output.dense, t_att.output.dense, hid, v)
        _norm(s_att.output.LayerNorm, t_att.output.LayerNorm, hid)
        neurons = top(importance.neurons[t_index], geometry.intermediate_size)
        _linear(s_layer.intermediate.dense, t_layer.intermediate.dense, neurons, hid)
        _linear(s_layer.output.dense, t_layer.output.dense, hid, neurons)
        _norm(s_layer.output.LayerNorm, t_layer.output.LayerNorm, hid)

    if getattr(src, "pooler", None) is not None:
        pooled = top(importance.pooler, geometry.hidden_size)
        _linear(dst.pooler.dense, src.pooler.dense, pooled, hid)
        _linear(student.classifier, model.classifier, None, pooled)
    else:
        _linear(student.classifier, model.classifier, None, hid)
    student.train(model.training)
    return student


@dataclass
class CutSettings:
    """How :func:`distill.models.student.pruned_student` ranks and keeps units (``conf/prune/cut.yaml``).

    ``importance``: ``activation`` or ``taylor``; ``layers``: ``stride`` (evenly spaced, first and last
    kept) or ``importance``; ``calibration_batches`` / ``calibration_seed``: how many training batches, drawn
    how; ``calibration_data``: ``GLUEDataModule`` arguments of the task's training set; ``key``: the config
    node named in messages.
    """

    importance: str = "activation"
    layers: str = "stride"
    calibration_batches: int = 32
    calibration_seed: int = 0
    calibration_data: Any = None
    key: str = "student.cut"

    def check(self) -> None:
        """One sentence naming the key and what is allowed, before any batch is drawn."""
        from distill.prune.importance import IMPORTANCES

        if self.importance not in IMPORTANCES:
            raise ConfigError(f"{self.key}.importance={self.importance!r} is not one of {', '.join(IMPORTANCES)}.")
        if self.layers not in LAYER_CHOICES:
            raise ConfigError(f"{self.key}.layers={self.layers!r} is not one of {', '.join(LAYER_CHOICES)}.")
        n = self.calibration_batches
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{self.key}.calibration_batches={n!r} must be a positive number of batches.")


def as_cut_settings(value: Any, key: str | None = None) -> CutSettings:
    """``value`` (CutSettings, a mapping of its fields or None) as :class:`CutSettings`, named ``key`` in messages."""
    settings = value if isinstance(value, CutSettings) else CutSettings(**dict(value or {}))
    return dataclasses.replace(settings, key=key) if key else settings
