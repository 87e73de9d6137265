"""A compressed export of a sparse student: its weights in one safetensors file, zeros left out.

Unstructured zeros (magnitude pruning) make dense kernels no faster; what they can save is space. A tensor
``T`` whose zeros are worth leaving out is stored as two tensors of a plain safetensors file:

* ``T::mask``: one bit per weight (1 = non-zero), row-major, packed 8 per ``uint8`` byte, least significant
  bit first (``numpy.packbits(..., bitorder="little")``);
* ``T::values``: the non-zero weights in row-major order, in ``T``'s dtype;

and its shape and dtype in the file's metadata (``distill.sparse.shapes``). Every other tensor is stored
as is. A bitmask costs 1 bit per weight against 32 for fp32, so a tensor is stored sparse when that is
smaller (above ~3% zeros); CSR with int32 column indices would only pay off above 50% zeros.

The folder beside the file holds ``config.json`` and the tokenizer, so the model comes back with
:func:`load_sparse` (or by hand, from the metadata, with any safetensors reader):

    model = load_sparse("<run>/compression/sparse")       # a plain transformers model, dense weights
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from distill.checkpoint import replace_atomically

WEIGHTS = "model.sparse.safetensors"
FORMAT = "distill-bitmask-v1"
MASK, VALUES = "::mask", "::values"


def _worth_it(tensor: torch.Tensor) -> bool:
    """Whether the bitmask + non-zero values take fewer bytes than the dense tensor."""
    if not tensor.is_floating_point() or tensor.numel() < 64:
        return False
    nonzero = int(torch.count_nonzero(tensor))
    return nonzero * tensor.element_size() + (tensor.numel() + 7) // 8 < tensor.numel() * tensor.element_size()


def pack_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to save, metadata): each tensor worth it as ``::mask`` + ``::values``, the others as they are."""
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, Any] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if not _worth_it(tensor):
            tensors[name] = tensor.clone()  # clone: safetensors refuses tensors that share memory
            continue
        flat = tensor.reshape(-1)
        keep = flat != 0
        bits = np.packbits(keep.numpy(), bitorder="little")
        tensors[name + MASK] = torch.from_numpy(bits)
        tensors[name + VALUES] = flat[keep].clone()
        shapes[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
    return tensors, {"format": FORMAT, "distill.sparse.shapes": json.dumps(shapes)}


def unpack_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """The dense state dict back from :func:`pack_state_dict`'s tensors and metadata (bit-exact)."""
    if (metadata or {}).get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file (metadata format={(metadata or {}).get('format')!r}).")
    shapes = json.loads(metadata["distill.sparse.shapes"])
    state = {name: t for name, t in tensors.items() if not name.endswith((MASK, VALUES))}
    for name, info in shapes.items():
        numel = int(np.prod(info["shape"], dtype=np.int64))
        keep = np.unpackbits(tensors[name + MASK].numpy(), count=numel, bitorder="little").astype(bool)
        values = tensors[name + VALUES]
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[torch.from_numpy(keep)] = values
        state[name] = dense.reshape(info["shape"])
    return state


def save_sparse(model: nn.Module, folder: str | Path, tokenizer: Any = None) -> dict[str, Any]:
    """Write ``model``'s weights to ``folder/model.sparse.safetensors`` (atomically), its config and the
    tokenizer beside it; returns ``{"path", "sparse_tensors", "tensors"}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, metadata = pack_state_dict(model.state_dict())
    path = replace_atomically(folder / WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    if getattr(model, "config", None) is not None:
        model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    sparse = len(json.loads(metadata["distill.sparse.shapes"]))
    return {"path": path, "sparse_tensors": sparse, "tensors": sparse + sum(not n.endswith((MASK, VALUES))
                                                                             for n in tensors)}


def load_sparse_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict stored in a :func:`save_sparse` file."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        metadata = f.metadata()
    return unpack_state_dict(tensors, metadata)


def load_sparse(folder: str | Path) -> nn.Module:
    """The sequence classifier saved by :func:`save_sparse` in ``folder``: a plain transformers model with the
    stored (dense) weights, in eval mode."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the caller's RNG
        model = AutoModelForSequenceClassification.from_config(config)
    model.load_state_dict(load_sparse_state_dict(folder / WEIGHTS), strict=True)
    return model.eval()
