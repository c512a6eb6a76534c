import jax
import numpy as np
import pytest
from conftest import objective
from sklearn.linear_model import LogisticRegression

import lmprobe_jax.functional as F


def sk_reference(X, y, C, sw=None, fit_intercept=True):
    return LogisticRegression(C=C, tol=1e-10, max_iter=10000, fit_intercept=fit_intercept).fit(
        X, y, sample_weight=sw
    )


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_sklearn_every_layer(binary_layers, C, fit_intercept):
    X, y = binary_layers
    fit = F.fit_logistic(X.astype(np.float32), y, C, fit_intercept=fit_intercept)
    assert fit.coef.shape == (3, 8) and fit.intercept.shape == (3,)
    assert bool(fit.converged.all())
    for l in range(3):
        ref = sk_reference(X[l], y, C, fit_intercept=fit_intercept)
        w, b = np.asarray(fit.coef[l], np.float64), float(fit.intercept[l])
        assert np.linalg.norm(w - ref.coef_[0]) / np.linalg.norm(ref.coef_[0]) < 1e-3
        o, o_ref = objective(X[l], y, w, b, C), objective(X[l], y, ref.coef_[0], ref.intercept_[0], C)
        assert (o - o_ref) / o_ref < 1e-6
        if not fit_intercept:
            assert b == 0.0


def test_gradient_is_zero_at_solution(binary_layers):
    # Optimality independent of any reference solver: the float64 gradient of the objective vanishes.
    X, y = binary_layers
    C = 3.0
    fit = F.fit_logistic(X.astype(np.float32), y, C)
    for l in range(3):
        w, b = np.asarray(fit.coef[l], np.float64), float(fit.intercept[l])
        r = 1 / (1 + np.exp(-(X[l] @ w + b))) - y
        g = np.concatenate([C * X[l].T @ r + w, [C * r.sum()]])
        assert np.abs(g).max() / (C * len(y)) < 1e-5


def test_sample_weight_matches_sklearn(binary_layers):
    X, y = binary_layers
    sw = np.random.default_rng(1).uniform(0, 3, size=len(y))
    fit = F.fit_logistic(X[1].astype(np.float32), y, 0.5, sample_weight=sw)
    ref = sk_reference(X[1], y, 0.5, sw=sw)
    np.testing.assert_allclose(fit.coef, ref.coef_[0], rtol=1e-3, atol=1e-5)


def test_zero_weights_equal_dropping_rows(binary_layers):
    X, y = binary_layers
    keep = np.arange(len(y)) % 4 != 0
    a = F.fit_logistic(X.astype(np.float32), y, 1.0, sample_weight=keep.astype(float))
    b = F.fit_logistic(X[:, keep].astype(np.float32), y[keep], 1.0)
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-4, atol=1e-6)


def test_grid_equals_loop_and_layers_equal_stack(binary_layers):
    X, y = binary_layers
    Cs = np.array([0.05, 0.5, 5.0])
    grid = F.fit_logistic(X.astype(np.float32), y, Cs)
    assert grid.coef.shape == (3, 3, 8) and grid.n_iter.shape == (3, 3)
    # The grid is solved as a warm-started path, the single fits from zero: both must land on the
    # same optimum to solver precision (and on scikit-learn's).
    for l in range(3):
        for g, C in enumerate(Cs):
            single = F.fit_logistic(X[l].astype(np.float32), y, C)
            ref = sk_reference(X[l], y, C).coef_[0]
            for w in (grid.coef[l, g], single.coef):
                assert np.linalg.norm(np.asarray(w) - ref) / np.linalg.norm(ref) < 1e-5
            assert np.linalg.norm(grid.coef[l, g] - single.coef) / np.linalg.norm(single.coef) < 1e-5


