"""Which student layer is matched to which teacher layer by intermediate-layer losses.

Layers are numbered like Hugging Face's ``hidden_states``: ``0`` is the embedding output and ``l``
(1..L) the output of transformer layer ``l``. Attention-based terms use layers 1..L only (layer ``l``
is ``attentions[l - 1]``). A map is given as a small config::

    layer_map: {strategy: uniform}                 # TinyBERT: student m ↔ teacher ceil(m·L_t/L_s)
    layer_map: {strategy: last_k, k: 2}            # the last k layers, aligned from the top
    layer_map: {strategy: explicit, pairs: [[2, 6], [4, 12]]}

or as the bare strategy name (``uniform``, ``last_k`` with k = 1). ``uniform`` is TinyBERT's
``g(m) = m·k`` with ``k = L_t / L_s`` when that divides; otherwise it rounds up, so the last student
layer always meets the last teacher layer (4 → 6 layers: 1↔2, 2↔3, 3↔5, 4↔6). Embeddings (0 ↔ 0)
are added by the hidden-state terms themselves (``include_embeddings``), not by the map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from distill.errors import ConfigError

STRATEGIES = ("uniform", "last_k", "explicit")


def _int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be a whole number.")
    return value


@dataclass(frozen=True)
class LayerMap:
    """A layer-matching strategy, resolved against the two models' depths by :meth:`resolve`."""

    strategy: str = "uniform"
    k: int | None = None
    pairs: tuple[tuple[int, int], ...] | None = None
    key: str = "layer_map"

    def __post_init__(self) -> None:
        key = self.key
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"{key}.strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}.")
        if self.k is not None and self.strategy != "last_k":
            raise ConfigError(f"{key}.k applies only to strategy last_k, not {self.strategy}.")
        if self.pairs is not None and self.strategy != "explicit":
            raise ConfigError(f"{key}.pairs applies only to strategy explicit, not {self.strategy}.")
        if self.k is not None and _int(self.k, f"{key}.k") < 1:
            raise ConfigError(f"{key}.k={self.k} must be ≥ 1.")
        if self.strategy == "explicit":
            if self.pairs is None or isinstance(self.pairs, (str, bytes)) or len(self.pairs) == 0:
                raise ConfigError(f"{key}.pairs must be a non-empty list of [student, teacher] layer pairs.")
            pairs = []
            for i, pair in enumerate(self.pairs):
                if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                    raise ConfigError(
                        f"{key}.pairs[{i}]={pair!r} must be a [student, teacher] pair of layers."
                    )
                pairs.append((_int(pair[0], f"{key}.pairs[{i}][0]"), _int(pair[1], f"{key}.pairs[{i}][1]")))
            object.__setattr__(self, "pairs", tuple(pairs))

    def resolve(self, student_layers: int, teacher_layers: int, min_layer: int = 0) -> list[tuple[int, int]]:
        """``[(student_layer, teacher_layer), ...]`` for models of these depths; ConfigError if out of range.

        ``min_layer=1`` forbids the embedding layer 0 (attention terms).
        """
        key, ls, lt = self.key, student_layers, teacher_layers
        if self.strategy == "uniform":
            return [(m, math.ceil(m * lt / ls)) for m in range(1, ls + 1)]
        if self.strategy == "last_k":
            k = 1 if self.k is None else self.k
            if k > min(ls, lt):
                raise ConfigError(
                    f"{key}.k={k} is outside the allowed range 1..{min(ls, lt)} (the shallower model's depth)."
                )
            return [(ls - k + i, lt - k + i) for i in range(1, k + 1)]
        for i, (s, t) in enumerate(self.pairs):
            if not min_layer <= s <= ls:
                raise ConfigError(
                    f"{key}.pairs[{i}] names student layer {s}, outside the allowed range {min_layer}..{ls}."
                )
            if not min_layer <= t <= lt:
                raise ConfigError(
                    f"{key}.pairs[{i}] names teacher layer {t}, outside the allowed range {min_layer}..{lt}."
                )
        return list(self.pairs)


def as_layer_map(value, key: str = "layer_map") -> LayerMap:
    """Build a :class:`LayerMap` from a LayerMap, a strategy name, a mapping/DictConfig, or None (uniform)."""
    if isinstance(value, LayerMap):
        return value
    if value is None:
        return LayerMap(key=key)
    if isinstance(value, str):
        return LayerMap(strategy=value, key=key)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"strategy", "k", "pairs"})
        if unknown:
            raise ConfigError(f"{key} has unknown keys {unknown}; allowed are strategy, k, pairs.")
        pairs = value.get("pairs")
        if pairs is not None and not isinstance(pairs, (str, bytes)):
            pairs = tuple(
                tuple(p) if isinstance(p, Sequence) and not isinstance(p, str) else p for p in pairs
            )
        return LayerMap(strategy=value.get("strategy", "uniform"), k=value.get("k"), pairs=pairs, key=key)
    raise ConfigError(f"{key}={value!r} must be a strategy name or a mapping with strategy, k, pairs.")
