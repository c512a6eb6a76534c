import _tolerance as T
import numpy as np
import pytest

import lmprobe_jax.functional as F


def kkt_float64(X, y, coef, intercept, alpha, loss="logistic", groups=None):
    """Largest relative KKT violation, recomputed in float64 from the returned solution."""
    if groups is None:  # layers as groups
        z = np.einsum("lnd,ld->n", X, coef) + intercept
        members = [(l, None) for l in range(X.shape[0])]
    else:
        z = X @ coef + intercept
        members = [(None, np.flatnonzero(groups == g)) for g in np.unique(groups)]
    r = (1 / (1 + np.exp(-z)) - y if loss == "logistic" else z - y) / len(y)
    worst = abs(r.sum())
    for layer, idx in members:
        g = X[layer].T @ r if idx is None else X[:, idx].T @ r
        w = coef[layer] if idx is None else coef[idx]
        nw = np.linalg.norm(w)
        worst = max(worst, np.linalg.norm(g + alpha * w / nw) if nw > 0 else max(0.0, np.linalg.norm(g) - alpha))
    return worst / alpha


@pytest.fixture
def layers():
    rng = np.random.default_rng(0)
    L, N, D = 5, 300, 10
    X = rng.normal(size=(L, N, D)) * np.linspace(0.5, 2.0, D)
    y = (X[3, :, 0] + 0.5 * X[1, :, 1] + 0.5 * rng.normal(size=N) > 0).astype(int)
    return X, y


@pytest.mark.parametrize("frac", [0.6, 0.2, 0.05])
def test_kkt_holds_in_float64(layers, frac):
    X, y = layers
    alpha = frac * F.group_lasso_alpha_max(X, y)
    fit = F.fit_group_lasso(X.astype(np.float32), y, alpha)
    assert bool(fit.converged) and fit.coef.shape == (5, 10)
    coef = np.asarray(fit.coef, np.float64)
    assert kkt_float64(X, y, coef, float(fit.intercept), alpha) <= 1e-3 + _kkt_rounding(X, y, coef, float(fit.intercept), alpha)


def _kkt_rounding(X, y, coef, intercept, alpha, loss="logistic", groups=None):
    """How far the solver's float32 KKT measure can sit below the float64 one: the largest group's (or the
    intercept's) float32 gradient rounding (T.group_lasso_rounding), relative to alpha."""
    flat = np.concatenate(list(X), axis=1) if groups is None else X
    rounding, _ = T.group_lasso_rounding(flat, y, coef.ravel(), intercept, loss=loss)
    members = np.repeat(np.arange(X.shape[0]), X.shape[2]) if groups is None else groups
    worst = max(np.linalg.norm(rounding[:-1][members == g]) for g in np.unique(members))
    return max(worst, rounding[-1]) / alpha


def test_alpha_max_empties_the_model_and_signal_layers_enter_first(layers):
    X, y = layers
    amax = F.group_lasso_alpha_max(X, y)
    path = F.fit_group_lasso(X.astype(np.float32), y, amax * np.array([1.001, 0.95, 0.3]))
    kept = np.asarray(F.layers_kept(path))
    assert not kept[0].any()
    # The first group to enter is the one whose gradient at the empty model is largest (float64).
    grad_norms = np.linalg.norm(np.einsum("lnd,n->ld", X, y.mean() - y) / len(y), axis=1)
    assert np.flatnonzero(kept[1]).tolist() == [int(np.argmax(grad_norms))]
    # alpha_max is that largest gradient norm, evaluated in float32 at the empty model
    p = y.mean()
    empty = np.zeros((X.shape[0], X.shape[2]))
    rounding, _ = T.group_lasso_rounding(np.concatenate(list(X), axis=1), y, empty, np.log(p / (1 - p)))
    assert abs(grad_norms.max() - amax) <= np.linalg.norm(rounding[:-1])
    assert kept[2, 1] and kept[2, 3]  # both signal layers are in at a smaller alpha
    # The empty model's intercept is the log-odds of y, to the KKT tolerance (|d f / d b| <= tol alpha,
    # plus its float32 rounding) over the intercept's curvature p (1 - p).
    alpha = float(path.alpha[0])
    assert abs(float(path.intercept[0]) - np.log(p / (1 - p))) <= (1e-3 * alpha + rounding[-1]) / (p * (1 - p))


def test_path_equals_single_fits(layers):
    X, y = layers
    alphas = F.group_lasso_alpha_max(X, y) * np.array([0.1, 0.5, 0.25])  # any order
    path = F.fit_group_lasso(X.astype(np.float32), y, alphas, tol=1e-5)
    for i, a in enumerate(alphas):
        single = F.fit_group_lasso(X.astype(np.float32), y, a, tol=1e-5)
        # Two solves of one problem, each stopped at KKT tol 1e-5: within twice its derived radius.
        bound = 2 * _radius(X, y, single, a, tol=1e-5)
        T.assert_within(np.r_[np.ravel(path.coef[i]), path.intercept[i]], np.r_[np.ravel(single.coef), single.intercept],
                        bound, f"alpha {a:.3g}")
    np.testing.assert_allclose(np.asarray(path.alpha), alphas, rtol=T.U32)  # the float32 cast


