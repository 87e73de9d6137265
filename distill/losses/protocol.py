"""What a loss term is: the contract between :class:`~distill.losses.DistillationObjective` and its terms.

A new loss family is one new module whose classes satisfy :class:`LossTerm`, and a ``conf/loss/`` preset
naming it by ``_target_``; nothing else in the pipeline changes.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class LossTerm(Protocol):
    """A scalar loss between a student's and a teacher's outputs.

    ``requires``: model outputs the term reads besides ``logits`` — ``"hidden_states"`` and/or
    ``"attentions"``; the module asks both models for exactly those. ``forward(student_out, teacher_out,
    batch, temperature)`` gets Hugging Face model outputs (``logits`` (B, C) or (B, T, V), and the required
    tuples of (B, T, H) hidden states / (B, heads, T, T) attentions), the batch dict (``input_ids``,
    ``attention_mask`` (B, T), ``labels``...), and the scheduled temperature; it returns a scalar tensor.
    ``teacher_out`` is None when no term of the objective needs the teacher.

    Terms whose constructor takes ``student_config`` / ``teacher_config`` are built with both models'
    Hugging Face configs (for projections and layer maps) before any weights are loaded.
    """

    requires: frozenset[str]

    def __call__(self, student_out: Any, teacher_out: Any, batch: dict[str, torch.Tensor],
                 temperature: float) -> torch.Tensor: ...


@runtime_checkable
class HookedLossTerm(LossTerm, Protocol):
    """A term that reads model internals through forward hooks (e.g. query/key projections).

    The :class:`~distill.module.DistillationModule` owns the hooks' lifetime: it calls ``attach(student,
    teacher)`` when it is built and ``detach()`` when its fit ends (Lightning's ``teardown``).
    """

    def attach(self, student_model: nn.Module, teacher_model: nn.Module) -> None: ...

    def detach(self) -> None: ...
