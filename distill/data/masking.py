"""BERT's masking for masked-LM distillation: 80 % [MASK], 10 % a random id, 10 % unchanged.

:func:`mask_batch` turns a padded batch into DistilBERT's general-distillation input: ``input_ids`` with
the corruption, ``mlm_labels`` (the original id at chosen positions, -100 elsewhere) and ``mlm_mask``
(the chosen positions). DistilBERT also smooths masking probabilities by token frequency; plain uniform
masking is used here.
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


