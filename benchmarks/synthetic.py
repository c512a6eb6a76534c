"""Synthetic activations with a layer-dependent linear signal, shaped like a real layer sweep.

Features have an anisotropic spectrum (standard deviations falling as ``k ** -0.5`` in a random basis,
as residual-stream activations do), are standardised per layer, and carry a class signal whose
strength grows with depth, so accuracy rises from near chance at layer 0, as in a probing sweep.
"""

from __future__ import annotations

import numpy as np


def make_layers(n_layers: int, n_samples: int, n_features: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(X (L, N, D) float32, y (N,) int)``, labels balanced at random."""
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(n_features)) ** -0.5
    basis = np.linalg.qr(rng.normal(size=(n_features, n_features)))[0]
    y = rng.integers(0, 2, n_samples)
    layers = []
    for layer in range(n_layers):
        z = (rng.normal(size=(n_samples, n_features)) * spectrum) @ basis.T
        strength = 0.06 + 0.6 * layer / max(n_layers - 1, 1)
        z += np.outer((2 * y - 1) * strength, basis[:, layer % n_features])
        layers.append(((z - z.mean(0)) / z.std(0)).astype(np.float32))
    return np.stack(layers), y
