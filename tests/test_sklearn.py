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


@pytest.mark.parametrize("estimator, rtol", [(LogisticProbe(), 1e-4), (RidgeProbe(), 1e-5), (MassMeanProbe(), 1e-4),
                                             (RidgeRegressionProbe(), 1e-5), (GroupLassoProbe(alpha=0.01), 5e-3)])
def test_sample_weight_equivalence(estimator, rtol):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)
    if isinstance(estimator, RidgeRegressionProbe):
        y = X[:, 0] + 0.1 * rng.normal(size=60)
    w = rng.integers(0, 3, size=60)
    weighted = estimator.fit(X, y, sample_weight=w).coef_.copy()
    repeated = estimator.fit(np.repeat(X, w, axis=0), np.repeat(y, w)).coef_
    np.testing.assert_allclose(weighted, repeated, rtol=rtol, atol=rtol * np.abs(repeated).max())


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
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"], atol=1e-12)
    assert ours.best_params_["logisticprobe__C"] == ref.best_params_["logisticregression__C"]
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-5)
    assert (ours.predict(X) == ref.predict(X)).all() and set(ours.classes_) == {"yes", "no"}


def test_coefficients_match_sklearn(data):
    X, y = data
    np.testing.assert_allclose(LogisticProbe(C=0.3).fit(X, y).coef_, LogisticRegression(C=0.3, tol=1e-10).fit(X, y).coef_,
                               rtol=1e-4)
    np.testing.assert_allclose(RidgeProbe(alpha=2.0).fit(X, y).coef_.ravel(), RidgeClassifier(alpha=2.0).fit(X, y).coef_.ravel(),
                               rtol=1e-4)
    yr = X[:, 0] * 2.0
    np.testing.assert_allclose(RidgeRegressionProbe(alpha=2.0).fit(X, yr).coef_, Ridge(alpha=2.0).fit(X, yr).coef_, rtol=1e-4)
    y3 = np.digitize(X[:, 2], [0.0, 2.0])
    np.testing.assert_allclose(LogisticProbe().fit(X, y3).coef_, LogisticRegression(tol=1e-10).fit(X, y3).coef_,
                               rtol=1e-3, atol=1e-5)
    ours, ref = RidgeProbe(alpha=2.0).fit(X, y3), RidgeClassifier(alpha=2.0).fit(X, y3)  # one-vs-all
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(X), rtol=1e-4, atol=1e-5)
    assert (ours.predict(X) == ref.predict(X)).all()


def test_three_d_input_fits_every_layer():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3, 150, 5))
    y = (X[2, :, 0] > 0).astype(int)
    probe = LogisticProbe().fit(X, y)
    assert probe.coef_.shape == (3, 1, 5) and probe.n_layers_ == 3
    for l in range(3):
        np.testing.assert_allclose(probe.coef_[l], LogisticProbe().fit(X[l], y).coef_, rtol=1e-5, atol=1e-6)
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
    assert ours.C_.shape == (1,) and ours.C_[0] == ref.C_[0]
    np.testing.assert_allclose(ours.scores_.mean(-1), ref.scores_[1].mean(0), atol=1e-12)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=1e-4, atol=1e-5)


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
        np.testing.assert_allclose(alone.predict(X[layer]), single.predict(X[layer]), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(alone.coef_, single.coef_, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        batched.select_layer(X.shape[0])
    with pytest.raises(ValueError, match=r"\(L, N, D\)"):
        clone(estimator).fit(X[0], y).select_layer(0)
