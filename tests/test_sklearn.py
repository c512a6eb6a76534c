import _tolerance as T
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from lmprobe_jax.functional import group_lasso_alpha_max
from lmprobe_jax.sklearn import (
    GroupLassoProbe,
    LogisticCVProbe,
    LogisticProbe,
    MassMeanProbe,
    RidgeProbe,
    RidgeRegressionProbe,
)

# scikit-learn's checks run on float64 data, which the estimators solve in float64 (JAX's x64 scoped to
# the call). check_sample_weight_equivalence_on_dense_data compares weighted with repeated-row fits at
# rtol 1e-7: the iterative solvers get a tolerance below that (at tol 1e-7 the two stop 2e-7 apart;
# the scaled gradient tol is relative to C * sum(s), so large C needs it tighter still).
ESTIMATORS = [
    LogisticProbe(tol=1e-10),
    RidgeProbe(),
    MassMeanProbe(),
    GroupLassoProbe(tol=1e-9),
    RidgeRegressionProbe(),
    LogisticCVProbe(Cs=3, cv=3, tol=1e-14),  # its grid reaches C = 1e4, where tol 1e-10 leaves 9e-7 apart
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_contract(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", [LogisticProbe(), RidgeProbe(), MassMeanProbe(), RidgeRegressionProbe(),
                                       GroupLassoProbe(alpha=0.01)])
def test_sample_weight_equivalence(estimator):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)
    if isinstance(estimator, RidgeRegressionProbe):
        y = X[:, 0] + 0.1 * rng.normal(size=60)
    w = rng.integers(0, 3, size=60)
    weighted = estimator.fit(X, y, sample_weight=w).coef_.copy()
    weighted_direction = getattr(estimator, "direction_", None)
    repeated = estimator.fit(np.repeat(X, w, axis=0), np.repeat(y, w)).coef_
    # One problem, written two ways: each float32 fit within its own derived reach of the optimum.
    X32 = X.astype(np.float32)
    reach = [_coef_reach(estimator, X32, y, w), _coef_reach(estimator, np.repeat(X32, w, axis=0), np.repeat(y, w))]
    if isinstance(estimator, MassMeanProbe):  # the direction (class means) and the calibrated coefficient
        T.assert_within(weighted_direction, estimator.direction_, reach[0][1] + reach[1][1], "direction")
        reach = [r[0] for r in reach]
    T.assert_within(weighted, repeated, sum(reach), type(estimator).__name__)


def _coef_reach(estimator, X32, y, w=None, C=None):
    """2-norm bound on a float32 fit's ``[coef_, intercept_]`` error against the exact solution of its problem
    (float32 data), from the derived regions of tests/_tolerance.py (``C``: LogisticCVProbe's chosen one)."""
    if isinstance(estimator, (LogisticProbe, LogisticCVProbe)):
        C = estimator.C if C is None else C
        return T.glm_region(X32, y, C, tol=estimator.tol, sample_weight=w, data=False).radius
    if isinstance(estimator, (RidgeProbe, RidgeRegressionProbe)):
        targets = 2.0 * y - 1 if isinstance(estimator, RidgeProbe) else y
        return T.ridge_region(X32, targets, estimator.alpha, sample_weight=w, data=False).reach
    if isinstance(estimator, GroupLassoProbe):
        ref = GroupLassoProbe(alpha=estimator.alpha, tol=estimator.tol).fit(X32, y, sample_weight=w)
        return T.group_lasso_radius(X32, y, ref.coef_, ref.intercept_[0], estimator.alpha, tol=estimator.tol,
                                    n_groups=X32.shape[1], sample_weight=w)
    if isinstance(estimator, MassMeanProbe):
        return T.mass_mean_reach(X32, y, estimator.calibration_C, w)
    raise AssertionError(type(estimator))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 6)) * np.linspace(0.5, 3, 6) + 1.0
    y = np.where(X[:, 1] + rng.normal(size=240) > 1.0, "yes", "no")
    return X, y


