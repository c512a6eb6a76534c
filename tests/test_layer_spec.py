"""The layer-spec grammar, checked by example and by property (hypothesis)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmprobe_jax.layers import EMBEDDINGS, LayerSpec, parse_layers

n_layers_st = st.integers(min_value=1, max_value=200)


@pytest.mark.parametrize(
    "spec, expected",
    [
        (16, LayerSpec("fixed", [16])),
        (-1, LayerSpec("fixed", [29])),
        (0.5, LayerSpec("fixed", [14])),
        ([14, 15, 0.9], LayerSpec("fixed", [14, 15, 26])),
        ("middle", LayerSpec("fixed", list(range(10, 20)))),
        ("last", LayerSpec("fixed", [29])),
        ("all", LayerSpec("fixed", list(range(30)))),
        ("auto", LayerSpec("auto", [7, 14, 21])),
        ("fast_auto", LayerSpec("fast_auto", list(range(30)))),
        ("sweep", LayerSpec("sweep", list(range(30)))),
        ("sweep:10", LayerSpec("sweep", [0, 10, 20])),
        ("sweep:25-29", LayerSpec("sweep", [25, 26, 27, 28, 29])),
        ("14-16", LayerSpec("fixed", [14, 15, 16])),
        ("10,15,20", LayerSpec("fixed", [10, 15, 20])),
        ("10, 15", LayerSpec("fixed", [10, 15])),
        ("-1", LayerSpec("fixed", [29])),
    ],
)
def test_documented_specs(spec, expected):
    assert parse_layers(spec, 30) == expected


def test_auto_candidates():
    assert parse_layers("auto", 30, auto_candidates=[10, 0.5, -1]) == LayerSpec("auto", [10, 14, 29])
    assert parse_layers("fast_auto", 30, auto_candidates=[3, 4]) == LayerSpec("fast_auto", [3, 4])


@pytest.mark.parametrize(
    "spec, match",
    [
        ("middel", "Unknown layer spec"),
        ("sweep:0", "at least 1"),
        ("sweep:5-2", "empty"),
        ("sweep:30-31", "out of range"),
        (30, "out of range"),
        (-31, "out of range"),
        (1.5, r"\[0, 1\]"),
        ([], "empty"),
        (True, "Unknown layer spec"),
        (None, "Unknown layer spec"),
        ("1,x", "Unknown layer spec"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_layers(spec, 30)


@given(n_layers_st, st.data())
def test_every_int_spelling_agrees(n_layers, data):
    i = data.draw(st.integers(-n_layers, n_layers - 1))
    want = LayerSpec("fixed", [i % n_layers])
    assert parse_layers(i, n_layers) == parse_layers(str(i), n_layers) == parse_layers([i], n_layers) == want


@given(n_layers_st, st.data())
def test_ranges_are_inclusive_and_in_bounds(n_layers, data):
    a = data.draw(st.integers(0, n_layers - 1))
    b = data.draw(st.integers(a, n_layers - 1))
    sweep = parse_layers(f"sweep:{a}-{b}", n_layers)
    assert sweep == LayerSpec("sweep", list(range(a, b + 1)))
    assert parse_layers(f"{a}-{b}", n_layers) == LayerSpec("fixed", sweep.layers)


@given(n_layers_st, st.integers(1, 300))
def test_sweep_step(n_layers, step):
    spec = parse_layers(f"sweep:{step}", n_layers)
    assert spec.layers[0] == 0 and len(spec.layers) == math.ceil(n_layers / step)
    assert all(b - a == step for a, b in zip(spec.layers, spec.layers[1:], strict=False))


@given(n_layers_st)
def test_named_specs_cover_the_model(n_layers):
    middle = parse_layers("middle", n_layers).layers
    assert middle == list(range(n_layers // 3, n_layers - n_layers // 3)) and middle
    assert parse_layers("all", n_layers).layers == list(range(n_layers))
    assert parse_layers("last", n_layers).layers == [n_layers - 1]


@given(n_layers_st, st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_fractions_land_in_range_without_duplicates(n_layers, fractions):
    layers = parse_layers(fractions, n_layers).layers
    assert all(0 <= i < n_layers for i in layers) and len(set(layers)) == len(layers)
    assert layers[0] == int(fractions[0] * (n_layers - 1))


@given(n_layers_st, st.text(max_size=12))
def test_arbitrary_text_parses_or_raises_value_error(n_layers, text):
    try:
        spec = parse_layers(text, n_layers)
    except ValueError:
        return
    assert spec.mode in ("fixed", "auto", "fast_auto", "sweep") and spec.layers
    assert all(i == EMBEDDINGS or 0 <= i < n_layers for i in spec.layers)
