"""MobileBERT-style student: blocks as wide as the teacher at their input and output, narrow inside.

Built as a Hugging Face ``MobileBertForSequenceClassification`` over the teacher's vocabulary, positions and
labels, so it uses the teacher's tokenizer, saves with ``save_pretrained`` and loads with vanilla
``AutoModelForSequenceClassification``. Each of its blocks maps the ``hidden_size``-wide input through an
input bottleneck (``intra_bottleneck_size``, MobileBERT's ``true_hidden_size``) to attention and
``num_feedforward_networks`` stacked narrow FFNs, and back out to ``hidden_size`` (Sun et al. 2020, "MobileBERT").
With ``hidden_size`` and ``num_hidden_layers`` the teacher's, every ``hidden_states[l]`` has the shape of the
teacher's, so layer-wise feature-map transfer needs no projection (hidden-state terms with ``project: false``)
and progressive transfer can match student layer ``k`` to teacher layer ``k``.

Initialisation from the teacher, where shapes allow (``init_embeddings: teacher_pca``): the V × E word table is
the teacher's projected on its top E principal directions ``P`` (H × E), and the centre-token slice of the
trigram ``embedding_transformation`` (3E → H) is ``P`` (its bias puts back the mean the projection drops), so
the embedding output starts at the best rank-E approximation of the teacher's word vectors; the
previous/next-token slices start at zero. Position and token-type tables
are H wide like the teacher's and are copied, as is the embedding LayerNorm with ``normalization_type:
layer_norm``. ``init_head: teacher`` copies the (fine-tuned) teacher's pooler and classifier, which read the same
H-wide [CLS] state. The blocks are random: their narrow shapes have no counterpart in the teacher.
"""

from __future__ import annotations

import torch
from transformers import MobileBertConfig, MobileBertForSequenceClassification, PreTrainedModel

from distill.errors import ConfigError
from distill.models.student import EMBEDDING_INITS, own_tokenizer

# taken from the teacher so the student reads the same inputs and writes the same labels
_FROM_TEACHER = ("vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id", "num_labels",
                 "id2label", "label2id", "problem_type", "hidden_dropout_prob", "attention_probs_dropout_prob")
# geometry keys and their defaults; None: the teacher's value (width, depth, heads)
GEOMETRY = {
    "hidden_size": None,
    "num_hidden_layers": None,
    "num_attention_heads": None,
    "embedding_size": 128,
    "intra_bottleneck_size": 192,
    "intermediate_size": 768,
    "num_feedforward_networks": 4,
    "normalization_type": "layer_norm",
    "hidden_act": "relu",
}
_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "embedding_size", "intra_bottleneck_size",
         "intermediate_size", "num_feedforward_networks")
NORMS = ("layer_norm", "no_norm")
HEAD_INITS = ("random", "teacher")


def _geometry(teacher_config, given: dict) -> dict:
    """The student's geometry: ``given`` over :data:`GEOMETRY`, None filled from the teacher, then checked."""
    unknown = sorted(set(given) - set(GEOMETRY))
    if unknown:
        raise ConfigError(f"student has unknown keys {unknown}; allowed geometry keys are {', '.join(GEOMETRY)}.")
    geo = {**GEOMETRY, **{k: v for k, v in given.items() if v is not None}}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        if geo[key] is None:
            geo[key] = getattr(teacher_config, key)
    for key in _INTS:
        value = geo[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"student.{key}={value!r} must be a positive whole number.")
    if geo["normalization_type"] not in NORMS:
        raise ConfigError(f"student.normalization_type={geo['normalization_type']!r} is not one of {', '.join(NORMS)}.")
    if geo["embedding_size"] > geo["hidden_size"]:
        raise ConfigError(f"student.embedding_size={geo['embedding_size']} must not exceed student.hidden_size="
                          f"{geo['hidden_size']}: MobileBERT maps a narrower word table up to the block width.")
    if geo["intra_bottleneck_size"] > geo["hidden_size"]:
        raise ConfigError(f"student.intra_bottleneck_size={geo['intra_bottleneck_size']} must not exceed "
                          f"student.hidden_size={geo['hidden_size']}: the bottleneck narrows the block inside.")
    if geo["intra_bottleneck_size"] % geo["num_attention_heads"]:
        raise ConfigError(f"student.intra_bottleneck_size={geo['intra_bottleneck_size']} (the width attention runs "
                          f"at) must be divisible by student.num_attention_heads={geo['num_attention_heads']}.")
    return geo


def _check_transfer(geo: dict, teacher_config, feature_maps: bool, progressive: bool) -> None:
    """The width / depth the transfer recipes need: equal to the teacher's, or one sentence naming the key."""
    for key, value in (("feature_maps", feature_maps), ("progressive", progressive)):
        if not isinstance(value, bool):
            raise ConfigError(f"student.{key}={value!r} must be true or false.")
    t_width, t_depth = teacher_config.hidden_size, teacher_config.num_hidden_layers
    if feature_maps and geo["hidden_size"] != t_width:
        raise ConfigError(f"student.hidden_size={geo['hidden_size']} must equal the teacher's hidden size {t_width} "
                          "for feature-map transfer (student.feature_maps=true); leave it null to take the teacher's.")
    if progressive and geo["num_hidden_layers"] != t_depth:
        raise ConfigError(f"student.num_hidden_layers={geo['num_hidden_layers']} must equal the teacher's "
                          f"{t_depth} layers for progressive transfer (one phase per layer, student.progressive="
                          "true); leave it null to take the teacher's.")