def test_pipeline_grid_search_matches_sklearn(data):
    X, y = data
    grid = {"clf__C": [0.01, 0.1, 1.0, 10.0]}
    cv = StratifiedKFold(4, shuffle=True, random_state=0)
    ours = GridSearchCV(make_pipeline(StandardScaler(), LogisticProbe()).set_params(), {"logisticprobe__C": grid["clf__C"]},
                        cv=cv).fit(X, y)
    ref = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(tol=1e-10, max_iter=10000)),
                       {"logisticregression__C": grid["clf__C"]}, cv=cv).fit(X, y)
    # Each fold's fit within its derived reach of the fold problem's optimum (ours: the float32 region;
    # scikit-learn's: its float64 gradient): a held-out prediction may differ only within that reach of
    # the boundary, so each fold's score by at most those samples' share.
    codes = (y == "yes").astype(int)
    slack = np.zeros(len(grid["clf__C"]))
    for train, test in cv.split(X, y):
        scaler = StandardScaler().fit(X[train])
        Xs = scaler.transform(X)
        for g, C in enumerate(grid["clf__C"]):
            region = T.glm_region(Xs[train], codes[train], C, tol=1e-7)
            lr = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(Xs[train], codes[train])
            reach = region.radius + T.reference_radius(region, lr.coef_[0], lr.intercept_[0])
            slack[g] += T.accuracy_slack(Xs[test], region.optimum, reach) / cv.get_n_splits()
    np.testing.assert_array_less(np.abs(ours.cv_results_["mean_test_score"] - ref.cv_results_["mean_test_score"]), slack)
    assert ours.best_params_["logisticprobe__C"] == ref.best_params_["logisticregression__C"] or np.sort(
        ref.cv_results_["mean_test_score"])[-1] - np.sort(ref.cv_results_["mean_test_score"])[-2] <= 2 * slack.max()
    if ours.best_params_["logisticprobe__C"] == ref.best_params_["logisticregression__C"]:
        C = ours.best_params_["logisticprobe__C"]
        Xs = StandardScaler().fit_transform(X)
        region = T.glm_region(Xs, codes, C, tol=1e-7)
        lr = ref.best_estimator_[-1]
        reach = region.radius + T.reference_radius(region, lr.coef_[0], lr.intercept_[0])
        # sigmoid moves by at most a quarter of the decision value's move (plus its own ulps)
        np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=0,
                                   atol=0.25 * T.decision_error(Xs, region.optimum, reach).max() + 4 * T.U32)
        sure = ~T.unsure(Xs, region.optimum, reach)
        assert (ours.predict(X) == ref.predict(X))[sure].all() and sure.mean() > 0.9
    assert set(ours.classes_) == {"yes", "no"}


def test_coefficients_match_sklearn(data):
    # Each against scikit-learn's float64 solution, within the float32 fit's derived reach (and the
    # reference's own: its float64 gradient for lbfgs, kappa eps for a direct solve).
    X, y = data
    codes = (y == "yes").astype(int)
    for C, labels in ((0.3, codes), (1.0, np.digitize(X[:, 2], [0.0, 2.0]))):
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X, labels)
        region = T.glm_region(X, labels, C, tol=1e-7)
        ours = LogisticProbe(C=C).fit(X, labels)
        T.assert_within(T.as_theta(ours.coef_, ours.intercept_), T.as_theta(ref.coef_, ref.intercept_),
                        region.radius + T.reference_radius(region, ref.coef_, ref.intercept_), f"logistic C={C}")
    yr = X[:, 0] * 2.0
    for ours, ref, targets in ((RidgeProbe(alpha=2.0).fit(X, y), RidgeClassifier(alpha=2.0).fit(X, y), 2.0 * codes - 1),
                               (RidgeRegressionProbe(alpha=2.0).fit(X, yr), Ridge(alpha=2.0).fit(X, yr), yr)):
        region = T.ridge_region(X, targets, 2.0)
        T.assert_within(ours.coef_.ravel(), ref.coef_.ravel(), region.radius[0] + T.ridge_reference_error(region, 240)[0][0])
    y3 = np.digitize(X[:, 2], [0.0, 2.0])
    ours, ref = RidgeProbe(alpha=2.0).fit(X, y3), RidgeClassifier(alpha=2.0).fit(X, y3)  # one-vs-all
    region = T.ridge_region(X, np.where(y3[None] == np.arange(3)[:, None], 1.0, -1.0), 2.0)
    ref_coef, ref_intercept = T.ridge_reference_error(region, 240)
    for k in range(3):
        T.assert_within(ours.coef_[k], ref.coef_[k], region.radius[k] + ref_coef[k], f"class {k}")
    reach = region.reach + float(np.max(ref_coef + ref_intercept))
    np.testing.assert_array_less(np.abs(ours.decision_function(X) - ref.decision_function(X)),
                                 T.decision_error(X, region.theta(), reach))
    sure = ~T.unsure(X, region.theta(), reach)
    assert (ours.predict(X) == ref.predict(X))[sure].all() and sure.mean() > 0.9


