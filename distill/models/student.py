"""Student builders: BERT-style students that share the teacher's tokenizer and vocabulary.

Every builder takes the (loaded) teacher first and returns a Hugging Face
``AutoModelForSequenceClassification`` model, so a student saves with ``save_pretrained`` and loads in
plain ``transformers``. Config presets in ``conf/student/`` pick a builder through ``_target_``.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from distill.errors import ConfigError


def _student_config(teacher: PreTrainedModel, **geometry):
    config = copy.deepcopy(teacher.config)
    for key, value in geometry.items():
        setattr(config, key, value)
    return config


def bert_student(
    teacher: PreTrainedModel,
    num_hidden_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    intermediate_size: int,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A randomly initialised student of the teacher's architecture family with a new geometry.

    Vocabulary, position embeddings, label count and label names come from the teacher, so the
    student uses the teacher's tokenizer unchanged (TinyBERT / MiniLM students do the same).
    """
    if hidden_size % num_attention_heads:
        raise ConfigError(
            f"student.hidden_size={hidden_size} must be divisible by student.num_attention_heads={num_attention_heads}."
        )
    config = _student_config(
        teacher, num_hidden_layers=num_hidden_layers, hidden_size=hidden_size,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
    )
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForSequenceClassification.from_config(config, **kwargs)


def distil_student(
    teacher: PreTrainedModel, layer_stride: int = 2, attn_implementation: str | None = None
) -> PreTrainedModel:
    """DistilBERT-style student: the teacher's width, every ``layer_stride``-th teacher layer.

    Embeddings, pooler and classifier are copied from the teacher, and student layer ``i`` from
    teacher layer ``i * layer_stride`` (DistilBERT initialises from every other layer of BERT).
    """
    n_teacher = teacher.config.num_hidden_layers
    if layer_stride < 1 or n_teacher // layer_stride < 1:
        raise ConfigError(
            f"student.layer_stride={layer_stride} must be between 1 and the teacher's {n_teacher} layers."
        )
    config = _student_config(teacher, num_hidden_layers=n_teacher // layer_stride)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    student = AutoModelForSequenceClassification.from_config(config, **kwargs)
    source = teacher.state_dict()
    target = {}
    for key in student.state_dict():
        src_key = key
        parts = key.split(".")
        if "layer" in parts:
            i = parts.index("layer")
            if i + 1 < len(parts) and parts[i + 1].isdigit():
                parts[i + 1] = str(int(parts[i + 1]) * layer_stride)
                src_key = ".".join(parts)
        if src_key in source:
            target[key] = source[src_key].detach().clone()
    missing, _ = student.load_state_dict(target, strict=False)
    if missing:
        raise ConfigError(f"distil student could not be initialised from the teacher; missing weights {missing[:3]}.")
    return student


def pretrained_student(
    teacher: PreTrainedModel, name_or_path: str, attn_implementation: str | None = None
) -> PreTrainedModel:
    """A student loaded from a checkpoint (e.g. a general-distilled student or a hub model)."""
    config = AutoConfig.from_pretrained(name_or_path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForSequenceClassification.from_pretrained(
        name_or_path, num_labels=teacher.config.num_labels, id2label=teacher.config.id2label,
        label2id=teacher.config.label2id, ignore_mismatched_sizes=config.num_labels != teacher.config.num_labels,
        **kwargs,
    )


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
