"""The solver's building blocks, each on its own: products under vmap, the preconditioners."""

import dataclasses
import functools

import _tolerance as T
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import lmprobe_jax.functional as F
from lmprobe_jax.functional import _hessian_inverse, _row_streaming
from lmprobe_jax.functional._glm import GLM, Params, optimality
from lmprobe_jax.functional._logistic import BINARY_LOGISTIC
from lmprobe_jax.functional._multinomial import SOFTMAX
from lmprobe_jax.functional._newton_cg import conjugate_gradients
from lmprobe_jax.functional._nystrom import apply_preconditioner, nystrom_gram
from lmprobe_jax.functional._path import solve_layers, solver_options
from lmprobe_jax.functional._policy import default_policy
from lmprobe_jax.functional._precision import rounded_matmul, row_sums
from lmprobe_jax.functional._preconditioners import identity, layer_nystrom, nystrom
from lmprobe_jax.functional._products import matvec, products, rmatvec
from lmprobe_jax.functional._sources import layer_source

PRODUCTS = products(16)  # the CPU policy's
# Newton-CG from the first step: the tests of a preconditioner compare its CG work alone.
NEWTON = dataclasses.replace(default_policy(), quasi_newton_memory=0)


def test_products_match_numpy_under_nested_vmap():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(7, 5)), jnp.float32)
    V = jnp.asarray(rng.normal(size=(3, 2, 5)), jnp.float32)
    U = jnp.asarray(rng.normal(size=(3, 2, 7)), jnp.float32)
    mv = jax.vmap(jax.vmap(matvec, in_axes=(None, 0)), in_axes=(None, 0))(X, V)
    rv = jax.vmap(jax.vmap(rmatvec, in_axes=(None, 0)), in_axes=(None, 0))(X, U)
    assert_products_close(mv, "nd,abd->abnd", X, V)
    assert_products_close(rv, "nd,abn->abdn", X, U)
    XL = jnp.stack([X, 2 * X])  # batched X (layers vmapped) takes the einsum branch
    assert_products_close(jax.vmap(matvec)(XL, V[:2, 0]), "lnd,ld->lnd", XL, V[:2, 0])


def assert_products_close(got, terms_subscripts, *operands):
    """``got`` within the float32 rounding of its inner products (T.dot_error) of the float64 result;
    ``terms_subscripts`` gives the products' terms, the summed index last."""
    terms = np.einsum(terms_subscripts, *(np.asarray(o, np.float64) for o in operands))
    np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - terms.sum(-1)), T.dot_error(terms, axis=-1))


@pytest.mark.parametrize("shape", [(37,), (3, 300), (2, 4, 1000)])
def test_row_sums_are_the_sums_over_the_last_axis(shape):
    """The product with ones the solvers take for a sum over samples (see _precision.row_sums) is that sum,
    within the float32 rounding of its inner products, alone and under the vmap the solvers run it in."""
    a = np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)
    ones = np.ones(shape[-1], np.float32)
    assert_products_close(jax.jit(row_sums)(jnp.asarray(a)), "...n,n->...n", a, ones)
    batch = a[None] * 3
    assert_products_close(jax.jit(jax.vmap(row_sums))(jnp.asarray(batch)), "...n,n->...n", batch, ones)


@pytest.mark.parametrize("shapes", [((300, 37), (37, 500)), ((4, 1000), (1000, 64))])
def test_rounded_matmul_rounds_only_its_operands(shapes):
    """The Hessian products' rounded_matmul is the product of its operands rounded to bfloat16, summed in
    float32: within float32's rounding of those products' sums (T.dot_error), and so within the operands'
    rounding (2^-8 each, relative) plus that of the unrounded product."""
    rng = np.random.default_rng(shapes[0][0])
    a = (rng.normal(size=shapes[0]) * np.exp(rng.normal(size=shapes[0]))).astype(np.float32)
    b = rng.normal(size=shapes[1]).astype(np.float32)
    b16 = jnp.asarray(b).astype(jnp.bfloat16)
    got = np.asarray(jax.jit(rounded_matmul)(jnp.asarray(a), b16), np.float64)
    a_r = np.asarray(jnp.asarray(a).astype(jnp.bfloat16), np.float64)
    b_r = np.asarray(b16, np.float64)
    assert_products_close(got, "ik,kj->ijk", a_r, b_r)
    terms = np.einsum("ik,kj->ijk", np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64)))
    bound = 2 * 2.0 ** -8 * (1 + 2.0 ** -8) * terms.sum(-1) + T.dot_error(np.einsum("ik,kj->ijk", a_r, b_r))
    np.testing.assert_array_less(np.abs(got - a.astype(np.float64) @ b.astype(np.float64)), bound)


@pytest.mark.parametrize("n_rows", [1, 2, 3, 4, 5, 8, 9, 16, 17, 40])
@pytest.mark.parametrize("shape", [(300, 37), (20, 90)])
def test_matvec_every_row_count_matches_numpy(n_rows, shape):
    # One row (the matrix-vector kernel), 2-16 (the CPU's fused form, padded to 4 or a multiple of 8) and
    # more (the dot), on a tall and a wide X.
    rng = np.random.default_rng(n_rows)
    X = rng.normal(size=shape).astype(np.float32)
    V = rng.normal(size=(n_rows, shape[1])).astype(np.float32)
    out = jax.jit(matvec)(jnp.asarray(X), jnp.asarray(V))
    assert out.shape == (n_rows, shape[0])
    assert_products_close(out, "rd,nd->rnd", V, X)
    folds = jax.jit(jax.vmap(matvec, in_axes=(None, 0)))(jnp.asarray(X), jnp.asarray(V))  # as CV folds call it
    assert_products_close(folds, "rd,nd->rnd", V, X)