def test_three_d_input_fits_every_layer():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3, 150, 5))
    y = (X[2, :, 0] > 0).astype(int)
    probe = LogisticProbe().fit(X, y)
    assert probe.coef_.shape == (3, 1, 5) and probe.n_layers_ == 3
    for l in range(3):  # two float32 solves of one problem: within twice its region's radius
        single = LogisticProbe().fit(X[l], y)
        region = T.glm_region(X[l].astype(np.float32), y, 1.0, tol=1e-7, data=False)
        T.assert_within(T.as_theta(probe.coef_[l], probe.intercept_[l]), T.as_theta(single.coef_, single.intercept_),
                        2 * region.radius, f"layer {l}")
    assert probe.predict(X).shape == (3, 150) and probe.predict_proba(X).shape == (3, 150, 2)
    scores = probe.score(X, y)
    assert scores.shape == (3,) and scores[2] > 0.9 > scores[0]
    with pytest.raises(ValueError, match="fitted on \\(L, N, D\\)"):
        probe.predict(X[0])
    ridge = RidgeRegressionProbe().fit(X, X[1, :, 0])
    assert ridge.coef_.shape == (3, 5) and ridge.score(X, X[1, :, 0]).argmax() == 1
    lasso = GroupLassoProbe(alpha=0.5 * group_lasso_alpha_max(X, y)).fit(X, y)
    assert lasso.layers_kept_.tolist() == [False, False, True] and lasso.coef_.shape == (1, 15)
    assert lasso.score(X, y) > 0.9


def test_convergence_warning_and_not_fitted(data):
    X, y = data
    with pytest.warns(ConvergenceWarning, match="LogisticProbe failed to converge after 1 iteration"):
        LogisticProbe(C=100.0, max_iter=1).fit(X, y)
    with pytest.raises(NotFittedError):
        LogisticProbe().predict(X)


def test_logistic_cv_probe_matches_logistic_regression_cv(binary_layers):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    from lmprobe_jax.functional import stratified_folds

    X, y = binary_layers
    X = StandardScaler().fit_transform(X[1])
    Cs = np.logspace(-3, 2, 6)
    ours = LogisticCVProbe(Cs=Cs, cv=4, random_state=3).fit(X, y)
    folds = stratified_folds(y, 4, random_state=3)
    ref = LogisticRegressionCV(Cs=Cs, cv=PredefinedSplit(folds), tol=1e-10, max_iter=10000).fit(X, y)
    # Held-out scores: each fold fit (ours at cv_tol = 1e-4, scikit-learn's as its float64 gradient says)
    # within reach of the fold problem's optimum; predictions can differ only within that reach of the
    # boundary.
    slack = np.zeros((len(Cs), 4))
    for f in range(4):
        train, test = folds != f, folds == f
        for g, C in enumerate(Cs):
            region = T.glm_region(X, y, C, tol=1e-4, sample_weight=train)
            path = ref.coefs_paths_[1][f, g]
            reach = region.radius + T.reference_radius(region, path[:-1], path[-1])
            slack[g, f] = T.accuracy_slack(X[test], region.optimum, reach)
    np.testing.assert_array_less(np.abs(ours.scores_ - ref.scores_[1].T), slack + 1e-12)  # (G, F)
    assert ours.C_.shape == (1,)
    if ours.C_[0] != ref.C_[0]:  # only where a flip could change which C scores best
        mean = np.sort(ref.scores_[1].mean(0))
        assert mean[-1] - mean[-2] <= 2 * slack.mean(-1).max()
        return
    region = T.glm_region(X, y, ref.C_[0], tol=1e-7)
    T.assert_within(T.as_theta(ours.coef_, ours.intercept_), T.as_theta(ref.coef_, ref.intercept_),
                    region.radius + T.reference_radius(region, ref.coef_, ref.intercept_))


def _theta(estimator):
    """``(1, D + 1)`` float64 ``[coef_, intercept_]`` of a binary or regression probe."""
    coef = np.atleast_2d(np.asarray(estimator.coef_, np.float64))
    return np.hstack([coef, np.atleast_1d(np.asarray(estimator.intercept_, np.float64))[:, None]])


