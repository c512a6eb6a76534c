import _tolerance as T
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
        # Ours within its stopping region of the float64 optimum (T.glm_region: tol = 1e-7 and float32
        # rounding), scikit-learn's as far as its float64 gradient says; our objective within the region's gap.
        ours = T.glm_region(X[l], y, C, tol=1e-7, fit_intercept=fit_intercept)
        theirs = T.reference_radius(ours, ref.coef_[0], ref.intercept_[0])
        T.assert_within(T.as_theta(w, b), T.as_theta(ref.coef_[0], ref.intercept_[0]), ours.radius + theirs, f"layer {l}")
        o, o_ref = objective(X[l], y, w, b, C), objective(X[l], y, ref.coef_[0], ref.intercept_[0], C)
        assert o - o_ref <= ours.gap, (o - o_ref, ours.gap)
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
        # The stopping test (max-abs scaled float32 gradient <= tol) plus the float32 gradient's rounding.
        region = T.glm_region(X[l], y, C, tol=1e-7)
        assert np.linalg.norm(g) <= region.gradient, (np.linalg.norm(g), region.gradient)
        assert region.gradient < 1e-3 * np.abs(C * X[l].T @ (1 / (1 + np.exp(-X[l] @ (0 * w))) - y)).max()  # informative


def test_sample_weight_matches_sklearn(binary_layers):
    X, y = binary_layers
    sw = np.random.default_rng(1).uniform(0, 3, size=len(y))
    fit = F.fit_logistic(X[1].astype(np.float32), y, 0.5, sample_weight=sw)
    ref = sk_reference(X[1], y, 0.5, sw=sw)
    region = T.glm_region(X[1], y, 0.5, tol=1e-7, sample_weight=sw)
    bound = region.radius + T.reference_radius(region, ref.coef_[0], ref.intercept_[0])
    T.assert_within(T.as_theta(fit.coef, fit.intercept), T.as_theta(ref.coef_[0], ref.intercept_[0]), bound)


def test_zero_weights_equal_dropping_rows(binary_layers):
    X, y = binary_layers
    keep = np.arange(len(y)) % 4 != 0
    a = F.fit_logistic(X.astype(np.float32), y, 1.0, sample_weight=keep.astype(float))
    b = F.fit_logistic(X[:, keep].astype(np.float32), y[keep], 1.0)
    for l in range(3):  # one problem, summed over other rows: two solves within its region
        region = T.glm_region(X[l, keep].astype(np.float32), y[keep], 1.0, tol=1e-7, data=False)
        T.assert_within(T.as_theta(a.coef[l], a.intercept[l]), T.as_theta(b.coef[l], b.intercept[l]), 2 * region.radius,
                        f"layer {l}")


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
            ref = sk_reference(X[l], y, C)
            region = T.glm_region(X[l], y, C, tol=1e-7)
            bound = region.radius + T.reference_radius(region, ref.coef_[0], ref.intercept_[0])
            for fit in (F.LogisticFit(*(a[l, g] for a in grid)), single):
                T.assert_within(T.as_theta(fit.coef, fit.intercept), T.as_theta(ref.coef_[0], ref.intercept_[0]), bound,
                                f"layer {l}, C={C}")
            T.assert_within(T.as_theta(grid.coef[l, g], grid.intercept[l, g]), T.as_theta(single.coef, single.intercept),
                            2 * region.radius, f"grid vs single, layer {l}, C={C}")


@pytest.mark.parametrize("layer_batch_size", [1, 2, 3])
def test_layer_batching_gives_same_answer(binary_layers, layer_batch_size):
    X, y = binary_layers
    ref = F.fit_logistic(X.astype(np.float32), y, [0.1, 1.0], layer_batch_size=3)
    got = F.fit_logistic(X.astype(np.float32), y, [0.1, 1.0], layer_batch_size=layer_batch_size)
    assert_same_optima(got, ref, X.astype(np.float32), y, [0.1, 1.0])


def assert_same_optima(got, ref, X, y, Cs, **kwargs):
    """Two float32 logistic fits ``(L, G)`` of the same problems (``X`` float32 ``(L, N, D)``): each within its
    problem's region (T.glm_region at the default tol = 1e-7), so within twice its radius of the other."""
    assert bool(got.converged.all()) and bool(ref.converged.all())
    for l in range(X.shape[0]):
        for g, C in enumerate(Cs):
            region = T.glm_region(X[l], y, C, tol=1e-7, data=False, **kwargs)
            T.assert_within(T.as_theta(got.coef[l, g], got.intercept[l, g]), T.as_theta(ref.coef[l, g], ref.intercept[l, g]),
                            2 * region.radius, f"layer {l}, C={C}")


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_half_precision_storage_gives_float32_fit(binary_layers, dtype):
    X, y = binary_layers
    Xh = jax.numpy.asarray(X, dtype=dtype)
    fit = F.fit_logistic(Xh, y, 1.0)
    assert fit.coef.dtype == np.float32
    X16 = np.asarray(Xh.astype(np.float32))  # the same values: half precision is exact in float32
    ref = F.fit_logistic(X16, y, 1.0)
    expand = lambda f: F.LogisticFit(*(np.asarray(a)[:, None] for a in f))
    assert_same_optima(expand(fit), expand(ref), X16, y, [1.0])


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
        # A float64 solve at tol = 1e-10: a region 1e-4 times the size of a float32 solve's here.
        region = T.glm_region(X[2], y, 1.0, tol=1e-10, precision="float64")
        bound = region.radius + T.reference_radius(region, ref.coef_[0], ref.intercept_[0])
        T.assert_within(T.as_theta(fit.coef[2], fit.intercept[2]), T.as_theta(ref.coef_[0], ref.intercept_[0]), bound,
                        informative=1e-6)


