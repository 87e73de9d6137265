"""Importance of a BERT classifier's structural units, estimated on calibration batches.

Two estimators fill the same :class:`Importance` record, one score per unit (higher = keep):

- ``activation`` (Minitron): forward hooks average the size of what each unit emits over the real tokens of
  the batches — an attention head's context vector, an FFN neuron's activation, a hidden channel's value after
  every LayerNorm — and a layer's score is its Block Importance, ``1 - cos(input, output)`` (ShortGPT).
- ``taylor`` (Michel et al. 2019, Molchanov et al. 2019): each unit's output is multiplied by a gate of ones and
  the score is ``|d loss / d gate|`` summed over batches: the first-order change of the task loss when the unit
  is removed. It needs labels in the batches.

Both are plain PyTorch on the Hugging Face modules (``model.bert.encoder.layer[i].attention.self.query`` …);
the hooks are removed before returning and the model's weights and mode are left as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from distill.data.tasks import MODEL_INPUTS
from distill.errors import ConfigError

IMPORTANCES = ("activation", "taylor")


@dataclass
class Importance:
    """One non-negative float32 score per unit; shapes for L layers, H heads of d dims, F neurons, D channels."""

    layers: Tensor  # (L,)
    heads: Tensor  # (L, H)
    qk_dims: Tensor  # (L, H, d)  a query/key column pair within its head (they are cut together)
    v_dims: Tensor  # (L, H, d)  a value column within its head
    neurons: Tensor  # (L, F)
    hidden: Tensor  # (D,)  a residual-stream channel
    pooler: Tensor  # (D,)  an output unit of the pooler (weighted by the classifier's use of it)


def _encoder(model: PreTrainedModel):
    base = model.base_model
    if not hasattr(base, "encoder") or not hasattr(base, "embeddings"):
        raise ConfigError(f"student: pruning needs a BERT-style teacher; {type(model).__name__} has no encoder.")
    return base


def _layer_norms(base) -> list[nn.LayerNorm]:
    """Every LayerNorm whose output is the residual stream: after the embeddings and after each sub-block."""
    norms = [base.embeddings.LayerNorm]
    for layer in base.encoder.layer:
        norms += [layer.attention.output.LayerNorm, layer.output.LayerNorm]
    return norms


def _model_inputs(batch: Mapping[str, Tensor], device: torch.device, labels: bool) -> dict[str, Tensor]:
    keys = MODEL_INPUTS + (("labels",) if labels else ())
    return {k: batch[k].to(device) for k in keys if k in batch}


@contextmanager
def _hooks(handles: list):
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _token_mean(x: Tensor, mask: Tensor, fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Sum of ``fn(x)`` over real tokens and their count. x: (B, T, C), mask: (B, T) → (C,), ()."""
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (fn(x.float()) * m).sum((0, 1)), m.sum()


@torch.no_grad()
def activation_importance(model: PreTrainedModel, batches: Iterable[Mapping[str, Tensor]]) -> Importance:
    """Activation-based scores (see the module docstring) averaged over the real tokens of ``batches``.

    ``batches``: dicts with ``input_ids`` / ``attention_mask`` (B, T) int64 (``token_type_ids`` optional).
    """
    base, cfg = _encoder(model), model.config
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = cfg.hidden_size // n_heads
    sums: dict[str, Tensor] = {}
    state: dict[str, Tensor] = {}

    def add(key: str, value: Tensor) -> None:
        sums[key] = sums.get(key, 0) + value

    def record(key: str, fn: Callable[[Tensor], Tensor], take: str = "out") -> Callable:
        def hook(_module, args, out):
            x = out if take == "out" else args[0]
            total, count = _token_mean(x, state["mask"], fn)
            add(key, total)
            add(key + ".n", count)
        return hook

    handles = []
    for i, layer in enumerate(base.encoder.layer):
        att = layer.attention
        handles += [
            att.self.query.register_forward_hook(record(f"q{i}", torch.square)),
            att.self.key.register_forward_hook(record(f"k{i}", torch.square)),
            att.output.dense.register_forward_hook(record(f"ctx{i}", torch.square, take="in")),
            att.output.dense.register_forward_hook(record(
                f"head{i}", lambda x: x.unflatten(-1, (n_heads, head_dim)).norm(dim=-1), take="in")),
            layer.intermediate.register_forward_hook(record(f"ffn{i}", torch.abs)),
        ]

        def block_importance(_module, args, out, i=i):
            cos = nn.functional.cosine_similarity(args[0].float(), out.float(), dim=-1)  # (B, T)
            total, count = _token_mean((1 - cos).unsqueeze(-1), state["mask"], lambda x: x)
            add(f"bi{i}", total)
            add(f"bi{i}.n", count)
        handles.append(layer.register_forward_hook(block_importance))
    handles += [ln.register_forward_hook(record(f"ln{j}", torch.abs)) for j, ln in enumerate(_layer_norms(base))]
    pooler = getattr(base, "pooler", None)
    if pooler is not None:
        def pooled(_module, _args, out):
            add("pool", out.float().abs().sum(0))
            add("pool.n", torch.tensor(float(out.shape[0])))
        handles.append(pooler.register_forward_hook(pooled))

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seen = 0
    with _hooks(handles):
        for batch in batches:
            inputs = _model_inputs(batch, device, labels=False)
            state["mask"] = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
            model(**inputs)
            seen += 1
    model.train(was_training)
    if not seen:
        raise ConfigError("student.cut.calibration_batches: no calibration batches were given; at least one is needed.")

    def mean(key: str) -> Tensor:
        return sums[key] / sums[key + ".n"]

    qk = torch.stack([(mean(f"q{i}").sqrt() * mean(f"k{i}").sqrt()).view(n_heads, head_dim) for i in range(n_layers)])
    hidden = sum(mean(f"ln{j}") for j in range(1 + 2 * n_layers))
    pool = mean("pool") if pooler is not None else hidden.clone()
    return Importance(
        layers=torch.stack([mean(f"bi{i}").squeeze(0) for i in range(n_layers)]),
        heads=torch.stack([mean(f"head{i}") for i in range(n_layers)]),
        qk_dims=qk,
        v_dims=torch.stack([mean(f"ctx{i}").sqrt().view(n_heads, head_dim) for i in range(n_layers)]),
        neurons=torch.stack([mean(f"ffn{i}") for i in range(n_layers)]),
        hidden=hidden,
        pooler=pool * _classifier_use(model, pool.numel()),
    )


