import _tolerance as T
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
        # Each fold fit (ours at cv_tol with its rounding, scikit-learn's as far as its float64 gradient
        # says) lies within reach of the fold problem's float64 optimum: a held-out prediction can differ only where the decision value is
        # within that reach of zero, so the accuracies agree up to those samples' share (mostly none).
        slack = np.zeros((len(Cs), 4))
        for f in range(4):
            train, test = cv.fold_ids != f, cv.fold_ids == f
            for g, C in enumerate(Cs):
                ours = T.glm_region(X[l], y, C, tol=1e-8, sample_weight=train)
                path = ref.coefs_paths_[1][f, g, 0]  # scikit-learn's fold fit: [coef, intercept]
                theirs = T.reference_radius(ours, path[:-1], path[-1])
                slack[g, f] = T.accuracy_slack(X[l][test], ours.optimum, ours.radius + theirs)
        np.testing.assert_array_less(np.abs(np.asarray(cv.accuracy[l]) - ref.scores_[1][..., 0].T), slack + 1e-12)
        if not T.same_best(cv.best_value[l], ref.C_[0], ref.scores_[1][..., 0].T, slack):
            continue
        refit = T.glm_region(X[l], y, ref.C_[0], tol=1e-7)
        bound = refit.radius + T.reference_radius(refit, ref.coef_[0], ref.intercept_)
        T.assert_within(T.as_theta(cv.fit.coef[l], cv.fit.intercept[l]), T.as_theta(ref.coef_[0], ref.intercept_),
                        bound, f"refit of layer {l}")


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
        C = float(cv.best_value[layer])
        direct = F.fit_multinomial(X[layer].astype(np.float32), y, C)
        assert bool(direct.converged)
        # Two float32 solves of one problem from different starts, each stopped at tol = 1e-7.
        region = T.glm_region(X[layer].astype(np.float32), y, C, tol=1e-7, data=False)
        T.assert_within(T.as_theta(cv.fit.coef[layer], cv.fit.intercept[layer]),
                        T.as_theta(direct.coef, direct.intercept), 2 * region.radius, f"layer {layer}")


def test_ridge_cv_matches_ridgecv():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 80, 6))
    y = X[0] @ rng.normal(size=6) + 0.5 * rng.normal(size=80)
    alphas = np.array([0.1, 1.0, 10.0, 100.0])
    cv = F.cross_validate_ridge(X.astype(np.float32), y, alphas)
    ref = RidgeCV(alphas=alphas, store_cv_results=True).fit(X[0], y)
    for g, alpha in enumerate(alphas):
        np.testing.assert_allclose(float(cv.mse[0, g, 0]), ref.cv_results_[:, g].mean(), rtol=0,
                                   atol=_loo_mse_error(X[0], y, alpha, ref.cv_results_[:, g]))
    assert float(cv.best_value[0]) == ref.alpha_


def _loo_mse_error(X, y, alpha, squared_errors):
    """Bound on a float32 leave-one-out MSE's error: each LOO prediction's (T.ridge_loo_error) through
    the square, and the float32 mean."""
    err = T.ridge_loo_error(X, y, alpha)
    return float(np.mean(2 * np.sqrt(squared_errors) * err + err**2) + T.mean_rounding(len(y)) * np.mean(squared_errors))


