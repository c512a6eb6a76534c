import dataclasses

import _tolerance as T
import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier, RidgeClassifierCV

import lmprobe_jax.functional as F
from lmprobe_jax.functional._policy import default_policy


@pytest.fixture
def three_class():
    rng = np.random.default_rng(0)
    N, D, K = 300, 10, 3
    X = rng.normal(size=(2, N, D))
    y = np.argmax(X[0, :, :K] * 2 + rng.gumbel(size=(N, K)), axis=1)
    return X, y


@pytest.mark.parametrize("rounded", [False, True])
# At C = 20 with the outlier columns, float32's region around the optimum is too wide to say anything.
@pytest.mark.parametrize(("C", "outliers"), [(0.05, 1.0), (1.0, 1.0), (20.0, 1.0), (0.05, 30.0), (1.0, 30.0)])
def test_multinomial_matches_sklearn(three_class, C, rounded, outliers):
    """At scikit-learn's optimum with and without bfloat16-rounded Hessian products in CG (the policy's
    ``softmax_hessian_bfloat16_from``), on standardised features and on features with two columns 30 times
    larger (raw activations' outlier dimensions: an ill-conditioned Hessian, which the rounding bends
    most; there the solves take Newton steps, and the rounded ones differ from the exact ones)."""
    X, y = three_class
    X = X * np.where(np.arange(X.shape[-1]) < 2, outliers, 1.0)
    policy = dataclasses.replace(default_policy(), softmax_hessian_bfloat16_from=3 if rounded else 0)
    fit = F.fit_multinomial(X.astype(np.float32), y, C, policy=policy)
    assert fit.coef.shape == (2, 3, 10) and bool(fit.converged.all())
    for l in range(2):
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X[l], y)
        # Ours within the float32 region of the float64 optimum, scikit-learn's as far as its gradient
        # says (T.glm_region, T.reference_radius); coefficients with the (centred) intercepts.
        region = T.glm_region(X[l], y, C, tol=1e-7)
        bound = region.radius + T.reference_radius(region, ref.coef_, ref.intercept_)
        T.assert_within(T.as_theta(fit.coef[l], fit.intercept[l]), T.as_theta(ref.coef_, ref.intercept_), bound,
                        f"layer {l}")
        # Probabilities: softmax moves by at most half the largest logit's move, plus its own rounding.
        reach = T.decision_error(X[l], region.optimum, bound).max()
        np.testing.assert_allclose(np.asarray(F.predict_proba(F.MultinomialFit(*(a[l] for a in fit)), X[l])),
                                   ref.predict_proba(X[l]), atol=0.5 * reach + 8 * T.U32)


def test_multinomial_grid_shape(three_class):
    X, y = three_class
    fit = F.fit_multinomial(X.astype(np.float32), y, [0.1, 1.0])
    assert fit.coef.shape == (2, 2, 3, 10) and fit.intercept.shape == (2, 2, 3)
    assert F.decision_function(fit, X).shape == (2, 2, 300, 3)


@pytest.mark.parametrize("shape", [(120, 15), (30, 60)])  # primal and dual
@pytest.mark.parametrize("alpha", [0.01, 1.0, 100.0])
def test_ridge_matches_closed_form(shape, alpha):
    rng = np.random.default_rng(0)
    N, D = shape
    X = rng.normal(size=(N, D)) * np.linspace(0.2, 3, D) + 2.0
    y = X @ rng.normal(size=D) + rng.normal(size=N)
    sw = rng.uniform(0.2, 2.0, N)
    fit = F.fit_ridge(X.astype(np.float32), y, alpha, sample_weight=sw)
    ref = Ridge(alpha=alpha, solver="cholesky").fit(X, y, sample_weight=sw)
    # A float32 refined direct solve: within its rounding's reach (T.ridge_region) of the float64 solution.
    region = T.ridge_region(X, y, alpha, sample_weight=sw)
    ref_coef, ref_intercept = T.ridge_reference_error(region, N)
    T.assert_within(fit.coef, ref.coef_, region.radius[0] + ref_coef[0])
    assert abs(float(fit.intercept) - ref.intercept_) <= region.intercept_error[0] + ref_intercept[0]


