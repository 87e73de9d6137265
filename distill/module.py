"""Lightning modules: supervised fine-tuning (``TaskModule``) and distillation (``DistillationModule``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from transformers import PreTrainedModel

from distill.data.glue import STUDENT_PREFIX
from distill.data.tasks import MODEL_INPUTS, TaskSpec
from distill.errors import TrainingError
from distill.losses import DistillationObjective, HardLabelLoss
from distill.metrics import build_metrics, predictions

# The frozen teacher sits in eval mode on purpose (no dropout); Lightning's generic notice about modules in
# eval mode at the start of fit would send users looking for a problem that is not there.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class TaskModule(L.LightningModule):
    """Trains ``student`` (any HF sequence classifier) on a GLUE task with an objective; evaluates on dev.

    Used alone (with a hard-label objective) to fine-tune a teacher; subclassed for distillation.
    ``optimizer`` and ``scheduler`` are ``_partial_`` factories: ``optimizer(params)`` and
    ``scheduler(optimizer, total_steps=...)``.
    """

    def __init__(
        self,
        student: PreTrainedModel,
        task: TaskSpec,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        objective: DistillationObjective | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.task = task
        self.objective = objective if objective is not None else DistillationObjective(hard=HardLabelLoss(), alpha=0.0)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_metrics = build_metrics(task).clone(prefix="val/")

    # ---- forward -------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, torch.Tensor], student: bool = True) -> dict[str, torch.Tensor]:
        """The model inputs of ``batch``: the student's own (``student_*``, when its tokenizer differs from the
        teacher's) for the student, the usual keys (the teacher's tokens) otherwise and for the teacher."""
        if student and STUDENT_PREFIX + "input_ids" in batch:
            return {k: batch[STUDENT_PREFIX + k] for k in MODEL_INPUTS if STUDENT_PREFIX + k in batch}
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    def compile_student(self, backend: str = "inductor", mode: str | None = None, dynamic: bool | None = True) -> None:
        """Train through ``torch.compile(student)`` (validation, saving and export keep the plain model).

        The compiled wrapper shares the student's parameters and is kept outside the module's children, so
        checkpoints and ``state_dict`` are those of the plain student."""
        self._compiled = {"student": torch.compile(self.student, backend=backend, mode=mode, dynamic=dynamic)}

    def student_forward(self, batch: dict[str, torch.Tensor]):
        need = self.objective.requires
        model = getattr(self, "_compiled", {}).get("student", self.student)
        return model(
            **self._inputs(batch),
            output_hidden_states="hidden_states" in need,
            output_attentions="attentions" in need,
        )

    def teacher_forward(self, batch: dict[str, torch.Tensor]):
        return None

    def on_fit_start(self) -> None:
        # from_pretrained returns models in eval mode and Lightning keeps modules' modes: turn dropout on.
        self.student.train()

    # ---- steps ---------------------------------------------------------------------------------
    def _total_steps(self) -> int:
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        return int(total) if total != float("inf") else 1

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        teacher_out = self.teacher_forward(batch)
        student_out = self.student_forward(batch)
        loss, parts = self.objective(student_out, teacher_out, batch, self.global_step, self._total_steps())
        if not bool(torch.isfinite(loss)):  # one host sync per step: cheap beside a transformer's forward
            self._stop_on_non_finite(loss, parts)
        bs = batch["input_ids"].shape[0]
        # sync_dist: under DDP the logged loss is the mean over ranks (what the averaged gradient descends)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"}, batch_size=bs)
        return loss

    def _stop_on_non_finite(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """Stop the fit with one sentence naming the step and the term; checkpoints already written stay."""
        bad = [name for name, value in parts.items()
               if name != "loss" and not bool(torch.isfinite(torch.as_tensor(value)).all())]
        terms = ", ".join(f"{name} = {float(torch.as_tensor(parts[name]).detach()):g}" for name in bad) or "the weighted sum"
        raise TrainingError(
            f"the training loss became {float(loss.detach()):g} at step {self.global_step} ({terms}); the run stopped and "
            "its last checkpoint is kept: lower optimizer.lr, check the loss weights and temperature, or the data."
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.student(**self._inputs(batch)).logits  # (B, C)
        self.val_metrics.update(predictions(logits, self.task.is_regression), batch["labels"])

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.log_dict(values, prog_bar=True)
        self.log("val/score", values[f"val/{self.task.main_metric}"])
        self.val_metrics.reset()

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self._total_steps())
        self._forget_early_train_loader()
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _forget_early_train_loader(self) -> None:
        """On resume: counting the steps made Lightning build the training loader (and start its epoch) before
        the checkpoint is restored, so the loader's saved position would never be applied; dropping it makes
        Lightning build it again after the restore (Lightning 2.6's ``FitLoop.setup_data``). A fresh fit keeps
        it, so its batches are exactly those of earlier versions."""
        trainer = self._trainer
        fit_loop = getattr(trainer, "fit_loop", None) if trainer is not None else None
        if fit_loop is not None and trainer.ckpt_path and getattr(fit_loop, "_combined_loader", None) is not None:
            fit_loop._combined_loader = None


class DistillationModule(TaskModule):
    """Distils a frozen ``teacher`` into ``student`` with ``objective``.

    The teacher is frozen, kept in eval mode and run under ``torch.no_grad()`` (or its outputs are read from
    ``teacher_outputs``, a teacher-output cache); its weights are not
    written into checkpoints (the run config says how to rebuild it), so a checkpoint holds the
    student, the objective's learnable parts (e.g. projections) and the optimizer state only.
    """

    def __init__(self, student: PreTrainedModel, teacher: PreTrainedModel, task: TaskSpec, **kwargs: Any) -> None:
        super().__init__(student, task, **kwargs)
        self.teacher = teacher
        # distill.teacher_cache.TeacherOutputs: training batches (with their ``idx``) read the teacher's outputs
        # from it instead of running the teacher; None: the teacher runs on every batch
        self.teacher_outputs = None
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.objective.attach(self.student, self.teacher)

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self.objective.detach()  # hooks live as long as this module's fit; the next phase hooks afresh

    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        self.teacher.eval()  # dropout stays off in the teacher whatever Lightning toggles
        return self

    @torch.no_grad()
    def teacher_forward(self, batch: dict[str, torch.Tensor]):
        if not self.objective.needs_teacher:
            return None
        if self.teacher_outputs is not None and "idx" in batch:
            return self.teacher_outputs.replay(batch)
        need = self.objective.requires
        return self.teacher(
            **self._inputs(batch, student=False),
            output_hidden_states="hidden_states" in need,
            output_attentions="attentions" in need,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False):
        # Checkpoints carry no teacher weights: take them from the live (frozen) teacher.
        merged = dict(state_dict)
        for key, value in self.teacher.state_dict(prefix="teacher.").items():
            merged.setdefault(key, value)
        return super().load_state_dict(merged, strict=strict, assign=assign)

