"""Large C through every entry point, against scikit-learn's float64 optimum at a bound derived from the
arithmetic (issue 20, item 1: ``fit_logistic(X, y, C=1e12)`` returned a zero probe marked converged, and
C = 2e10 gave NaN weights at 2000 x 64; a sweep or ``LogisticCVProbe`` at such a C inherited it).

The bound. The solver stops when the max-abs entry of its float32 gradient of scikit-learn's scaled
objective ``F = mean_s(loss) + ||w||^2 / (2 C sum s)`` is at most ``tol`` (or at the float floor, where that
gradient is rounding). The float32 gradient is off the exact one by at most ``rho`` per entry (Higham's
``gamma_n = n u / (1 - n u)`` worst case: the N-term sums ``X^T (omega r)`` and the weights' normalisation,
each sample's residual error through its linear predictor's D-term sum times the sigmoid's slope 1/4 and
the sigmoid's own ulps, the penalty's ulp). So the exact gradient's 2-norm is at most
``g = sqrt(D + 1) tol + ||rho||`` and, F being ``mu``-strongly convex (``mu`` the least eigenvalue of its
Hessian at the float64 optimum; the data's curvature, which does not vanish as C grows on data that is not
separable), the fit lies within ``g / mu`` of the optimum. Its predictions then agree with the optimum's
on every sample whose float64 margin exceeds that radius times ``||[x, 1]||``. X is float32 data, so the
float64 problem is the same problem. A zero probe (distance ~2.3) or NaN weights fail by orders of magnitude.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import lmprobe_jax.functional as F
from lmprobe_jax.sklearn import LogisticCVProbe, LogisticProbe
from lmprobe_jax.sweep import standardize, sweep_activations

U = float(np.finfo(np.float32).eps) / 2
TOL = 1e-7  # the library's default tol


def gamma(n):
    return n * U / (1 - n * U)


def problem(seed=0, n=2000, d=64):
    """The issue's example: float32 Gaussian features, a noisy label (not separable)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, 0] + 0.8 * rng.normal(size=n) > 0).astype(int)
    return X, y


def float64_optimum(X, y, C):
    """scikit-learn's float64 fit polished by Newton steps on the scaled objective; its Hessian's least
    eigenvalue ``mu``; the design ``A = [X, 1]``."""
    A = np.hstack([X.astype(np.float64), np.ones((len(y), 1))])
    n = len(y)
    lam = 1.0 / (C * n)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X.astype(np.float64), y)
    theta = np.append(ref.coef_[0], ref.intercept_[0])
    pen = np.full(A.shape[1], lam)
    pen[-1] = 0.0
    for _ in range(4):
        p = 1 / (1 + np.exp(-(A @ theta)))
        grad = A.T @ (p - y) / n + pen * theta
        H = (A * (p * (1 - p) / n)[:, None]).T @ A + np.diag(pen)
        theta = theta - np.linalg.solve(H, grad)
    p = 1 / (1 + np.exp(-(A @ theta)))
    H = (A * (p * (1 - p) / n)[:, None]).T @ A + np.diag(pen)
    return theta, np.linalg.eigvalsh(H)[0], A, lam


def radius(A, y, theta, mu, lam):
    """``g / mu`` of the module docstring at ``theta``."""
    n, d1 = A.shape
    p = 1 / (1 + np.exp(-(A @ theta)))
    r = p - y
    terms = np.abs(A * (r / n)[:, None])  # |omega_i r_i a_ij|
    dz = gamma(d1) * np.abs(A * theta).sum(1)  # each linear predictor's rounding
    dr = 0.25 * dz + 2 * U  # through the sigmoid, plus its ulps
    rho = 2 * gamma(n) * terms.sum(0) + (np.abs(A) * (dr / n)[:, None]).sum(0) + 2 * U * lam * np.abs(theta)
    g = np.sqrt(d1) * TOL + np.linalg.norm(rho)
    return g / mu


def check(A, y, theta_star, mu, lam, coef, intercept, what):
    theta = np.append(np.asarray(coef, np.float64).ravel(), np.float64(intercept))
    assert np.isfinite(theta).all(), f"{what}: non-finite weights"
    bound = radius(A, y, theta_star, mu, lam)
    distance = np.linalg.norm(theta - theta_star)
    assert distance <= bound, f"{what}: {distance:.3g} from the float64 optimum, bound {bound:.3g}"
    z_star, z = A @ theta_star, A @ theta
    sure = np.abs(z_star) > bound * np.linalg.norm(A, axis=1)
    assert sure.mean() > 0.9  # the check below covers most samples
    np.testing.assert_array_equal((z > 0)[sure], (z_star > 0)[sure], err_msg=what)


@pytest.mark.parametrize("C", [1e4, 1e8, 1e12, 1e20])
def test_large_c_reaches_the_float64_optimum_through_every_entry(C):
    X, y = problem()
    theta_star, mu, A, lam = float64_optimum(X, y, C)

    fit = F.fit_logistic(X, y, C)
    assert bool(fit.converged)
    check(A, y, theta_star, mu, lam, fit.coef, fit.intercept, "fit_logistic")

    probe = LogisticProbe(C=C).fit(X, y)
    check(A, y, theta_star, mu, lam, probe.coef_, probe.intercept_[0], "LogisticProbe")

    cv = LogisticCVProbe(Cs=[C], cv=3).fit(X, y)  # the refit at the one C of the grid
    check(A, y, theta_star, mu, lam, cv.coef_, cv.intercept_[0], "LogisticCVProbe")


@pytest.mark.parametrize("C", [1e12, 1e20])
def test_large_c_through_a_sweep(C):
    X, y = problem(seed=1)
    layers = np.stack([X, X[:, ::-1].copy()])  # two layers: the same features, reordered
    result = sweep_activations(layers, y, C=C, folds=3)
    Xs, _, _ = standardize(layers)
    for layer in range(2):
        theta_star, mu, A, lam = float64_optimum(np.asarray(Xs[layer]), y, C)
        est = result.estimator
        check(A, y, theta_star, mu, lam, est.coef_[layer], est.intercept_[layer][0], f"sweep layer {layer}")