def _radius(X, y, fit, alpha, *, tol, sample_weight=None):
    """T.group_lasso_radius for layer groups, at a fit of the problem."""
    return T.group_lasso_radius(np.concatenate(list(X.astype(np.float32)), axis=1), y, np.asarray(fit.coef).ravel(),
                                float(fit.intercept), alpha, tol=tol, n_groups=X.shape[0], sample_weight=sample_weight)


def test_arbitrary_groups_and_squared_loss():
    rng = np.random.default_rng(1)
    N, D = 200, 9
    X = rng.normal(size=(N, D))
    groups = np.array([0, 0, 1, 1, 1, 2, 3, 3, 3])  # unequal sizes
    y = X[:, 2] - 0.5 * X[:, 6] + 0.1 * rng.normal(size=N)
    alpha = 0.1 * F.group_lasso_alpha_max(X, y, groups=groups, loss="squared")
    fit = F.fit_group_lasso(X.astype(np.float32), y, alpha, groups=groups, loss="squared")
    assert fit.coef.shape == (9,)
    coef = np.asarray(fit.coef, np.float64)
    slack = _kkt_rounding(X, y, coef, float(fit.intercept), alpha, loss="squared", groups=groups)
    assert kkt_float64(X, y, coef, float(fit.intercept), alpha, loss="squared", groups=groups) <= 1e-3 + slack
    assert np.all(coef[groups == 0] == 0) and np.any(coef[groups == 1] != 0)


def test_sample_weight_zero_equals_dropping(layers):
    X, y = layers
    keep = np.arange(len(y)) % 3 != 0
    a = 0.2 * F.group_lasso_alpha_max(X[:, keep], y[keep])
    w = F.fit_group_lasso(X.astype(np.float32), y, a, sample_weight=keep.astype(float), tol=1e-5)
    d = F.fit_group_lasso(X[:, keep].astype(np.float32), y[keep], a, tol=1e-5)
    bound = _radius(X, y, w, a, tol=1e-5, sample_weight=keep.astype(float)) + _radius(X[:, keep], y[keep], d, a, tol=1e-5)
    T.assert_within(np.r_[np.ravel(w.coef), w.intercept], np.r_[np.ravel(d.coef), d.intercept], bound)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda X, y: F.fit_group_lasso(X, y, 0.0), "alpha must be finite and > 0"),
        (lambda X, y: F.fit_group_lasso(X[0], y, 0.1), "no groups were given"),
        (lambda X, y: F.fit_group_lasso(X, y, 0.1, groups=np.zeros(10)), "groups applies to a 2-D X"),
        (lambda X, y: F.fit_group_lasso(X[0], y, 0.1, groups=np.zeros(3)), "one group label per feature"),
        (lambda X, y: F.fit_group_lasso(X, y, 0.1, loss="hinge"), "loss must be"),
        (lambda X, y: F.fit_group_lasso(X, y[:-1], 0.1), "entries but X has"),
    ],
)
def test_bad_input(layers, call, match):
    X, y = layers
    with pytest.raises(ValueError, match=match):
        call(X.astype(np.float32), y)


def test_cross_validated_path_picks_alpha_and_refits(layers):
    X, y = layers
    alphas = F.group_lasso_alpha_max(X, y) * np.array([0.9, 0.3, 0.05])
    cv = F.cross_validate_group_lasso(X.astype(np.float32), y, alphas, folds=3)
    assert cv.accuracy.shape == (1, 3, 3) and cv.fit.coef.shape == (5, 10)
    assert bool(cv.converged.all())
    # Scores are the held-out accuracy of each fold's path fit, recomputed here by hand.
    flat = np.concatenate(list(X), axis=1)
    for f in range(3):
        train, test = cv.fold_ids != f, cv.fold_ids == f
        fit = F.fit_group_lasso(X.astype(np.float32), y, alphas, sample_weight=train.astype(float))
        z = np.einsum("lnd,ald->an", X[:, test], np.asarray(fit.coef, np.float64)) + np.asarray(fit.intercept)[:, None]
        for a in range(3):  # the same fold problem solved twice: predictions differ only within reach of 0
            one = F.GroupLassoFit(*(np.asarray(v)[a] for v in fit))
            reach = 2 * _radius(X, y, one, alphas[a], tol=1e-3, sample_weight=train.astype(float))
            theta = np.r_[np.ravel(one.coef), one.intercept]
            slack = T.accuracy_slack(flat[test], theta, reach)
            np.testing.assert_allclose(float(cv.accuracy[0, a, f]), ((z[a] > 0) == y[test]).mean(), rtol=0, atol=slack)
    best = int(cv.best_index[0])
    assert best == int(np.argmax(np.asarray(cv.accuracy[0]).mean(1)))
    full = F.fit_group_lasso(X.astype(np.float32), y, alphas[best])
    bound = 2 * _radius(X, y, full, alphas[best], tol=1e-3)
    T.assert_within(np.r_[np.ravel(cv.fit.coef), cv.fit.intercept], np.r_[np.ravel(full.coef), full.intercept], bound)
