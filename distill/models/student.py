"""Student builders: BERT-style students over the teacher's tokenizer and vocabulary, or over their own.

Every builder takes the (loaded) teacher first and returns a Hugging Face
``AutoModelForSequenceClassification`` model, so a student saves with ``save_pretrained`` and loads in
plain ``transformers``. Config presets in ``conf/student/`` pick a builder through ``_target_``. Builders
wrapped by :func:`own_tokenizer` also take ``tokenizer`` (``student.tokenizer``; null: the teacher's): a
tokenizer with another vocabulary gets the student a word table of its own (see :func:`adopt_vocabulary`).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from distill.console import quiet_load
from distill.data.glue import load_tokenizer
from distill.errors import ConfigError
from distill.models.trim_student import trim_to

log = logging.getLogger("distill")


def _student_config(teacher: PreTrainedModel, **geometry):
    config = copy.deepcopy(teacher.config)
    for key, value in geometry.items():
        setattr(config, key, value)
    return config


EMBEDDING_INITS = ("random", "teacher_pca")


def _teacher_vocab(teacher: PreTrainedModel) -> dict[str, int] | None:
    """The teacher's vocabulary (piece -> id) from the tokenizer saved beside it; None when there is none."""
    name = getattr(teacher, "name_or_path", "") or getattr(teacher.config, "_name_or_path", "")
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name).get_vocab()
    except (OSError, ValueError, TypeError):
        return None


@torch.no_grad()
def adopt_vocabulary(student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any) -> PreTrainedModel:
    """Give ``student`` (built over the teacher's vocabulary) the word table of ``tokenizer``'s vocabulary.

    Nothing changes when ``tokenizer`` has the teacher's vocabulary. Otherwise the word-embedding table gets
    ``len(tokenizer)`` rows (or one past its largest id): a word piece the teacher's vocabulary also has keeps the student's row for it (the
    teacher's own, or its PCA projection, or a random row, as the builder made it), every other row is drawn
    from N(0, initializer_range²) like Hugging Face's init; ``config.vocab_size`` and ``pad_token_id`` follow.
    """
    vocab, teacher_vocab = tokenizer.get_vocab(), _teacher_vocab(teacher)
    if teacher_vocab is not None and vocab == teacher_vocab:
        return student
    old = student.get_input_embeddings()  # (V_t, E)
    rows, width = max(len(tokenizer), max(vocab.values(), default=-1) + 1), old.weight.shape[1]
    pad = tokenizer.pad_token_id
    new = torch.nn.Embedding(rows, width, padding_idx=pad, device=old.weight.device, dtype=old.weight.dtype)
    shared = 0
    if old.weight.device.type != "meta":
        new.weight.normal_(0.0, getattr(student.config, "initializer_range", 0.02))
        if teacher_vocab is None:
            log.warning("student.tokenizer: the teacher has no saved tokenizer, so no word-embedding rows are shared.")
        pairs = [(i, teacher_vocab[p]) for p, i in vocab.items()
                 if teacher_vocab is not None and p in teacher_vocab and teacher_vocab[p] < old.weight.shape[0]
                 and i < rows]
        if pairs:
            to, src = (torch.tensor(x, dtype=torch.long) for x in zip(*pairs, strict=True))
            new.weight[to] = old.weight[src]
            shared = len(pairs)
        log.info("student.tokenizer: %d of %d word pieces share the teacher's rows, the rest start random.", shared, rows)
    student.set_input_embeddings(new)
    student.config.vocab_size = rows
    if pad is not None:
        student.config.pad_token_id = pad
        embeddings = getattr(student.base_model, "embeddings", None)
        if embeddings is not None and hasattr(embeddings, "padding_idx"):  # RoBERTa's positions count from it
            embeddings.padding_idx = pad
    return student


def check_trim(trim_vocab: Any, tokenizer: str | None) -> None:
    """``student.trim_vocab`` a bool, and when true the trimmed tokenizer given as ``student.tokenizer``."""
    if not isinstance(trim_vocab, bool):
        raise ConfigError(f"student.trim_vocab={trim_vocab!r} must be true or false.")
    if trim_vocab and tokenizer is None:
        raise ConfigError("student.trim_vocab=true needs the trimmed tokenizer as student.tokenizer; the distill "
                          "stage makes it from the task's training set.")


