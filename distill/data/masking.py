"""BERT's masking for masked-LM distillation: 80 % [MASK], 10 % a random id, 10 % unchanged.

:func:`mask_batch` turns a padded batch into DistilBERT's general-distillation input: ``input_ids`` with
the corruption, ``mlm_labels`` (the original id at chosen positions, -100 elsewhere) and ``mlm_mask``
(the chosen positions). DistilBERT also smooths masking probabilities by token frequency; plain uniform
masking is used here.

Static masking (``data.static_masking=true``): :func:`mask_rows` draws every row's masks once, from a seed,
and stores the masked ids and the labels in the row; :func:`collate_masked_rows` pads such rows into the same
batch :func:`mask_batch` gives. Every epoch then sees the same masks, so the teacher's outputs on them can be
cached (:mod:`distill.teacher_cache`, the masked ids being part of its key); dynamic masking (the default,
DistilBERT's and RoBERTa's) draws new masks every batch.
"""

from __future__ import annotations

import torch

from distill.errors import ConfigError

IGNORE = -100


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's masking of ``input_ids`` (B, T) int64 at ``maskable`` (B, T) bool positions.

    Each maskable position is chosen with probability ``mask_prob``; a chosen position becomes
    ``mask_token_id`` (80 %), a uniformly random id below ``vocab_size`` (10 %) or stays (10 %).
    Returns ``(inputs, labels, chosen)``: corrupted ids (B, T) int64, labels (B, T) int64 holding the
    original id where chosen and -100 elsewhere, and the chosen positions (B, T) bool.
    """
    if not 0.0 < mask_prob < 1.0:
        raise ConfigError(f"mask_prob={mask_prob} must be between 0 and 1.")
    shape = input_ids.shape
    chosen = (torch.rand(shape, generator=generator) < mask_prob).to(input_ids.device) & maskable  # (B, T)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))  # (B, T)
    how = torch.rand(shape, generator=generator).to(input_ids.device)  # (B, T) in [0, 1)
    random_ids = torch.randint(vocab_size, shape, generator=generator).to(input_ids.device)  # (B, T)
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)  # (B, T)
    return inputs, labels, chosen


def mask_batch(batch: dict[str, torch.Tensor], tokenizer, mask_prob: float,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A padded batch with ``input_ids`` masked and ``mlm_labels``/``mlm_mask`` added (specials and padding never masked)."""
    ids = batch["input_ids"]  # (B, T)
    real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    special = torch.isin(ids, torch.tensor(sorted(tokenizer.all_special_ids), dtype=ids.dtype))  # (B, T)
    if tokenizer.mask_token_id is None:
        raise ConfigError("the teacher's tokenizer has no [MASK] token; masked-LM distillation needs one.")
    inputs, labels, chosen = mask_tokens(ids, real & ~special, mask_token_id=tokenizer.mask_token_id,
                                         vocab_size=len(tokenizer), mask_prob=mask_prob, generator=generator)
    return {**batch, "input_ids": inputs, "mlm_labels": labels, "mlm_mask": chosen}




def mask_rows(rows: list[dict[str, list[int]]], tokenizer, mask_prob: float, seed: int) -> list[dict[str, list[int]]]:
    """Static masking: new rows whose ``input_ids`` are masked once and whose ``mlm_labels`` (same length: the
    original id where chosen, -100 elsewhere) say where. One generator seeded with ``seed`` draws the masks of
    all rows at once (padded to the longest), so the same rows and seed give the same masks on every run."""
    if not rows:
        return []
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), int(tokenizer.pad_token_id or 0), dtype=torch.long)  # (N, T)
    real = torch.zeros(len(rows), width, dtype=torch.long)  # (N, T)
    for i, row in enumerate(rows):
        ids[i, :len(row["input_ids"])] = torch.tensor(row["input_ids"], dtype=torch.long)
        real[i, :len(row["input_ids"])] = 1
    out = mask_batch({"input_ids": ids, "attention_mask": real}, tokenizer, mask_prob,
                     generator=torch.Generator().manual_seed(int(seed)))
    masked, labels = out["input_ids"].tolist(), out["mlm_labels"].tolist()
    return [{**row, "input_ids": masked[i][:len(row["input_ids"])], "mlm_labels": labels[i][:len(row["input_ids"])]}
            for i, row in enumerate(rows)]


def collate_masked_rows(features: list[dict], pad) -> dict[str, torch.Tensor]:
    """A batch of rows from :func:`mask_rows`: ``pad`` (a padding collator) pads the model inputs, the labels
    are padded with -100 to the same width, and ``mlm_mask`` marks the chosen positions (B, T) bool."""
    labels = [f["mlm_labels"] for f in features]
    batch = dict(pad([{k: v for k, v in f.items() if k != "mlm_labels"} for f in features]))
    width = batch["input_ids"].shape[1]
    padded = torch.full((len(features), width), IGNORE, dtype=torch.long)  # (B, T)
    for i, row in enumerate(labels):
        padded[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
    return {**batch, "mlm_labels": padded, "mlm_mask": padded != IGNORE}