@pytest.mark.parametrize("shape", [(3000, 768), (8192, 4096), (20000, 6144)])
def test_one_vector_products_hold_no_copy_of_x(shape):
    # From D = 4096 on, XLA's CPU backend ran the row form v @ X^T by transposing X into a copy at every
    # product: a float32 layer more in a streamed fit than its plan (issue 22). A product pair, alone and
    # as the solver calls it (vmapped over one weight set), may hold vectors, not a second X.
    X = jax.ShapeDtypeStruct(shape, jnp.float32)
    for lead in ((), (1,)):
        v = jax.ShapeDtypeStruct(lead + shape[1:], jnp.float32)
        u = jax.ShapeDtypeStruct(lead + shape[:1], jnp.float32)
        pair = (lambda X, v, u: (matvec(X, v), rmatvec(X, u))) if not lead else jax.vmap(
            lambda X, v, u: (matvec(X, v), rmatvec(X, u)), in_axes=(None, 0, 0))
        temp = jax.jit(pair).lower(X, v, u).compile().memory_analysis().temp_size_in_bytes
        assert temp < 4 * shape[0] * shape[1] / 2, (shape, lead, temp)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_nystrom_approximates_gram_from_below(fit_intercept):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 6)) + 0.5
    approx = nystrom_gram(jnp.asarray(X, jnp.float32), 6, fit_intercept=fit_intercept)
    U = np.concatenate([np.asarray(approx.basis_coef), np.asarray(approx.basis_intercept)[:, None]], axis=1)
    # A float32 orthogonal factorisation is orthonormal to its backward error, lambda sqrt(m) u per
    # entry of a length-m inner product (m = 7 here).
    np.testing.assert_allclose(U @ U.T, np.eye(6), atol=4 * T.sum_rounding(7))
    A = np.hstack([X, np.ones((40, 1)) if fit_intercept else np.zeros((40, 1))])
    gram = A.T @ A
    residual = gram - U.T @ np.diag(np.asarray(approx.eig)) @ U
    # A Nystrom approximation never exceeds the matrix; with rank = rank(A) it is exact. In float32 both
    # hold to the sketch's rounding amplified by its core's Cholesky: kappa of A^T A times the backward
    # errors of the sketch (a sum of 40 products), the core's factorisation and the SVD.
    floor = np.linalg.cond(A.T @ A if fit_intercept else X.T @ X) * 4 * T.sum_rounding(40) * np.linalg.norm(gram, 2)
    assert floor < 1e-2 * np.linalg.norm(gram, 2)  # informative
    assert np.linalg.eigvalsh(residual).min() >= -floor
    if not fit_intercept:
        assert np.linalg.norm(residual, 2) <= floor


def test_preconditioner_inverts_shifted_gram_on_its_span():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 5))
    approx = nystrom_gram(jnp.asarray(X, jnp.float32), 5, fit_intercept=False)
    mu = 0.7
    v = rng.normal(size=5).astype(np.float32)
    out, _ = apply_preconditioner(approx, mu, jnp.asarray(v), jnp.zeros(()))
    # With full rank, P^-1 = (lam_min + mu) (A + mu I)^-1; in float32, to the inverse's error bound.
    shifted = X.T @ X + mu * np.eye(5)
    expected = (float(approx.eig[-1]) + mu) * np.linalg.solve(shifted, v)
    formation = np.linalg.norm(T.gram_error(X), 2)
    T.assert_within(out, expected, T.spd_inverse_error(shifted, formation) * np.linalg.norm(expected))


