"""Int8 quantization of a student with torchao: QAT (fake quant while training, then convert) and PTQ.

Scheme (the same for QAT and PTQ, so both run on the same torchao ``Int8Tensor`` CPU kernels):

* ``nn.Linear``: int8 weights, symmetric, one scale per output channel; int8 activations quantized
  dynamically per token, asymmetric (torchao's ``Int8DynamicActivationInt8WeightConfig`` with
  ``act_mapping_type=ASYMMETRIC``). Activations are asymmetric because torchao 0.18's QAT fake quantizer
  implements per-token activation fake quant only in asymmetric form; the real kernels then use the same.
* ``nn.Embedding`` (``embeddings=True``, as in Q8BERT): int8 weight-only, symmetric, one scale per row,
  stored by :class:`Int8Embedding`, which gathers int8 rows and scales only those. (torchao's
  ``Int8WeightOnlyConfig`` on an embedding dequantizes the whole table at every lookup: ~14x slower on a
  30k-token vocabulary.) Its scales come from torchao's ``Int8Tensor`` so numerics match the fake quant.

torchao 0.18 cannot infer fake-quant settings from ``Int8DynamicActivationInt8WeightConfig`` (``QATConfig``
accepts only int4 / float8 / intx-unpacked base configs), so QAT spells them out with
``IntxFakeQuantizeConfig`` and, at convert time, swaps the fake-quant modules back (``QATConfig(step="convert")``
without a base config) and applies the real int8 configs with ``quantize_``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError

SUPPORTED_LAYERS: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "Embedding": nn.Embedding}
DEFAULT_LAYERS: tuple[str, ...] = ("Linear",)


def _ao():
    """Import torchao lazily: it is an optional extra (``pip install -e .[quant]``)."""
    try:
        import torchao.quantization as tq
        from torchao.quantization import qat
        from torchao.quantization.quant_primitives import MappingType
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("quantization needs torchao; install it with `pip install -e .[quant]`.") from e
    return tq, qat, MappingType


def _layer_names(layers: Iterable[str] | str | None, embeddings: bool) -> tuple[str, ...]:
    if layers is None:
        layers = DEFAULT_LAYERS
    elif isinstance(layers, str):
        layers = (layers,)
    names = [str(x) for x in layers]
    if embeddings and "Embedding" not in names:
        names.append("Embedding")
    return tuple(dict.fromkeys(names))


def check_quantizable(
    model: nn.Module, layers: Iterable[str] | str | None = None, embeddings: bool = False
) -> dict[str, str]:
    """Validate ``quant.layers`` against the model; return ``{module name: layer type}`` to quantize.

    Raises ``ConfigError`` (one sentence naming the layer type) for a type torchao's int8 workflow does
    not support (e.g. ``Conv1d``, transformers' GPT-2 ``Conv1D`` or a custom module), or when the model
    holds no layer of the requested types.
    """
    names = _layer_names(layers, embeddings)
    for name in names:
        if name not in SUPPORTED_LAYERS:
            present = any(type(m).__name__ == name for m in model.modules())
            where = " (the model has such layers)" if present else ""
            raise ConfigError(
                f"quant.layers lists {name!r}{where}, a layer type int8 quantization does not support; "
                f"supported layer types: {', '.join(SUPPORTED_LAYERS)}."
            )
    targets: dict[str, str] = {}
    for fqn, module in model.named_modules():
        for name in names:
            if isinstance(module, SUPPORTED_LAYERS[name]):
                targets[fqn] = name
                break
    if not targets:
        found = sorted({type(m).__name__ for m in model.modules() if not list(m.children())})
        raise ConfigError(
            f"the model has no {' or '.join(names)} layer to quantize (its leaf layer types: {', '.join(found)})."
        )
    return targets


def _fake_quant_configs(qat):
    act = qat.IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    weight = qat.IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    return act, weight


def _opts(cfg: Mapping[str, Any] | Any | None, layers, embeddings) -> tuple[tuple[str, ...] | None, bool]:
    """Options from a ``quant`` config node (mapping or attribute access), overridden by explicit values."""
    def get(key, default=None):
        if cfg is None:
            return default
        if isinstance(cfg, Mapping):
            return cfg.get(key, default)
        return getattr(cfg, key, default)

    layers = layers if layers is not None else get("layers")
    embeddings = embeddings if embeddings is not None else bool(get("embeddings", False))
    return layers, embeddings


def prepare_qat(
    model: nn.Module,
    cfg: Mapping[str, Any] | Any | None = None,
    *,
    layers: Iterable[str] | None = None,
    embeddings: bool | None = None,
    enabled: bool = True,
) -> nn.Module:
    """Insert int8 fake quantization into ``model`` in place (and return it) for quantization-aware training.

    Every ``nn.Linear`` (encoder, pooler, classifier) becomes a torchao ``FakeQuantizedLinear`` and, with
    ``embeddings=True``, every ``nn.Embedding`` a ``FakeQuantizedEmbedding``. The swapped modules reuse the
    original ``nn.Parameter`` objects, so an optimizer built before or after this call trains the same
    tensors and the state-dict keys do not change (``save_pretrained`` still writes a plain fp32 model).
    ``cfg`` is the ``quant`` config node (keys ``layers``, ``embeddings``); keyword arguments override it.
    ``enabled=False`` leaves the fake quantizers off (see :func:`set_fake_quant_enabled`).
    """
    tq, qat, _ = _ao()
    layers, embeddings = _opts(cfg, layers, embeddings)
    if is_qat_prepared(model):
        set_fake_quant_enabled(model, enabled)
        return model
    targets = check_quantizable(model, layers, embeddings)
    act, weight = _fake_quant_configs(qat)
    linear = {n for n, t in targets.items() if t == "Linear"}
    emb = {n for n, t in targets.items() if t == "Embedding"}
    if linear:
        tq.quantize_(model, qat.QATConfig(activation_config=act, weight_config=weight, step="prepare"),
                     filter_fn=lambda m, fqn: fqn in linear and isinstance(m, nn.Linear))
    if emb:
        tq.quantize_(model, qat.QATConfig(weight_config=weight, step="prepare"),
                     filter_fn=lambda m, fqn: fqn in emb and isinstance(m, nn.Embedding))
    set_fake_quant_enabled(model, enabled)
    return model


def _fake_quant_modules(model: nn.Module) -> list[nn.Module]:
    _, qat, _ = _ao()
    return [m for m in model.modules() if isinstance(m, (qat.FakeQuantizedLinear, qat.FakeQuantizedEmbedding))]


def is_qat_prepared(model: nn.Module) -> bool:
    """Whether ``model`` holds fake-quantized layers (after :func:`prepare_qat`, before conversion)."""
    return bool(_fake_quant_modules(model))


def set_fake_quant_enabled(model: nn.Module, enabled: bool) -> int:
    """Switch every fake quantizer of a QAT-prepared model on or off; return how many were switched.

    Off, a prepared model computes exactly what the fp32 model computes (QAT can start late in training).
    """
    count = 0
    for module in _fake_quant_modules(model):
        for attr in ("activation_fake_quantizer", "weight_fake_quantizer"):
            quantizer = getattr(module, attr, None)
            if quantizer is not None:
                quantizer.enabled = bool(enabled)
                count += 1
    return count


def fake_quant_enabled(model: nn.Module) -> bool:
    """Whether the fake quantizers of a prepared model are on (False when there are none)."""
    for module in _fake_quant_modules(model):
        quantizer = getattr(module, "weight_fake_quantizer", None)
        if quantizer is not None:
            return bool(quantizer.enabled)
    return False


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """Swap fake-quantized layers back to plain ``nn.Linear`` / ``nn.Embedding`` (same parameters), in place."""
    tq, qat, _ = _ao()
    if is_qat_prepared(model):
        tq.quantize_(model, qat.QATConfig(step="convert"),
                     filter_fn=lambda m, fqn: isinstance(m, (qat.FakeQuantizedLinear, qat.FakeQuantizedEmbedding)))
    return model


def _quantize_int8(model: nn.Module, linear: set[str], emb: set[str]) -> nn.Module:
    tq, _, MappingType = _ao()
    if linear:
        config = tq.Int8DynamicActivationInt8WeightConfig(act_mapping_type=MappingType.ASYMMETRIC,
                                                          set_inductor_config=False)
        tq.quantize_(model, config, filter_fn=lambda m, fqn: fqn in linear and isinstance(m, nn.Linear))
    for fqn in sorted(emb):
        module = model.get_submodule(fqn)
        if isinstance(module, nn.Embedding):
            _set_submodule(model, fqn, Int8Embedding.from_float(module))
    return model.eval()


def _set_submodule(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class Int8Embedding(nn.Module):
    """Inference embedding with an int8 table (V, H) and one fp32 scale per row (V, 1), symmetric.

    The lookup gathers int8 rows and scales only them. ``weight`` is a frozen int8 parameter (so parameter
    counts match the fp32 model); ``scale`` a buffer; both save in a plain state dict.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.out_dtype = dtype
        self.weight = nn.Parameter(torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8), requires_grad=False)
        self.register_buffer("scale", torch.ones(num_embeddings, 1, dtype=torch.float32))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> Int8Embedding:
        tq, _, _ = _ao()
        from torchao.quantization.granularity import PerRow

        weight = embedding.weight.detach().float()
        quantized = tq.Int8Tensor.from_hp(weight, granularity=PerRow())  # symmetric, scale = max|row| / 127.5
        out = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx, embedding.weight.dtype)
        out.weight.data.copy_(quantized.qdata)
        out.scale.copy_(quantized.scale.reshape(-1, 1).float())
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.weight).to(torch.float32)  # (..., H)
        return (rows * nn.functional.embedding(ids, self.scale)).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row symmetric"