@pytest.mark.parametrize("layer_batch_size", [1, 2, 3])
def test_layer_batching_gives_same_answer(binary_layers, layer_batch_size):
    X, y = binary_layers
    ref = F.fit_logistic(X.astype(np.float32), y, [0.1, 1.0], layer_batch_size=3)
    got = F.fit_logistic(X.astype(np.float32), y, [0.1, 1.0], layer_batch_size=layer_batch_size)
    np.testing.assert_allclose(got.coef, ref.coef, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_half_precision_storage_gives_float32_fit(binary_layers, dtype):
    X, y = binary_layers
    Xh = jax.numpy.asarray(X, dtype=dtype)
    fit = F.fit_logistic(Xh, y, 1.0)
    assert fit.coef.dtype == np.float32
    ref = F.fit_logistic(np.asarray(Xh.astype(np.float32)), y, 1.0)
    np.testing.assert_allclose(fit.coef, ref.coef, rtol=1e-5, atol=1e-6)


def test_labels_any_two_values(binary_layers):
    X, y = binary_layers
    a = F.fit_logistic(X[0].astype(np.float32), y, 1.0)
    b = F.fit_logistic(X[0].astype(np.float32), np.where(y == 1, "yes", "no"), 1.0)  # "yes" > "no"
    np.testing.assert_allclose(a.coef, b.coef)


def test_max_iter_reports_not_converged(binary_layers):
    X, y = binary_layers
    fit = F.fit_logistic(X.astype(np.float32), y, 100.0, max_iter=1)
    assert not bool(fit.converged.any())
    assert (np.asarray(fit.n_iter) == 1).all()


def test_new_C_and_new_data_do_not_recompile(binary_layers):
    X, y = binary_layers
    F.fit_logistic(X.astype(np.float32), y, [0.1, 1.0])
    with jax.log_compiles(True):
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            F.fit_logistic((X * 1.1).astype(np.float32), y[::-1].copy(), [0.3, 3.0])
        finally:
            logger.removeHandler(handler)
    compiled = [r for r in records if "solve_layers" in r.getMessage() and "Compiling" in r.getMessage()]
    assert compiled == []


def test_float64_under_x64(binary_layers):
    X, y = binary_layers
    with jax.enable_x64(True):
        fit = F.fit_logistic(X, y, 1.0, tol=1e-10)
        assert fit.coef.dtype == np.float64
        ref = sk_reference(X[2], y, 1.0)
        w = np.asarray(fit.coef[2])
        assert np.linalg.norm(w - ref.coef_[0]) / np.linalg.norm(ref.coef_[0]) < 1e-6


def test_callable_under_jit_and_vmap(binary_layers):
    # Research code jits and vmaps the functional API; labels are then taken as coded 0/1.
    X, y = binary_layers
    X32 = X.astype(np.float32)
    eager = F.fit_logistic(X32, y, [0.1, 1.0])
    jitted = jax.jit(lambda X, y, C: F.fit_logistic(X, y, C).coef)(X32, y, jax.numpy.asarray([0.1, 1.0]))
    np.testing.assert_allclose(jitted, eager.coef, rtol=1e-5, atol=1e-6)
    per_layer = jax.vmap(lambda x: F.fit_logistic(x, y, 1.0).coef)(X32)  # vmap over layers, 2-D each
    np.testing.assert_allclose(per_layer, F.fit_logistic(X32, y, 1.0).coef, rtol=1e-4, atol=1e-6)
    ridge = jax.jit(lambda X, y: F.fit_ridge(X, y, 1.0).coef)(X32, y)
    np.testing.assert_allclose(ridge, F.fit_ridge(X32, y, 1.0).coef, rtol=1e-5, atol=1e-6)


def test_wide_nearly_separable_layer_stops_at_the_float_floor():
    """200 samples x 4096 features at C = 100: the gradient test is met within a few steps, but in
    float32 the Newton decrement's gap estimate stays ~2e-7 while F changes by single ulps. The solve
    used to run to max_iter and report no convergence; it now stops as converged at scikit-learn's
    optimum (float64, tol 1e-10) to the exactness bar."""
    from scipy.fft import dct

    rng = np.random.default_rng(0)
    N, D = 200, 4096
    y = rng.integers(0, 2, N)
    g = rng.normal(size=(N, D)) * (1.0 + np.arange(D)) ** -0.5  # an anisotropic spectrum...
    g[:, 4] += (2 * y - 1) * 0.66  # ...with the class signal along one direction...
    z = dct(g * rng.choice([-1.0, 1.0], D), norm="ortho", axis=1)  # ...in a rotated basis
    X = ((z - z.mean(0)) / z.std(0)).astype(np.float32)
    Cs = np.logspace(-1, 2, 4)
    fit = F.fit_logistic(X, y, Cs)
    assert bool(fit.converged.all()) and int(fit.n_iter.max()) < 30
    X64 = X.astype(np.float64)
    ref = sk_reference(X64, y, 100.0)
    w, b = np.asarray(fit.coef[-1], np.float64), float(fit.intercept[-1])
    o, o_ref = objective(X64, y, w, b, 100.0), objective(X64, y, ref.coef_[0], ref.intercept_[0], 100.0)
    assert (o - o_ref) / o_ref < 1e-6
    assert np.linalg.norm(w - ref.coef_[0]) / np.linalg.norm(ref.coef_[0]) < 1e-3
