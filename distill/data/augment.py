"""TinyBERT-style data augmentation, offline: word pieces swapped for their neighbours in the teacher's embeddings.

TinyBERT replaces single-piece words by BERT masked-LM predictions and other words by GloVe
neighbours. This adaptation needs nothing but the teacher: each replaceable word piece of a training
example is, with probability ``replace_prob``, swapped for one of its ``top_k`` nearest neighbours by
cosine similarity in the teacher's own input-embedding matrix. Special tokens (``[CLS]``, ``[SEP]``,
``[PAD]``...) and ``[unused*]`` entries are never replaced nor used as replacements, and a word start
is only swapped for a word start, a ``##`` continuation for a continuation, so lengths and segment
ids stay valid. ``copies`` augmented copies are made per example.

Labels: augmented rows are labelled by the (fine-tuned) teacher — its argmax class, or its score for
regression. The soft loss never reads them (it uses the teacher's logits, recomputed online); only
hard-label terms (``HardLabelLoss``) do, which then learn the teacher's argmax on augmented rows and
the gold label on original rows. The augmented training set is built once and cached under
``paths.cache_dir/augmented/<task>-<key>`` (key: teacher, tokenizer, data subset, augment settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from distill.data.tasks import MODEL_INPUTS
from distill.errors import ConfigError
from distill.models.teacher import publish_dir

log = logging.getLogger("distill")


def replaceable_tokens(tokenizer, rows: int) -> torch.Tensor:
    """(rows,) bool: vocabulary ids that may be replaced or used as replacements (no specials, no [unused*])."""
    keep = torch.zeros(rows, dtype=torch.bool)
    special = set(tokenizer.all_special_ids)
    for token, i in tokenizer.get_vocab().items():
        if i < rows and i not in special and not (token.startswith("[") and token.endswith("]")):
            keep[i] = True
    return keep


def piece_groups(tokenizer, rows: int) -> torch.Tensor:
    """(rows,) int64: 1 for WordPiece continuations (``##x``), 0 otherwise; swaps stay within a group."""
    groups = torch.zeros(rows, dtype=torch.long)
    for token, i in tokenizer.get_vocab().items():
        if i < rows and token.startswith("##"):
            groups[i] = 1
    return groups


def nearest_neighbours(
    embeddings: torch.Tensor,
    ids: torch.Tensor,
    top_k: int,
    allowed: torch.Tensor,
    groups: torch.Tensor | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """The ``top_k`` most cosine-similar ``allowed`` rows of ``embeddings`` (V, H) for each of ``ids`` (M,).

    A token is never its own neighbour; with ``groups`` (V,) only rows of the same group qualify.
    Returns (M, top_k) int64 ids, most similar first; where fewer candidates exist, the token itself
    fills the remaining slots (so picking it changes nothing).
    """
    unit = F.normalize(embeddings.detach().float(), dim=-1)  # (V, H)
    out = []
    for start in range(0, len(ids), chunk):
        rows = ids[start:start + chunk]  # (m,)
        sims = unit[rows] @ unit.T  # (m, V)
        bad = ~allowed[None, :].expand_as(sims).clone()  # (m, V)
        bad[torch.arange(len(rows)), rows] = True
        if groups is not None:
            bad |= groups[rows][:, None] != groups[None, :]
        sims = sims.masked_fill(bad, float("-inf"))
        values, top = sims.topk(min(top_k, sims.shape[1]), dim=-1)  # (m, k)
        out.append(torch.where(torch.isfinite(values), top, rows[:, None].expand_as(top)))
    return torch.cat(out) if out else torch.empty(0, top_k, dtype=torch.long)


def neighbour_table(embeddings: torch.Tensor, tokenizer, ids: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(table, replaceable)``: (V, k) neighbour ids filled for ``ids`` (others map to themselves) and (V,) bool."""
    rows = embeddings.shape[0]
    allowed = replaceable_tokens(tokenizer, rows)
    ids = ids[allowed[ids]]
    table = torch.arange(rows)[:, None].repeat(1, top_k)  # (V, k) identity by default
    table[ids] = nearest_neighbours(embeddings, ids, top_k, allowed, piece_groups(tokenizer, rows))
    return table, allowed


def augment_ids(ids: torch.Tensor, table: torch.Tensor, replaceable: torch.Tensor, replace_prob: float,
                generator: torch.Generator) -> torch.Tensor:
    """One augmented copy of ``ids`` (T,) int64: each replaceable piece swapped with probability ``replace_prob``."""
    swap = replaceable[ids] & (torch.rand(ids.shape, generator=generator) < replace_prob)  # (T,)
    pick = torch.randint(table.shape[1], ids.shape, generator=generator)  # (T,)
    return torch.where(swap, table[ids, pick], ids)  # (T,)


def augment_rows(rows: dict[str, list], table: torch.Tensor, replaceable: torch.Tensor, copies: int,
                 replace_prob: float, seed: int) -> dict[str, list]:
    """``copies`` augmented copies of every row of ``rows`` (columns of token lists); labels not included."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list] = {k: [] for k in rows if k != "labels"}
    for i, ids in enumerate(rows["input_ids"]):
        ids_t = torch.tensor(ids, dtype=torch.long)
        for _ in range(copies):
            out["input_ids"].append(augment_ids(ids_t, table, replaceable, replace_prob, gen).tolist())
            for k in out:
                if k != "input_ids":
                    out[k].append(rows[k][i])
    return out


@torch.no_grad()
def teacher_labels(teacher, rows: dict[str, list], tokenizer, batch_size: int, regression: bool) -> list:
    """The teacher's argmax class (or score, for regression) for each row of token lists."""
    teacher.eval()
    keys = [k for k in MODEL_INPUTS if k in rows]
    labels: list = []
    for start in range(0, len(rows["input_ids"]), batch_size):
        feats = [{k: rows[k][i] for k in keys} for i in range(start, min(start + batch_size, len(rows["input_ids"])))]
        batch = tokenizer.pad(feats, return_tensors="pt")
        logits = teacher(**{k: batch[k] for k in keys}).logits  # (B, C)
        labels += logits[:, 0].tolist() if regression else logits.argmax(-1).tolist()
    return labels


def _check(a: DictConfig) -> None:
    for key, ok in (("copies", a.copies >= 1), ("top_k", a.top_k >= 1), ("label_batch_size", a.label_batch_size >= 1)):
        if not ok:
            raise ConfigError(f"augment.{key}={a[key]} must be a positive whole number.")
    if not 0.0 < a.replace_prob <= 1.0:
        raise ConfigError(f"augment.replace_prob={a.replace_prob} must be in (0, 1].")


def augment_train_set(cfg: DictConfig, dm, teacher, teacher_path: str) -> None:
    """Replace ``dm``'s training set by originals + teacher-labelled augmented copies (built once, cached)."""
    import datasets

    a = cfg.augment
    _check(a)
    dm.setup("fit")
    key = json.dumps({"teacher": str(teacher_path), "task": dm.spec.name, "source": dm.source,
                      "data_dir": str(dm.data_dir), "tokenizer": dm.tokenizer_name, "max_length": dm.max_length,
                      "n": dm.max_train_samples, "subset_seed": dm.subset_seed,
                      "augment": OmegaConf.to_container(a, resolve=True)}, sort_keys=True)
    path = Path(cfg.paths.cache_dir) / "augmented" / f"{dm.spec.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    if path.is_dir():
        log.info("Reusing the augmented training set cached at %s", path)
    else:
        rows = dm.datasets["train"].with_format(None)[:]  # columns of python lists
        ids = torch.tensor(sorted({i for seq in rows["input_ids"] for i in seq}), dtype=torch.long)
        table, replaceable = neighbour_table(teacher.get_input_embeddings().weight, dm.tokenizer, ids, a.top_k)
        extra = augment_rows(rows, table, replaceable, a.copies, a.replace_prob, a.seed)
        extra["labels"] = teacher_labels(teacher, extra, dm.tokenizer, a.label_batch_size, dm.is_regression)
        merged = {k: rows[k] + extra[k] for k in rows}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent))
        datasets.Dataset.from_dict(merged).save_to_disk(str(tmp))
        publish_dir(tmp, path)
        log.info("Augmented training set: %d examples + %d copies, cached at %s", len(rows["input_ids"]),
                 len(extra["input_ids"]), path)
    ds = datasets.load_from_disk(str(path))
    ds.set_format("torch")
    dm.datasets["train"] = ds