def convert_qat(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Turn a QAT-prepared model into a real int8 model (``Int8Tensor`` weights) that runs on CPU.

    The layers that carried fake quantization get the matching real int8 scheme, so the converted
    model reproduces the fake-quant model's logits up to float rounding. ``inplace=False`` (default)
    leaves ``model`` (the fp32 QAT-trained weights) untouched and converts a copy.
    """
    _, qat, _ = _ao()
    if not is_qat_prepared(model):
        raise ConfigError("convert_qat needs a model prepared with prepare_qat (quant=qat_int8); none of its "
                          "layers carries fake quantization.")
    model = model if inplace else copy.deepcopy(model)
    linear = {n for n, m in model.named_modules() if isinstance(m, qat.FakeQuantizedLinear)}
    emb = {n for n, m in model.named_modules() if isinstance(m, qat.FakeQuantizedEmbedding)}
    strip_fake_quant(model)
    return _quantize_int8(model, linear, emb)


def ptq_dynamic_int8(
    model: nn.Module,
    cfg: Mapping[str, Any] | Any | None = None,
    *,
    layers: Iterable[str] | None = None,
    embeddings: bool | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Post-training dynamic int8 quantization of a trained fp32 model (same kernels as :func:`convert_qat`).

    No calibration data is needed: activation ranges are computed per token at run time. A QAT-prepared
    model is first stripped of its fake quantizers. ``inplace=False`` (default) quantizes a copy.
    """
    layers, embeddings = _opts(cfg, layers, embeddings)
    model = model if inplace else copy.deepcopy(model)
    strip_fake_quant(model)
    targets = check_quantizable(model, layers, embeddings)
    linear = {n for n, t in targets.items() if t == "Linear"}
    emb = {n for n, t in targets.items() if t == "Embedding"}
    return _quantize_int8(model, linear, emb)


def int8_modules(model: nn.Module) -> dict[str, str]:
    """``{module name: "dynamic" | "weight_only" | "embedding"}`` for every int8 layer (torchao ``Int8Tensor``
    weights, or an :class:`Int8Embedding`)."""
    tq, _, _ = _ao()
    out = {}
    for fqn, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, Int8Embedding):
            out[fqn] = "embedding"
        elif isinstance(weight, tq.Int8Tensor):
            out[fqn] = "dynamic" if weight.act_quant_kwargs is not None else "weight_only"
    return out


def is_int8(model: nn.Module) -> bool:
    """Whether ``model`` holds torchao int8 weights."""
    return bool(int8_modules(model))
