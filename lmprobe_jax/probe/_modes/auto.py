"""``"auto"``: group-lasso layer selection among the candidates, then a probe on the kept layers.

The group lasso (one group per layer, :class:`lmprobe_jax.sklearn.GroupLassoProbe` at ``auto_alpha``)
runs on the per-layer standardised candidates; the classifier is then fitted on the layers it kept.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ...sklearn import GroupLassoProbe
from .._features import layer_blocks, layer_scaler
from .fixed import fit_blocks


def scaled_blocks(probe: Any, X: np.ndarray) -> np.ndarray:
    """``X`` ``(L, N, D)`` standardised as the probe's ``normalize_layers`` says (unchanged if False)."""
    strategy = probe._get_scaling_strategy()
    if strategy is None:
        return X
    flat = layer_scaler(X.shape[0], strategy).fit_transform(layer_blocks(X))
    return flat.reshape(X.shape[1], X.shape[0], -1).transpose(1, 0, 2)


class Auto:
    name = "auto"

    def fit(self, probe: Any, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None, layers: list[int]) -> None:
        selector = GroupLassoProbe(alpha=probe.auto_alpha).fit(scaled_blocks(probe, X), y, sample_weight=sw)
        kept = [layer for layer, on in zip(layers, selector.layers_kept_, strict=True) if on]
        if not kept:
            warnings.warn(
                f"Group lasso at auto_alpha={probe.auto_alpha} kept no layer; keeping every candidate. "
                "Lower auto_alpha to select.",
                stacklevel=4,
            )
            kept = list(layers)
        probe.selected_layers_ = kept
        fit_blocks(probe, X[[layers.index(k) for k in kept]], y, kept, sw)
