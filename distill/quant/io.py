"""Save and load torchao int8 students.

``save_pretrained`` cannot write torchao ``Int8Tensor`` weights (transformers 5.24 + torchao 0.18 fail on
the tensor subclass' storage, with or without safetensors), so an int8 folder holds:

* ``config.json`` — the Hugging Face model config (architecture, geometry, labels);
* ``model_int8.pt`` — ``torch.save`` of the state dict (int8 data + fp32 scales as ``Int8Tensor``s), which
  ``torch.load(weights_only=True)`` reads because torchao registers its tensor subclasses as safe;
* ``quantization.json`` — which layers are int8 and how (``dynamic`` or ``weight_only``), versions;
* the tokenizer files, when a tokenizer is given.

Load with one line: ``model = distill.quant.load_int8("path/to/student-int8")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import DataError
from distill.quant.core import Int8Embedding, _ao, _set_submodule, int8_modules

WEIGHTS = "model_int8.pt"
META = "quantization.json"


def save_int8(model: nn.Module, out_dir: str | Path, tokenizer: Any = None, extra: dict[str, Any] | None = None) -> Path:
    """Write an int8 model (from :func:`convert_qat` or :func:`ptq_dynamic_int8`) to ``out_dir``; return it."""
    import torchao

    modules = int8_modules(model)
    if not modules:
        raise DataError("save_int8 needs a torchao int8 model (from convert_qat or ptq_dynamic_int8); "
                        "this model has no int8 layer.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    torch.save(model.state_dict(), out / WEIGHTS)
    meta = {
        "format": "torchao-int8",
        "scheme": {"dynamic": "int8 weights (symmetric, per output channel) x int8 activations (dynamic, "
                              "per token, asymmetric)",
                   "weight_only": "int8 weights (symmetric, per row), torchao weight-only",
                   "embedding": "int8 table (symmetric, per row scale), rows scaled after lookup"},
        "modules": modules,
        "architectures": list(getattr(model.config, "architectures", None) or [type(model).__name__]),
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        **(extra or {}),
    }
    (out / META).write_text(json.dumps(meta, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_int8(path: str | Path) -> nn.Module:
    """Load an int8 model written by :func:`save_int8` (eval mode, CPU).

    The architecture is rebuilt from ``config.json``, its recorded layers are quantized the same way,
    then the saved int8 tensors replace the placeholders.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tq, _, MappingType = _ao()
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / META).is_file():
        raise DataError(f"{path} is not an int8 model folder: it needs {WEIGHTS} and {META} (written by save_int8).")
    meta = json.loads((path / META).read_text())
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_config(config)
    dynamic = {n for n, kind in meta["modules"].items() if kind == "dynamic"}
    weight_only = {n for n, kind in meta["modules"].items() if kind == "weight_only"}
    if dynamic:
        tq.quantize_(model, tq.Int8DynamicActivationInt8WeightConfig(act_mapping_type=MappingType.ASYMMETRIC,
                                                                     set_inductor_config=False),
                     filter_fn=lambda m, fqn: fqn in dynamic)
    if weight_only:
        tq.quantize_(model, tq.Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=lambda m, fqn: fqn in weight_only)
    for fqn, kind in meta["modules"].items():
        if kind == "embedding":
            old = model.get_submodule(fqn)
            _set_submodule(model, fqn, Int8Embedding(old.num_embeddings, old.embedding_dim, old.padding_idx))
    state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