def test_full_rank_preconditioner_stays_positive_definite_on_a_wide_spectrum():
    """Feature variances spanning ~1e7 make the full-rank gains ~1e-7, below the basis's float32
    orthonormality: unfloored, v.P^-1 v went negative along the top directions."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 40)) * np.linspace(0.05, 3.0, 40) ** 2
    approx = nystrom_gram(jnp.asarray(X, jnp.float32), 40, fit_intercept=False)
    top = np.asarray(approx.basis_coef[:3])  # the directions a tiny gain would scale
    v = np.vstack([top, rng.normal(size=(20, 40))]).astype(np.float32)
    out, _ = apply_preconditioner(approx, 0.004, jnp.asarray(v), jnp.zeros(len(v)))
    assert (np.sum(v * np.asarray(out), axis=1) > 0).all()


def _cond_branches(jaxpr):
    """The branches of every ``cond`` in ``jaxpr`` (closed jaxprs), nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond":
            found += list(eqn.params["branches"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _cond_branches(sub)
    return found


def test_a_skipped_nystrom_approximation_is_the_identity_without_products():
    """A flat layer's skipped approximation (zero eigenvalues) applies the identity on a branch with no
    product (rank-r products with a zero basis cost 0.4-0.8 of a pass over X each at D = 4096), and under a
    vmap over layers, one built and one skipped, each layer's application is the one it gets alone."""
    rng = np.random.default_rng(3)
    flat = rng.normal(size=(400, 64)).astype(np.float32)
    steep = (flat * np.geomspace(30.0, 0.1, 64)).astype(np.float32)
    nystrom_of = functools.partial(layer_nystrom, rank=16, fit_intercept=True, probe_rank=8, decay=4.0)
    skipped, built = nystrom_of(jnp.asarray(flat)), nystrom_of(jnp.asarray(steep))
    assert not np.asarray(skipped.eig).any() and np.asarray(built.eig)[0] > 0
    glm = GLM(BINARY_LOGISTIC, True, products(0))
    curvature = jnp.asarray(rng.uniform(0.05, 0.25, 400), jnp.float32)
    v = Params(jnp.asarray(rng.normal(size=(3, 64)), jnp.float32),
               jnp.asarray(rng.normal(size=3), jnp.float32))

    def apply(approx, x, v):
        pre = nystrom(glm, approx)
        data = glm.data(x, jnp.zeros(400), jnp.ones(400), jnp.float32(1.0))
        return pre.apply(pre.build(data, curvature), v)

    problems = jax.jit(jax.vmap(apply, in_axes=(None, None, 0)))  # problems sharing a layer (a C grid, folds)
    out = problems(skipped, jnp.asarray(flat), v)
    np.testing.assert_array_equal(np.asarray(out.coef), np.asarray(v.coef))
    np.testing.assert_array_equal(np.asarray(out.intercept), np.asarray(v.intercept))
    branches = _cond_branches(jax.make_jaxpr(problems)(skipped, jnp.asarray(flat), v).jaxpr)
    assert any("dot_general" not in _primitives(b.jaxpr) for b in branches)
    assert any("dot_general" in _primitives(b.jaxpr) for b in branches)
    alone = [problems(a, jnp.asarray(x), v) for a, x in ((skipped, flat), (built, steep))]
    layers = jax.tree.map(lambda *a: jnp.stack(a), skipped, built)
    both = jax.jit(jax.vmap(problems, in_axes=(0, 0, None)))(layers, jnp.asarray(np.stack([flat, steep])), v)
    # Each entry of the projection on the 16 unit basis rows sums 65 products (at most |v| in size), each
    # output entry 16 (scaled by gains in (0, 1]): twice the rounding of either computation.
    norm = np.linalg.norm(np.asarray(v.coef), axis=1, keepdims=True)
    bound = 2 * (16 * T.sum_rounding(65) + 4 * T.sum_rounding(16)) * norm
    for layer, one in enumerate(alone):
        np.testing.assert_array_less(np.abs(np.asarray(both.coef[layer]) - np.asarray(one.coef)),
                                     np.broadcast_to(bound, one.coef.shape))


@pytest.mark.parametrize("layer_batch_size", [1, 2])
def test_badly_scaled_features_without_intercept_at_large_c_converge(layer_batch_size):
    """The case that produced NaN: no intercept, C = 1000, features scaled over 3.5 decades."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    X = rng.normal(size=(2, 500, 40)) * np.linspace(0.05, 3.0, 40) ** 2
    y = (X[0, :, :5].sum(-1) + 2.0 * rng.normal(size=500) > 0).astype(int)
    fit = F.fit_logistic(X.astype(np.float32), y, [100.0, 1000.0], fit_intercept=False,
                         layer_batch_size=layer_batch_size)
    assert bool(fit.converged.all())

    def objective(w, C, layer):
        return C * np.logaddexp(0, -(2 * y - 1) * (X[layer] @ w)).sum() + 0.5 * w @ w

    for layer in range(2):
        for g, C in enumerate([100.0, 1000.0]):
            ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000, fit_intercept=False).fit(X[layer], y)
            ours = objective(np.asarray(fit.coef[layer, g], np.float64), C, layer)
            # Within the objective gap the float32 stopping region allows (T.glm_region).
            region = T.glm_region(X[layer], y, C, tol=1e-7, fit_intercept=False)
            assert region.gap < 1e-3 * region.objective  # informative
            assert ours - objective(ref.coef_[0], C, layer) <= region.gap


def test_cg_stops_at_the_first_step_whose_residual_is_within_reach_entrywise():
    # The next gradient is, to first order, CG's residual: once every entry is within reach, the Newton step
    # meets a max-abs gradient test, though the residual's 2-norm is up to sqrt(D) times larger. In float64,
    # so the recursive residual CG tests is the true one to far below reach.
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 64)) * np.linspace(0.3, 3.0, 64)
    y = (X @ rng.normal(size=64) + rng.normal(size=300) > 0).astype(np.float64)
    glm = GLM(BINARY_LOGISTIC, True, products(0))
    with jax.enable_x64(True):
        data = glm.data(jnp.asarray(X), jnp.asarray(y), jnp.ones(300), 1.0)
        p = glm.null_point(data, None)
        ev = glm.evaluate(data, glm.predictor(data.X, p))
        g = glm.gradient(data, p, ev)
        reach = 1e-3 * float(optimality(g))
        # The float64 reference's F is C sum(s) = 300 times the scaled objective CG works on.
        reference, theta = T.problem(X, y, 1.0), T.as_theta(p.coef, p.intercept)
        H, g64 = T.hessian_full(reference, theta) / 300, T.gradient(reference, theta).ravel() / 300

        def solve(max_steps: int, tol2: float = 0.0, **stop):
            d, _, k, solved = conjugate_gradients(glm, data, ev.aux, g, identity(), None, tol2, max_steps, **stop)
            residual = -g64 - H @ np.r_[np.asarray(d.coef), np.asarray(d.intercept)]
            return int(k), bool(solved), residual

        k, solved, residual = solve(65, reach=reach, loose2=np.inf)
        assert solved and np.max(np.abs(residual)) <= reach * (1 + 1e-6)
        assert not solve(k - 1, reach=reach, loose2=np.inf)[1]  # the first such step
        # The 2-norm test at the same level needs at least as many steps (here more); a 2-norm bound the
        # residual has not met holds the entrywise stop back.
        k_norm, solved_norm, residual_norm = solve(65, reach**2)
        assert solved_norm and np.linalg.norm(residual_norm) <= reach * (1 + 1e-6) and k_norm > k
        assert solve(65, reach**2, reach=reach, loose2=(0.5 * reach) ** 2)[0] == k_norm


def test_streamed_cg_stops_at_the_first_step_whose_residual_is_within_reach_entrywise():
    # The out-of-core solver's CG (float32, a pass over the row blocks a step) keeps the same stop, per problem.
    rng = np.random.default_rng(5)
    X = (rng.normal(size=(300, 64)) * np.linspace(0.3, 3.0, 64)).astype(np.float32)
    y = (X @ rng.normal(size=64) + rng.normal(size=300) > 0).astype(np.float32)
    rows = _row_streaming._LayerRows(layer_source(X[None]), 0, 100, y, np.ones(300), True)
    z, C = jnp.zeros((1, 300)), jnp.float32(1.0)
    g = rows.gradient(z, jnp.zeros((1, 64)), C)
    w = rows.curvature(z, C)
    g_max = float(jnp.max(jnp.abs(jnp.concatenate([g[0][0], g[1]]))))
    reach = 1e-2 * g_max

    def solve(max_steps: int, tol: float, reach: float, loose: float):
        rows.passes = 0
        stop = _row_streaming._CGStop(*(np.array([v], np.float32) for v in (tol, reach, loose)))
        d_coef, d_int, _ = _row_streaming._newton_direction(rows, w, *g, None, stop, max_steps)
        steps = rows.passes
        _, h_coef, h_int = rows.hvp(w, d_coef, d_int)
        return steps, np.r_[np.asarray(-g[0][0] - h_coef[0]), np.asarray(-g[1] - h_int)]

    # The true residual (products recomputed) differs from CG's recursive one by float32 rounding, far
    # below 1e-4 of the gradient for this well-scaled layer.
    slack = 1e-4 * g_max
    k, residual = solve(65, 0.0, reach, np.inf)
    assert 0 < k < 65 and np.max(np.abs(residual)) <= reach + slack
    assert np.max(np.abs(solve(k - 1, 0.0, reach, np.inf)[1])) > reach - slack  # the first such step
    k_norm, residual_norm = solve(65, reach, 0.0, 0.0)
    assert np.linalg.norm(residual_norm) <= reach + slack and k_norm > k
    assert solve(65, reach, reach, 0.5 * reach)[0] == k_norm  # a 2-norm bound not yet met holds it back


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("leaf", [400, 3])  # one triangular solve; the recursion on halves
def test_lagged_hessian_inverse_is_the_inverse(monkeypatch, fit_intercept, leaf):
    monkeypatch.setattr(_hessian_inverse, "_TRIANGULAR_LEAF", leaf)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 9)) * np.linspace(0.2, 3.0, 9)
    curvature = rng.uniform(0, 0.25, size=60)
    lagged = _hessian_inverse.lagged_hessian_inverse(
        jnp.asarray(X, jnp.float32), jnp.asarray(curvature, jnp.float32), jnp.float32(0.4), fit_intercept=fit_intercept,
        halve=True,
    )
    A = np.hstack([X, np.ones((60, 1)) if fit_intercept else np.zeros((60, 1))])
    expected = np.linalg.inv(A.T @ (curvature[:, None] * A) + 0.4 * np.eye(10))
    rel = _lagged_inverse_error(A, 2.5 * curvature)  # the same matrix over 0.4: the same relative error
    assert_inverse_close(np.asarray(lagged.inverse), expected, rel)
    assert bool(lagged.active)
    v = rng.normal(size=10).astype(np.float32)
    coef, intercept = _hessian_inverse.apply_lagged_inverse(lagged, jnp.asarray(v[:9]), jnp.asarray(v[9]))
    # the inverse's error on v, and the product's own rounding
    bound = rel * np.linalg.norm(expected, 2) * np.linalg.norm(v) + np.linalg.norm(T.dot_error(expected * v, axis=1))
    T.assert_within(np.append(coef, intercept), expected @ v, bound)


def _lagged_inverse_error(A, weights):
    """Relative error bound of a float32 ``(A^T diag(weights) A + I)^-1``: its formation (a sum over
    samples per entry, T.dot_error) and the inverse (T.spd_inverse_error)."""
    M = A.T @ (weights[:, None] * A) + np.eye(A.shape[1])
    return T.spd_inverse_error(M, np.linalg.norm(T.gram_error(A, weights), 2))


def test_lagged_hessian_inverse_below_float_resolution_is_inactive_not_nan():
    """At C = 1e12 the shift is far below float32's resolution of a singular Gram (D > N): the build is
    shifted where float32 can resolve it, or reported inactive, never applied as NaN."""
    rng = np.random.default_rng(8)
    X = jnp.asarray(rng.normal(size=(10, 30)), jnp.float32)
    lagged = _hessian_inverse.lagged_hessian_inverse(X, jnp.full(10, 0.25, jnp.float32), jnp.float32(1e-15),
                                                     fit_intercept=True, halve=False)
    assert bool(lagged.active) == bool(np.isfinite(np.asarray(lagged.inverse)).all())


def test_lagged_hessian_path_keeps_the_optimum_with_fewer_cg_steps():
    """Solved one layer at a time, a path builds the lagged inverse (its build threshold is a few CG
    steps on problems this small); vmapped over layers it never does. Same optimum, less CG work."""
    rng = np.random.default_rng(4)
    L, N, D = 2, 400, 30
    X = rng.normal(size=(L, N, D)) * np.linspace(0.05, 3.0, D) ** 2
    y = (X[:, :, :5].sum(-1)[0] + 2.0 * rng.normal(size=N) > 0).astype(np.float32)
    Cs = jnp.asarray(np.logspace(-2, 3, 6), jnp.float32)
    assert _hessian_inverse.lagged_build_threshold(N, D, 1, NEWTON.lagged_build_factor) < 20

    def solve(layer_batch_size):
        opts = solver_options((L, N, D), None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                              precondition_rank=None, layer_batch_size=layer_batch_size, policy=NEWTON)
        return solve_layers(BINARY_LOGISTIC, jnp.asarray(X, jnp.float32), jnp.asarray(y), jnp.ones((1, N)), Cs,
                            tol=1e-7, **opts)

    lagged, plain = solve(1), solve(L)
    assert bool(lagged.converged.all()) and bool(plain.converged.all())
    assert_same_optima(lagged, plain, X.astype(np.float32), y, np.asarray(Cs))  # both stop at tol = 1e-7
    assert int(lagged.n_cg.sum()) < 0.8 * int(plain.n_cg.sum())


def assert_same_optima(a, b, X, y, Cs, tol=1e-7, fit_intercept=True, informative=0.05):
    """Two float32 solves (``solve_layers`` results, fields ``(L, 1, G, ...)``, or fits ``(L, G, ...)``) of the
    same problems on float32 ``X`` ``(L, N, D)``: within twice the stopping region's radius (T.glm_region)."""
    def theta(r, l, g):
        coef, intercept = np.asarray(r.coef), np.asarray(r.intercept)
        if coef.ndim == 4:  # (L, W, G, D)
            coef, intercept = coef[:, 0], intercept[:, 0]
        return T.as_theta(coef[l, g], intercept[l, g])

    for l in range(X.shape[0]):
        for g, C in enumerate(Cs):
            region = T.glm_region(X[l], y, float(C), tol=tol, fit_intercept=fit_intercept, data=False)
            T.assert_within(theta(a, l, g), theta(b, l, g), 2 * region.radius, f"layer {l}, C={float(C):g}",
                            informative=informative)


@pytest.mark.parametrize("n_c", [1, 4])
def test_hessian_refresh_keeps_the_optimum_with_fewer_cg_steps(n_c):
    """The accelerator's in-loop exact inverse (forced here on the CPU, layers vmapped as on a GPU):
    the float64 optimum, in far fewer CG steps than the Nystrom preconditioner alone."""
    rng = np.random.default_rng(5)
    L, N, D = 3, 500, 40
    X = rng.normal(size=(L, N, D)) * np.linspace(0.05, 3.0, D) ** 2
    y = (X[0, :, :5].sum(-1) + 2.0 * rng.normal(size=N) > 0).astype(np.float32)
    Cs = np.logspace(-1, 2, n_c) if n_c > 1 else np.array([10.0])
    assert default_policy("cpu").hessian_refresh_cg == 0  # the CPU keeps the path's lagged inverse

    def solve(refresh):
        opts = solver_options((L, N, D), None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                              precondition_rank=None, layer_batch_size=L,
                              policy=dataclasses.replace(NEWTON, hessian_refresh_cg=refresh))
        return solve_layers(BINARY_LOGISTIC, jnp.asarray(X, jnp.float32), jnp.asarray(y), jnp.ones((1, N)),
                            jnp.asarray(Cs, jnp.float32), tol=1e-7, **opts)

    refreshed, plain = solve(3), solve(0)
    assert bool(refreshed.converged.all()) and bool(plain.converged.all())
    assert int(refreshed.n_cg.sum()) < 0.6 * int(plain.n_cg.sum())
    for layer in range(L):
        for g, C in enumerate(Cs):
            ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X[layer], y)
            region = T.glm_region(X[layer], y, C, tol=1e-7)
            bound = region.radius + T.reference_radius(region, ref.coef_[0], ref.intercept_[0])
            T.assert_within(T.as_theta(refreshed.coef[layer, 0, g], refreshed.intercept[layer, 0, g]),
                            T.as_theta(ref.coef_[0], ref.intercept_[0]), bound, f"layer {layer}, C={C:g}")


@pytest.mark.parametrize("halve", [True, False])
@pytest.mark.parametrize("n", [7, 401, 850])
def test_spd_inverse_matches_numpy(halve, n):
    """The lagged inverse's factor inverse: one triangular solve (small, or whole) or by halves."""
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n + 20, n))
    matrix = a.T @ a / n + np.eye(n)
    got = np.asarray(jax.jit(lambda m: _hessian_inverse.spd_inverse(m, halve))(jnp.asarray(matrix, jnp.float32)),
                     np.float64)
    expected = np.linalg.inv(matrix)
    assert_inverse_close(got, expected, T.spd_inverse_error(matrix))


