"""Intermediate-layer losses on hidden states: TinyBERT's MSE and DistilBERT's cosine.

Both read ``hidden_states`` (requires ``"hidden_states"``): a tuple of L+1 tensors (B, T, H), index 0
being the embedding output. Pairs of layers come from a :mod:`distill.layer_map` config. Padded
positions (``attention_mask == 0``) are dropped before any arithmetic, so their values (even NaN)
change neither the loss nor its gradient; the loss is a mean over the real tokens of the batch.

When the student is narrower than the teacher, a learnable ``nn.Linear(H_s, H_t)`` maps student
states to the teacher's width (TinyBERT's W_h; one matrix shared by every pair, embeddings included,
as in TinyBERT's released code). Its parameters live in the loss module, so the optimizer must
include the objective's parameters; the projection is discarded after distillation. Widths must be
known at construction: from ``student_config``/``teacher_config`` (Hugging Face configs, passed by
the pipeline) or ``student_hidden``/``teacher_hidden``. Without either, equal widths are assumed and a
mismatch at the first forward is a ConfigError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.layer_map import as_layer_map
from distill.losses._common import check_reduction, f32, geometry, reduce_layers, token_mask, width


class _HiddenTerm(nn.Module):
    """Shared by the hidden-state terms; a subclass sets its paper's defaults (``None`` arguments take them)."""

    requires: frozenset[str] = frozenset({"hidden_states"})
    default_layer_map: str = "uniform"
    default_include_embeddings: bool = True
    default_project: bool = True

    def __init__(
        self,
        layer_map=None,
        include_embeddings: bool | None = None,
        student_hidden: int | None = None,
        teacher_hidden: int | None = None,
        project: bool | None = None,
        layer_reduction: str = "sum",
        student_config=None,
        teacher_config=None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        layer_map = self.default_layer_map if layer_map is None else layer_map
        include_embeddings = self.default_include_embeddings if include_embeddings is None else include_embeddings
        project = self.default_project if project is None else project
        self.layer_map = as_layer_map(layer_map, key=f"{name}.layer_map")
        self.include_embeddings = bool(include_embeddings)
        self.layer_reduction = check_reduction(layer_reduction, name)
        self.student_hidden = width(student_hidden, student_config, f"{name}.student_hidden")
        self.teacher_hidden = width(teacher_hidden, teacher_config, f"{name}.teacher_hidden")
        self.proj: nn.Linear | None = None
        if self.student_hidden and self.teacher_hidden and self.student_hidden != self.teacher_hidden:
            if not project:
                raise ConfigError(
                    f"{name} compares hidden states of width {self.student_hidden} (student) and "
                    f"{self.teacher_hidden} (teacher); set project: true to learn a projection."
                )
            self.proj = nn.Linear(self.student_hidden, self.teacher_hidden)
        self._pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
        s_layers = geometry(student_config, "num_hidden_layers", f"{name}.student_config")
        t_layers = geometry(teacher_config, "num_hidden_layers", f"{name}.teacher_config")
        if s_layers is not None and t_layers is not None:
            self.pairs(s_layers, t_layers)  # validate the map now, not at the first step

    def pairs(self, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
        """Resolved (student, teacher) hidden_states indices, embeddings (0, 0) first when included."""
        key = (student_layers, teacher_layers)
        if key not in self._pairs:
            pairs = self.layer_map.resolve(student_layers, teacher_layers)
            if self.include_embeddings and (0, 0) not in pairs:
                pairs = [(0, 0), *pairs]
            self._pairs[key] = pairs
        return self._pairs[key]

    def teacher_layers(self, student_layers: int, teacher_layers: int) -> list[int]:
        """The teacher ``hidden_states`` indices this term reads (what a teacher-output cache must hold)."""
        return sorted({lt for _, lt in self.pairs(student_layers, teacher_layers)})

    def _layer_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        hs, ht = student.hidden_states, teacher.hidden_states  # tuples of (B, T, H_s), (B, T, H_t)
        if hs is None or ht is None:
            raise RuntimeError(f"{type(self).__name__} needs output_hidden_states=True on both models.")
        keep = token_mask(batch, tuple(hs[0].shape[:2]), hs[0].device)  # (B, T) bool
        losses = []
        for ls, lt in self.pairs(len(hs) - 1, len(ht) - 1):
            s = f32(hs[ls][keep])  # (N, H_s) real tokens only
            t = f32(ht[lt][keep]).to(s.dtype)  # (N, H_t)
            if self.proj is not None:
                s = f32(self.proj(s.to(self.proj.weight.dtype))).to(t.dtype)  # (N, H_t)
            if s.shape[-1] != t.shape[-1]:
                raise ConfigError(
                    f"{type(self).__name__} got student width {s.shape[-1]} and teacher width {t.shape[-1]}; pass "
                    "student_config/teacher_config (or student_hidden/teacher_hidden) so it can build a projection."
                )
            losses.append(self._layer_loss(s, t))
        return reduce_layers(losses, self.layer_reduction)


class HiddenStateMSE(_HiddenTerm):
    """TinyBERT's hidden-state (and embedding) loss: ``Σ_pairs mean_tokens,dims (W·h_s − h_t)²``.

    ``layer_map`` defaults to ``uniform``; ``include_embeddings`` adds the pair (0, 0);
    ``layer_reduction`` ``sum`` (TinyBERT) or ``mean`` over pairs.
    """

    default_layer_map = "uniform"
    default_include_embeddings = True
    default_project = True

    def _layer_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(s, t)  # (N, H) -> ()


class HiddenCosine(_HiddenTerm):
    """DistilBERT's cosine-embedding loss: ``mean_tokens (1 − cos(h_s, h_t))`` per pair.

    ``layer_map`` defaults to the last layer (``last_k``, k = 1) as in DistilBERT; widths must match
    unless ``project: true`` (a learned projection, as in :class:`HiddenStateMSE`).
    """

    default_layer_map = "last_k"
    default_include_embeddings = False
    default_project = False

    def _layer_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()  # (N,) -> ()
