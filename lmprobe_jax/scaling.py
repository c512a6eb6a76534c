"""Standardisation of concatenated layer activations (lmprobe's ``PerLayerScaler``, same name and
parameters; a scikit-learn transformer).

A probe reading ``L`` layers sees ``(N, L * D)`` features, the layers side by side; their scales can
differ by orders of magnitude from layer to layer. Two strategies:

* ``"per_neuron"``: every feature its own mean and standard deviation (``means_``, ``stds_``
  ``(L, D)``); for one layer this is scikit-learn's StandardScaler.
* ``"per_layer"``: one mean and one standard deviation per layer, over its ``N * D`` values
  (``means_``, ``stds_`` ``(L,)``) -- fewer parameters, steadier when N is small next to D.

With sample weights, means and variances are weighted averages. A standard deviation that is zero
(below ``1e-12`` times the mean's magnitude, i.e. rounding noise of a constant) becomes 1, so a constant
feature maps to 0 instead of NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .exceptions import NotFittedError

STRATEGIES = ("per_neuron", "per_layer")


class PerLayerScaler(TransformerMixin, BaseEstimator):
    """Standardise ``(N, n_layers * hidden_dim)`` features layer by layer (module doc).

    Args:
      n_layers: layers side by side in the features.
      hidden_dim: features per layer; None takes ``n_features / n_layers`` at fit.
      strategy: ``"per_neuron"`` or ``"per_layer"``.

    Attributes after ``fit``: ``means_``, ``stds_`` (``(n_layers, hidden_dim)`` per neuron,
    ``(n_layers,)`` per layer), ``n_features_in_``.
    """

    def __init__(self, n_layers: int = 1, hidden_dim: int | None = None, strategy: str = "per_neuron"):
        if strategy not in STRATEGIES:  # refused here, as lmprobe does
            raise ValueError(f"Unknown strategy: {strategy!r}. Valid options: {STRATEGIES}.")
        self.n_layers = n_layers
        self.hidden_dim = hidden_dim
        self.strategy = strategy

    def _blocks(self, X: Any) -> np.ndarray:
        """``X`` as float64 ``(N, n_layers, hidden_dim)``, or a ValueError saying what was expected."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"Expected a 2-D array (samples, n_layers * hidden_dim); got shape {X.shape}.")
        dim = self.hidden_dim if self.hidden_dim is not None else X.shape[1] // max(self.n_layers, 1)
        if X.shape[1] != self.n_layers * dim or dim == 0:
            raise ValueError(
                f"Expected {self.n_layers * dim} features ({self.n_layers} layers x {dim} hidden_dim), "
                f"got {X.shape[1]}."
            )
        return X.astype(np.float64, copy=False).reshape(len(X), self.n_layers, dim)

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> PerLayerScaler:
        """Means and standard deviations of ``X`` ``(N, n_layers * hidden_dim)``; ``y`` is ignored."""
        del y  # unsupervised; accepted for Pipelines
        blocks = self._blocks(X)
        w = np.ones(len(blocks)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        if self.strategy == "per_neuron":
            mean = np.average(blocks, axis=0, weights=w)
            var = np.average((blocks - mean) ** 2, axis=0, weights=w)
        else:
            mean = np.average(blocks.mean(axis=2), axis=0, weights=w)
            var = np.average(((blocks - mean[:, None]) ** 2).mean(axis=2), axis=0, weights=w)
        std = np.sqrt(var)
        std[std <= 1e-12 * np.maximum(np.abs(mean), 1)] = 1.0
        self.means_, self.stds_, self.n_features_in_ = mean, std, blocks.shape[1] * blocks.shape[2]
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """``(means, stds)`` broadcastable against ``(N, n_layers, hidden_dim)``."""
        if not hasattr(self, "means_"):
            raise NotFittedError("PerLayerScaler has not been fitted: call fit() first.")
        if self.strategy == "per_layer":
            return self.means_[:, None], self.stds_[:, None]
        return self.means_, self.stds_

    def transform(self, X: Any) -> np.ndarray:
        """``(X - mean) / std`` layer by layer, in ``X``'s float dtype (float32 at least)."""
        mean, std = self._fitted()
        out = (self._blocks(X) - mean) / std
        return out.reshape(len(out), -1).astype(np.result_type(np.asarray(X).dtype, np.float32), copy=False)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """``X * std + mean`` layer by layer: the features :meth:`transform` was given."""
        mean, std = self._fitted()
        out = self._blocks(X) * std + mean
        return out.reshape(len(out), -1).astype(np.result_type(np.asarray(X).dtype, np.float32), copy=False)

    def get_layer_stats(self) -> dict[str, np.ndarray]:
        """Per layer: ``"means"``, ``"stds"`` ``(L,)`` (per_layer), or ``"mean_norms"``, ``"std_norms"``
        (L2 norms over the layer's neurons), ``"mean_per_layer"``, ``"std_per_layer"`` (averages)."""
        self._fitted()
        if self.strategy == "per_layer":
            return {"means": self.means_.copy(), "stds": self.stds_.copy()}
        return {
            "mean_norms": np.linalg.norm(self.means_, axis=1),
            "std_norms": np.linalg.norm(self.stds_, axis=1),
            "mean_per_layer": self.means_.mean(axis=1),
            "std_per_layer": self.stds_.mean(axis=1),
        }


__all__ = ["STRATEGIES", "PerLayerScaler"]