def assert_inverse_close(got, expected, rel):
    """``||got - expected||_2 <= rel ||expected||_2`` (the norm T.spd_inverse_error bounds); rel informative
    (a wrong factor, a missing intercept column or a transposed inverse is off by O(1))."""
    assert rel < 0.1, rel
    err = np.linalg.norm(got - expected, 2) / np.linalg.norm(expected, 2)
    assert err <= rel, (err, rel)


@pytest.mark.parametrize("halve", [True, False])
@pytest.mark.parametrize("d", [30, 450])
def test_lagged_hessian_inverse_matches_numpy(halve, d):
    """([X, 1]^T diag(s) [X, 1] + penalty I)^-1, with the build's products by halves (above 400 columns)
    or whole."""
    rng = np.random.default_rng(d)
    X = rng.normal(size=(3 * d, d)) * np.linspace(0.1, 2.0, d)
    curvature = rng.uniform(0.0, 0.25, size=3 * d)
    build = jax.jit(lambda x, s: _hessian_inverse.lagged_hessian_inverse(x, s, 1 / 0.7, fit_intercept=True, halve=halve))
    got = np.asarray(build(jnp.asarray(X, jnp.float32), jnp.asarray(curvature, jnp.float32)).inverse, np.float64)
    xa = np.hstack([X, np.ones((3 * d, 1))])
    expected = np.linalg.inv((xa.T * curvature) @ xa + np.eye(d + 1) / 0.7)
    assert_inverse_close(got, expected, _lagged_inverse_error(xa, 0.7 * curvature))  # 0.7 x the unit-shift form


