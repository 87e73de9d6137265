"""Small helpers shared by the loss terms: precision, padding masks, model geometry."""

from __future__ import annotations

import torch

from distill.errors import ConfigError


def f32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 to float32 for softmax/log math; float32 and float64 pass through."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def token_mask(batch: dict[str, torch.Tensor], shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Boolean (B, T) mask of real tokens from ``batch['attention_mask']`` (all True when absent)."""
    mask = batch.get("attention_mask")
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, expected {tuple(shape)}.")
    return mask.to(device=device) != 0  # (B, T)


def geometry(config, name: str, key: str) -> int | None:
    """``config.<name>`` (hidden_size, num_hidden_layers, num_attention_heads) or None without a config."""
    if config is None:
        return None
    value = getattr(config, name, None)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key} has no integer {name}; pass a Hugging Face config of a BERT-style model.")
    return value


def width(explicit: int | None, config, key: str) -> int | None:
    """A hidden width from an explicit int or ``config.hidden_size``; they must agree when both given."""
    from_config = geometry(config, "hidden_size", key)
    if explicit is None:
        return from_config
    if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1:
        raise ConfigError(f"{key}={explicit!r} must be a positive whole number.")
    if from_config is not None and from_config != explicit:
        raise ConfigError(f"{key}={explicit} contradicts the model config's hidden_size={from_config}.")
    return explicit


def reduce_layers(losses: list[torch.Tensor], how: str) -> torch.Tensor:
    """Sum (TinyBERT) or mean of per-layer-pair losses."""
    total = torch.stack(losses).sum()
    return total if how == "sum" else total / len(losses)


def check_reduction(how: str, owner: str) -> str:
    if how not in ("sum", "mean"):
        raise ConfigError(f"{owner}.layer_reduction={how!r} is not one of sum, mean.")
    return how