def test_callable_under_jit_and_vmap(binary_layers):
    # Research code jits and vmaps the functional API; labels are then taken as coded 0/1.
    X, y = binary_layers
    X32 = X.astype(np.float32)
    eager = F.fit_logistic(X32, y, [0.1, 1.0])
    jitted = jax.jit(lambda X, y, C: F.fit_logistic(X, y, C))(X32, y, jax.numpy.asarray([0.1, 1.0]))
    assert_same_optima(jitted, eager, X32, y, [0.1, 1.0])
    per_layer = jax.vmap(lambda x: F.fit_logistic(x, y, 1.0))(X32)  # vmap over layers, 2-D each
    expand = lambda f: F.LogisticFit(*(np.asarray(a)[:, None] for a in f))
    assert_same_optima(expand(per_layer), expand(F.fit_logistic(X32, y, 1.0)), X32, y, [1.0])
    ridge = jax.jit(lambda X, y: F.fit_ridge(X, y, 1.0).coef)(X32, y)
    eager_ridge = F.fit_ridge(X32, y, 1.0).coef
    for l in range(3):  # a direct solve: within its rounding (T.ridge_region) of the float64 solution, each
        region = T.ridge_region(X32[l], 2.0 * y - 1, 1.0, data=False)
        T.assert_within(ridge[l], eager_ridge[l], 2 * region.radius[0], f"ridge layer {l}")


def test_a_solve_at_the_float_floor_stops_once_newton_steps_no_longer_shrink_the_gradient():
    """Features of scale 1e4 (not standardised): the float32 gradient's rounding stays far above tol, so
    each solve ends at the float floor. Once the objective is within float32's epsilon of its float64
    minimum (after k* iterations), a Newton step can lower only the gradient's rounding: the solve takes
    the step whose decrement first reads below F's resolution, one that may still halve the gradient, and
    one that does not (an accurate Newton step leaves at most CG's forcing term, 0.3, of it). It used to
    go on while the gradient crept down by a few percent a step: 4 to 7 iterations past k* on these four
    layers (23 in all; now 8). Every fit stays in its float64 region."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    u = rng.normal(size=16)
    X = rng.normal(size=(4, 400, 16)) + np.linspace(0.125, 0.5, 4)[:, None, None] * np.outer(2 * y - 1, u / np.linalg.norm(u))
    X32 = (X * 1e4 + 5e4).astype(np.float32)
    fit = F.fit_logistic(X32, y, 1.0)
    assert bool(fit.converged.all())
    n_iter = np.asarray(fit.n_iter)
    iterates = [F.fit_logistic(X32, y, 1.0, max_iter=k) for k in range(1, int(n_iter.max()) + 1)]
    past = []
    for l in range(4):
        region = T.glm_region(X32[l], y, 1.0, tol=1e-7, data=False)
        best = T.objective(region.problem, region.optimum)
        gaps = [(T.objective(region.problem, T.as_theta(it.coef[l], it.intercept[l])) - best) / best
                for it in iterates[:n_iter[l]]]
        k_star = 1 + next(k for k, gap in enumerate(gaps) if gap <= 2 * T.U32)
        past.append(n_iter[l] - k_star)
        T.assert_within(T.as_theta(fit.coef[l], fit.intercept[l]), region.optimum, region.radius, f"layer {l}")
    assert sum(past) <= 3 * len(past), past


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
    # Here the gradient test pins little: sqrt(P) tol C N / mu is larger than ||w|| (mu ~ 0.05: few samples
    # near the boundary). The solver stops on its other test, a Newton-decrement estimate of the relative
    # objective gap <= tol, or at the float floor, where a step's decrease of F is below what float32
    # resolves of F: a mean over N samples, to T.mean_rounding(N) relative. So F - min F is at most
    # (tol + that) F, and strong convexity turns the gap into a distance: sqrt(2 gap / mu).
    region = T.glm_region(X, y, 100.0, tol=1e-7, data=False)  # X is float32 data already
    gap = (1e-7 + T.mean_rounding(N)) * region.objective
    assert o - o_ref <= gap, (o - o_ref, gap)
    T.assert_within(T.as_theta(w, b), T.as_theta(ref.coef_[0], ref.intercept_[0]),
                    np.sqrt(2 * gap / region.mu) + T.reference_radius(region, ref.coef_[0], ref.intercept_[0]))
