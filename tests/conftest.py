import numpy as np
import pytest


def objective(X, y01, w, b, C, sw=None):
    """scikit-learn's binary logistic objective in float64."""
    sw = np.ones(len(y01)) if sw is None else sw
    m = (2 * y01 - 1) * (X @ w + b)
    return C * np.sum(sw * np.logaddexp(0, -m)) + 0.5 * w @ w


@pytest.fixture
def binary_layers():
    """Three layers of 200 x 8 with a signal in layers 1 and 2, float64 (tests cast as needed)."""
    rng = np.random.default_rng(0)
    L, N, D = 3, 200, 8
    X = rng.normal(size=(L, N, D)) * np.linspace(0.3, 2.0, D)
    y = (X[1] @ rng.normal(size=D) + 0.8 * rng.normal(size=N) > 0).astype(int)
    X[2, :, 0] += 1.5 * (2 * y - 1)
    return X, y
