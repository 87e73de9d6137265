"""Forward hooks that capture the query/key/value projections of a BERT-style model's self-attention.

Hugging Face models return attention *probabilities* at best, never pre-softmax scores or values,
and only with ``attn_implementation="eager"``. Terms that need Q/K/V (``requires`` contains
``"qkv"``) hook the projection ``nn.Linear`` layers instead, which run under every attention
implementation (eager, sdpa, flash), and recompute what they need in float32.

Self-attention blocks are found structurally, in forward order: modules with ``query``/``key``/``value``
linear children (BERT, RoBERTa, ELECTRA, MiniLM, XLM-R) or ``q_lin``/``k_lin``/``v_lin`` (DistilBERT);
cross-attention blocks are skipped. Layer numbers are 1-based like ``hidden_states`` (layer ``l`` is
the ``l``-th block).

Protocol for the training module (see :class:`HookedTerm`): call ``term.attach(student_model,
teacher_model)`` once after both models are built and before the first forward, for every term that
has an ``attach`` method; call ``term.detach()`` at teardown. Each forward of a model then stores the
projections of the hooked layers; the term reads (and releases) them when it is called on that step's
outputs. Teacher outputs precomputed offline bypass the hooks and cannot feed these terms.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from distill.errors import ConfigError

_NAMES = {"query": ("query", "q_lin"), "key": ("key", "k_lin"), "value": ("value", "v_lin")}


def self_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention blocks of ``model`` in forward order (those with Q/K/V ``nn.Linear`` children)."""
    found = []
    for _, module in model.named_modules():
        if "cross" in type(module).__name__.lower():
            continue
        for q, k, v in zip(*_NAMES.values(), strict=True):
            if all(isinstance(getattr(module, n, None), nn.Linear) for n in (q, k, v)):
                found.append(module)
                break
    return found


def _heads(module: nn.Module) -> int:
    heads = getattr(module, "num_attention_heads", None) or getattr(module, "n_heads", None)
    if not isinstance(heads, int):
        raise ConfigError(
            f"{type(module).__name__} has no num_attention_heads; cannot split Q/K/V into heads."
        )
    return heads


def _projection(module: nn.Module, name: str) -> nn.Linear:
    for attr in _NAMES[name]:
        if isinstance(getattr(module, attr, None), nn.Linear):
            return getattr(module, attr)
    raise ConfigError(f"{type(module).__name__} has no {name} projection.")