def own_tokenizer(builder: Callable[..., PreTrainedModel]) -> Callable[..., PreTrainedModel]:
    """``builder`` that also takes ``tokenizer`` (a tokenizer folder or hub id; None: the teacher's): the student
    is built as ``builder`` builds it, then given the tokenizer's vocabulary by :func:`adopt_vocabulary`.

    ``trim_vocab=True`` (``student.trim_vocab``): ``tokenizer`` is the teacher's trimmed one that the distill
    stage made (:func:`distill.models.trim_student.with_trimmed_vocabulary`), and the student keeps exactly the
    rows of its kept ids (:func:`distill.models.trim_student.trim_to`)."""

    @functools.wraps(builder)
    def build(teacher: PreTrainedModel, *args: Any, tokenizer: str | None = None, trim_vocab: bool = False,
              **kwargs: Any) -> PreTrainedModel:
        check_trim(trim_vocab, tokenizer)
        student = builder(teacher, *args, **kwargs)
        if trim_vocab:
            return trim_to(student, tokenizer)
        if tokenizer is None:
            return student
        return adopt_vocabulary(student, teacher, load_tokenizer(tokenizer, "student.tokenizer"))

    return build


@own_tokenizer
def bert_student(
    teacher: PreTrainedModel,
    num_hidden_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    intermediate_size: int,
    attn_implementation: str | None = None,
    init_embeddings: str = "random",
    prune: Any = None,
) -> PreTrainedModel:
    """A student of the teacher's architecture family with a new geometry.

    Vocabulary, position embeddings, label count and label names come from the teacher, so the
    student uses the teacher's tokenizer unchanged (TinyBERT / MiniLM students do the same).
    ``init_embeddings``: ``random`` (TinyBERT: everything from scratch) or ``teacher_pca``: the word,
    position and token-type tables are the teacher's, projected onto the top ``hidden_size`` principal
    directions of its word-embedding matrix (see :func:`init_embeddings_from_teacher`); layers stay random.
    ``prune`` set (a :class:`distill.prune.cut.CutSettings`, e.g. ``+prune@student.prune=cut``): every weight
    is cut from the teacher instead, by :func:`pruned_student`; ``init_embeddings`` is then not used.
    """
    if prune is not None:
        from distill.prune.cut import as_cut_settings

        try:
            return pruned_student(teacher, num_hidden_layers, hidden_size, num_attention_heads, intermediate_size,
                                  attn_implementation, cut=as_cut_settings(prune, "student.prune"))
        except ConfigError as err:  # e.g. a teacher narrower than the preset: say how to build it uncut
            raise ConfigError(f"{str(err).rstrip('.')} (the student is cut from the teacher; student.prune=null "
                              "builds it with random layers instead).") from None
    if hidden_size % num_attention_heads:
        raise ConfigError(
            f"student.hidden_size={hidden_size} must be divisible by student.num_attention_heads={num_attention_heads}."
        )
    if init_embeddings not in EMBEDDING_INITS:
        raise ConfigError(f"student.init_embeddings={init_embeddings!r} is not one of {', '.join(EMBEDDING_INITS)}.")
    config = _student_config(
        teacher, num_hidden_layers=num_hidden_layers, hidden_size=hidden_size,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
    )
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    student = AutoModelForSequenceClassification.from_config(config, **kwargs)
    if init_embeddings == "teacher_pca":
        init_embeddings_from_teacher(student, teacher)
    return student


@torch.no_grad()
def init_embeddings_from_teacher(student: PreTrainedModel, teacher: PreTrainedModel) -> torch.Tensor:
    """Give ``student`` the teacher's embedding tables in its (narrower) width; returns the projection.

    With ``E`` the teacher's word embeddings (V, H_t), ``P`` (H_t, H_s) holds the top H_s right singular
    vectors of ``E − mean(E)``: the directions along which the teacher's vocabulary varies most. The
    student's word, position and token-type tables are the teacher's multiplied by ``P`` (the teacher's
    own tables when the widths are equal; in the first H_t columns when the student is wider), so words
    the teacher places close together start close together in the student. Embedding LayerNorms keep
    their default init (the teacher's act per teacher dimension, which ``P`` mixes).
    """
    s_emb, t_emb = student.get_input_embeddings(), teacher.get_input_embeddings()
    h_s, h_t = s_emb.weight.shape[1], t_emb.weight.shape[1]
    if s_emb.weight.shape[0] != t_emb.weight.shape[0]:
        raise ConfigError(
            f"student.init_embeddings=teacher_pca needs the teacher's vocabulary; sizes {s_emb.weight.shape[0]} "
            f"and {t_emb.weight.shape[0]} differ."
        )
    if h_s >= h_t:  # the teacher's tables fill the first H_t columns; any extra columns keep their random init
        proj = torch.eye(h_t, h_s, dtype=torch.float64)
    else:
        words = t_emb.weight.double()  # (V, H_t)
        _, _, vh = torch.linalg.svd(words - words.mean(0), full_matrices=False)  # vh: (H_t, H_t)
        proj = vh[:h_s].T  # (H_t, H_s)
    s_mod, t_mod = student.base_model.embeddings, teacher.base_model.embeddings
    cols = min(h_s, h_t)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        s_tab, t_tab = getattr(s_mod, name, None), getattr(t_mod, name, None)
        if s_tab is None or t_tab is None:
            continue
        if s_tab.weight.shape[0] != t_tab.weight.shape[0]:
            raise ConfigError(f"student.init_embeddings=teacher_pca: the {name} tables differ in rows.")
        s_tab.weight[:, :cols] = (t_tab.weight.double() @ proj[:, :cols]).to(s_tab.weight.dtype)  # (rows, cols)
    return proj.to(s_emb.weight.dtype)


