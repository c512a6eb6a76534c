"""Degenerate inputs that once gave a silently wrong fit (issue 20, items 1 and 9): a logistic C too large
for float32, a mass-mean class with no weight, LDA with more dimensions than rows and no shrinkage,
float32 ridge on a nearly singular layer."""


import _tolerance as T
import jax
import numpy as np
import pytest

import lmprobe_jax.functional as F

LARGE_CS = [1e-3, 1.0, 1e4, 1e8, 1e10, 2e10, 1e12, 1e16, 1e20]


def test_every_c_is_solved_or_reported_unconverged():
    """C = 1e12 is how users ask for no regularisation; in C's units float32 loses the loss against the
    penalty from C ~ 1e10 (on these layers a zero probe was reported converged from C = 2e10, and NaN
    weights came back). Every fit reported converged must lie in the region its stopping test and float32
    rounding allow around scikit-learn's float64 optimum (tests/_tolerance.py); the others must say they
    did not converge, with finite weights."""
    rng = np.random.default_rng(0)
    for n, d in [(2000, 64), (500, 32), (200, 400)]:
        X = rng.normal(size=(n, d)).astype(np.float32)
        y = (X @ rng.normal(size=d) + 2 * rng.normal(size=n) > 0).astype(int)
        for C in LARGE_CS:  # one C a call, as LogisticProbe(C=1e12) solves it (a grid would warm-start it)
            fit = F.fit_logistic(X, y, C=C)
            assert np.isfinite(np.asarray(fit.coef)).all() and np.isfinite(float(fit.intercept)), (n, d, C)
            assert bool(fit.converged) or C >= 1e8, (n, d, C)  # the ordinary range is solved
            if not bool(fit.converged):
                continue
            theta = T.as_theta(fit.coef, fit.intercept)
            if n < d:  # separable: no optimum to compare with at large C; the stopping test must hold
                assert T.scaled_gradient_excess(X, y, theta, C) <= 0, (n, d, C)
                continue
            region = T.glm_region(X, y, C, tol=1e-7)
            T.assert_within(theta, region.optimum, 2 * region.radius, f"{n} x {d}, C={C:g}")


@pytest.mark.parametrize("separable", [False, True])
def test_softmax_at_large_c_is_finite_and_solved_or_reported_unconverged(separable):
    """Separable softmax layers at C >= 1e8 overflowed inside CG and returned NaN weights (unconverged);
    the overflowing step is now refused and the last finite iterate kept."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 4))
    y = np.argmax(X[:, :3] + (0.0 if separable else 0.7) * rng.normal(size=(90, 3)), axis=1)
    X32 = X.astype(np.float32)
    Cs = [1.0, 1e4, 1e8, 1e10, 1e12]
    fit = F.fit_multinomial(X32, y, Cs)
    assert np.isfinite(np.asarray(fit.coef)).all() and np.isfinite(np.asarray(fit.intercept)).all()
    assert bool(np.all(np.asarray(fit.converged)[:2]))
    for g, C in enumerate(Cs):  # a converged fit meets the stopping test in float64 (up to its rounding)
        if bool(fit.converged[g]):
            assert T.scaled_gradient_excess(X32, y, T.as_theta(fit.coef[g], fit.intercept[g]), C) <= 0, C


def test_float64_solves_the_c_float32_cannot():
    rng = np.random.default_rng(32)
    X = rng.normal(size=(500, 32))
    y = (X @ rng.normal(size=32) + 2 * rng.normal(size=500) > 0).astype(int)
    with jax.enable_x64(True):
        fit = F.fit_logistic(X, y, C=[1e12, 1e20])
    assert fit.coef.dtype == np.float64 and bool(np.all(np.asarray(fit.converged)))
    for g, C in enumerate((1e12, 1e20)):
        region = T.glm_region(X, y, C, tol=1e-7, precision="float64")
        T.assert_within(T.as_theta(fit.coef[g], fit.intercept[g]), region.optimum, 2 * region.radius, f"C={C:g}")


def test_a_mass_mean_class_without_weight_is_refused():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 5)).astype(np.float32), np.arange(12) % 2
    for iid in (False, True):
        with pytest.raises(ValueError, match="class 1 has zero total sample_weight"):
            F.fit_mass_mean(X, y, iid=iid, sample_weight=np.where(y == 1, 0.0, 1.0))


def test_lda_with_more_dimensions_than_rows_and_no_shrinkage_is_finite():
    """The within-class covariance is singular (rank N - 2 < D): its pseudo-inverse, never NaN weights
    that put every row in class 0."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(10, 30)).astype(np.float32), np.arange(10) % 2
    fit = F.fit_mass_mean(X, y, iid=True, shrinkage=0.0)
    assert np.isfinite(np.asarray(fit.coef)).all() and np.isfinite(np.asarray(fit.direction)).all()
    assert len(np.unique(np.asarray(F.predict(fit, X)))) == 2


def test_float32_ridge_on_a_nearly_singular_layer_reaches_the_float64_solution():
    """Rank-4 data plus 1e-4 noise, alpha 1e-9: cond(Gram + alpha I) ~ 3e9, far past float32's 1/eps, so
    float32 refinement cannot converge (unrefined, the coefficients are off by ~1e9 relative) and the layer
    is solved again in float64. The reference is the float64 closed form on the same float32 numbers, so
    the only error left is float64's: a backward-stable solve is within d * cond * eps64 (~1.4e-5)."""
    rng = np.random.default_rng(0)
    n, d, alpha = 200, 20, 1e-9
    X = (rng.normal(size=(n, 4)) @ rng.normal(size=(4, d)) + 1e-4 * rng.normal(size=(n, d))).astype(np.float32)
    y = (X @ rng.normal(size=d) / np.sqrt(d) + 0.1 * rng.normal(size=n)).astype(np.float32).astype(np.float64)
    centred, target = X - X.mean(0, dtype=np.float64), y - y.mean()
    gram = centred.T @ centred + alpha * np.eye(d)
    reference = np.linalg.solve(gram, centred.T @ target)
    eigenvalues = np.linalg.eigvalsh(gram)
    cond = eigenvalues[-1] / eigenvalues[0]
    assert cond > 1e9  # past float32 (1 / eps32 ~ 8e6): the case the fallback is for
    coef = np.asarray(F.fit_ridge(X, y, alpha).coef, np.float64)
    error = np.linalg.norm(coef - reference) / np.linalg.norm(reference)
    assert error < d * cond * np.finfo(np.float64).eps, (error, cond)