def _classifier_use(model: PreTrainedModel, width: int) -> Tensor:
    """Column norms of the classification head's first linear layer: how much it reads each pooled unit. (D,)"""
    head = getattr(model, "classifier", None)
    weight = getattr(head, "weight", None)
    if weight is None or weight.shape[-1] != width:
        return torch.ones(width)
    return weight.detach().float().norm(dim=0).cpu()


def taylor_importance(model: PreTrainedModel, batches: Iterable[Mapping[str, Tensor]]) -> Importance:
    """First-order Taylor scores ``|d loss / d gate|`` summed over ``batches`` (which must carry ``labels``).

    A gate of ones multiplies each unit's output: the per-column context (heads and value dims), the
    query and key columns, the FFN activations, the residual stream after every LayerNorm (one shared gate),
    each layer's update ``out - in`` and the pooled output. Weights get no gradients and are not changed.
    """
    base, cfg = _encoder(model), model.config
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim, width = cfg.hidden_size // n_heads, cfg.hidden_size
    device = next(model.parameters()).device

    def gate(*shape: int) -> Tensor:
        return torch.ones(*shape, device=device, requires_grad=True)

    gates = {"ctx": gate(n_layers, width), "q": gate(n_layers, width), "k": gate(n_layers, width),
             "ffn": gate(n_layers, cfg.intermediate_size), "hidden": gate(width), "layer": gate(n_layers),
             "pool": gate(width)}
    scores = {name: torch.zeros_like(g) for name, g in gates.items()}
    heads = torch.zeros(n_layers, n_heads, device=device)

    def scale_out(g: Callable[[], Tensor]) -> Callable:
        return lambda _m, _a, out: out * g()

    handles = []
    for i, layer in enumerate(base.encoder.layer):
        att = layer.attention
        handles += [
            att.self.query.register_forward_hook(scale_out(lambda i=i: gates["q"][i])),
            att.self.key.register_forward_hook(scale_out(lambda i=i: gates["k"][i])),
            att.output.dense.register_forward_pre_hook(lambda _m, args, i=i: (args[0] * gates["ctx"][i],)),
            layer.intermediate.register_forward_hook(scale_out(lambda i=i: gates["ffn"][i])),
            layer.register_forward_hook(lambda _m, args, out, i=i: args[0] + gates["layer"][i] * (out - args[0])),
        ]
    handles += [ln.register_forward_hook(scale_out(lambda: gates["hidden"])) for ln in _layer_norms(base)]
    if getattr(base, "pooler", None) is not None:
        handles.append(base.pooler.register_forward_hook(scale_out(lambda: gates["pool"])))

    was_training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    seen = 0
    try:
        with _hooks(handles):
            for batch in batches:
                if "labels" not in batch:
                    raise ConfigError("student.cut.importance=taylor needs labelled calibration batches.")
                loss = model(**_model_inputs(batch, device, labels=True)).loss
                grads = torch.autograd.grad(loss, list(gates.values()))
                for (name, _), grad in zip(gates.items(), grads, strict=True):
                    scores[name] += grad.abs()
                heads += grads[0].view(n_layers, n_heads, head_dim).sum(-1).abs()  # a head's gate = its columns'
                seen += 1
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    if not seen:
        raise ConfigError("student.cut.calibration_batches: no calibration batches were given; at least one is needed.")
    shape = (n_layers, n_heads, head_dim)
    return Importance(
        layers=scores["layer"].cpu(), heads=heads.cpu(),
        qk_dims=(scores["q"] + scores["k"]).view(shape).cpu(), v_dims=scores["ctx"].view(shape).cpu(),
        neurons=scores["ffn"].cpu(), hidden=scores["hidden"].cpu(), pooler=scores["pool"].cpu(),
    )


ESTIMATORS = {"activation": activation_importance, "taylor": taylor_importance}


def estimate_importance(model: PreTrainedModel, batches: Iterable[Mapping[str, Tensor]],
                        method: str = "activation") -> Importance:
    """Scores of every unit of ``model`` on ``batches`` with the estimator ``method`` (``activation``/``taylor``)."""
    if method not in ESTIMATORS:
        raise ConfigError(f"student.cut.importance={method!r} is not one of {', '.join(IMPORTANCES)}.")
    return ESTIMATORS[method](model, batches)
