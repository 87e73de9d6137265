"""The distillation objective: weighted sum of loss terms with scheduled temperature and weights."""

from __future__ import annotations

import torch
from torch import nn

from distill.errors import ConfigError
from distill.schedules import Schedule, as_schedule


class DistillationObjective(nn.Module):
    """``pred_weight·(α·soft + (1−α)·hard) + Σᵢ wᵢ·termᵢ``, every term returned for logging.

    Each term is a module called as ``term(student_out, teacher_out, batch, temperature)`` returning a
    scalar; ``student_out``/``teacher_out`` are Hugging Face model outputs (``logits`` (B, C), and
    ``hidden_states``/``attentions`` when a term lists them in its ``requires``). ``alpha``,
    ``temperature``, ``pred_weight`` and each ``weights[name]`` are numbers or schedules
    ``(step, total_steps) -> float``. With ``alpha=0`` this is plain fine-tuning on labels.
    Terms whose weight is 0 at a step are skipped (not computed) at that step.
    """

    def __init__(
        self,
        soft: nn.Module | None = None,
        hard: nn.Module | None = None,
        alpha: float | Schedule = 0.5,
        temperature: float | Schedule = 2.0,
        pred_weight: float | Schedule = 1.0,
        terms: dict[str, nn.Module] | None = None,
        weights: dict[str, float | Schedule] | None = None,
    ) -> None:
        super().__init__()
        self.soft = soft
        self.hard = hard
        self.alpha = as_schedule(alpha, "loss.alpha")
        self.temperature = as_schedule(temperature, "loss.temperature")
        self.pred_weight = as_schedule(pred_weight, "loss.pred_weight")
        self.terms = nn.ModuleDict(terms or {})
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.terms))
        if unknown:
            raise ConfigError(f"loss.weights names {unknown}, which are not in loss.terms {sorted(self.terms)}.")
        self.weights = {name: as_schedule(weights.get(name, 1.0), f"loss.weights.{name}") for name in self.terms}
        self.validate(0, 1)

    def validate(self, step: int, total_steps: int) -> None:
        """Check scheduled values at the first and last step: T > 0 and α in [0, 1]."""
        for s in {0, max(total_steps - 1, 0), step}:
            temp, alpha = self.temperature(s, total_steps), self.alpha(s, total_steps)
            if not temp > 0:
                raise ConfigError(f"loss.temperature must be > 0 at every step; got {temp} at step {s}.")
            if not 0.0 <= alpha <= 1.0:
                raise ConfigError(f"loss.alpha must be in [0, 1] at every step; got {alpha} at step {s}.")

    @property
    def requires(self) -> frozenset[str]:
        """Model outputs the terms need besides logits: ``hidden_states`` and/or ``attentions``."""
        need: set[str] = set()
        for module in (self.soft, self.hard, *self.terms.values()):
            need |= set(getattr(module, "requires", ()))
        return frozenset(need)

    @property
    def parts(self) -> dict[str, nn.Module]:
        """Every term by name: ``soft`` and ``hard`` when set, then ``terms`` (each a :class:`~distill.losses.protocol.LossTerm`)."""
        named = {"soft": self.soft, "hard": self.hard, **dict(self.terms.items())}
        return {name: module for name, module in named.items() if module is not None}

    @property
    def term_names(self) -> list[str]:
        return list(self.parts)

    def attach(self, student: nn.Module, teacher: nn.Module) -> None:
        """Let every term that reads model internals hook into ``student`` and ``teacher``."""
        for module in self.parts.values():
            if callable(getattr(module, "attach", None)):
                module.attach(student, teacher)

    def detach(self) -> None:
        """Remove every hook :meth:`attach` placed (the next fit's terms hook the models afresh)."""
        for module in self.parts.values():
            if callable(getattr(module, "detach", None)):
                module.detach()

    @property
    def needs_teacher(self) -> bool:
        return self.soft is not None or len(self.terms) > 0

    def values(self, step: int, total_steps: int) -> dict[str, float]:
        """Scheduled scalars at ``step``: temperature, alpha, pred_weight and each term weight."""
        out = {
            "temperature": self.temperature(step, total_steps),
            "alpha": self.alpha(step, total_steps),
            "pred_weight": self.pred_weight(step, total_steps),
        }
        out.update({f"w_{name}": w(step, total_steps) for name, w in self.weights.items()})
        return out

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], step: int, total_steps: int):
        """Return ``(total, parts)``: the scalar loss and a dict of each unweighted term and schedule value."""
        v = self.values(step, total_steps)
        temp = v["temperature"]
        total = student.logits.new_zeros((), dtype=torch.float32)
        parts: dict[str, torch.Tensor | float] = dict(v)
        pred = v["pred_weight"]
        if pred:
            if self.soft is not None and v["alpha"] > 0:
                parts["soft"] = self.soft(student, teacher, batch, temp)
                total = total + pred * v["alpha"] * parts["soft"]
            if self.hard is not None and v["alpha"] < 1:
                parts["hard"] = self.hard(student, teacher, batch, temp)
                total = total + pred * (1.0 - v["alpha"]) * parts["hard"]
        for name, term in self.terms.items():
            w = v[f"w_{name}"]
            if w:
                parts[name] = term(student, teacher, batch, temp)
                total = total + w * parts[name]
        parts["loss"] = total
        return total, parts