def test_metrics_match_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + y, 1).astype(np.float32)  # many ties
    w = rng.uniform(0, 2, 300)
    # Float32 sums of non-negative weights (ranks are exact): off by at most their rounding, relative.
    auc_rtol, mean_rtol = T.auc_rounding(300), T.mean_rounding(300) + 4 * T.U32
    np.testing.assert_allclose(float(F.roc_auc(y, scores, w)), roc_auc_score(y, scores, sample_weight=w), rtol=auc_rtol)
    p = 1 / (1 + np.exp(-scores.astype(np.float64)))
    np.testing.assert_allclose(float(F.binary_log_loss(y, scores, w)), log_loss(y, p, sample_weight=w), rtol=mean_rtol)
    batch = np.stack([scores, -scores])
    np.testing.assert_allclose(F.roc_auc(y, batch), [roc_auc_score(y, scores), roc_auc_score(y, -scores)], rtol=auc_rtol)
    # Under a caller's jit and vmap (the vmapped sort, binary search and scatter).
    vmapped = jax.jit(jax.vmap(lambda s: F.roc_auc(y, s, w)))(np.stack([batch, batch[::-1]]))
    np.testing.assert_allclose(vmapped[:, 0], [roc_auc_score(y, s, sample_weight=w) for s in (scores, -scores)],
                               rtol=auc_rtol)


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
    np.testing.assert_allclose(float(F.roc_auc(y, scores, w)), expected, rtol=T.auc_rounding(200))
    np.testing.assert_allclose(float(F.roc_auc(y, np.ones(200, dtype), w)), 0.5, rtol=T.auc_rounding(200))
    assert np.isnan(float(F.roc_auc(np.zeros(200, int), scores)))