def test_ridge_classifier_and_grid():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2, 100, 6))
    y = (X[1, :, 0] > 0).astype(int)
    fit = F.fit_ridge(X.astype(np.float32), y, [0.1, 10.0])
    assert fit.coef.shape == (2, 2, 6)
    for l in range(2):
        for g, a in enumerate([0.1, 10.0]):
            ref = RidgeClassifier(alpha=a).fit(X[l], y)
            region = T.ridge_region(X[l], 2.0 * y - 1, a)  # RidgeClassifier: targets -1/+1
            T.assert_within(fit.coef[l, g], ref.coef_.ravel(), region.radius[0] + T.ridge_reference_error(region, 100)[0][0])
    assert (np.asarray(F.predict(F.RidgeFit(fit.coef[1, 0], fit.intercept[1, 0]), X[1])) == y).mean() > 0.9


@pytest.mark.parametrize("n_alphas", [3, 10])  # on the CPU: a Cholesky per alpha, and one eigh
@pytest.mark.parametrize("shape", [(120, 6), (20, 40)])  # primal and dual
def test_ridge_classifier_one_vs_all_matches_sklearn(n_alphas, shape):
    rng = np.random.default_rng(3)
    N, D = shape
    X = rng.normal(size=(2, N, D))
    y = np.argmax(X[1, :, :4] + 0.5 * rng.normal(size=(N, 4)), axis=1) * 2 + 1  # labels 1, 3, 5, 7
    w = rng.uniform(0.5, 2.0, N)
    alphas = np.logspace(-1, 2, n_alphas)
    fit = F.fit_ridge(X.astype(np.float32), y, alphas, sample_weight=w)
    assert isinstance(fit, F.MulticlassRidgeFit) and fit.coef.shape == (2, n_alphas, 4, D)
    assert F.decision_function(fit, X).shape == (2, n_alphas, N, 4)
    for l in range(2):
        for g in (0, n_alphas - 1):
            ref = RidgeClassifier(alpha=alphas[g]).fit(X[l], y, sample_weight=w)
            # One float32 refined direct solve per class's -1/+1 target (T.ridge_region), each within its
            # rounding's reach of the float64 solution.
            targets = np.where(y[None] == ref.classes_[:, None], 1.0, -1.0)
            region = T.ridge_region(X[l], targets, alphas[g], sample_weight=w)
            ref_coef, ref_intercept = T.ridge_reference_error(region, N)
            for k in range(4):
                T.assert_within(fit.coef[l, g, k], ref.coef_[k], region.radius[k] + ref_coef[k], f"class {k}")
            np.testing.assert_array_less(np.abs(np.asarray(fit.intercept[l, g]) - ref.intercept_),
                                         region.intercept_error + ref_intercept)
            one = F.MulticlassRidgeFit(fit.coef[l, g], fit.intercept[l, g])
            # The argmax can differ only where two classes' scores are within the solve's reach of a tie.
            sure = ~T.unsure(X[l], region.theta(), region.reach)
            assert sure.mean() > 0.9
            np.testing.assert_array_equal(ref.classes_[np.asarray(F.predict(one, X[l]))][sure], ref.predict(X[l])[sure])
            # A float32 softmax over K scores sums to 1 within (2K + 4) ulps (K exponentials and
            # divisions, a K-term sum).
            np.testing.assert_allclose(np.asarray(F.predict_proba(one, X[l])).sum(-1), 1.0, rtol=(2 * 4 + 4) * T.U32)


