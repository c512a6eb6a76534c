"""The layer-spec grammar: lmprobe's ``layers=`` values, plus Wisent's command-line syntax.

==================== ===================================================================== ============
spec                 layers (for a model with ``L`` decoder blocks)                         mode
==================== ===================================================================== ============
``16``, ``-1``       that block (negatives count from the end)                              ``fixed``
``0.5`` (a float)    the block at that fraction of the depth, ``int(f * (L - 1))``          ``fixed``
``[14, 15, 0.9]``    those blocks, in the given order, concatenated into one probe          ``fixed``
``"middle"``         ``range(L // 3, L - L // 3)``, concatenated                            ``fixed``
``"last"``           ``[L - 1]``                                                            ``fixed``
``"all"``            every block, concatenated                                              ``fixed``
``"auto"``           group-lasso selection among candidates (``auto_candidates``)          ``auto``
``"fast_auto"``      importance-based selection among candidates (default: every block)   ``fast_auto``
``"sweep"``          one independent probe per block                                        ``sweep``
``"sweep:N"``        every N-th block, ``range(0, L, N)``                                   ``sweep``
``"sweep:A-B"``      blocks A..B inclusive                                                  ``sweep``
``"14-16"``          blocks 14..16 inclusive (Wisent)                                       ``fixed``
``"10,15,20"``       those blocks (Wisent)                                                  ``fixed``
``"16"``, ``"-1"``   that block (Wisent)                                                    ``fixed``
``"embeddings"``     the stream entering block 0 (also inside a list: ``["embeddings", 3]``) ``fixed``
==================== ===================================================================== ============

``"sweep:A-B"`` clips ``B`` to the last block, as lmprobe does (``"sweep:0-40"`` on a 30-block model
sweeps 0..29); every other out-of-range index is an error.

A :class:`LayerSpec` is also accepted (and checked against the model). Block ``i`` is the residual stream leaving decoder block ``i`` (see :mod:`lmprobe_jax_store`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from lmprobe_jax_store import EMBEDDINGS, normalise_layer

from .functional._selection import resolve_candidates

MODES = ("fixed", "auto", "fast_auto", "sweep")


class LayerSpec(NamedTuple):
    """A parsed layer spec: ``mode`` (one of :data:`MODES`) and the block indices it names -- the layers
    of the probe (``fixed``), the candidates (``auto`` / ``fast_auto``) or the swept layers (``sweep``)."""

    mode: str
    layers: list[int | str]


_HELP = (
    "use an int (negatives from the end), a fraction in [0, 1], a list of those, 'middle', 'last', "
    "'all', 'auto', 'fast_auto', 'sweep', 'sweep:N', 'sweep:A-B', 'A-B' or 'a,b,c'"
)
_INT = r"-?\d+"


def _index(value: int, n_layers: int, spec: Any) -> int:
    try:
        return normalise_layer(value, n_layers, allow_embeddings=False)
    except ValueError as err:
        raise ValueError(f"{err} (in layer spec {spec!r})") from None


def _range(a: int, b: int, n_layers: int, spec: Any) -> list[int]:
    start, stop = _index(a, n_layers, spec), _index(b, n_layers, spec)
    if start > stop:
        raise ValueError(f"Layer range {spec!r} is empty: its start {a} comes after its end {b}.")
    return list(range(start, stop + 1))


def parse_layers(
    spec: Any, n_layers: int, *, auto_candidates: Sequence[int | float] | None = None
) -> LayerSpec:
    """Resolve a layer spec (table above) for a model with ``n_layers`` blocks; raises ValueError."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive int, not {n_layers!r}.")
    if isinstance(spec, LayerSpec):  # already parsed: check it against this model
        if spec.mode not in MODES or not spec.layers:
            raise ValueError(f"Bad LayerSpec {spec!r}: mode must be one of {MODES}, layers non-empty.")
        return LayerSpec(spec.mode, [_index(int(i), n_layers, spec) for i in spec.layers])
    if isinstance(spec, str):
        text = spec.strip()
        named = {
            "all": list(range(n_layers)),
            "last": [n_layers - 1],
            "middle": list(range(n_layers // 3, n_layers - n_layers // 3)),
        }
        if text in named:
            return LayerSpec("fixed", named[text])
        if text == EMBEDDINGS:
            return LayerSpec("fixed", [EMBEDDINGS])
        if text == "auto":
            return LayerSpec("auto", resolve_candidates(auto_candidates, n_layers))
        if text == "fast_auto":
            candidates = list(range(n_layers)) if auto_candidates is None else auto_candidates
            return LayerSpec("fast_auto", resolve_candidates(candidates, n_layers))
        if text == "sweep":
            return LayerSpec("sweep", list(range(n_layers)))
        if match := re.fullmatch(r"sweep:(\d+)", text):
            step = int(match[1])
            if step < 1:
                raise ValueError(f"{spec!r}: the sweep step must be at least 1.")
            return LayerSpec("sweep", list(range(0, n_layers, step)))
        if match := re.fullmatch(rf"sweep:({_INT})-({_INT})", text):
            end = int(match[2])
            end = min(end, n_layers - 1) if end >= 0 else end
            return LayerSpec("sweep", _range(int(match[1]), end, n_layers, spec))
        if match := re.fullmatch(rf"({_INT})-({_INT})", text):
            return LayerSpec("fixed", _range(int(match[1]), int(match[2]), n_layers, spec))
        if re.fullmatch(rf"{_INT}(\s*,\s*{_INT})*", text):
            return LayerSpec("fixed", resolve_candidates([int(part) for part in text.split(",")], n_layers))
        raise ValueError(f"Unknown layer spec {spec!r}: {_HELP}.")
    if isinstance(spec, bool) or spec is None:
        raise ValueError(f"Unknown layer spec {spec!r}: {_HELP}.")
    items = list(spec) if isinstance(spec, (list, tuple, range)) else [spec]
    if not items:
        raise ValueError(f"Layer spec {spec!r} is empty: name at least one layer.")
    blocks = [item for item in items if not (isinstance(item, str) and item == EMBEDDINGS)]
    try:
        resolved = resolve_candidates(blocks, n_layers) if blocks else []
    except ValueError as err:
        raise ValueError(f"Bad layer spec {spec!r}: {err}") from None
    return LayerSpec("fixed", ([EMBEDDINGS] if len(blocks) < len(items) else []) + resolved)


def check_layer_spec(spec: Any) -> None:
    """Check a spec's syntax before the model's depth is known (ranges are checked against it later);
    raises the ValueError :func:`parse_layers` would."""
    if isinstance(spec, str):
        try:
            parse_layers(spec, 1 << 20)
        except ValueError as err:
            if "Unknown layer spec" in str(err) or "at least 1" in str(err) or "is empty" in str(err):
                raise
    elif isinstance(spec, bool) or spec is None:
        parse_layers(spec, 1)