def test_policy_defaults_per_backend_and_resolution_per_shape(monkeypatch):
    """One place picks the defaults per backend; solver_options resolves them for a shape: the in-solve
    inverse only for binary, non-wide layers whose inverses fit in a quarter of the device's memory."""
    from lmprobe_jax.functional import _path

    cpu, gpu = default_policy("cpu"), default_policy("gpu")
    assert cpu.hessian_refresh_cg == 0 and cpu.fused_max_rows and cpu.halve_builds and cpu.lagged_build_factor
    assert gpu.hessian_refresh_cg > 0 and not gpu.fused_max_rows and not gpu.halve_builds
    assert hash(gpu) == hash(default_policy("gpu"))  # hashable and equal: one compiled program per policy

    class Device:  # an 80 GB accelerator, as an H100 reports itself
        def memory_stats(self):
            return {"bytes_limit": 80 * 10**9}

    monkeypatch.setattr(_path.jax, "devices", lambda: [Device()])

    def resolved(shape, n_outputs=None, batch=None):
        return solver_options(shape, n_outputs, fit_intercept=True, max_iter=100, max_cg_iter=None,
                              precondition_rank=None, layer_batch_size=batch, policy=gpu)["policy"]

    assert resolved((32, 6144, 4096), batch=32).hessian_refresh_cg == gpu.hessian_refresh_cg
    assert resolved((32, 6144, 4096), 5, batch=32).hessian_refresh_cg == 0  # softmax: no (D+1)^2 inverse
    # Softmax layers: the softmax probe threshold and memory; an accelerator's always build, Newton-CG first.
    softmax = resolved((32, 6144, 4096), 5, batch=32)
    assert softmax.nystrom_decay == 0.0 and softmax.quasi_newton_memory == 0
    on_cpu = solver_options((2, 600, 64), 5, fit_intercept=True, max_iter=100, max_cg_iter=None, precondition_rank=None,
                            layer_batch_size=None, policy=cpu)["policy"]
    assert on_cpu.nystrom_decay == cpu.softmax_nystrom_decay > cpu.nystrom_decay
    assert on_cpu.quasi_newton_memory == cpu.softmax_quasi_newton_memory > 0
    assert on_cpu.switch_progress == cpu.softmax_switch_progress != cpu.switch_progress
    # Binary solves may end on the gap bound, softmax ones take the certifying Newton step.
    assert cpu.gap_bound and not on_cpu.gap_bound
    wide = resolved((32, 100, 4096), batch=32)
    assert wide.woodbury and wide.hessian_refresh_cg == 0 and wide.nystrom_rank == 0 and wide.quasi_newton_memory == 0
    # 32 layers of 8192 features at once need 4 x 8.6 GB > 20 GB; 8 at a time fit.
    assert resolved((32, 6144, 8192), batch=32).hessian_refresh_cg == 0
    assert resolved((32, 6144, 8192), batch=8).hessian_refresh_cg == gpu.hessian_refresh_cg
    with pytest.raises(TypeError, match="policy must be a SolverPolicy"):
        solver_options((1, 10, 3), None, fit_intercept=True, max_iter=1, max_cg_iter=None, precondition_rank=None,
                       layer_batch_size=None, policy={"quasi_newton_memory": 0})


def test_hessian_blocks_are_resolved_for_large_binary_layers_solved_one_at_a_time():
    """Row blocks of about ``hessian_block_bytes`` (a power of two dividing N) on the CPU for binary layers of
    at least ``hessian_blocks_from`` bytes solved one at a time; never for smaller layers, softmax, wide
    kernel-inverse layers, layers batched under a vmap, or an accelerator's policy."""
    from lmprobe_jax.functional._path import hessian_block_rows

    def rows(shape, n_outputs=None, batch=None, policy=None):
        options = solver_options(shape, n_outputs, fit_intercept=True, max_iter=100, max_cg_iter=None,
                                 precondition_rank=None, layer_batch_size=batch, policy=policy)
        return options["policy"].hessian_block_rows

    cpu = default_policy("cpu")
    assert rows((4, 4096, 4096)) == cpu.hessian_block_bytes // (4 * 4096) == 128
    assert rows((4, 20480, 1024)) == 512
    assert rows((4, 4000, 4096)) == 128  # of the 4096 rows the solver sees (4000's divisors would give 32)
    assert rows((4, 2048, 512)) == 0  # 4 MB: in cache, two products are faster
    assert rows((4, 20480, 1024), n_outputs=5) == 0
    assert rows((4, 20480, 1024), batch=4) == 0
    assert rows((4, 20480, 1024), policy=default_policy("gpu")) == 0
    assert rows((4, 100, 2**20)) == 0  # the wide layers' kernel inverse
    forced = dataclasses.replace(cpu, hessian_blocks_from=0)
    assert hessian_block_rows(20480 + 8, 1024, forced) == 8  # the largest power of two dividing N
    assert hessian_block_rows(20480 + 4, 1024, forced) == 0  # blocks of fewer than 8 rows: none
    assert hessian_block_rows(608, 2**18, forced) == 8  # rows of 1 MB: 8 of them, the smallest block