def _same_cv_choice(a, b, X, y):
    """Whether two LogisticCVProbe fits of one layer chose the same C; if not, assert that their folds'
    derived regions (cv_tol 1e-4) allowed it: the best two mean scores within the flips' share."""
    if float(np.ravel(a.C_)[0]) == float(np.ravel(b.C_)[0]):  # select_layer's C_ is a scalar, a fit's (1,)
        return True
    from lmprobe_jax.functional import stratified_folds

    folds = stratified_folds(y, b.cv, random_state=b.random_state)
    grid = np.logspace(-4, 4, b.Cs) if isinstance(b.Cs, int) else np.asarray(b.Cs)
    slack = np.zeros(len(grid))
    for f in range(b.cv):
        train, test = folds != f, folds == f
        for g, C in enumerate(grid):
            region = T.glm_region(X, y, C, tol=1e-4, sample_weight=train, data=False)
            slack[g] += T.accuracy_slack(X[test], region.optimum, region.radius) / b.cv
    mean = np.sort(np.asarray(b.scores_).mean(-1))
    assert mean[-1] - mean[-2] <= 2 * slack.max(), (a.C_, b.C_, mean, slack)
    return False


@pytest.mark.parametrize("estimator", [LogisticProbe(), RidgeProbe(), MassMeanProbe(), RidgeRegressionProbe(),
                                       LogisticCVProbe(Cs=3, cv=3)])
def test_select_layer_gives_the_single_layer_fit(binary_layers, estimator):
    from sklearn.base import clone

    X, y = binary_layers
    X = X.astype(np.float32)
    batched = clone(estimator).fit(X, y)
    for layer in range(X.shape[0]):
        alone = batched.select_layer(layer)
        single = clone(estimator).fit(X[layer], y)
        assert not hasattr(alone, "n_layers_")
        # Two float32 fits of one problem: each within its derived reach of the exact solution
        # (_coef_reach), so twice that apart; decision values by that through [x, 1], plus rounding.
        C = None
        if isinstance(estimator, LogisticCVProbe):  # its folds stop at cv_tol 1e-4: the chosen C may differ
            if not _same_cv_choice(alone, single, X[layer], y):
                continue
            C = float(single.C_[0])
        reach = _coef_reach(estimator, X[layer], y, C=C)
        reach = 2 * (reach[0] if isinstance(reach, tuple) else reach)
        T.assert_within(_theta(alone), _theta(single), reach, f"layer {layer}")
        z = np.asarray(single.decision_function(X[layer]) if hasattr(single, "decision_function")
                       else single.predict(X[layer]), np.float64)
        theta = _theta(single)
        moved = T.decision_error(X[layer], theta, reach)[:, 0]
        if isinstance(estimator, RidgeRegressionProbe):
            np.testing.assert_array_less(np.abs(alone.predict(X[layer]) - single.predict(X[layer])), moved)
        else:
            sure = np.abs(z) > moved
            assert sure.mean() > 0.9
            np.testing.assert_array_equal(alone.predict(X[layer])[sure], single.predict(X[layer])[sure])
    with pytest.raises(ValueError, match="out of range"):
        batched.select_layer(X.shape[0])
    with pytest.raises(ValueError, match=r"\(L, N, D\)"):
        clone(estimator).fit(X[0], y).select_layer(0)


@pytest.mark.parametrize("estimator", [LogisticProbe(), RidgeProbe(), MassMeanProbe(), RidgeRegressionProbe(),
                                       GroupLassoProbe(alpha=0.01)])
def test_three_d_predictions_compile_nothing_and_refuse_non_finite_values(estimator):
    # Predictions are numpy arithmetic: a new row count must not copy X to the device for its check, nor
    # compile a program for that shape; the check still names the first bad entry.
    import jax
    from test_transformations import compiled_names

    rng = np.random.default_rng(2)
    X = rng.normal(size=(2, 60, 4)).astype(np.float32)
    y = (X[1, :, 0] > 0).astype(int)
    fitted = estimator.fit(X, y)
    new = rng.normal(size=(2, 37, 4)).astype(np.float32)
    expected = fitted.predict(new)
    jax.clear_caches()
    with compiled_names() as names:
        assert np.array_equal(fitted.predict(new), expected)
    assert names == []
    new[1, 5, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity \(first at \(layer, row, col\) \(1, 5, 2\)\)"):
        fitted.predict(new)
