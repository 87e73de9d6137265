"""Teacher–student pairs for phases that bring their own teacher (general distillation on unlabeled text).

A phase of a recipe normally distils the task's (fine-tuned) teacher into the run's student. General
distillation instead uses the *pretrained* encoder, and its student starts from the ``student`` preset
built from that encoder; the phase hands its result on as a saved model folder, from which the task
student is loaded (``pretrained_student``). A pair says how to build both models and what to save:

* :class:`EncoderPair` (TinyBERT, MiniLM): the encoder as a sequence classifier (its head unused); saves
  the student's encoder only, so no random classifier is shipped.
* :class:`MaskedLMPair` (DistilBERT): the teacher with its masked-LM head; the student turned into a
  masked-LM model of its geometry; saves the whole masked-LM student.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from distill.config import build
from distill.console import quiet_load
from distill.models.mlm import check_mlm_teacher, classifier_view, load_mlm_teacher, masked_lm_student
from distill.models.teacher import load_config


class EncoderPair:
    """The pretrained encoder ``teacher`` (a folder or hub id) and a student of the run's preset."""

    def __init__(self, teacher: str, key: str = "phases.general.models.teacher") -> None:
        self.teacher_path, self.key = str(teacher), key

    def check(self) -> None:
        """Fail now (one sentence) when the teacher can't be found."""
        load_config(self.teacher_path)

    def tokenizer(self):
        return AutoTokenizer.from_pretrained(self.teacher_path)

    def _teacher(self) -> PreTrainedModel:
        with quiet_load():  # the classifier head is new and unused: its load report is noise
            return AutoModelForSequenceClassification.from_pretrained(self.teacher_path)

    def build(self, student_node: DictConfig) -> tuple[PreTrainedModel, PreTrainedModel]:
        """``(student, teacher)``; the teacher in eval mode."""
        teacher = self._teacher()
        return build(student_node, "student", teacher=teacher), teacher.eval()

    def save(self, student: PreTrainedModel, out_dir: Path) -> None:
        student.base_model.save_pretrained(out_dir)


class MaskedLMPair(EncoderPair):
    """A masked-LM teacher (``BertForMaskedLM``) and the run's student preset as a masked-LM model."""

    def check(self) -> None:
        check_mlm_teacher(self.teacher_path, key=self.key)

    def build(self, student_node: DictConfig) -> tuple[PreTrainedModel, PreTrainedModel]:
        teacher = load_mlm_teacher(self.teacher_path, key=self.key)
        student = masked_lm_student(build(student_node, "student", teacher=classifier_view(teacher)), teacher)
        return student, teacher.eval()

    def save(self, student: PreTrainedModel, out_dir: Path) -> None:
        student.save_pretrained(out_dir)