def test_hessian_blocks_fit_the_rows_of_the_program():
    """Block rows resolved for a bucketed row count are cut to the largest power of two dividing the rows
    the program sees (a caller of ``solve_layers`` may pass any N): 200 rows take 8-row blocks (the whole
    products within rounding), 202 rows the whole products themselves."""
    rng = np.random.default_rng(4)
    whole = GLM(BINARY_LOGISTIC, True, products(16))
    blocked = dataclasses.replace(whole, hessian_block_rows=128)

    def hvp(glm, X, v):
        data = glm.data(X, jnp.zeros(X.shape[0]), jnp.ones(X.shape[0]), jnp.float32(0.5))
        aux = BINARY_LOGISTIC.evaluate(jnp.zeros(X.shape[0]), jnp.zeros(X.shape[0]))[2]
        return jax.jit(glm.hvp)(data, aux, Params(v, jnp.float32(1.0)))[0].coef

    for n in (200, 202):
        X = jnp.asarray(rng.standard_normal((n, 16)), jnp.float32)
        v = jnp.asarray(rng.standard_normal(16), jnp.float32)
        got, expected = np.asarray(hvp(blocked, X, v)), np.asarray(hvp(whole, X, v))
        if n == 202:
            np.testing.assert_array_equal(got, expected)
        x_abs = np.abs(np.asarray(X, np.float64))
        terms = x_abs.T @ (0.25 * (x_abs @ np.abs(np.asarray(v, np.float64)) + 1) / n)  # curvature <= 1/4
        assert np.all(np.abs(got - expected) <= 4 * (n + 16) * np.finfo(np.float32).eps * terms)


@pytest.mark.parametrize("loss, n_outputs", [(BINARY_LOGISTIC, None), (SOFTMAX, 3)])
def test_a_blocked_hessian_product_is_the_whole_one(loss, n_outputs):
    """``GLM.hvp`` over row blocks gives the two whole products' ``H v`` and ``X v`` within their float32
    rounding (sums of N and D terms in another order), for one problem and for weight sets under a vmap
    (a CV's folds), binary and softmax."""
    rng = np.random.default_rng(0)
    n, d, k = 256, 24, n_outputs or 1
    X = jnp.asarray(rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d), jnp.float32)
    y = jnp.asarray(rng.integers(0, k if n_outputs else 2, n), jnp.int32 if n_outputs else jnp.float32)
    weights = jnp.asarray(rng.integers(0, 3, (3, n)), jnp.float32)
    lead = (k,) if n_outputs else ()
    p = (jnp.asarray(rng.standard_normal(lead + (d,)), jnp.float32) * 0.1, jnp.zeros(lead, jnp.float32) + 0.3)
    v = (jnp.asarray(rng.standard_normal((3, *lead, d)), jnp.float32), jnp.ones((3, *lead), jnp.float32))
    whole = GLM(loss, True, products(16))

    def hvp(glm, s, v_coef, v_int):
        data = glm.data(X, y, s, jnp.float32(0.5))
        aux = loss.evaluate(glm.predictor(X, Params(*p)), y)[2]
        hv, u = glm.hvp(data, aux, Params(v_coef, v_int))
        return hv.coef, hv.intercept, u

    expected = jax.vmap(functools.partial(hvp, whole))(weights, *v)
    x_abs = np.abs(np.asarray(X, np.float64))
    v_abs = np.abs(np.asarray(v[0], np.float64))
    u_abs = np.einsum("nd,w...d->w...n", x_abs, v_abs) + np.abs(np.asarray(v[1]))[..., None]
    bound_u = 4 * d * np.finfo(np.float32).eps * u_abs
    # |H| v's terms are at most 1/4 (binary) or 1 (softmax's curvature) times |x| |u| |weight| / sum w.
    scale = np.abs(np.asarray(weights))[:, None] / np.asarray(weights).sum(1)[:, None, None]
    hu_abs = (scale.squeeze(1) if n_outputs is None else scale) * u_abs
    eps = 4 * (n + d) * np.finfo(np.float32).eps
    for rows in (8, 32, 128):
        blocked = dataclasses.replace(whole, hessian_block_rows=rows)
        got = jax.vmap(functools.partial(hvp, blocked))(weights, *v)
        assert np.all(np.abs(np.asarray(got[0]) - np.asarray(expected[0]))
                      <= eps * np.einsum("nd,w...n->w...d", x_abs, hu_abs) + 1e-7)
        assert np.all(np.abs(np.asarray(got[1]) - np.asarray(expected[1])) <= eps * hu_abs.sum(-1) + 1e-7)
        assert np.all(np.abs(np.asarray(got[2]) - np.asarray(expected[2])) <= bound_u)
        one = hvp(blocked, weights[0], v[0][0], v[1][0])  # one problem, no vmap
        assert np.all(np.abs(np.asarray(one[0]) - np.asarray(expected[0][0]))
                      <= eps * np.einsum("nd,...n->...d", x_abs, hu_abs[0]) + 1e-7)


def test_the_cpu_preconditioner_rank_grows_with_the_width():
    """On the CPU the default Nystrom rank is 64 up to D = 1024, then D / 16 up to 256 (what measured faster on
    raw-like layers of 2048 and 4096 features); an accelerator keeps 64; a given rank, a narrow layer's D
    and the wide layers' kernel inverse (no Nystrom) come first."""
    def rank(shape, policy, precondition_rank=None):
        return solver_options(shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None, layer_batch_size=None,
                              precondition_rank=precondition_rank, policy=policy)["policy"].nystrom_rank

    cpu, gpu = default_policy("cpu"), default_policy("gpu")
    assert [rank((1, 20000, d), cpu) for d in (40, 576, 1024, 1600, 2048, 4096, 8192)] == [40, 64, 64, 100, 128, 256, 256]
    assert [rank((1, 20000, d), gpu) for d in (40, 2048, 8192)] == [40, 64, 64]
    assert rank((1, 20000, 4096), cpu, precondition_rank=32) == 32
    assert rank((1, 100, 4096), cpu) == 0  # wide: the kernel inverse instead
    assert rank((1, 20000, 4096), dataclasses.replace(cpu, nystrom_rank=0)) == 0


def _dot_precisions(jaxpr) -> list:
    """The precision of every dot_general in a jaxpr, its sub-jaxprs included (loops, branches, calls)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):  # ClosedJaxpr
                    found += _dot_precisions(sub.jaxpr)
                elif hasattr(sub, "eqns"):
                    found += _dot_precisions(sub)
    return found


@pytest.mark.parametrize(
    "solver", ["logistic", "refreshed", "multinomial", "ridge", "ridge_loo", "mass_mean", "decision"])
def test_every_product_is_full_precision(solver):
    """JAX's default precision rounds float32 products to TF32 on NVIDIA GPUs (see _precision): every
    product the solvers trace must ask for full precision, so a plain `@` slipping in fails here."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(2, 40, 6)), jnp.float32)
    y = (np.arange(40) % 2).astype(np.int32)
    if solver == "refreshed":
        opts = solver_options(X.shape, None, fit_intercept=True, max_iter=10, max_cg_iter=None,
                              precondition_rank=None, layer_batch_size=2,
                              policy=dataclasses.replace(NEWTON, hessian_refresh_cg=3))
        run = lambda X: solve_layers(
            BINARY_LOGISTIC, X, jnp.asarray(y, jnp.float32), jnp.ones((1, 40)), jnp.asarray([1.0]), tol=1e-7, **opts)
    else:
        fit = F.fit_logistic(X, y, [0.1, 1.0])
        run = {
            "logistic": lambda X: F.fit_logistic(X, y, [0.1, 1.0]),
            "multinomial": lambda X: F.fit_multinomial(X, np.arange(40) % 3, 1.0),
            "ridge": lambda X: F.fit_ridge(X, y, [0.1, 1.0]),  # on the CPU: a Cholesky per alpha
            "ridge_loo": lambda X: F.ridge_loo(X, y, [0.1, 1.0]),  # the eigendecomposition (other backends' fit)
            "mass_mean": lambda X: F.fit_mass_mean(X, y, iid=True),
            "decision": lambda X: F.decision_function(fit, X),
        }[solver]
    precisions = _dot_precisions(jax.make_jaxpr(run)(X).jaxpr)
    assert precisions, "no products traced"
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert all(p == highest for p in precisions), precisions