def test_ridge_classifier_cv_one_vs_all_matches_sklearn():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2, 90, 5))
    y = np.argmax(X[0, :, :3] + 0.7 * rng.normal(size=(90, 3)), axis=1)
    alphas = np.array([0.1, 3.0, 30.0, 300.0])
    cv = F.cross_validate_ridge(X.astype(np.float32), y, alphas)
    acc = F.cross_validate_ridge(X.astype(np.float32), y, alphas, scoring="accuracy").accuracy[..., 0]
    assert isinstance(cv.fit, F.MulticlassRidgeFit) and cv.fit.coef.shape == (2, 3, 5)
    assert np.isnan(np.asarray(cv.roc_auc)).all()
    targets = np.where(y[None] == np.arange(3)[:, None], 1.0, -1.0)  # (K, N): one-vs-all -1/+1
    for l in range(2):
        ref = RidgeClassifierCV(alphas=alphas, store_cv_results=True).fit(X[l], y)  # mean squared LOO error
        loo = RidgeClassifierCV(alphas=alphas, scoring="accuracy", store_cv_results=True).fit(X[l], y)
        for g, alpha in enumerate(alphas):
            # Each class's LOO predictions within their float32 bound (T.ridge_loo_error); the MSE through
            # the square and the float32 mean.
            err = np.stack([T.ridge_loo_error(X[l], t, alpha) for t in targets], axis=1)  # (N, K)
            sq = ref.cv_results_[..., g]  # (N, K) squared LOO errors
            mse_err = np.mean(2 * np.sqrt(sq) * err + err**2) + T.mean_rounding(sq.size) * sq.mean()
            np.testing.assert_allclose(float(cv.mse[l, g, 0]), sq.mean(), rtol=0, atol=mse_err)
            # The LOO argmax can differ only where the top two classes' LOO values are within reach.
            values = loo.cv_results_[..., g]  # (N, K) LOO decision values
            top = np.sort(values, axis=1)
            order = np.argsort(values, axis=1)
            reach = err[np.arange(90), order[:, -1]] + err[np.arange(90), order[:, -2]]
            slack = np.mean(top[:, -1] - top[:, -2] <= reach) + T.mean_rounding(90)
            expected = np.mean(np.argmax(values, axis=1) == y)
            np.testing.assert_allclose(float(acc[l, g]), expected, rtol=0, atol=slack)
        assert float(cv.best_value[l]) == ref.alpha_
        region = T.ridge_region(X[l], targets, ref.alpha_)
        ref_coef, _ = T.ridge_reference_error(region, 90)
        for k in range(3):
            T.assert_within(cv.fit.coef[l, k], ref.coef_[k], region.radius[k] + ref_coef[k], f"layer {l}, class {k}")


@pytest.mark.parametrize("shape", [(40, 5), (12, 30)])
def test_ridge_loo_equals_brute_force(shape):
    rng = np.random.default_rng(2)
    N, D = shape
    X = rng.normal(size=(N, D)) + 1.0
    y = X @ rng.normal(size=D) + rng.normal(size=N)
    sw = rng.uniform(0.5, 2.0, N)
    alphas = np.array([0.1, 3.0])
    loo = F.ridge_loo(X.astype(np.float32), y, alphas, sample_weight=sw)
    for g, a in enumerate(alphas):
        brute = [
            Ridge(alpha=a).fit(np.delete(X, i, 0), np.delete(y, i), sample_weight=np.delete(sw, i)).predict(X[i:i + 1])[0]
            for i in range(N)
        ]
        # Per sample: the float32 evaluation of y_i - e_i / (1 - h_ii), bounded by T.ridge_loo_error.
        err = T.ridge_loo_error(X, y, a, sample_weight=sw)
        assert np.all(err < 0.05 * np.abs(np.asarray(brute) - y).max())  # informative
        np.testing.assert_array_less(np.abs(np.asarray(loo.predictions[g], np.float64) - brute), err)


