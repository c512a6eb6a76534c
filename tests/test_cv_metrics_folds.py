import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import PredefinedSplit

import lmprobe_jax.functional as F


def test_cv_matches_logistic_regression_cv(binary_layers):
    X, y = binary_layers
    Cs = np.array([0.01, 0.1, 1.0, 10.0])
    cv = F.cross_validate_logistic(X.astype(np.float32), y, Cs, folds=4, random_state=3, cv_tol=1e-8)
    assert cv.accuracy.shape == (3, 4, 4) and cv.fit.coef.shape == (3, 8)
    assert bool(cv.converged.all())
    for l in range(3):
        ref = LogisticRegressionCV(
            Cs=Cs, cv=PredefinedSplit(cv.fold_ids), tol=1e-10, max_iter=10000, scoring="accuracy",
            l1_ratios=(0.0,), use_legacy_attributes=True,
        ).fit(X[l], y)
        np.testing.assert_allclose(np.asarray(cv.accuracy[l]), ref.scores_[1][..., 0].T, atol=1e-6)
        assert float(cv.best_value[l]) == ref.C_[0]
        np.testing.assert_allclose(cv.fit.coef[l], ref.coef_[0], rtol=1e-3, atol=1e-5)


def test_cv_multinomial_runs_and_scores():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 150, 5))
    y = np.argmax(X[1, :, :3] * 3, axis=1)
    cv = F.cross_validate_logistic(X.astype(np.float32), y, [0.1, 1.0], folds=3)
    assert cv.fit.coef.shape == (2, 3, 5)
    assert float(cv.accuracy[1].mean()) > 0.8 > float(cv.accuracy[0].mean())
    assert np.isnan(np.asarray(cv.roc_auc)).all()
    # The refit (started from the folds' mean solution) is the all-samples fit at the chosen C.
    assert bool(cv.converged[..., -1].all())
    for layer in range(2):
        direct = F.fit_multinomial(X[layer].astype(np.float32), y, float(cv.best_value[layer]))
        np.testing.assert_allclose(cv.fit.coef[layer], direct.coef, rtol=1e-4, atol=1e-5)


def test_ridge_cv_matches_ridgecv():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 80, 6))
    y = X[0] @ rng.normal(size=6) + 0.5 * rng.normal(size=80)
    alphas = np.array([0.1, 1.0, 10.0, 100.0])
    cv = F.cross_validate_ridge(X.astype(np.float32), y, alphas)
    ref = RidgeCV(alphas=alphas, store_cv_results=True).fit(X[0], y)
    np.testing.assert_allclose(np.asarray(cv.mse[0, :, 0]), ref.cv_results_.mean(0), rtol=1e-4)
    assert float(cv.best_value[0]) == ref.alpha_


def test_metrics_match_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + y, 1).astype(np.float32)  # many ties
    w = rng.uniform(0, 2, 300)
    assert abs(float(F.roc_auc(y, scores, w)) - roc_auc_score(y, scores, sample_weight=w)) < 1e-6
    p = 1 / (1 + np.exp(-scores.astype(np.float64)))
    assert abs(float(F.binary_log_loss(y, scores, w)) - log_loss(y, p, sample_weight=w)) < 1e-5
    batch = np.stack([scores, -scores])
    np.testing.assert_allclose(F.roc_auc(y, batch), [roc_auc_score(y, scores), roc_auc_score(y, -scores)], atol=1e-6)
    # Under a caller's jit and vmap (the vmapped sort, binary search and scatter).
    vmapped = jax.jit(jax.vmap(lambda s: F.roc_auc(y, s, w)))(np.stack([batch, batch[::-1]]))
    np.testing.assert_allclose(vmapped[:, 0], [roc_auc_score(y, s, sample_weight=w) for s in (scores, -scores)],
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32])
def test_roc_auc_ranks_as_floats_compare(dtype):
    """Signed zeros tie, one run of equal scores counts one half, and low-precision or integer scores
    keep float32 weight sums (against scikit-learn in float64)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) * 3).astype(dtype)
    if dtype != np.int32:
        scores[:30] = np.where(np.arange(30) % 2, 0.0, -0.0)
    w = rng.uniform(0.1, 3.0, 200).astype(np.float32)
    expected = roc_auc_score(y, scores.astype(np.float64), sample_weight=w)
    assert abs(float(F.roc_auc(y, scores, w)) - expected) < 1e-6
    assert abs(float(F.roc_auc(y, np.ones(200, dtype), w)) - 0.5) < 1e-6
    assert np.isnan(float(F.roc_auc(np.zeros(200, int), scores)))


def test_metrics_of_float16_scores_sum_in_float32():
    """5000 float16 decisions: summed in float16, accuracy was off by 5e-5 and log-loss by 2e-4."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 5000)
    decision = (rng.normal(size=5000) + y - 0.5).astype(np.float16)
    z = decision.astype(np.float64)
    logits = np.stack([-decision, decision], axis=-1)
    assert abs(float(F.binary_accuracy(y, decision)) - np.mean((z > 0) == y)) < 1e-6
    assert abs(float(F.binary_log_loss(y, decision)) - log_loss(y, 1 / (1 + np.exp(-z)))) < 1e-6
    assert abs(float(F.multiclass_accuracy(y, logits)) - np.mean((z > 0) == y)) < 1e-6
    softmax = np.exp(np.stack([-z, z], -1)) / np.exp(np.stack([-z, z], -1)).sum(-1, keepdims=True)
    assert abs(float(F.multiclass_log_loss(y, logits)) - log_loss(y, softmax)) < 1e-6


