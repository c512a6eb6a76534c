"""``fixed`` layers (an int, a list, ``"middle"``, ``"all"``, ...): one probe on the concatenation of
the layers' activations -- a single layer is the one-block case. Also the last step of every other mode."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...profiling import current, profile_section
from .._features import build_features, fit_features, layer_blocks


def fit_blocks(probe: Any, X: np.ndarray, y: np.ndarray, layers: list[int], sw: np.ndarray | None) -> None:
    """Fit ``probe``'s feature pipeline and classifier on ``X`` ``(len(layers), N, D)``; sets
    ``layers_``, ``features_``, ``scaler_`` and ``classifier_``."""
    probe.layers_ = list(layers)
    pipeline = build_features(
        len(layers),
        normalize_layers=probe.normalize_layers,
        preprocessing=probe.preprocessing,
        pca_components=probe.pca_components,
        mass_mean_augment=probe.mass_mean_augment,
        random_state=probe.random_state,
    )
    acc = current()
    with profile_section(acc, "scale"):
        features = fit_features(pipeline, layer_blocks(X), y, sw)
    probe.features_ = pipeline
    probe.scaler_ = pipeline.named_steps.get("scale")
    probe.classifier_ = probe._new_classifier()
    with profile_section(acc, "fit"):
        probe.classifier_.fit(features, y, **({} if sw is None else {"sample_weight": sw}))


class Fixed:
    """One probe on the named layers, concatenated."""

    name = "fixed"

    def fit(self, probe: Any, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None, layers: list[int]) -> None:
        fit_blocks(probe, X, y, layers, sw)