@pytest.mark.parametrize("iid", [False, True])
def test_mass_mean_direction(iid):
    rng = np.random.default_rng(3)
    N, D = 400, 6
    # A mixing whose within-class covariance has condition number ~1e2: float32 then resolves the LDA
    # direction to ~kappa u (the unshifted draw gave kappa ~6e5, where float32 promises no direction).
    A = rng.normal(size=(D, D)) + 3 * np.eye(D)
    y = rng.integers(0, 2, N)
    X = rng.normal(size=(N, D)) @ A + np.outer(y, rng.normal(size=D))
    fit = F.fit_mass_mean(X.astype(np.float32), y, iid=iid, shrinkage=0.0)
    if iid:
        ref = LinearDiscriminantAnalysis().fit(X, y).coef_[0]
    else:
        ref = X[y == 1].mean(0) - X[y == 0].mean(0)
    d = np.asarray(fit.direction, np.float64)
    # Float32 rounding of the class means (a mean of n_c terms each; and X's cast), of the pooled
    # within-class covariance (a sum of N products per entry; and its inputs' casts), as T.dot_error.
    means = [X[y == c].mean(0) for c in (0, 1)]
    dmu = means[1] - means[0]
    mean_err = sum((T.dot_error(X[y == c], axis=0) + T.LAMBDA * T.U32 * np.linalg.norm(X[y == c], axis=0)) / (y == c).sum()
                   for c in (0, 1))
    rel = np.linalg.norm(mean_err) / np.linalg.norm(dmu)  # the mean difference: within its rounding
    if iid:
        # LDA's direction solves Sigma_w d = mu_1 - mu_0 (scikit-learn's coef_ is such a d). A float32
        # Cholesky solve moves d by at most kappa times the relative error of its inputs: Sigma_w's
        # rounding and the factorisation's backward error (2 D u), and the mean difference's.
        centred = X - np.where(y[:, None] > 0, means[1], means[0])
        cov = centred.T @ centred / N
        class_means = np.where(y[:, None] > 0, means[1], means[0])
        casts = 2 * T.LAMBDA * T.U32 * np.sqrt(((np.abs(X) + np.abs(class_means)) ** 2).T @ centred**2)  # X's, centring
        cov_err = np.linalg.norm(T.gram_error(centred, cast=False) + casts, 2) / N
        kappa, norm = np.linalg.cond(cov), np.linalg.norm(cov, 2)
        backward = cov_err / norm + 2 * D * T.U32
        rel = kappa * (backward + rel) / (1 - kappa * backward)
    # An angle of at most rel radians leaves a cosine of at least 1 - rel^2 / 2.
    assert rel < 1e-2  # informative: the other estimator's direction is at cosine ~0.6
    assert d @ ref / np.linalg.norm(d) / np.linalg.norm(ref) >= 1 - rel**2 / 2
    # Calibrated: the coefficient is a positive multiple of the direction and beats chance.
    assert np.asarray(fit.coef) @ d > 0
    assert (np.asarray(F.predict(fit, X)) == y).mean() > 0.6


def test_softmax_loss_is_accurate_for_confident_samples():
    # The line search sums per-sample loss differences; for confidently right samples the loss is
    # ~e^{-margin}, far below float32's resolution of the logits. logsumexp(z) - z_y cancelled there.
    from scipy.special import logsumexp

    from lmprobe_jax.functional._multinomial import _softmax_value

    rng = np.random.default_rng(0)
    z = (rng.normal(size=(4, 1000)) * np.array([[30.0], [3.0], [1.0], [0.1]])).astype(np.float32)
    y = rng.integers(0, 4, 1000)
    d = z.astype(np.float64) - z.astype(np.float64)[y, np.arange(1000)]  # d_y = 0
    right = (d <= 0).all(axis=0)  # y is the top logit: loss = log1p(sum of the others' e^d), no cancelling
    ref = logsumexp(d, axis=0)
    ref[right] = np.log1p(np.where(d[:, right] < 0, np.exp(d[:, right]), 0.0).sum(0))
    got = np.asarray(_softmax_value(z, y), np.float64)
    assert ref.min() < 1e-20  # the test has samples where the old difference was pure rounding
    # Float32 rounding of m + log1p(sum_k exp(d_k - m)), m = max_k d_k, d = z - z_y: d and d - m are
    # each off by an ulp of their size, which exp turns into that much relative error; log1p(S) moves
    # by at most its own value times S's relative error; then the sum. No cancellation: relative to
    # the loss, except for m's own ulp.
    m = np.maximum(d.max(axis=0), 0.0)
    size = np.abs(z.astype(np.float64)).max(axis=0) * 2 + m  # |d| <= 2 max |z|
    bound = T.U32 * m + T.U32 * (2 * size + 4 + 8) * (ref - m) + T.U32 * ref
    assert bound.max() < 1e-3 * ref.max()  # informative
    np.testing.assert_array_less(np.abs(got - ref), bound + np.finfo(np.float32).tiny)