@pytest.mark.parametrize("rank", [0, 3, 8])
def test_preconditioning_does_not_change_the_optimum(binary_layers, rank):
    X, y = binary_layers
    ref = F.fit_logistic(X.astype(np.float32), y, [0.1, 10.0], precondition_rank=0)
    got = F.fit_logistic(X.astype(np.float32), y, [0.1, 10.0], precondition_rank=rank)
    assert bool(got.converged.all())
    # Both stop at a scaled gradient <= tol = 1e-7 (and float32 rounding), not at the exact optimum:
    # within twice the stopping region's radius, far below a different optimum.
    assert_same_optima(got, ref, X.astype(np.float32), y, [0.1, 10.0])


def test_precondition_rank_is_validated(binary_layers):
    X, y = binary_layers
    with pytest.raises(ValueError, match="precondition_rank must be an integer in \\[0, D=8\\]"):
        F.fit_logistic(X.astype(np.float32), y, precondition_rank=9)


def _primitives(jaxpr) -> set:
    from jax.extend.core import jaxprs_in_params

    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


def test_any_across_batch_keeps_a_cond_a_branch_under_vmap():
    from lmprobe_jax.functional._batching import any_across_batch

    def pick(flag, x, gate=any_across_batch):
        return jax.lax.cond(gate(flag), lambda: 2.0 * x, lambda: x)

    flags = jnp.asarray([False, True, False])
    xs = jnp.ones((3, 2))
    np.testing.assert_allclose(jax.vmap(pick)(flags, xs), 2.0 * np.ones((3, 2)))  # any: every problem's branch
    nested = jax.vmap(jax.vmap(any_across_batch))  # vmap's outputs broadcast the one flag back
    assert not np.asarray(nested(jnp.zeros((2, 3), bool))).any()
    assert np.asarray(nested(jnp.zeros((2, 3), bool).at[1, 2].set(True))).all()
    prims = _primitives(jax.make_jaxpr(jax.vmap(pick))(flags, xs).jaxpr)
    assert "cond" in prims and "select_n" not in prims
    # Without it, the batched predicate turns the cond into a select that runs both branches.
    plain = _primitives(jax.make_jaxpr(jax.vmap(lambda f, x: pick(f, x, gate=lambda f: f)))(flags, xs).jaxpr)
    assert "cond" not in plain and "select_n" in plain


def test_fit_logistic_under_a_callers_vmap_matches_separate_fits():
    """A caller's vmap (here over label sets) of a path that builds the lagged inverse: one build decision
    for the batch, the same optima as fitting each label set alone."""
    rng = np.random.default_rng(5)
    N, D = 400, 30
    X = jnp.asarray(rng.normal(size=(N, D)) * np.linspace(0.05, 3.0, D) ** 2, jnp.float32)
    ys = np.stack([(X[:, :5].sum(-1) + 2.0 * rng.normal(size=N) > 0), (X[:, 5] + rng.normal(size=N) > 0)]).astype(np.int32)
    Cs = jnp.asarray(np.logspace(-2, 3, 6), jnp.float32)
    together = jax.vmap(lambda y: F.fit_logistic(X, y, Cs))(jnp.asarray(ys))
    assert bool(together.converged.all())
    for i, y in enumerate(ys):
        alone = F.fit_logistic(X, y, Cs)
        one = F.LogisticFit(*(np.asarray(a)[i][None] for a in together))  # (1, G, ...)
        assert_same_optima(one, F.LogisticFit(*(np.asarray(a)[None] for a in alone)), np.asarray(X)[None], y, np.asarray(Cs))


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_woodbury_inverse_is_the_inverse_newton_matrix(fit_intercept):
    from lmprobe_jax.functional import _woodbury

    rng = np.random.default_rng(6)
    N, D = 12, 40
    X = rng.normal(size=(N, D))
    curvature = rng.uniform(0.0, 2.0, N)
    curvature[3] = 0.0  # a held-out sample (zero weight)
    A = np.concatenate([X, np.ones((N, 1))], axis=1) if fit_intercept else X
    H = A.T @ (curvature[:, None] * A) + np.diag(np.r_[np.ones(D), 0.0] if fit_intercept else np.ones(D))
    Xj = jnp.asarray(X, jnp.float32)
    approx = _woodbury.woodbury_inverse(
        Xj, _woodbury.layer_kernel(Xj, fit_intercept=fit_intercept), jnp.asarray(curvature, jnp.float32),
        fit_intercept=fit_intercept, products=PRODUCTS, halve=True,
    )
    v = rng.normal(size=D + 1)
    coef, intercept = _woodbury.apply_woodbury(approx, Xj, jnp.asarray(v[:D], jnp.float32),
                                               jnp.asarray(v[D], jnp.float32), fit_intercept=fit_intercept,
                                               products=PRODUCTS)
    expected = np.linalg.solve(H, v if fit_intercept else v[:D])
    got = np.append(coef, intercept) if fit_intercept else np.asarray(coef)
    # Through the N x N kernel: kappa(H) times the kernel's formation (a sum of D products per entry)
    # and the small solves' backward errors, on ||H^-1 v||.
    rel = np.linalg.cond(H) * (T.sum_rounding(D) + 3 * T.sum_rounding(N + 1) + 2 * T.U32)
    T.assert_within(got, expected, rel * np.linalg.norm(expected))


