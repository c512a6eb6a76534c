"""The model's readout in a store: final norm + unembedding, so any stream can be turned into the model's
logits without torch (and without ever storing logits: 197 KB per token per layer for a 49k vocabulary).

Stored once per store, beside the token-level streams:

* ``readout.safetensors`` -- tensors ``norm.weight`` ``(D,)``, ``norm.bias`` ``(D,)`` (LayerNorm with a
  bias only), ``unembed.weight`` ``(V, D)`` and ``unembed.bias`` ``(V,)`` (only when the head has one),
  in the model's parameter dtype (float32 for a norm whose weight was folded, see below);
* ``manifest["readout"]`` -- what the arrays mean (:func:`check_readout_meta` validates it)::

    {"norm": "rms" | "layer", "eps": float, "logit_scale": float, "logit_softcap": float | None,
     "vocab_size": V, "hidden_size": D, "tied": bool, "norm_class": str, "head_class": str,
     "norm_weight_offset": 0.0 | 1.0}

The logits it defines, for a residual stream ``h`` ``(..., D)`` (the stream leaving the last block)::

    n = h - mean(h)                  (layer)       n = h                  (rms)
    u = n / sqrt(mean(n ** 2) + eps) * norm.weight (+ norm.bias)
    z = logit_scale * (u @ unembed.weight.T (+ unembed.bias))
    logits = logit_softcap * tanh(z / logit_softcap)     when logit_softcap is set, else z

Gemma's RMSNorm multiplies by ``1 + weight``: the export folds the 1 into ``norm.weight`` and records
``norm_weight_offset: 1.0`` (informational; the stored weight is the effective one).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

READOUT = "readout.safetensors"
"""Relative path of the readout's arrays in a store."""

NORM_KINDS = ("rms", "layer")
_REQUIRED = ("norm", "eps", "logit_scale", "logit_softcap", "vocab_size", "hidden_size")


def check_readout_meta(meta: Any) -> dict:
    """Validate a readout description (the manifest's ``"readout"`` entry); returns it, or raises
    ValueError naming the bad field (TypeError when it is not a dict)."""
    if not isinstance(meta, dict):
        raise TypeError(f"A readout description is a dict, not {type(meta).__name__}.")
    missing = [key for key in _REQUIRED if key not in meta]
    if missing:
        raise ValueError(f"The readout description lacks {missing}; re-extract the token streams.")
    if meta["norm"] not in NORM_KINDS:
        raise ValueError(f"Unknown readout norm {meta['norm']!r}: expected one of {NORM_KINDS}.")
    eps, scale, cap = meta["eps"], meta["logit_scale"], meta["logit_softcap"]
    if not (isinstance(eps, (int, float)) and eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"The readout's eps must be a finite number >= 0, not {eps!r}.")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale != 0):
        raise ValueError(f"The readout's logit_scale must be a finite non-zero number, not {scale!r}.")
    if cap is not None and not (isinstance(cap, (int, float)) and math.isfinite(cap) and cap > 0):
        raise ValueError(f"The readout's logit_softcap must be None or a positive number, not {cap!r}.")
    return meta


def check_readout_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check that ``arrays`` hold what ``meta`` describes (names and shapes); returns ``arrays``."""
    vocab, hidden = int(meta["vocab_size"]), int(meta["hidden_size"])
    expected = {"norm.weight": (hidden,), "unembed.weight": (vocab, hidden)}
    optional = {"norm.bias": (hidden,), "unembed.bias": (vocab,)}
    unknown = sorted(set(arrays) - set(expected) - set(optional))
    if unknown:
        raise ValueError(f"The readout holds unknown tensors {unknown}.")
    for name, shape in {**expected, **{k: v for k, v in optional.items() if k in arrays}}.items():
        if name not in arrays:
            raise ValueError(f"The readout lacks tensor {name!r}; re-extract the token streams.")
        if tuple(arrays[name].shape) != shape:
            raise ValueError(
                f"The readout's {name} has shape {tuple(arrays[name].shape)}; expected {shape} "
                f"(vocab {vocab}, hidden {hidden})."
            )
    if meta["norm"] == "rms" and "norm.bias" in arrays:
        raise ValueError("An RMS norm has no bias, but the readout holds norm.bias.")
    return arrays


def readout_logits_numpy(meta: dict, arrays: dict[str, np.ndarray], hidden: np.ndarray) -> np.ndarray:
    """The readout's logits for ``hidden`` ``(..., D)`` in float64 numpy: the formula of this module's
    docstring, written out once as the reference the JAX and torch sides are tested against."""
    h = np.asarray(hidden, np.float64)
    if meta["norm"] == "layer":
        h = h - h.mean(-1, keepdims=True)
    u = (
        h
        / np.sqrt((h**2).mean(-1, keepdims=True) + meta["eps"])
        * np.asarray(arrays["norm.weight"], np.float64)
    )
    if "norm.bias" in arrays:
        u = u + np.asarray(arrays["norm.bias"], np.float64)
    z = u @ np.asarray(arrays["unembed.weight"], np.float64).T
    if "unembed.bias" in arrays:
        z = z + np.asarray(arrays["unembed.bias"], np.float64)
    z = meta["logit_scale"] * z
    cap = meta["logit_softcap"]
    return z if cap is None else cap * np.tanh(z / cap)