def test_cv_refit_converges_on_separable_classes_at_large_c():
    # scikit-learn's check_f_contiguous_array_estimator data: three classes cut from one feature. The
    # refit at C = 1e4 used to stall (its line search could not see the loss decrease in float32).
    rng = np.random.RandomState(0)
    X = np.asfortranarray(3 * rng.uniform(size=(20, 3)))
    y = X[:, 0].astype(int)
    cv = F.cross_validate_logistic(X, y, C=np.logspace(-4, 4, 3), folds=3)
    assert float(cv.best_value[0]) == 1e4
    assert bool(np.asarray(cv.converged).all())


@pytest.mark.parametrize("shape", [(80, 12), (25, 40)])  # primal and dual
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ridge_methods_agree_with_the_closed_form(shape, fit_intercept):
    """The eigendecomposition and the Cholesky-per-alpha paths of ridge_solve each reach float64's solution."""
    from lmprobe_jax.functional._ridge import ridge_solve

    rng = np.random.default_rng(4)
    N, D = shape
    X = rng.normal(size=(2, N, D)) * np.linspace(0.3, 2, D) + 1.5
    y = X[1] @ rng.normal(size=D) + rng.normal(size=N)
    sw = rng.uniform(0.3, 2.0, N)
    alphas = np.array([0.05, 2.0, 40.0])
    for method in ("eigh", "cholesky"):
        fit = ridge_solve(X.astype(np.float32), y[None].astype(np.float32), sw.astype(np.float32), alphas,
                          fit_intercept=fit_intercept, loo=False, layer_batch_size=1, method=method)[0]
        for l in range(2):
            for g, a in enumerate(alphas):
                ref = Ridge(alpha=a, fit_intercept=fit_intercept, solver="cholesky").fit(X[l], y, sample_weight=sw)
                region = T.ridge_region(X[l], y, a, sample_weight=sw, fit_intercept=fit_intercept)
                ref_coef, ref_intercept = T.ridge_reference_error(region, N)
                T.assert_within(fit.coef[l, g, 0], ref.coef_, region.radius[0] + ref_coef[0], f"{method}, layer {l}, alpha {a}")
                assert abs(float(fit.intercept[l, g, 0]) - ref.intercept_) <= region.intercept_error[0] + ref_intercept[0]


@pytest.mark.parametrize("layer_batch_size", [1, 2])
def test_ridge_cholesky_falls_back_to_eigh_where_it_breaks_down(layer_batch_size):
    """A singular Gram matrix (repeated columns) with alpha below its float resolution: the Cholesky
    factorisation breaks down, and the layer is solved through the eigendecomposition instead."""
    import jax.numpy as jnp

    from lmprobe_jax.functional._ridge import ridge_solve

    rng = np.random.default_rng(5)
    base = rng.normal(size=(60, 4)).astype(np.float32) * 1e3
    X = np.stack([np.repeat(base, 5, axis=1), rng.normal(size=(60, 20)).astype(np.float32)])  # layer 0 singular
    y = (rng.random(60) < 0.5).astype(np.float32)[None]
    centred = X[0] - X[0].mean(0)
    alphas = np.array([1e-9, 1.0], np.float32)
    assert not np.isfinite(np.asarray(jnp.linalg.cholesky(centred.T @ centred + alphas[0] * np.eye(20)))).all()
    solve = {m: ridge_solve(X, y, np.ones(60, np.float32), alphas, fit_intercept=True, loo=False,
                            layer_batch_size=layer_batch_size, method=m)[0] for m in ("eigh", "cholesky")}
    assert np.isfinite(np.asarray(solve["cholesky"].coef)).all()
    np.testing.assert_array_equal(solve["cholesky"].coef[0], solve["eigh"].coef[0])
    if layer_batch_size == 1:  # layers one at a time: the well-conditioned one kept its Cholesky solution
        for g, alpha in enumerate(alphas):  # two float32 direct solves, each within T.ridge_region's reach
            region = T.ridge_region(X[1], y[0], float(alpha), data=False)
            T.assert_within(solve["cholesky"].coef[1, g, 0], solve["eigh"].coef[1, g, 0], 2 * region.radius[0])
