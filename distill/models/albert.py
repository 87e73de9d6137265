"""ALBERT-style student: a factorized word embedding (V × E, then E → H) and switchable cross-layer sharing.

Built as a Hugging Face ``AlbertForSequenceClassification`` over the teacher's vocabulary, positions and labels,
so it uses the teacher's tokenizer unchanged, saves with ``save_pretrained`` and loads with vanilla
``AutoModelForSequenceClassification``. ``share_layers=True`` is ALBERT's all-shared setting
(``num_hidden_groups=1``: one set of layer weights run ``num_hidden_layers`` times); ``False`` gives every layer
its own weights (``num_hidden_groups = num_hidden_layers``). Either way the model returns one hidden state per
layer *call* (``num_hidden_layers + 1``, index 0 the embedding output mapped to H), so hidden-state losses and
their layer maps see the unrolled depth.
"""

from __future__ import annotations

from transformers import AlbertConfig, AlbertForSequenceClassification, PreTrainedModel

from distill.errors import ConfigError
from distill.models.student import EMBEDDING_INITS, init_embeddings_from_teacher, own_tokenizer

# taken from the teacher so the student reads the same inputs and writes the same labels
_FROM_TEACHER = ("vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id", "num_labels",
                 "id2label", "label2id", "problem_type", "layer_norm_eps", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "hidden_act")


@own_tokenizer  # student.tokenizer / student.trim_vocab: a word table of the student's own vocabulary
def albert_student(
    teacher: PreTrainedModel,
    embedding_size: int = 128,
    hidden_size: int = 312,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 12,
    intermediate_size: int = 1200,
    share_layers: bool = True,
    init_embeddings: str = "random",
) -> AlbertForSequenceClassification:
    """An ALBERT student of the given geometry over ``teacher``'s vocabulary (see the module docstring).

    ``init_embeddings``: ``random`` or ``teacher_pca`` (the teacher's word / position / token-type tables
    projected onto their top ``embedding_size`` principal directions, as for ``bert_student``). The attention
    implementation is transformers' default; phases whose losses read attention probabilities switch it to
    eager (``distill.phases.fit.fit_phase``).
    """
    for key, value in (("embedding_size", embedding_size), ("hidden_size", hidden_size),
                       ("num_hidden_layers", num_hidden_layers), ("num_attention_heads", num_attention_heads),
                       ("intermediate_size", intermediate_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"student.{key}={value!r} must be a positive whole number.")
    if embedding_size > hidden_size:
        raise ConfigError(f"student.embedding_size={embedding_size} must not exceed student.hidden_size="
                          f"{hidden_size}: ALBERT factorizes the embedding into a narrower table.")
    if hidden_size % num_attention_heads:
        raise ConfigError(f"student.hidden_size={hidden_size} must be divisible by "
                          f"student.num_attention_heads={num_attention_heads}.")
    if not isinstance(share_layers, bool):
        raise ConfigError(f"student.share_layers={share_layers!r} must be true or false.")
    if init_embeddings not in EMBEDDING_INITS:
        raise ConfigError(f"student.init_embeddings={init_embeddings!r} is not one of {', '.join(EMBEDDING_INITS)}.")
    t = teacher.config
    inherited = {k: getattr(t, k) for k in _FROM_TEACHER if getattr(t, k, None) is not None}
    config = AlbertConfig(
        **inherited,
        embedding_size=embedding_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        num_hidden_groups=1 if share_layers else num_hidden_layers,
        inner_group_num=1,
    )
    student = AlbertForSequenceClassification(config)
    if init_embeddings == "teacher_pca":
        init_embeddings_from_teacher(student, teacher)
    return student
