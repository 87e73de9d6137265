"""Masked-LM models for DistilBERT's general distillation: the teacher with its head, students turned masked-LM."""

from __future__ import annotations

import copy

from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, PreTrainedModel

from distill.errors import ConfigError
from distill.models.teacher import load_config

_MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining")


def _refusal(name_or_path: str, key: str) -> ConfigError:
    return ConfigError(f"{key}={name_or_path} has no masked-LM head; mlm_distill needs a BertForMaskedLM checkpoint.")


def check_mlm_teacher(name_or_path: str, key: str = "teacher.name_or_path") -> None:
    """A ConfigError now (from the config alone, no weights) when the checkpoint is not a masked-LM model."""
    config = load_config(name_or_path)
    if not any(a.endswith(_MLM_ARCHITECTURES) for a in (config.architectures or [])):
        raise _refusal(name_or_path, key)


def load_mlm_teacher(name_or_path: str, key: str = "teacher.name_or_path") -> PreTrainedModel:
    """The teacher with its masked-LM head, frozen in eval mode; a ConfigError when it has none."""
    check_mlm_teacher(name_or_path, key)
    model, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
    prefix = model.base_model_prefix + "."
    if [k for k in info["missing_keys"] if not k.startswith(prefix) and "decoder" not in k]:
        raise _refusal(name_or_path, key)
    return model.eval()


def classifier_view(mlm_model: PreTrainedModel) -> PreTrainedModel:
    """A sequence classifier carrying the masked-LM model's encoder weights, for the ``conf/student`` builders.

    The builders take a classifier teacher (e.g. ``distil_student`` copies every other layer of it);
    the pooler and classifier of the view are random (a masked-LM model has neither).
    """
    view = AutoModelForSequenceClassification.from_config(copy.deepcopy(mlm_model.config))
    view.base_model.load_state_dict(mlm_model.base_model.state_dict(), strict=False)
    return view


def masked_lm_student(student: PreTrainedModel, teacher: PreTrainedModel) -> PreTrainedModel:
    """``student`` (a classifier from a ``conf/student`` builder) as a masked-LM model of the same geometry.

    The encoder comes from ``student``; the prediction head's transform and bias come from the teacher
    where the shapes agree (a student of the teacher's width, like DistilBERT's), else stay random.
    The decoder weight is tied to the student's own word embeddings.
    """
    model = AutoModelForMaskedLM.from_config(copy.deepcopy(student.config))
    model.base_model.load_state_dict(student.base_model.state_dict(), strict=False)  # drops the pooler
    own = model.state_dict()
    prefix = teacher.base_model_prefix + "."
    head = {k: v for k, v in teacher.state_dict().items()
            if not k.startswith(prefix) and "decoder.weight" not in k and k in own and own[k].shape == v.shape}
    model.load_state_dict(head, strict=False)
    return model