@own_tokenizer
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


@own_tokenizer
def pruned_student(
    teacher: PreTrainedModel,
    num_hidden_layers: int | None = None,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
    attn_implementation: str | None = None,
    cut: Any = None,
    calibration: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> PreTrainedModel:
    """A student cut from the teacher's own weights (Minitron-style structured pruning).

    Geometry keys left ``None`` keep the teacher's value. ``cut`` (:class:`distill.prune.cut.CutSettings`
    or a mapping of its fields; ``conf/prune/cut.yaml``) says how units are ranked — ``importance``:
    ``activation`` (forward-hook statistics) or ``taylor`` (first-order gradient scores, needs labels) —
    which layers survive (``layers``: ``importance`` or ``stride``), and on how many calibration batches:
    ``calibration`` (any iterable of tokenized batches, e.g. a data module's train loader) or else drawn
    from the task's training set described by ``cut.calibration_data`` (``GLUEDataModule`` arguments,
    tokenized with the teacher's tokenizer). See :mod:`distill.prune.cut` for what is kept and how heads are
    shortened or merged.
    """
    from distill.prune import cut_model, estimate_importance, resolve_geometry
    from distill.prune.calibration import take_batches, task_batches
    from distill.prune.cut import as_cut_settings

    cut = as_cut_settings(cut)
    cut.check()
    geometry = resolve_geometry(teacher.config, num_hidden_layers=num_hidden_layers, hidden_size=hidden_size,
                                num_attention_heads=num_attention_heads, intermediate_size=intermediate_size)
    if next(teacher.parameters()).is_meta:  # planning (distill.phases.plan.model_configs): the geometry, no weights
        config = copy.deepcopy(teacher.config)
        for name in geometry.__dataclass_fields__:
            setattr(config, name, getattr(geometry, name))
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        return type(teacher)._from_config(config, **kwargs)
    if calibration is not None:
        batches = take_batches(calibration, cut.calibration_batches)
    elif cut.calibration_data is not None:
        data = cut.calibration_data
        tokenizer = data.get("tokenizer") or getattr(teacher, "name_or_path", None)
        batches = task_batches({k: v for k, v in data.items() if k != "tokenizer"}, tokenizer,
                               cut.calibration_batches, cut.calibration_seed)
    else:
        raise ConfigError(f"{cut.key}.calibration_data is not set; the pruned student needs the task's data "
                          "(conf/prune/cut.yaml sets it from data.*).")
    scores = estimate_importance(teacher, batches, cut.importance)
    student = cut_model(teacher, geometry, scores, layers=cut.layers, attn_implementation=attn_implementation)
    return student.train()


def pretrained_student(
    teacher: PreTrainedModel, name_or_path: str, attn_implementation: str | None = None, tokenizer: str | None = None,
    trim_vocab: bool = False,
) -> PreTrainedModel:
    """A student loaded from a checkpoint (e.g. a general-distilled student or a hub model).

    ``tokenizer`` (``student.tokenizer``): the checkpoint's own tokenizer when its vocabulary is not the
    teacher's (e.g. ``${student.name_or_path}``); the checkpoint's word table is kept as it is (its rows are
    already that tokenizer's), and ``check_pair`` checks that the tokenizer's ids fit it.
    ``trim_vocab=True`` (``student.trim_vocab``): a checkpoint over the teacher's vocabulary keeps exactly the
    rows of the trimmed tokenizer (``tokenizer``, made by the distill stage) that
    :func:`distill.models.trim_student.trim_to` reads."""
    check_trim(trim_vocab, tokenizer)
    config = AutoConfig.from_pretrained(name_or_path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with quiet_load():  # a general student gets the task's (new or resized) head
        student = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=teacher.config.num_labels, id2label=teacher.config.id2label,
            label2id=teacher.config.label2id, ignore_mismatched_sizes=config.num_labels != teacher.config.num_labels,
            **kwargs,
        )
    if not trim_vocab:
        return student
    rows, teacher_rows = student.get_input_embeddings().num_embeddings, teacher.get_input_embeddings().num_embeddings
    if rows != teacher_rows:
        raise ConfigError(f"student.trim_vocab=true trims the teacher's vocabulary, but {name_or_path} has "
                          f"{rows} word-table rows and the teacher {teacher_rows}; load a student over the "
                          "teacher's vocabulary or set student.trim_vocab=false.")
    return trim_to(student, tokenizer)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