def test_metrics_of_float16_scores_sum_in_float32():
    """5000 float16 decisions: summed in float16, accuracy was off by 5e-5 and log-loss by 2e-4."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 5000)
    decision = (rng.normal(size=5000) + y - 0.5).astype(np.float16)
    z = decision.astype(np.float64)
    logits = np.stack([-decision, decision], axis=-1)
    # Accuracies: integer counts (exact in float32 below 2^24) and one division. Log-losses: a float32
    # mean of 5000 positive terms, each a few ulps (float16 sums were off by 2e-4, far outside).
    mean_rtol = T.mean_rounding(5000) + 4 * T.U32
    np.testing.assert_allclose(float(F.binary_accuracy(y, decision)), np.mean((z > 0) == y), rtol=T.U32)
    np.testing.assert_allclose(float(F.binary_log_loss(y, decision)), log_loss(y, 1 / (1 + np.exp(-z))), rtol=mean_rtol)
    np.testing.assert_allclose(float(F.multiclass_accuracy(y, logits)), np.mean((z > 0) == y), rtol=T.U32)
    softmax = np.exp(np.stack([-z, z], -1)) / np.exp(np.stack([-z, z], -1)).sum(-1, keepdims=True)
    np.testing.assert_allclose(float(F.multiclass_log_loss(y, logits)), log_loss(y, softmax), rtol=mean_rtol)


def test_roc_auc_float64_resolves_below_float32():
    y = np.arange(100) % 2
    scores = 1.0 + 1e-12 * (np.arange(100) % 4)  # equal in float32, four distinct values in float64
    with jax.enable_x64(True):
        np.testing.assert_allclose(float(F.roc_auc(y, scores)), roc_auc_score(y, scores), rtol=T.auc_rounding(100, T.U64))


def test_ridge_sweep_over_three_classes_scores_each_fold_as_sklearn():
    from sklearn.linear_model import RidgeClassifier

    from lmprobe_jax import sweep_activations

    rng = np.random.default_rng(5)
    X = rng.normal(size=(2, 150, 6)).astype(np.float32)
    y = np.argmax(X[1, :, :3] + 0.5 * rng.normal(size=(150, 3)), axis=1)
    sweep = sweep_activations(X, y, classifier="ridge", folds=3)
    assert np.isnan(sweep.roc_auc).all() and sweep.estimator.coef_.shape == (2, 3, 6)
    Xs = ((X - sweep.mean) / sweep.scale).astype(np.float64)  # the float32 data the sweep fits, exactly
    targets = np.where(y[None] == np.arange(3)[:, None], 1.0, -1.0)
    for layer in range(2):
        for f in range(3):
            train, test = sweep.fold_ids != f, sweep.fold_ids == f
            ref = RidgeClassifier().fit(Xs[layer][train], y[train])
            # Held-out predictions can differ only where two classes' scores are within the float32
            # solve's reach (T.ridge_region) of a tie: none here, so the accuracies agree to rounding.
            region = T.ridge_region(Xs[layer], targets, 1.0, sample_weight=train.astype(float), data=False)
            theta = np.hstack([region.coef, region.intercept[:, None]])
            slack = T.accuracy_slack(Xs[layer][test], theta, float(np.max(region.radius + region.intercept_error)))
            assert slack < 1 / test.sum()
            np.testing.assert_allclose(sweep.accuracy[layer, f], ref.score(Xs[layer][test], y[test]), rtol=0, atol=slack)


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
    # The accelerator default (every layer in one vmapped solve) against the CPU default. The two order
    # their float32 sums differently, so each lands somewhere in the region its stopping test and its
    # rounding allow (T.glm_region), not on the same ulps: compared through that region, per problem.
    # Fold problems are solved to 1e-7 here (not the default cv_tol = 1e-4, whose regions let many
    # held-out predictions flip): then only samples within ~1e-3 of the decision boundary may.
    X, y = binary_layers
    X32 = X.astype(np.float32)
    Cs = [0.1, 1.0]
    one = F.cross_validate_logistic(X32, y, Cs, folds=3, layer_batch_size=1, cv_tol=1e-7)
    every = F.cross_validate_logistic(X32, y, Cs, folds=3, layer_batch_size=3, cv_tol=1e-7)
    assert bool(one.converged.all()) and bool(every.converged.all())
    np.testing.assert_array_equal(every.fold_ids, one.fold_ids)
    for l in range(3):
        slack = 2 * T.fold_accuracy_slack(X32[l], y, Cs, one.fold_ids, tol=1e-7)
        np.testing.assert_array_less(np.abs(np.asarray(every.accuracy[l]) - np.asarray(one.accuracy[l])), slack + 1e-12)
        if not T.same_best(every.best_value[l], one.best_value[l], one.accuracy[l], slack):
            continue
        region = T.glm_region(X32[l], y, float(one.best_value[l]), tol=1e-7, data=False)
        T.assert_within(T.as_theta(every.fit.coef[l], every.fit.intercept[l]),
                        T.as_theta(one.fit.coef[l], one.fit.intercept[l]), 2 * region.radius, f"refit of layer {l}")
    y3 = np.arange(len(y)) % 3
    m_one = F.fit_multinomial(X32, y3, 1.0, layer_batch_size=1)
    m_every = F.fit_multinomial(X32, y3, 1.0, layer_batch_size=3)
    assert bool(m_one.converged.all()) and bool(m_every.converged.all())
    for l in range(3):
        region = T.glm_region(X32[l], y3, 1.0, tol=1e-7, data=False)
        T.assert_within(T.as_theta(m_every.coef[l], m_every.intercept[l]), T.as_theta(m_one.coef[l], m_one.intercept[l]),
                        2 * region.radius, f"multinomial layer {l}")


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
        # The same weighted means of the same per-sample values, summed over the gathered rows or over
        # all rows masked: each is within its float32 rounding (relative: the terms are non-negative).
        acc_rtol, ll_rtol = 2 * T.mean_rounding(n), 2 * (T.mean_rounding(n) + 4 * T.U32)
        if softmax:
            np.testing.assert_allclose(acc[f], F.multiclass_accuracy(y, z[f], mask), rtol=acc_rtol)
            np.testing.assert_allclose(ll[f], F.multiclass_log_loss(y, z[f], mask), rtol=ll_rtol)
            assert np.isnan(np.asarray(auc)).all()
        else:
            np.testing.assert_allclose(acc[f], F.binary_accuracy(y, z[f], mask), rtol=acc_rtol)
            np.testing.assert_allclose(ll[f], F.binary_log_loss(y, z[f], mask), rtol=ll_rtol)
            rows = fold_ids == f
            expected = [[roc_auc_score(y[rows], z[f, a, b, rows], sample_weight=w[rows]) for b in range(5)]
                        for a in range(2)]
            np.testing.assert_allclose(auc[f], expected, rtol=T.auc_rounding(rows.sum()))


def test_held_out_rows_and_fold_scores_reject_bad_input():
    with pytest.raises(ValueError, match="without gaps"):
        F.held_out_rows(np.array([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="non-negative integers"):
        F.held_out_rows(np.array([0.0, 1.0]))
    held_out = F.held_out_rows(np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"expected \(F=2, \.\.\., N=4\)"):
        F.fold_scores(np.zeros((3, 4)), np.zeros(4), held_out)