def test_wide_layers_take_the_woodbury_path_to_the_same_optimum():
    """N = 30 samples, D = 400 features (N^2 <= 16 D): CG with the exact inverse takes one step per Newton
    step, and the path, the CV folds and a plain fit match the Nystrom path and scikit-learn."""
    rng = np.random.default_rng(7)
    L, N, D = 2, 30, 400
    X = (rng.normal(size=(L, N, D)) * np.linspace(0.2, 2.0, D)).astype(np.float32)
    y = (X[:, :, :3].sum(-1)[1] + rng.normal(size=N) > 0).astype(np.float32)
    Cs = jnp.asarray(np.logspace(-2, 2, 5), jnp.float32)

    def solve(woodbury):
        opts = solver_options((L, N, D), None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                              precondition_rank=None, layer_batch_size=None)
        assert opts["policy"].woodbury and opts["policy"].nystrom_rank == 0
        if not woodbury:
            opts["policy"] = dataclasses.replace(opts["policy"], woodbury=False, nystrom_rank=16)
        return solve_layers(BINARY_LOGISTIC, jnp.asarray(X), jnp.asarray(y), jnp.ones((1, N)), Cs, tol=1e-7, **opts)

    exact, nystrom = solve(True), solve(False)
    assert bool(exact.converged.all()) and bool(nystrom.converged.all())
    np.testing.assert_array_equal(exact.n_cg, exact.n_iter)  # one CG step per Newton step
    # 30 samples in 400 dimensions at C = 100 are separable: the region is wider (~7% of ||w||), still
    # far from the neighbouring C's optimum
    assert_same_optima(exact, nystrom, X, y, np.asarray(Cs), informative=0.1)
    fit = F.fit_logistic(X, y.astype(int), 1.0)
    for l in range(L):
        ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(X[l].astype(np.float64), y)
        region = T.glm_region(X[l], y, 1.0, tol=1e-7, data=False)  # X is float32 data
        bound = region.radius + T.reference_radius(region, ref.coef_[0], ref.intercept_[0])
        T.assert_within(T.as_theta(fit.coef[l], fit.intercept[l]), T.as_theta(ref.coef_[0], ref.intercept_[0]), bound)
    cv = F.cross_validate_logistic(X, y.astype(int), np.asarray(Cs), folds=3)
    assert bool(np.asarray(cv.converged).all())


@pytest.mark.parametrize("storage", [jnp.float16, jnp.uint16])  # uint16: bfloat16's bits (solver_view)
def test_a_half_precision_x_is_converted_a_layer_at_a_time(storage):
    # The solver computes in float32: converting X as a whole would hold a float32 copy of every layer
    # beside it (here 8 layers: 32 MB of temporaries, against about one layer's 4 MB). A bfloat16 X gets
    # that copy from XLA's CPU backend whatever the program does, so it reaches the solver as uint16.
    L, N, D = 8, 4096, 256
    opts = solver_options((L, N, D), None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                          precondition_rank=None, layer_batch_size=1, policy=None)
    spec = jax.ShapeDtypeStruct
    lowered = solve_layers.lower(BINARY_LOGISTIC, spec((L, N, D), storage), spec((N,), jnp.float32),
                                 spec((1, N), jnp.float32), spec((1,), jnp.float32), tol=1e-7, **opts)
    temp = lowered.compile().memory_analysis().temp_size_in_bytes
    layer = N * D * 4
    assert temp < 2 * layer, f"{temp / layer:.1f} float32 layers of temporaries"


def test_a_bfloat16_x_reaches_the_solvers_as_its_bits_in_place():
    # solver_view reinterprets a bfloat16 X on the CPU as uint16 without copying it; the solvers read it
    # back exactly (bfloat16 is the top half of a float32), so every fit equals the float32 one bit for bit.
    from lmprobe_jax.functional import _checks

    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(3, 120, 12)), jnp.bfloat16)
    bits = _checks.solver_view(X)
    assert bits.dtype == jnp.uint16 and bits.unsafe_buffer_pointer() == X.unsafe_buffer_pointer()
    np.testing.assert_array_equal(np.asarray(_checks.as_compute(bits, jnp.float32)), np.asarray(X, np.float32))
    assert _checks.solver_view(X.astype(jnp.float16)).dtype == jnp.float16
    X32 = np.asarray(X, np.float32)
    y = (X32[1, :, 0] + rng.normal(size=120) > 0).astype(int)
    three = y + (X32[2, :, 1] > 0)
    for fit in (lambda A: F.fit_logistic(A, y, [0.1, 1.0]), lambda A: F.fit_multinomial(A, three, 1.0),
                lambda A: F.cross_validate_logistic(A, y, [0.1, 1.0], folds=3).fit):
        np.testing.assert_array_equal(np.asarray(fit(X).coef), np.asarray(fit(X32).coef))
    cv = [F.cross_validate_logistic(A, y, [0.1, 1.0], folds=3) for A in (np.asarray(X), X32)]
    np.testing.assert_array_equal(np.asarray(cv[0].log_loss), np.asarray(cv[1].log_loss))


@pytest.mark.parametrize("storage", [jnp.float16, jnp.uint16])  # uint16: bfloat16's bits (solver_view)
def test_scores_and_projections_convert_half_precision_a_layer_at_a_time(storage):
    # decision_function and pca_project compute in float32: converting X whole held a float32 copy of every
    # layer beside it (here 8 layers: 32 MB of temporaries, against about one layer's 4 MB).
    from lmprobe_jax.functional._pca import _project
    from lmprobe_jax.functional._predict import _layer_scores

    L, N, D, k = 8, 4096, 256, 16
    spec = jax.ShapeDtypeStruct
    f32 = jnp.float32
    scores = _layer_scores.lower(spec((L, 3, D), f32), spec((L, N, D), storage))
    projection = _project.lower(spec((L, N, D), storage), F.PCAFit(spec((L, D), f32), spec((L, D, k), f32),
                                                                    spec((L, k), f32)))
    layer = N * D * 4
    for lowered in (scores, projection):
        temp = lowered.compile().memory_analysis().temp_size_in_bytes
        assert temp < 2 * layer, f"{temp / layer:.1f} float32 layers of temporaries"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_scores_and_projections_are_the_float32_ones(dtype):
    # The per-layer conversion reads the same values (half -> float32 is exact); only the products' order of
    # summation may differ from the batched float32 product's, within its rounding bound.
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.normal(size=(3, 200, 40)), dtype)
    X32 = np.asarray(X, np.float32)
    y = (X32[:, :, 0].sum(0) + rng.normal(size=200) > 0).astype(int)
    fit = F.fit_logistic(X32, y, [0.1, 1.0])
    pca = F.fit_pca(X32, 4)
    coef = np.asarray(fit.coef, np.float64)
    bound = 2 * T.dot_error(coef[:, :, None, :] * X32[:, None].astype(np.float64))
    centred = X32.astype(np.float64) - np.asarray(pca.mean, np.float64)[:, None]
    terms = centred[..., None] * np.asarray(pca.components, np.float64)[:, None]
    pca_bound = 2 * (T.dot_error(terms, axis=-2) + T.sum_rounding(40) * np.abs(terms).sum(-2))
    for A in (X, np.asarray(X)):
        z = np.asarray(F.decision_function(fit, A), np.float64)
        want = np.asarray(F.decision_function(fit, X32), np.float64)
        assert np.all(np.abs(z - want) <= bound), np.max(np.abs(z - want) / bound)
        p = np.asarray(F.pca_project(A, pca), np.float64)
        want_p = np.asarray(F.pca_project(X32, pca), np.float64)
        assert np.all(np.abs(p - want_p) <= pca_bound), np.max(np.abs(p - want_p) / pca_bound)
