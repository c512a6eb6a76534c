"""PerLayerScaler (lmprobe's name): per-neuron equals scikit-learn's StandardScaler, per-layer a hand
computation, both with sample weights; inverse, dtypes and errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from lmprobe_jax.exceptions import NotFittedError
from lmprobe_jax.scaling import PerLayerScaler


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = np.hstack([rng.normal(size=(40, 3)), 50 + 7 * rng.normal(size=(40, 3))])  # 2 layers x 3
    return X, rng.uniform(0.1, 3.0, size=40)


def test_per_neuron_is_standard_scaling_with_weights():
    X, w = _data()
    got = PerLayerScaler(2, 3).fit(X, sample_weight=w)
    ref = StandardScaler().fit(X, sample_weight=w)
    np.testing.assert_allclose(got.means_.reshape(-1), ref.mean_, rtol=1e-12)
    np.testing.assert_allclose(got.stds_.reshape(-1), ref.scale_, rtol=1e-10)
    np.testing.assert_allclose(got.transform(X), ref.transform(X), rtol=1e-10, atol=1e-12)


def test_per_layer_shares_one_mean_and_std_per_layer():
    X, w = _data(1)
    scaler = PerLayerScaler(2, strategy="per_layer").fit(X, sample_weight=w)
    for layer in range(2):
        block = X[:, 3 * layer : 3 * layer + 3]
        mean = np.sum(w[:, None] * block) / (3 * w.sum())
        std = np.sqrt(np.sum(w[:, None] * (block - mean) ** 2) / (3 * w.sum()))
        np.testing.assert_allclose([scaler.means_[layer], scaler.stds_[layer]], [mean, std], rtol=1e-12)
    assert scaler.get_layer_stats()["stds"].shape == (2,)
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(X)), X, rtol=1e-12)


def test_dtypes_constants_and_errors():
    X, _ = _data(2)
    X[:, 0] = 4.0  # a constant feature maps to 0, not NaN
    out = PerLayerScaler(2).fit(X.astype(np.float32)).transform(X.astype(np.float32))
    assert out.dtype == np.float32 and np.all(out[:, 0] == 0)
    with pytest.raises(ValueError, match="Expected 8 features"):
        PerLayerScaler(2, 4).fit(X)
    with pytest.raises(ValueError, match="Unknown strategy"):
        PerLayerScaler(2, 3, strategy="per_token")
    with pytest.raises(NotFittedError, match="not been fitted") as err:
        PerLayerScaler(2, 3).transform(X)
    assert isinstance(err.value, RuntimeError)