@torch.no_grad()
def init_from_teacher(student: MobileBertForSequenceClassification, teacher: PreTrainedModel,
                      embeddings: bool = True, head: bool = True) -> None:
    """Copy / project the teacher's embeddings (``embeddings``) and pooler + classifier (``head``) into
    ``student`` where the shapes allow (see the module docstring)."""
    s_emb, t_emb = student.mobilebert.embeddings, teacher.base_model.embeddings
    if embeddings:
        words = t_emb.word_embeddings.weight.double()  # (V, H)
        if words.shape[0] != s_emb.word_embeddings.weight.shape[0]:
            raise ConfigError(f"student.init_embeddings=teacher_pca needs the teacher's vocabulary; sizes "
                              f"{s_emb.word_embeddings.weight.shape[0]} and {words.shape[0]} differ.")
        e = s_emb.word_embeddings.weight.shape[1]
        mean = words.mean(0)  # (H,)
        _, _, vh = torch.linalg.svd(words - mean, full_matrices=False)  # vh: (H, H)
        proj = vh[:e].T  # (H, E): the top E directions of the teacher's vocabulary
        s_emb.word_embeddings.weight.copy_((words @ proj).to(s_emb.word_embeddings.weight.dtype))  # (V, E)
        lift = s_emb.embedding_transformation  # (H, 3E) or (H, E): [next, centre, previous] token slices
        centre = e if lift.in_features == 3 * e else 0
        lift.weight.zero_()
        lift.weight[:, centre:centre + e] = proj.to(lift.weight.dtype)  # (H, E): back to the teacher's space
        lift.bias.copy_((mean - proj @ (proj.T @ mean)).to(lift.bias.dtype))  # what the centred projection drops
        for name in ("position_embeddings", "token_type_embeddings"):  # both H wide; DistilBERT has no types
            t_tab = getattr(t_emb, name, None)
            if t_tab is not None and t_tab.weight.shape == getattr(s_emb, name).weight.shape:
                getattr(s_emb, name).weight.copy_(t_tab.weight)
        s_norm, t_norm = s_emb.LayerNorm, getattr(t_emb, "LayerNorm", None)
        if isinstance(s_norm, torch.nn.LayerNorm) and t_norm is not None:
            s_norm.weight.copy_(t_norm.weight)
            s_norm.bias.copy_(t_norm.bias)
    if head:
        t_pool = getattr(teacher.base_model, "pooler", None)
        s_pool = getattr(student.mobilebert.pooler, "dense", None)
        if t_pool is not None and s_pool is not None:
            s_pool.weight.copy_(t_pool.dense.weight)
            s_pool.bias.copy_(t_pool.dense.bias)
        t_cls = getattr(teacher, "classifier", None)
        if isinstance(t_cls, torch.nn.Linear) and t_cls.weight.shape == student.classifier.weight.shape:
            student.classifier.weight.copy_(t_cls.weight)
            student.classifier.bias.copy_(t_cls.bias)


@own_tokenizer  # student.tokenizer / student.trim_vocab: a word table (V × E) of the student's own vocabulary
def mobilebert_student(
    teacher: PreTrainedModel,
    init_embeddings: str = "teacher_pca",
    init_head: str = "teacher",
    feature_maps: bool = True,
    progressive: bool = False,
    attn_implementation: str | None = None,
    **geometry,
) -> MobileBertForSequenceClassification:
    """A MobileBERT student over ``teacher``'s vocabulary (see the module docstring).

    ``geometry``: the keys of :data:`GEOMETRY` (``hidden_size``, ``num_hidden_layers`` and
    ``num_attention_heads`` null → the teacher's). ``feature_maps``: the block width must be the teacher's
    (hidden states compared without projection); ``progressive``: the depth must be the teacher's (one transfer
    phase per layer). ``init_embeddings``: ``teacher_pca`` or ``random``; ``init_head``: ``teacher`` or ``random``.
    """
    if init_embeddings not in EMBEDDING_INITS:
        raise ConfigError(f"student.init_embeddings={init_embeddings!r} is not one of {', '.join(EMBEDDING_INITS)}.")
    if init_head not in HEAD_INITS:
        raise ConfigError(f"student.init_head={init_head!r} is not one of {', '.join(HEAD_INITS)}.")
    t = teacher.config
    geo = _geometry(t, geometry)
    _check_transfer(geo, t, feature_maps, progressive)
    inherited = {k: getattr(t, k) for k in _FROM_TEACHER if getattr(t, k, None) is not None}
    config = MobileBertConfig(**inherited, **geo, use_bottleneck=True, trigram_input=True,
                              key_query_shared_bottleneck=True, use_bottleneck_attention=False,
                              classifier_activation=True)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    student = MobileBertForSequenceClassification._from_config(config, **kwargs)
    if init_embeddings == "teacher_pca" or init_head == "teacher":
        init_from_teacher(student, teacher, embeddings=init_embeddings == "teacher_pca", head=init_head == "teacher")
    return student
