"""``"fast_auto"``: fit on every candidate, rank the layers by the L2 norm of their coefficients, refit
on the ``fast_auto_top_k`` best (default: half the candidates)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .fixed import fit_blocks


class FastAuto:
    name = "fast_auto"

    def fit(self, probe: Any, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None, layers: list[int]) -> None:
        fit_blocks(probe, X, y, layers, sw)
        importance = probe.compute_layer_importance()
        k = probe.fast_auto_top_k or max(1, len(layers) // 2)
        top = sorted(np.argsort(-importance, kind="stable")[:k].tolist())
        probe.selected_layers_ = [layers[i] for i in top]
        fit_blocks(probe, X[top], y, probe.selected_layers_, sw)
        probe.layer_importances_ = importance  # of every candidate, from the first fit