def test_roc_auc_float64_resolves_below_float32():
    y = np.arange(100) % 2
    scores = 1.0 + 1e-12 * (np.arange(100) % 4)  # equal in float32, four distinct values in float64
    with jax.enable_x64(True):
        assert abs(float(F.roc_auc(y, scores)) - roc_auc_score(y, scores)) < 1e-12


def test_ridge_sweep_over_three_classes_scores_each_fold_as_sklearn():
    from sklearn.linear_model import RidgeClassifier

    from lmprobe_jax import sweep_activations

    rng = np.random.default_rng(5)
    X = rng.normal(size=(2, 150, 6)).astype(np.float32)
    y = np.argmax(X[1, :, :3] + 0.5 * rng.normal(size=(150, 3)), axis=1)
    sweep = sweep_activations(X, y, classifier="ridge", folds=3)
    assert np.isnan(sweep.roc_auc).all() and sweep.estimator.coef_.shape == (2, 3, 6)
    Xs = (X - sweep.mean) / sweep.scale
    for layer in range(2):
        for f in range(3):
            train, test = sweep.fold_ids != f, sweep.fold_ids == f
            ref = RidgeClassifier().fit(Xs[layer][train], y[train])
            assert abs(sweep.accuracy[layer, f] - ref.score(Xs[layer][test], y[test])) < 1e-6


def test_stratified_folds_balance_and_seed():
    y = np.array([0] * 37 + [1] * 23)
    a = F.stratified_folds(y, 5, random_state=1)
    assert (a == F.stratified_folds(y, 5, random_state=1)).all()
    assert not (a == F.stratified_folds(y, 5, random_state=2)).all()
    for c in (0, 1):
        counts = np.bincount(a[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_groups_never_straddle_folds():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 2)  # a true and a false statement per city
    y = np.tile([1, 0], 40)
    folds = F.stratified_folds(y, 5, groups=groups, random_state=rng.integers(100))
    for g in range(40):
        assert np.unique(folds[groups == g]).size == 1
    assert np.bincount(folds).min() >= 14


def test_cv_with_groups(binary_layers):
    X, y = binary_layers
    groups = np.arange(len(y)) // 4
    cv = F.cross_validate_logistic(X.astype(np.float32), y, [1.0], folds=5, groups=groups)
    for g in np.unique(groups):
        assert np.unique(cv.fold_ids[groups == g]).size == 1


def test_cv_all_layers_at_once_equals_one_at_a_time(binary_layers):
    # The accelerator default (every layer in one vmapped solve) against the CPU default.
    X, y = binary_layers
    one = F.cross_validate_logistic(X.astype(np.float32), y, [0.1, 1.0], folds=3, layer_batch_size=1)
    every = F.cross_validate_logistic(X.astype(np.float32), y, [0.1, 1.0], folds=3, layer_batch_size=3)
    np.testing.assert_allclose(every.accuracy, one.accuracy, atol=1e-6)
    np.testing.assert_allclose(every.fit.coef, one.fit.coef, rtol=1e-4, atol=1e-6)
    m_one = F.fit_multinomial(X.astype(np.float32), np.arange(len(y)) % 3, 1.0, layer_batch_size=1)
    m_every = F.fit_multinomial(X.astype(np.float32), np.arange(len(y)) % 3, 1.0, layer_batch_size=3)
    np.testing.assert_allclose(m_every.coef, m_one.coef, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("softmax", [False, True])
def test_fold_scores_equal_masked_metrics_on_all_rows(softmax):
    rng = np.random.default_rng(3)
    n, n_folds = 203, 4  # folds of unequal size, so the shorter ones are padded
    fold_ids = rng.permutation(np.arange(n) % n_folds)
    w = rng.uniform(0.2, 2.0, n)
    if softmax:
        y = rng.integers(0, 3, n)
        z = rng.normal(size=(n_folds, 2, 5, n, 3)).astype(np.float32)
    else:
        y = rng.integers(0, 2, n)
        z = np.round(rng.normal(size=(n_folds, 2, 5, n)), 1).astype(np.float32)  # ties for AUROC
    held_out = F.held_out_rows(fold_ids, w)
    assert held_out.index.shape == (n_folds, 51) and held_out.weight[-1, -1] == 0
    acc, ll, auc = F.fold_scores(z, y, held_out, softmax=softmax)
    for f in range(n_folds):
        mask = (fold_ids == f) * w
        if softmax:
            np.testing.assert_allclose(acc[f], F.multiclass_accuracy(y, z[f], mask), rtol=1e-6)
            np.testing.assert_allclose(ll[f], F.multiclass_log_loss(y, z[f], mask), rtol=1e-5)
            assert np.isnan(np.asarray(auc)).all()
        else:
            np.testing.assert_allclose(acc[f], F.binary_accuracy(y, z[f], mask), rtol=1e-6)
            np.testing.assert_allclose(ll[f], F.binary_log_loss(y, z[f], mask), rtol=1e-5)
            rows = fold_ids == f
            expected = [[roc_auc_score(y[rows], z[f, a, b, rows], sample_weight=w[rows]) for b in range(5)]
                        for a in range(2)]
            np.testing.assert_allclose(auc[f], expected, atol=1e-6)


def test_held_out_rows_and_fold_scores_reject_bad_input():
    with pytest.raises(ValueError, match="without gaps"):
        F.held_out_rows(np.array([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="non-negative integers"):
        F.held_out_rows(np.array([0.0, 1.0]))
    held_out = F.held_out_rows(np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"expected \(F=2, \.\.\., N=4\)"):
        F.fold_scores(np.zeros((3, 4)), np.zeros(4), held_out)
