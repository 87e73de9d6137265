"""``student.trim_vocab=true``: a student that trains and ships with the teacher's vocabulary trimmed to the task.

The trimmed tokenizer is the teacher's WordPiece tokenizer keeping only the pieces of the task's whole training
set plus the special tokens (what ``scripts/trim_vocab.py`` keeps by default). It is made once and cached under
``<cache>/trimmed_vocab/<task>-<key>/`` — the key is the teacher tokenizer's full definition and the corpus
texts — written in a temporary folder and renamed into place, with ``trim_vocab.json`` (the kept old ids)
beside the tokenizer files. The run then treats it as the student's own tokenizer (``student.tokenizer``):
batches carry the teacher's inputs and the student's trimmed ids side by side (``distill/data/glue.py``), and
the student's builder keeps exactly the rows of the kept ids (:func:`trim_to`).

Why aligned losses may stay: WordPiece is greedy longest-match-first and trimming only removes pieces, so
every training sentence (all of whose pieces are kept by construction) splits into the very same pieces, ids
remapped: teacher and student sequences have equal lengths, masks and positions on every training batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import PreTrainedModel

from distill.config import build
from distill.data.glue import load_tokenizer
from distill.errors import ConfigError
from distill.models.teacher import publish_dir
from distill.models.trim import check_wordpiece, kept_pieces, oov_stats, shrink_to, trimmed_tokenizer

log = logging.getLogger("distill")

TRIM_FILE = "trim_vocab.json"  # beside the trimmed tokenizer: kept_ids[new id] = the teacher's id
KEY = "student.trim_vocab"


def _texts_digest(texts: list) -> str:
    return hashlib.sha1(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


def trimmed_tokenizer_dir(tokenizer_name: str, corpus: list, cache_dir: str | Path, name: str = "corpus") -> Path:
    """The folder of ``tokenizer_name``'s tokenizer trimmed to ``corpus`` (texts or text pairs), made once.

    Cached by the tokenizer's full definition (vocabulary and text pipeline) and the corpus texts; the entry
    appears complete or not at all (temporary folder, then one rename)."""
    tokenizer = load_tokenizer(tokenizer_name, "teacher.name_or_path")
    try:
        check_wordpiece(tokenizer)
    except ConfigError as err:
        raise ConfigError(f"{KEY}=true: {err}") from None
    definition = tokenizer.backend_tokenizer.to_str()
    key = hashlib.sha1(json.dumps([definition, _texts_digest(corpus)]).encode()).hexdigest()[:16]
    final = Path(cache_dir) / "trimmed_vocab" / f"{name}-{key}"
    if (final / TRIM_FILE).is_file():
        return final
    kept, examples = kept_pieces(tokenizer, corpus)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    trimmed_tokenizer(tokenizer, kept).save_pretrained(tmp)
    info = {"tokenizer": str(tokenizer_name), "corpus": name, "corpus_examples": examples,
            "old_vocab_size": len(tokenizer), "new_vocab_size": len(kept), "kept_ids": kept}
    (tmp / TRIM_FILE).write_text(json.dumps(info))
    try:
        publish_dir(tmp, final)
    except OSError:  # another process (a DDP rank) published the same entry between the check and the rename
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / TRIM_FILE).is_file():
            raise
    log.info("%s: the teacher's %d word pieces trimmed to the %d of %s's training set (%d examples), at %s",
             KEY, len(tokenizer), len(kept), name, examples, final)
    return final


def trim_info(folder: str | Path) -> dict[str, Any]:
    """``trim_vocab.json`` of a trimmed tokenizer folder; one sentence when it is not one."""
    path = Path(folder) / TRIM_FILE
    if not path.is_file():
        raise ConfigError(f"{KEY}=true needs the trimmed tokenizer that the distill stage makes; {folder} has no "
                          f"{TRIM_FILE} (leave student.tokenizer unset).")
    return json.loads(path.read_text())


@torch.no_grad()
def trim_to(student: PreTrainedModel, folder: str | Path) -> PreTrainedModel:
    """``student`` (built over the teacher's vocabulary) keeping exactly the word-table rows of the trimmed
    tokenizer at ``folder``, in its id order: a piece keeps the row the builder gave it."""
    info = trim_info(folder)
    rows = student.get_input_embeddings().num_embeddings
    if info["old_vocab_size"] > rows:
        raise ConfigError(f"{KEY}=true: the student's word table has {rows} rows but the trimmed tokenizer was "
                          f"made from a vocabulary of {info['old_vocab_size']}; build the student over the "
                          "teacher's vocabulary.")
    return shrink_to(student, info["kept_ids"], load_tokenizer(str(folder), "student.tokenizer"))


def with_trimmed_vocabulary(cfg: DictConfig) -> DictConfig:
    """``cfg`` itself unless ``student.trim_vocab`` is true; then a copy whose ``student.tokenizer`` is the
    teacher's tokenizer trimmed to the task's whole training set (made and cached now; a few seconds).

    Bad values stop here with one sentence, before the teacher or any data is prepared."""
    node = cfg.student
    trim = node.get("trim_vocab", False)
    if not isinstance(trim, bool):
        raise ConfigError(f"{KEY}={trim!r} must be true or false.")
    if not trim:
        return cfg
    if "tokenizer" not in node:
        raise ConfigError(f"{KEY}=true needs a student built over the teacher's vocabulary with a student.tokenizer "
                          "key (tiny, mini, micro, distil, pruned, albert_tiny, mobilebert_tiny, pretrained); "
                          f"{node.get('_target_')} has none.")
    if node.get("tokenizer") is not None:
        raise ConfigError(f"{KEY}=true makes the student's tokenizer itself (the teacher's, trimmed to the task's "
                          f"training set), so it cannot be combined with student.tokenizer={node.tokenizer!r}; "
                          "set only one of them.")
    teacher = str(cfg.teacher.name_or_path)
    dm = build(cfg.data, "data", tokenizer=teacher)
    dm.check_files()
    folder = trimmed_tokenizer_dir(teacher, dm.texts("train"), cfg.paths.cache_dir, dm.spec.name)
    out = copy.deepcopy(cfg)
    OmegaConf.set_readonly(out, False)
    with open_dict(out):
        out.student.tokenizer = str(folder)
    OmegaConf.set_readonly(out, OmegaConf.is_readonly(cfg))
    return out


def trim_notes(cfg: DictConfig, dm) -> dict[str, Any]:
    """For the student's report row (``notes.vocab_trim``): the vocabulary sizes and how many sentences / word
    pieces of the evaluated split (all of it) the trimmed vocabulary maps to ``[UNK]`` (:func:`oov_stats`);
    ``{}`` unless ``student.trim_vocab``."""
    if cfg.student.get("trim_vocab") is not True or dm.student_tokenizer is None:
        return {}
    info = trim_info(cfg.student.tokenizer)
    split = cfg.eval.split
    texts = [" ".join(t) if isinstance(t, tuple) else t for t in dm.texts(split)]
    stats = oov_stats(dm.tokenizer, info["kept_ids"], texts, dm.student_tokenizer)
    log.info("%s: %d of %d %s examples (%d of %d word pieces) hold a piece the trimmed vocabulary maps to [UNK]",
             KEY, stats["unk_examples_after"], stats["examples"], split, stats["unk_tokens_after"], stats["tokens"])
    return {"vocab_trim": {"split": split, "vocab_size": info["new_vocab_size"],
                           "teacher_vocab_size": info["old_vocab_size"], "corpus_examples": info["corpus_examples"],
                           **stats}}