class ProjectionCapture:
    """Hooks on the ``names`` projections (query/key/value) of the given 1-based ``layers`` of ``model``.

    After each forward, ``self.get(layer, name)`` is that projection's output (B, T, heads·head_dim),
    ``self.heads[layer]`` the block's head count and ``self.scaling[layer]`` its score scale (1/√d).
    Call :meth:`remove` (or use :func:`capture_projections`) to unhook.
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[int], names: Sequence[str], key: str = "model"
    ) -> None:
        blocks = self_attention_modules(model)
        if not blocks:
            raise ConfigError(
                f"{key} ({type(model).__name__}) has no BERT-style self-attention with Q/K/V projections."
            )
        unknown = sorted(set(names) - set(_NAMES))
        if unknown:
            raise ConfigError(f"Projection names {unknown} are not among query, key, value.")
        self.outputs: dict[tuple[int, str], torch.Tensor] = {}
        self.heads: dict[int, int] = {}
        self.scaling: dict[int, float] = {}
        self.widths: dict[tuple[int, str], int] = {}
        self.depth = len(blocks)
        self._handles = []
        for layer in sorted(set(layers)):
            if not 1 <= layer <= len(blocks):
                raise ConfigError(f"{key} layer {layer} is outside the allowed range 1..{len(blocks)}.")
            block = blocks[layer - 1]
            self.heads[layer] = _heads(block)
            head_dim = _projection(block, "query").out_features // self.heads[layer]
            self.scaling[layer] = float(getattr(block, "scaling", head_dim**-0.5))
            for name in names:
                self.widths[(layer, name)] = _projection(block, name).out_features
                hook = self._hook(layer, name)
                self._handles.append(_projection(block, name).register_forward_hook(hook))

    def _hook(self, layer: int, name: str):
        def store(module, inputs, output):
            self.outputs[(layer, name)] = output  # (B, T, heads·head_dim)

        return store

    def get(self, layer: int, name: str, pop: bool = True) -> torch.Tensor | None:
        return self.outputs.pop((layer, name), None) if pop else self.outputs.get((layer, name))

    def keys(self) -> list[tuple[int, str]]:
        """The hooked ``(layer, projection)`` pairs."""
        return sorted(self.widths)

    def put(self, layer: int, name: str, output: torch.Tensor) -> None:
        """Store ``output`` as if the hooked projection had produced it (teacher outputs replayed from a cache)."""
        self.outputs[(layer, name)] = output

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()


@contextmanager
def capture_projections(
    model: nn.Module, layers: Sequence[int], names: Sequence[str] = ("query", "key", "value")
) -> Iterator[ProjectionCapture]:
    """Context manager: hook ``names`` projections of ``layers`` (1-based) while inside the block."""
    cap = ProjectionCapture(model, layers, names)
    try:
        yield cap
    finally:
        cap.remove()


def capture_values(model: nn.Module, layers: Sequence[int]):
    """Context manager capturing the ``value`` projection outputs of ``layers`` (MiniLM's value relation)."""
    return capture_projections(model, layers, ("value",))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads·d) -> (B, heads, T, d)."""
    b, t, width = x.shape
    if width % heads:
        raise ConfigError(f"A projection of width {width} cannot be split into {heads} heads.")
    return x.view(b, t, heads, width // heads).transpose(1, 2)  # (B, heads, T, d)


class HookedTerm(nn.Module):
    """Base for terms that read captured projections: ``attach``/``detach`` and a checked ``captured``.

    Subclasses set ``_names`` (projections to hook) and implement ``_layers(student_depth,
    teacher_depth) -> (student_layers, teacher_layers)``. Captures are plain attributes, not
    submodules, so the models are never registered inside the loss (no duplicate parameters).
    """

    _names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._captures: dict[str, ProjectionCapture] = {}

    def attach(self, student_model: nn.Module, teacher_model: nn.Module) -> None:
        """Hook the student's and teacher's projections needed by this term (idempotent: re-attach replaces)."""
        self.detach()
        s_depth = len(self_attention_modules(student_model))
        t_depth = len(self_attention_modules(teacher_model))
        for side, model, depth in (("student", student_model, s_depth), ("teacher", teacher_model, t_depth)):
            layers = getattr(getattr(model, "config", None), "num_hidden_layers", depth)
            if depth < layers:  # hooks see modules, not calls: one shared block would look like one layer
                raise ConfigError(
                    f"{type(self).__name__} reads each layer's attention through hooks, but the {side} runs one shared "
                    f"attention block for its {layers} layers (ALBERT's cross-layer sharing); use "
                    f"{side}.share_layers=false, or hidden-state terms only."
                )
        s_layers, t_layers = self._layers(s_depth, t_depth)
        name = type(self).__name__
        self._captures = {
            "student": ProjectionCapture(student_model, s_layers, self._names, key=f"{name} student"),
            "teacher": ProjectionCapture(teacher_model, t_layers, self._names, key=f"{name} teacher"),
        }

    def detach(self) -> None:
        """Remove the hooks and drop any captured tensors."""
        for cap in self._captures.values():
            cap.remove()
        self._captures = {}

    def _layers(self, student_depth: int, teacher_depth: int) -> tuple[list[int], list[int]]:
        raise NotImplementedError

    def captured(
        self, side: str, layer: int, name: str, shape: tuple[int, int]
    ) -> tuple[torch.Tensor, int, float]:
        """The captured (B, T, width) projection of ``side``'s ``layer``, its head count and score scaling."""
        cap = self._captures.get(side)
        if cap is None:
            raise RuntimeError(
                f"{type(self).__name__} needs term.attach(student_model, teacher_model) before its first forward."
            )
        out = cap.get(layer, name, pop=False)
        if out is None:
            raise RuntimeError(
                f"{type(self).__name__} found no captured {name} for {side} layer {layer}: run the {side} "
                "model forward (not precomputed outputs) before the loss."
            )
        if tuple(out.shape[:2]) != tuple(shape):
            raise RuntimeError(
                f"{type(self).__name__}: captured {side} {name} has shape {tuple(out.shape)}, but the batch is "
                f"{tuple(shape)}; the {side} ran on another batch since."
            )
        return out, cap.heads[layer], cap.scaling[layer]

    def release(self) -> None:
        """Drop this step's captured tensors (called at the end of the term's forward)."""
        for cap in self._captures.values():
            cap.clear()

    @property
    def teacher_capture(self) -> ProjectionCapture | None:
        """The teacher side's hooks (None before :meth:`attach`): a teacher-output cache records and refills them."""
        return self._captures.get("teacher")

    def depths(self) -> tuple[int, int] | None:
        """(student, teacher) depths seen at :meth:`attach`, or None when not attached."""
        if not self._captures:
            return None
        return self._captures["student"].depth, self._captures["teacher"].depth

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_captures"] = {}  # hooks do not survive copying or pickling; re-attach
        return state
