"""Layer maps: the three strategies and their one-sentence config errors."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from distill.errors import ConfigError
from distill.layer_map import LayerMap, as_layer_map


def test_uniform_is_tinybert_mapping():
    assert as_layer_map("uniform").resolve(4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    assert as_layer_map(None).resolve(2, 4) == [(1, 2), (2, 4)]
    # not divisible: round up, so the last student layer meets the last teacher layer
    assert as_layer_map("uniform").resolve(4, 6) == [(1, 2), (2, 3), (3, 5), (4, 6)]


def test_last_k_and_explicit():
    assert as_layer_map("last_k").resolve(4, 6) == [(4, 6)]
    assert as_layer_map({"strategy": "last_k", "k": 2}).resolve(4, 6) == [(3, 5), (4, 6)]
    node = OmegaConf.create({"strategy": "explicit", "pairs": [[0, 0], [2, 6]]})  # as Hydra passes it
    assert as_layer_map(node).resolve(4, 6) == [(0, 0), (2, 6)]
    assert as_layer_map(LayerMap("explicit", pairs=((1, 1),))).resolve(1, 1) == [(1, 1)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sideways", "layer_map.strategy='sideways' is not one of uniform, last_k, explicit."),
        (
            {"strategy": "explicit"},
            "layer_map.pairs must be a non-empty list of [student, teacher] layer pairs.",
        ),
        (
            {"strategy": "explicit", "pairs": [[1, 2, 3]]},
            "layer_map.pairs[0]=(1, 2, 3) must be a [student, teacher]",
        ),
        ({"strategy": "explicit", "pairs": [[1, "x"]]}, "layer_map.pairs[0][1]='x' must be a whole number."),
        ({"strategy": "uniform", "k": 2}, "layer_map.k applies only to strategy last_k, not uniform."),
        ({"strategy": "last_k", "k": 0}, "layer_map.k=0 must be ≥ 1."),
        ({"strategy": "last_k", "pairs": [[1, 1]]}, "layer_map.pairs applies only to strategy explicit"),
        ({"strategy": "uniform", "layers": 3}, "layer_map has unknown keys ['layers']"),
        (3, "layer_map=3 must be a strategy name or a mapping"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ConfigError) as err:
        as_layer_map(spec)
    assert message in str(err.value)


def test_out_of_range_names_key_and_allowed_range():
    with pytest.raises(ConfigError) as err:
        as_layer_map({"strategy": "explicit", "pairs": [[1, 1], [5, 6]]}, key="hidden.layer_map").resolve(
            4, 6
        )
    assert (
        str(err.value) == "hidden.layer_map.pairs[1] names student layer 5, outside the allowed range 0..4."
    )
    with pytest.raises(ConfigError, match=r"teacher layer 7, outside the allowed range 0\.\.6"):
        as_layer_map({"strategy": "explicit", "pairs": [[1, 7]]}).resolve(4, 6)
    with pytest.raises(ConfigError, match=r"student layer 0, outside the allowed range 1\.\.4"):
        as_layer_map({"strategy": "explicit", "pairs": [[0, 0]]}).resolve(4, 6, min_layer=1)
    with pytest.raises(ConfigError) as err:
        as_layer_map({"strategy": "last_k", "k": 5}).resolve(4, 6)
    assert "layer_map.k=5 is outside the allowed range 1..4" in str(err.value)
