"""Vocabulary trimming: keep the word pieces a corpus uses (plus the special tokens), shrink the embedding.

``trim_vocabulary(model, tokenizer, corpus)`` returns a model whose word-embedding table (and tied output
layer, if any) holds only the kept rows, in the order of their old ids, and a ``BertTokenizerFast`` over the
kept pieces with the same normalisation, so the pair saves with ``save_pretrained`` and loads with vanilla
``AutoModelForSequenceClassification`` / ``AutoTokenizer``.

Why in-vocabulary text tokenizes to the same pieces: WordPiece is greedy longest-match-first, and removing
pieces never makes a longer match possible, so every word whose original pieces are all kept is split the same
way (ids remapped). A word that used a dropped piece is split greedily over the kept pieces, or becomes one
``[UNK]`` when that is impossible; :func:`oov_stats` counts how much of a dev set that touches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import BertTokenizerFast, PreTrainedModel, PreTrainedTokenizerBase

from distill.errors import ConfigError

Corpus = Iterable[str] | Iterable[tuple[str, str]] | Iterable[Sequence[int]]


@dataclass(frozen=True)
class TrimInfo:
    """What trimming kept: ``kept_ids[new_id] == old_id`` (ascending), and the vocabulary sizes."""

    kept_ids: tuple[int, ...]
    old_vocab_size: int
    new_vocab_size: int
    corpus_examples: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["kept_ids"]  # 10⁴ ids: kept in the saved vocabulary, not in reports
        return out


def check_wordpiece(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise ``ConfigError`` unless ``tokenizer`` is a fast WordPiece (BERT-style) tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    kind = type(backend.model).__name__ if backend is not None else type(tokenizer).__name__
    if kind != "WordPiece":
        raise ConfigError(f"vocabulary trimming needs a WordPiece (BERT-style) tokenizer; got {kind} "
                          f"from {type(tokenizer).__name__}.")


def corpus_ids(tokenizer: PreTrainedTokenizerBase, corpus: Corpus, batch_size: int = 1024) -> tuple[set[int], int]:
    """The set of token ids that ``corpus`` uses and its number of examples.

    ``corpus`` holds texts (``str``), text pairs (``(str, str)``) or token-id sequences already tokenized
    with ``tokenizer`` (e.g. a GLUE split's ``input_ids``).
    """
    used: set[int] = set()
    n = 0
    batch: list = []

    def flush() -> None:
        if batch:
            pairs = isinstance(batch[0], tuple)
            args = (list(zip(*batch, strict=True))) if pairs else (batch,)
            for ids in tokenizer(*[list(a) for a in args], add_special_tokens=False)["input_ids"]:
                used.update(ids)
            batch.clear()

    for example in corpus:
        n += 1
        if isinstance(example, str) or (isinstance(example, tuple) and example and isinstance(example[0], str)):
            batch.append(example)
            if len(batch) >= batch_size:
                flush()
        else:
            ids = example.tolist() if isinstance(example, torch.Tensor) else example
            used.update(int(i) for i in ids)
    flush()
    return used, n


def _new_tokenizer(tokenizer: PreTrainedTokenizerBase, kept: list[int]) -> BertTokenizerFast:
    """A ``BertTokenizerFast`` over the ``kept`` old ids (new id = position), same normalisation and specials."""
    old_vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    vocab = {old_vocab[i]: new for new, i in enumerate(kept)}
    normalizer = tokenizer.backend_tokenizer.normalizer
    norm = normalizer.__getstate__() if normalizer is not None else {}

    norm = json.loads(norm) if isinstance(norm, (str, bytes)) else norm
    kwargs = {
        "do_lower_case": norm.get("lowercase", getattr(tokenizer, "do_lower_case", True)),
        "strip_accents": norm.get("strip_accents"),
        "tokenize_chinese_chars": norm.get("handle_chinese_chars", True),
    }
    specials = {k: getattr(tokenizer, k) for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
                if getattr(tokenizer, k, None) is not None}
    new = BertTokenizerFast(vocab=vocab, **kwargs, **specials, model_max_length=tokenizer.model_max_length)
    old_backend, new_backend = tokenizer.backend_tokenizer, new.backend_tokenizer
    # the very same text pipeline as the original (clean_text etc. are not constructor arguments)
    if old_backend.normalizer is not None:
        new_backend.normalizer = old_backend.normalizer
    if old_backend.pre_tokenizer is not None:
        new_backend.pre_tokenizer = old_backend.pre_tokenizer
    new_backend.model.continuing_subword_prefix = old_backend.model.continuing_subword_prefix
    new_backend.model.max_input_chars_per_word = old_backend.model.max_input_chars_per_word
    return new


def _shrink_embeddings(model: PreTrainedModel, kept: torch.Tensor, pad_id: int | None) -> None:
    """Keep rows ``kept`` (V',) of the input embedding and of the output layer (tied or not), in place.

    No random initialisation is drawn (the new tables are built from the kept rows): the global RNG stream
    is left as it was, so a run that trims its student draws the same dropout masks as one that does not."""
    old_in = model.get_input_embeddings()
    old_out = model.get_output_embeddings()
    tied = old_out is not None and old_out.weight is old_in.weight
    with torch.no_grad():
        rows = old_in.weight[kept].detach().clone()  # (V', E)
    new_in = nn.Embedding(len(kept), old_in.embedding_dim, padding_idx=pad_id, _weight=rows)
    model.set_input_embeddings(new_in)
    if old_out is not None:
        new_out = nn.utils.skip_init(nn.Linear, old_out.in_features, len(kept), bias=old_out.bias is not None,
                                     device=old_out.weight.device, dtype=old_out.weight.dtype)
        with torch.no_grad():
            new_out.weight = new_in.weight if tied else nn.Parameter(old_out.weight[kept].clone())  # (V', E)
            if old_out.bias is not None:
                new_out.bias.copy_(old_out.bias[kept])  # (V',)
        model.set_output_embeddings(new_out)
        head = getattr(getattr(model, "cls", None), "predictions", None)
        if head is not None and getattr(head, "bias", None) is not None:
            head.bias = new_out.bias  # BERT's MLM head keeps the decoder bias as its own attribute too


def kept_pieces(tokenizer: PreTrainedTokenizerBase, corpus: Corpus, keep_tokens: Iterable[str] = ()) -> tuple[list[int], int]:
    """The old ids to keep (ascending): every piece ``corpus`` uses, every special token and ``keep_tokens``;
    and the corpus's number of examples."""
    check_wordpiece(tokenizer)
    used, n = corpus_ids(tokenizer, corpus)
    if not used:
        raise ConfigError("the corpus to trim the vocabulary to is empty; give the task's training texts or ids.")
    vocab = tokenizer.get_vocab()
    extra = {vocab[t] for t in [*tokenizer.all_special_tokens, *keep_tokens] if t in vocab}
    return sorted(used | extra), n


def trimmed_tokenizer(tokenizer: PreTrainedTokenizerBase, kept: Sequence[int]) -> BertTokenizerFast:
    """``tokenizer`` over the ``kept`` old ids only (new id = position in ``kept``), same text pipeline."""
    check_wordpiece(tokenizer)
    return _new_tokenizer(tokenizer, list(kept))


def _check_ids(kept: Sequence[int], old_size: int) -> None:
    unknown = [i for i in kept if not 0 <= i < old_size]
    if unknown:
        raise ConfigError(f"the corpus has token id {unknown[0]} outside the model's vocabulary of {old_size}; "
                          "tokenize it with the model's own tokenizer.")


def shrink_to(model: PreTrainedModel, kept: Sequence[int], new_tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Keep rows ``kept`` (old ids, ascending) of ``model``'s word table and output layer, in place, so that it
    reads ``new_tokenizer``'s ids (new id ``j`` = old id ``kept[j]``); the config's vocabulary size and special
    token ids follow. Returns ``model``."""
    _check_ids(kept, model.get_input_embeddings().num_embeddings)
    _shrink_embeddings(model, torch.tensor(list(kept), dtype=torch.long), new_tokenizer.pad_token_id)
    config = model.config
    config.vocab_size = len(kept)
    remap = {old: new for new, old in enumerate(kept)}
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "unk_token_id"):
        old = getattr(config, key, None)
        if isinstance(old, int):
            setattr(config, key, remap.get(old, new_tokenizer.unk_token_id))
    return model


def trim_vocabulary(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    keep_tokens: Iterable[str] = (),
) -> tuple[PreTrainedModel, BertTokenizerFast, TrimInfo]:
    """Keep the pieces ``corpus`` uses, every special token and ``keep_tokens``; remap ids; shrink embeddings.

    Args:
        model: a Hugging Face model over ``tokenizer``'s vocabulary (changed in place and returned).
        tokenizer: its fast WordPiece tokenizer (not changed).
        corpus: texts, text pairs or token-id sequences (see :func:`corpus_ids`), e.g. the task's train set.
        keep_tokens: extra pieces to keep whatever the corpus (unknown ones are ignored).

    Returns ``(model, new_tokenizer, info)``; new id ``j`` is old id ``info.kept_ids[j]``.
    """
    kept, n = kept_pieces(tokenizer, corpus, keep_tokens)
    old_size = model.get_input_embeddings().num_embeddings
    _check_ids(kept, old_size)
    new_tokenizer = _new_tokenizer(tokenizer, kept)
    shrink_to(model, kept, new_tokenizer)
    return model, new_tokenizer, TrimInfo(tuple(kept), old_size, len(kept), n)


def oov_stats(tokenizer: PreTrainedTokenizerBase, kept_ids: Iterable[int], texts: Iterable[str],
              new_tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Any]:
    """How much of ``texts`` uses pieces outside ``kept_ids`` (old ids), tokenized with the original tokenizer.

    Returns examples / tokens in all, examples with at least one dropped piece, dropped tokens and, with
    ``new_tokenizer``, the ``[UNK]`` tokens and examples that the trimmed tokenizer produces.
    """
    kept = set(kept_ids)
    texts = list(texts)
    old = tokenizer(texts, add_special_tokens=False)["input_ids"]
    dropped = [sum(i not in kept for i in ids) for ids in old]
    out: dict[str, Any] = {
        "examples": len(texts),
        "tokens": sum(len(ids) for ids in old),
        "oov_examples": sum(d > 0 for d in dropped),
        "oov_tokens": sum(dropped),
    }
    if tokenizer.unk_token_id is not None:  # what the original tokenizer itself maps to [UNK] (not trimming's doing)
        own = [sum(i == tokenizer.unk_token_id for i in ids) for ids in old]
        out["unk_examples_before"] = sum(u > 0 for u in own)
        out["unk_tokens_before"] = sum(own)
    if new_tokenizer is not None:
        unk = new_tokenizer.unk_token_id
        new = new_tokenizer(texts, add_special_tokens=False)["input_ids"]
        unks = [sum(i == unk for i in ids) for ids in new]
        out["unk_examples_after"] = sum(u > 0 for u in unks)
        out["unk_tokens_after"] = sum(unks)
    return out
