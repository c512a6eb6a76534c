"""The solver engine's parts, each on its own: losses, the line search, L-BFGS, the phase rule, policies."""

import dataclasses

import _tolerance as T
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import lmprobe_jax.functional as F
from lmprobe_jax.functional import _newton_cg
from lmprobe_jax.functional._glm import GLM, Params
from lmprobe_jax.functional._lbfgs import (
    apply_compact,
    compact_inverse,
    empty_memory,
    lbfgs_direction,
    remember,
)
from lmprobe_jax.functional._linesearch import line_search
from lmprobe_jax.functional._logistic import BINARY_LOGISTIC
from lmprobe_jax.functional._multinomial import SOFTMAX
from lmprobe_jax.functional._path import solve_layers, solver_options
from lmprobe_jax.functional._products import products


@pytest.mark.parametrize("loss, shape", [(BINARY_LOGISTIC, (50,)), (SOFTMAX, (4, 50))])
def test_loss_derivatives_match_autodiff(loss, shape):
    """evaluate's gradient and hvp's products are the derivatives of its value (one link evaluation)."""
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=shape) * 3, jnp.float32)
    y = jnp.asarray(rng.integers(0, shape[0] if len(shape) == 2 else 2, 50),
                    jnp.int32 if len(shape) == 2 else jnp.float32)
    u = jnp.asarray(rng.normal(size=shape), jnp.float32)
    _, grad, aux = loss.evaluate(z, y)

    def total(z):
        return jnp.sum(loss.evaluate(z, y)[0])

    np.testing.assert_allclose(grad, jax.grad(total)(z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss.hvp(aux, u), jax.jvp(jax.grad(total), (z,), (u,))[1], rtol=1e-4, atol=1e-5)
    diag = jax.vmap(lambda e: jax.jvp(jax.grad(total), (z,), (e,))[1])(jnp.eye(z.size).reshape((-1,) + shape))
    np.testing.assert_allclose(loss.curvature(aux), (diag.reshape(z.size, -1).diagonal()).reshape(shape),
                               rtol=1e-4, atol=1e-6)


def test_softmax_loss_with_classes_tied_at_the_top():
    """Logits tied at their largest value each count once in the softmax (every tie is its own class):
    the loss is log-sum-exp minus the label's logit and the probabilities sum to one, whether the label
    is among the tied classes or not, as float64 computes them."""
    z = np.array([[0.0, 2.0, 5.0, 1.0], [0.0, 2.0, 5.0, 3.0], [0.0, -1.0, 5.0, 3.0]])  # (K=3, N=4)
    y = np.array([0, 2, 1, 0])
    value, grad, p = SOFTMAX.evaluate(jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.int32))
    lse = np.log(np.sum(np.exp(z), axis=0))
    want_p = np.exp(z - lse)
    np.testing.assert_allclose(value, lse - z[y, np.arange(4)], rtol=4 * np.finfo(np.float32).eps, atol=0)
    np.testing.assert_allclose(p, want_p, rtol=4 * np.finfo(np.float32).eps, atol=0)
    np.testing.assert_allclose(grad, want_p - np.eye(3)[:, y], rtol=4 * np.finfo(np.float32).eps,
                               atol=np.finfo(np.float32).eps)


def _problem(n=120, d=5, C=2.0, seed=0):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    y = jnp.asarray((rng.normal(size=n) + X[:, 0] > 0).astype(np.float32))
    glm = GLM(BINARY_LOGISTIC, True, products(16))
    return glm, glm.data(X, y, jnp.ones(n), jnp.float32(C))


def test_line_search_is_scale_free_and_refuses_ascent():
    """The first trial is the quadratic model's minimiser along d: the same point whatever d's length,
    exactly the unit step for a Newton direction; an ascent direction gets no step."""
    glm, data = _problem()
    p = Params(jnp.zeros(5), jnp.zeros(()))
    z = glm.predictor(data.X, p)
    ev = glm.evaluate(data, z)
    g = glm.gradient(data, p, ev)
    steps = []
    for scale in (1.0, 10.0, 0.01):
        d = Params(-scale * g.coef, -scale * g.intercept)
        a = glm.predictor(data.X, d)
        info, _ = line_search(glm, data, p, z, ev, jnp.vdot(g.coef, d.coef) + g.intercept * d.intercept, d, a, refine=0)
        steps.append(float(info.step) * scale)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-4)
    # The Newton direction (H solved exactly in float64): t0 = 1.
    A = np.hstack([np.asarray(data.X, np.float64), np.ones((120, 1))])
    curv = np.asarray(glm.curvature(data, ev.aux), np.float64)
    H = (A.T * curv) @ A + np.diag(np.r_[np.full(5, float(data.penalty)), 0.0])
    step = -np.linalg.solve(H, np.r_[np.asarray(g.coef, np.float64), float(g.intercept)])
    d = Params(jnp.asarray(step[:5], jnp.float32), jnp.asarray(step[5], jnp.float32))
    info, _ = line_search(glm, data, p, z, ev, jnp.vdot(g.coef, d.coef) + g.intercept * d.intercept, d,
                          glm.predictor(data.X, d), refine=0)
    assert abs(float(info.step) - 1.0) < 1e-3
    up = Params(g.coef, g.intercept)
    info, after = line_search(glm, data, p, z, ev, jnp.vdot(g.coef, g.coef) + g.intercept**2, up,
                              glm.predictor(data.X, up), refine=0)
    assert float(info.step) == 0.0
    np.testing.assert_array_equal(after.losses, ev.losses)


def test_lbfgs_memory_meets_the_secant_equation_and_skips_bad_pairs():
    rng = np.random.default_rng(1)
    M = rng.normal(size=(6, 6))
    H = M @ M.T + np.eye(6)
    memory = empty_memory(3, 6, jnp.float32)
    s = rng.normal(size=6)
    memory = remember(memory, jnp.asarray(s, jnp.float32), jnp.asarray(H @ s, jnp.float32))
    # The newest pair: the inverse estimate maps y to s (secant equation), whatever H_0.
    np.testing.assert_allclose(-lbfgs_direction(memory, jnp.asarray(H @ s, jnp.float32), lambda v: 3.0 * v), s,
                               rtol=1e-4)
    before = memory
    memory = remember(memory, jnp.asarray(s, jnp.float32), jnp.asarray(-s, jnp.float32))  # s.y < 0: not kept
    assert int(memory.count) == int(before.count)
    np.testing.assert_array_equal(memory.s, before.s)


@pytest.mark.parametrize("n_pairs, dropped", [(0, None), (2, None), (7, None), (7, 1), (7, "newest")])
def test_compact_inverse_is_the_two_loop_recursion(n_pairs, dropped):
    """Newton-CG's preconditioner (the compact form, built once a Newton step) applies the operator of the
    quasi-Newton phase's two-loop recursion: empty slots, a wrapped ring and pairs dropped by a path's
    penalty move (rho = 0) included. Tolerance: both are O(m) inner products of length P in float32 on
    an operator of condition ~kappa, so they agree to ~2 m lambda sqrt(P) u kappa relative."""
    rng = np.random.default_rng(4)
    P, m = 20, 4
    Q = np.linalg.qr(rng.normal(size=(P, P)))[0]
    H = Q @ np.diag(np.linspace(1.0, 4.0, P)) @ Q.T
    m_diag = jnp.asarray(1.0 + rng.random(P), jnp.float32)
    apply_m = lambda v: m_diag * v
    memory = empty_memory(m, P, jnp.float32)
    for _ in range(n_pairs):
        s = rng.normal(size=P)
        memory = remember(memory, jnp.asarray(s, jnp.float32), jnp.asarray(H @ s, jnp.float32))
    if dropped is not None:
        slot = (int(memory.count) - 1) % m if dropped == "newest" else dropped
        memory = memory._replace(rho=memory.rho.at[slot].set(0.0))
    kappa = 4.0 * float(m_diag.max() / m_diag.min())
    for _ in range(3):
        v = jnp.asarray(rng.normal(size=P), jnp.float32)
        expected = -np.asarray(lbfgs_direction(memory, v, apply_m), np.float64)
        got = np.asarray(apply_compact(compact_inverse(memory, apply_m), v, apply_m(v)), np.float64)
        bound = 2 * m * T.LAMBDA * np.sqrt(P) * T.U32 * kappa * np.linalg.norm(expected)
        assert np.linalg.norm(got - expected) <= bound


def test_a_steep_layers_newton_steps_precondition_its_cg():
    """A layer solved Newton-first (massive-activation features) preconditions CG with its Nystrom
    approximation and, on top, the L-BFGS pairs of its own Newton steps: fewer CG steps than with no
    memory (policy quasi_newton_memory=0), to the same convergence. Summed over six layers: one layer's
    count moves by a step with the CPU's rounding, and on some layers the memory costs steps (figures in
    RESULTS.md, 2026-12-06, session 15)."""

    def cg_steps(memory: int, seed: int) -> int:
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(400, 32))
        y = (X @ rng.normal(size=32) + rng.normal(size=400) > 0).astype(int)
        X[:, :2] = 300.0 + 1000.0 * X[:, :2]
        policy = F.SolverPolicy(quasi_newton_memory=memory, continuation_factor=0.0)  # one start: the count below
        options = solver_options((1,) + X.shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                                 precondition_rank=None, layer_batch_size=None, policy=policy)
        res = solve_layers(BINARY_LOGISTIC, jnp.asarray(X[None], jnp.float32), jnp.asarray(y, jnp.float32),
                           jnp.ones((1, len(y))), jnp.asarray([1.0]), tol=1e-7, **options)
        assert bool(res.converged.all())
        assert int(res.n_passes.sum()) == 2 + 2 * int(res.n_cg.sum()) + int(res.n_iter.sum())  # Newton only
        return int(res.n_cg.sum())

    assert sum(cg_steps(10, seed) for seed in range(6)) < sum(cg_steps(0, seed) for seed in range(6))


def test_phase_rule_hands_over_by_progress_per_pass():
    s = _newton_cg.Settings(tol=1e-7, gap_tol=1e-7, max_iter=100, max_cg_iter=50, memory=10, switch_window=2,
                            switch_progress=0.5, switch_after=2)
    phase = _newton_cg._first_phase(jnp.float32(1.0), s, jnp.bool_(False))
    assert not bool(phase.newton)
    no = jnp.bool_(False)
    # Fast quasi-Newton progress (10x per iteration) keeps the phase; a stall hands over.
    fast = _newton_cg._next_phase(phase, no, jnp.float32(0.1), jnp.int32(2), no, s)
    fast = _newton_cg._next_phase(fast, no, jnp.float32(0.01), jnp.int32(2), no, s)
    assert not bool(fast.newton)
    slow = _newton_cg._next_phase(fast, no, jnp.float32(0.0099), jnp.int32(2), no, s)
    slow = _newton_cg._next_phase(slow, no, jnp.float32(0.0098), jnp.int32(2), no, s)
    assert bool(slow.newton) and not bool(slow.locked)
    # A Newton step that gains less per pass than the quasi-Newton window did hands back; a forced one locks.
    back = _newton_cg._next_phase(slow, jnp.bool_(True), jnp.float32(0.0098), jnp.int32(40), no, s)
    assert not bool(back.newton)
    forced = _newton_cg._next_phase(phase, no, jnp.float32(0.5), jnp.int32(2), jnp.bool_(True), s)
    assert bool(forced.newton) and bool(forced.locked)
    kept = _newton_cg._next_phase(forced, jnp.bool_(True), jnp.float32(0.5), jnp.int32(40), no, s)
    assert bool(kept.newton)


def test_a_newton_step_measured_at_no_progress_does_not_end_newton_for_good():
    # One Newton step whose max-abs gradient rose (F fell) reads 0 decades per pass; the quasi-Newton phase
    # it hands back to must still hand over again once it slows (it once crawled to max_iter at opt 2e-4).
    s = _newton_cg.Settings(tol=1e-7, gap_tol=1e-7, max_iter=100, max_cg_iter=50, memory=10, switch_window=2,
                            switch_progress=0.5, switch_after=2)
    no, yes = jnp.bool_(False), jnp.bool_(True)
    phase = _newton_cg._first_phase(jnp.float32(1.0), s, no)
    for opt in (0.1, 0.099, 0.098):
        phase = _newton_cg._next_phase(phase, no, jnp.float32(opt), jnp.int32(2), no, s)
    assert bool(phase.newton)
    phase = _newton_cg._next_phase(phase, yes, jnp.float32(0.2), jnp.int32(34), no, s)  # rose: no progress
    assert not bool(phase.newton) and float(phase.newton_rate) > 0
    opt, steps = 0.01, 0
    while not bool(phase.newton) and steps < 50:
        opt *= 0.99  # 0.002 decades per pass, far slower than any Newton step so far
        phase = _newton_cg._next_phase(phase, no, jnp.float32(opt), jnp.int32(2), no, s)
        steps += 1
    assert bool(phase.newton), "the quasi-Newton phase never handed over"


def _quasi_newton_steps(X: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> int:
    """Quasi-Newton iterations of fit_logistic's (``n_classes`` None) or fit_multinomial's solve of one layer
    at C=1 (from the solver's counts: a quasi-Newton step costs 2 passes, a Newton step 1 + 2 per CG step,
    the start 2; no continuation lead-in, which would start a second solve). Asserts that the solve converged."""

    options = solver_options(X[None].shape, n_classes, fit_intercept=True, max_iter=100, max_cg_iter=None,
                             precondition_rank=None, layer_batch_size=None,
                             policy=F.SolverPolicy(continuation_factor=0.0))
    labels = jnp.asarray(y, jnp.float32 if n_classes is None else jnp.int32)
    res = solve_layers(BINARY_LOGISTIC if n_classes is None else SOFTMAX, jnp.asarray(X[None], jnp.float32), labels,
                       jnp.ones((1, len(y))), jnp.asarray([1.0]), tol=1e-7, **options)
    assert bool(res.converged.all())
    return int(res.n_passes.sum() - 2 - 2 * res.n_cg.sum() - res.n_iter.sum())


def test_the_phase_follows_the_layer_spectrum():
    """Whether a solve starts with quasi-Newton steps is the data's call: a layer with massive-activation
    features (the Nystrom sketch finds its spectrum steep) takes Newton-CG steps from the first iteration;
    a standardised, isotropic layer (flat spectrum, no preconditioner built) starts with L-BFGS."""
    rng = np.random.default_rng(3)
    flat = rng.normal(size=(400, 32))
    y = (flat @ rng.normal(size=32) + rng.normal(size=400) > 0).astype(int)
    steep = flat.copy()
    steep[:, :2] = 300.0 + 100.0 * flat[:, :2]
    assert _quasi_newton_steps(steep, y) == 0
    assert _quasi_newton_steps(flat, y) > 0


def test_the_intercept_column_does_not_make_a_centred_layer_steep():
    """Sparse 0/1 features (variance ~0.05) have a flat spectrum, but with the intercept's column of ones
    (eigenvalue the row count, several times theirs) a sketch of ``[X, 1]^T [X, 1]`` reads steep. Centred,
    the column is a direction of its own, where the solve starts at its optimum: such a layer starts with
    L-BFGS (Newton-CG first took 36% more passes on the regime panel's binary-features layers); a layer of
    two massive-activation features still takes Newton-CG from the first step."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1500)
    rate = 0.03 + 0.04 * rng.random(128)
    sparse = (rng.random((1500, 128)) < rate * np.exp(np.outer(2 * y - 1, 0.3 * rng.normal(size=128)))).astype(float)
    steep = sparse.copy()
    steep[:, :2] = 300.0 + 100.0 * rng.normal(size=(1500, 2))
    assert _quasi_newton_steps(sparse, y) > 0
    assert _quasi_newton_steps(steep, y) == 0


def test_the_softmax_phase_follows_the_layer_spectrum():
    """Softmax draws the line higher than binary fits (``softmax_nystrom_decay``): a standardised layer
    of anisotropic features and Zipf classes (the probe's eigenvalue ratio ~10, which binary fits call
    steep) starts with L-BFGS and no preconditioner, which took half the passes of Newton-CG with the
    class-scaled Nystrom preconditioner on the regime panel's Zipf layers; the same layer with two
    massive-activation features (ratio ~4e5) takes Newton-CG with it from the first step, without which
    such layers stayed unconverged. Both reach scikit-learn's stopping test (in float64, up to what a
    float32 gradient can hide)."""
    rng = np.random.default_rng(0)
    n, d, k = 600, 32, 8
    zipf = 1.0 / np.arange(1, k + 1)
    y = rng.choice(k, n, p=zipf / zipf.sum())
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    x = (rng.normal(size=(n, d)) / np.sqrt(1 + np.arange(d))) @ basis.T + 0.5 * rng.normal(size=(k, d))[y]
    standardised = (x - x.mean(0)) / x.std(0)
    outliers = standardised.copy()
    outliers[:, :2] = 300.0 + 100.0 * standardised[:, :2]
    assert _quasi_newton_steps(standardised, y, k) > 0
    assert _quasi_newton_steps(outliers, y, k) == 0
    for X in (standardised, outliers):
        fit = F.fit_multinomial(X.astype(np.float32), y, 1.0, tol=1e-7)
        assert bool(fit.converged)
        theta = T.as_theta(np.asarray(fit.coef, np.float64), np.asarray(fit.intercept, np.float64))
        assert T.scaled_gradient_excess(X.astype(np.float32), y, theta, 1.0) <= 0


POLICIES = {
    "default": {},
    "Newton-CG only": {"quasi_newton_memory": 0},
    "no Nystrom": {"nystrom_rank": 0},
    "Nystrom always": {"nystrom_decay": 0.0},
    "cold layers": {"layer_warm_start": False},
    "dot products": {"fused_max_rows": 0},
    "Hessian products by row blocks": {"hessian_blocks_from": 0},
    "whole builds": {"halve_builds": False, "lagged_build_factor": 0.1},
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_reaches_the_same_optimum(binary_layers, name):
    """A policy chooses how, never what: each reaches scikit-learn's optimum on a grid path and a fit."""
    X, y = binary_layers
    policy = dataclasses.replace(F.default_policy(), **POLICIES[name])
    Cs = [0.01, 1.0, 100.0]
    fit = F.fit_logistic(X.astype(np.float32), y, Cs, tol=1e-7, policy=policy)
    assert bool(fit.converged.all())
    for l in range(3):
        for g, C in enumerate(Cs):
            ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X[l], y).coef_[0]
            assert np.linalg.norm(np.asarray(fit.coef[l, g]) - ref) / np.linalg.norm(ref) < 1e-4
    m = F.fit_multinomial(X.astype(np.float32), np.arange(len(y)) % 3, 1.0, tol=1e-7, policy=policy)
    assert bool(m.converged.all())


@pytest.mark.parametrize("field, value, error, says", [
    ("continuation_factor", -10.0, ValueError, ">= 0"),
    ("continuation_factor", 0.5, ValueError, "more than 1"),
    ("continuation_tol", 0.0, ValueError, "> 0"),
    ("switch_progress", 1.0, ValueError, "0 < switch_progress < 1"),
    ("softmax_switch_progress", 0.0, ValueError, "0 < softmax_switch_progress < 1"),
    ("switch_window", 0, ValueError, ">= 1"),
    ("nystrom_probe_rank", 0, ValueError, ">= 1"),
    ("nystrom_rank", -1, ValueError, ">= 0"),
    ("nystrom_rank", 64.0, TypeError, "an int"),
    ("nystrom_decay", float("nan"), TypeError, "a finite number"),
    ("gap_bound", 1, TypeError, "True or False"),
])
def test_a_policy_refuses_a_setting_no_solve_could_use(field, value, error, says):
    """Every field is checked where the policy is made, with the setting's name in the message, not deep in
    a traced solve (a negative continuation factor would first solve at a negative C)."""
    with pytest.raises(error, match=f"SolverPolicy.{field}") as refused:
        F.SolverPolicy(**{field: value})
    assert says in str(refused.value)
    with pytest.raises(error):
        dataclasses.replace(F.default_policy(), **{field: value})
    assert F.SolverPolicy(**{field: getattr(F.SolverPolicy(), field)}) == F.SolverPolicy()


def test_layer_warm_start_is_never_worse_than_cold():
    """The previous layer's solution enters only as the best multiple of it: on a layer it fits badly
    (sign flipped), the start is the cold one, and the solve still reaches the optimum."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2, 300, 6)).astype(np.float32)
    y = (X[0, :, 0] > 0).astype(int)
    X[1] = -X[0]  # the same problem, mirrored: the previous solution is exactly wrong for it
    warm = F.fit_logistic(X, y, 1.0, tol=1e-7)
    cold = F.fit_logistic(X, y, 1.0, tol=1e-7, policy=dataclasses.replace(F.default_policy(), layer_warm_start=False))
    np.testing.assert_allclose(warm.coef, cold.coef, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(warm.coef[1], -warm.coef[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("C", [1.0, 100.0])
def test_a_solve_started_at_its_solution_only_certifies_it(C):
    """A warm start (a path's previous ``C``, a CV refit's ``init``) enters through the best point on the
    ray from the null point through it; from the solution itself that point is the solution, and the
    solve ends after at most two steps (a quasi-Newton step and, where the strong-convexity bound does not
    certify the gap, a Newton step whose decrement does). When
    the ray search began at the null point's quadratic model it stopped short on every layer, and a
    restart cost about as many iterations as the cold solve (here 11-15 against 15-18 at C=1, 24-90 against
    28-46 at C=100), which made warm-started paths and CV slower than the engine before it."""

    rng = np.random.default_rng(1)
    X = rng.normal(size=(2, 400, 64))
    y = rng.integers(0, 2, 400)
    X[:, :, 0] += np.array([3.0, 5.0])[:, None] * (y - 0.5)  # a clear signal, nearly separable at C=100
    X = ((X - X.mean(1, keepdims=True)) / X.std(1, keepdims=True)).astype(np.float32)
    options = solver_options(X.shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                             precondition_rank=None, layer_batch_size=None)
    args = (BINARY_LOGISTIC, jnp.asarray(X), jnp.asarray(y, jnp.float32), jnp.ones((1, 400)), jnp.asarray([C]))
    cold = solve_layers(*args, tol=1e-7, **options)
    restart = solve_layers(*args, tol=1e-7, init=(cold.coef[:, :, 0], cold.intercept[:, :, 0]), **options)
    assert bool(cold.converged.all()) and bool(restart.converged.all())
    assert int(cold.n_iter.min()) > 2  # the cold solves do work the restart must not repeat
    assert int(restart.n_iter.max()) <= 2


def test_reweighted_pairs_are_the_pairs_of_the_new_penalty():
    """Along a path only the penalty changes: pairs of ``A + lam1 P`` (``P`` the penalised coordinates; the
    last, an intercept, unpenalised) moved by ``lam2 - lam1`` are the pairs of ``A + lam2 P``; a pair whose
    curvature the move makes non-positive is dropped. (Adding the change to the intercept's entry, or with
    the wrong sign, misses by ``|lam2 - lam1| |s_j|``, far above the rounding bound.)"""
    from lmprobe_jax.functional._lbfgs import reweight_penalty

    rng = np.random.default_rng(3)
    M = rng.normal(size=(5, 5))
    A = M @ M.T
    P = np.diag([1.0, 1, 1, 1, 0])
    lam1, lam2 = 2.0, 0.5
    memory = empty_memory(3, 5, jnp.float32)
    for s in rng.normal(size=(2, 5)):
        memory = remember(memory, jnp.asarray(s, jnp.float32), jnp.asarray((A + lam1 * P) @ s, jnp.float32))
    moved = reweight_penalty(memory, jnp.float32(lam2 - lam1), 4)
    s32, y32 = np.asarray(memory.s[:2], np.float64), np.asarray(memory.y[:2], np.float64)
    # Exact: the stored y plus (lam2 - lam1) P s; float32 rounds the product and the sum once each.
    want = y32 + (lam2 - lam1) * s32 @ P
    np.testing.assert_array_less(np.abs(np.asarray(moved.y[:2]) - want), 2 * T.U32 * (np.abs(y32) + np.abs(want)) + 1e-30)
    # And so the pairs of A + lam2 P, up to the rounding of the stored products (A + lam1 P) s.
    stored = T.dot_error(s32[:, None, :] * (A + lam1 * P)[None], axis=-1)
    np.testing.assert_array_less(np.abs(np.asarray(moved.y[:2]) - s32 @ (A + lam2 * P)),
                                 stored + 2 * T.U32 * (np.abs(y32) + np.abs(want)))
    sy = np.sum(s32 * np.asarray(moved.y[:2], np.float64), axis=1)
    np.testing.assert_array_less(np.abs(np.asarray(moved.rho[:2]) * sy - 1),
                                 T.dot_error(s32 * np.asarray(moved.y[:2], np.float64)) / np.abs(sy) + 2 * T.U32)
    assert float(moved.rho[2]) == 0.0  # the empty slot stays empty
    # A move past the pairs' curvature (lam2 far below -lambda_max(A)): every pair is dropped.
    gone = reweight_penalty(memory, jnp.float32(-10 * np.linalg.eigvalsh(A).max() - lam1), 4)
    assert not np.any(np.asarray(gone.rho))


def test_a_path_point_starts_from_the_last_points_curvature_pairs():
    """Each C of a path starts its quasi-Newton phase from the previous C's L-BFGS pairs (moved to its
    penalty), not from an empty memory: from the same start, the path's second solve takes fewer
    iterations than the same solve alone, and both stop within the tol-1e-7 region of the optimum."""

    rng = np.random.default_rng(4)
    X = rng.normal(size=(1, 600, 48))
    y = rng.integers(0, 2, 600)
    X[:, :, 0] += 1.5 * (y - 0.5)
    X = ((X - X.mean(1, keepdims=True)) / X.std(1, keepdims=True)).astype(np.float32)
    options = solver_options(X.shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                             precondition_rank=None, layer_batch_size=None)
    args = (BINARY_LOGISTIC, jnp.asarray(X), jnp.asarray(y, jnp.float32), jnp.ones((1, 600)))
    path = solve_layers(*args, jnp.asarray([0.1, 0.5]), tol=1e-7, **options)
    alone = solve_layers(*args, jnp.asarray([0.5]), tol=1e-7, init=(path.coef[:, :, 0], path.intercept[:, :, 0]),
                         **options)
    assert bool(path.converged.all()) and bool(alone.converged.all())
    assert int(path.n_iter[0, 0, 1]) < int(alone.n_iter[0, 0, 0])
    region = T.glm_region(X[0], y, 0.5, tol=1e-7, data=False)
    for coef, intercept in ((path.coef[0, 0, 1], path.intercept[0, 0, 1]), (alone.coef[0, 0, 0], alone.intercept[0, 0, 0])):
        theta = np.append(np.asarray(coef, np.float64), float(intercept))
        assert np.linalg.norm(theta - region.optimum.ravel()) <= region.radius


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("n_classes", [None, 3])
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_the_gap_bound_is_above_the_gap(n_classes, offset, exact):
    """``GLM.gap_bound`` (the strong-convexity certificate that ends a solve without a Newton step) is at
    least the relative objective gap at points around the optimum, in float64: the coefficients and the
    intercept both moved off it, on standardised features and on features with a large common offset
    (raw activations), where the intercept is strongly coupled to the coefficients and its own curvature
    alone would understate the gap by orders of magnitude."""
    from lmprobe_jax.functional._multinomial import SOFTMAX

    rng = np.random.default_rng(4)
    n, d, C = 300, 12, 10.0
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + X[:, 1] + rng.normal(size=n) > 0).astype(int) if n_classes is None else rng.integers(0, 3, n)
    X[:, :3] += offset
    ref = LogisticRegression(C=C, solver="newton-cg", tol=1e-12, max_iter=1000).fit(X, y)
    coef = ref.coef_[0] if n_classes is None else ref.coef_
    intercept = ref.intercept_[0] if n_classes is None else ref.intercept_
    with jax.enable_x64(True):
        glm = GLM(BINARY_LOGISTIC if n_classes is None else SOFTMAX, True, products(16))
        labels = jnp.asarray(y, jnp.float64 if n_classes is None else jnp.int32)
        data = glm.data(jnp.asarray(X), labels, jnp.ones(n), jnp.float64(C))

        def at(p):
            ev = glm.evaluate(data, glm.predictor(data.X, p))
            return ev, glm.objective(data, p, ev)

        optimum = Params(jnp.asarray(coef), jnp.asarray(intercept))
        best = at(optimum)[1]
        # Random moves, and moves along the valley H^-1 e_b (the intercept and the offset features' weights
        # moving together), where the gradient is the intercept's alone but the gap is the Schur complement's.
        flat = _newton_cg.flatten(optimum)
        aux = at(optimum)[0].aux
        hessian = np.stack([_newton_cg.flatten(glm.hvp(data, aux, _newton_cg.unflatten(e, optimum))[0])
                            for e in jnp.eye(flat.size)])
        valley = np.linalg.pinv(hessian) @ np.eye(flat.size)[coef.size]  # softmax's H is singular: a common intercept shift
        for scale in (1e-4, 1e-3, 1e-2, 1e-1):
            for move in [rng.normal(size=flat.size) for _ in range(3)] + [valley / np.abs(valley).max()]:
                p = _newton_cg.unflatten(flat + scale * jnp.asarray(move), optimum)
                ev, objective = at(p)
                bound = glm.gap_bound(data, p, glm.gradient(data, p, ev), ev, None if exact else jnp.linalg.norm(data.X))
                gap = float((objective - best) / objective)
                assert gap > 0
                assert float(bound) >= gap, (scale, float(bound), gap)


def test_a_well_conditioned_solve_ends_without_a_newton_step():
    """On a standardised, well-conditioned layer the quasi-Newton phase reaches the gradient test and the
    strong-convexity bound certifies the gap there: no Newton step (no CG step), converged, within ``tol``
    of scikit-learn's optimum in relative objective. Before the bound, the gap test passed on a Newton
    decrement only. (At ``tol = 1e-5``: at 1e-7 the float32 resolution of ``F`` ends the quasi-Newton
    phase first on this layer.)"""

    rng = np.random.default_rng(5)
    X = rng.normal(size=(1, 2000, 64))
    y = (X[0] @ rng.normal(size=64) + 4 * rng.normal(size=2000) > 0).astype(int)
    X = ((X - X.mean(1, keepdims=True)) / X.std(1, keepdims=True)).astype(np.float32)
    options = solver_options(X.shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                             precondition_rank=None, layer_batch_size=None)
    res = solve_layers(BINARY_LOGISTIC, jnp.asarray(X), jnp.asarray(y, jnp.float32), jnp.ones((1, 2000)),
                       jnp.asarray([1.0]), tol=1e-5, **options)
    assert bool(res.converged.all())
    assert int(res.n_cg.sum()) == 0
    ref = LogisticRegression(C=1.0, solver="newton-cg", tol=1e-12, max_iter=1000).fit(X[0].astype(np.float64), y)
    p = T.problem(X[0], y, 1.0)
    ours = T.objective(p, T.as_theta(res.coef[0, 0, 0], res.intercept[0, 0, 0]))
    assert (ours - T.objective(p, T.as_theta(ref.coef_[0], ref.intercept_[0]))) / ours <= 1e-5


@pytest.mark.parametrize("Cs", [[1.0], [0.01, 1.0, 100.0]])
def test_features_with_an_offset_are_solved_as_centred_ones(Cs):
    # Each layer is solved on its features centred at their weighted mean (the intercept absorbs the
    # shift): a common offset (raw activations) costs no passes and moves the fit only within its rounding.
    rng = np.random.default_rng(0)
    n, d = 400, 24
    X = rng.standard_normal((1, n, d)).astype(np.float32)
    y = (X[0] @ rng.standard_normal(d) + rng.standard_normal(n) > 0).astype(np.float32)
    offset = (30 + 10 * rng.random(d)).astype(np.float32)
    sw = (0.5 + rng.random(n)).astype(np.float32)

    def solve(A):
        options = solver_options(A.shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                                 precondition_rank=None, layer_batch_size=None)
        res = solve_layers(BINARY_LOGISTIC, jnp.asarray(A), jnp.asarray(y), jnp.asarray(sw[None]), jnp.asarray(Cs),
                           tol=1e-7, **options)
        assert bool(res.converged.all())
        return res

    plain, shifted = solve(X), solve(X + offset)
    # Without the centring the offset layer took 2-6x the passes (30 -> 185 at C = 1).
    assert np.all(np.asarray(shifted.n_passes) <= 1.25 * np.asarray(plain.n_passes) + 4)
    for g, C in enumerate(Cs):
        region = T.glm_region((X + offset)[0], y, C, tol=1e-7, sample_weight=sw, data=False)
        T.assert_within(T.as_theta(shifted.coef[0, 0, g], shifted.intercept[0, 0, g]), region.optimum, region.radius,
                        f"C={C}", informative=None)


def test_a_single_c_on_a_steep_nearly_separable_layer_is_reached_by_continuation():
    # A cold Newton solve of a raw-like layer (low rank, a few features of scale ~100) whose classes are
    # nearly separable takes many short steps to grow its coefficients; solved first at C / 10 to a loose
    # tolerance (policy.continuation_factor), it starts much nearer. The lead-in's work counts in the fit's
    # passes, and the fit is the same optimum to its rounding.
    rng = np.random.default_rng(0)
    n, d, rank = 800, 96, 24
    y = rng.integers(0, 2, n)
    decay = (1.0 + np.arange(rank)) ** -0.7
    loadings = rng.standard_normal((rank, d)) * 3.0
    X = (rng.standard_normal((n, rank)) * decay) @ loadings + 0.3 * rng.standard_normal((n, d))
    u = rng.standard_normal(rank) * decay
    X += np.outer((2 * y - 1) * 1.0, u @ loadings / np.linalg.norm(u))
    X[:, :3] = 60.0 * (1 + rng.random(3)) + 20.0 * rng.standard_normal((n, 3))
    X = X.astype(np.float32)[None]

    def solve(factor: float):
        options = solver_options(X.shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                                 precondition_rank=None, layer_batch_size=None,
                                 policy=F.SolverPolicy(continuation_factor=factor))
        res = solve_layers(BINARY_LOGISTIC, jnp.asarray(X), jnp.asarray(y, jnp.float32), jnp.ones((1, n)),
                           jnp.asarray([1.0]), tol=1e-7, **options)
        assert bool(res.converged.all())
        return res

    lead_in, cold = solve(10.0), solve(0.0)
    assert int(lead_in.n_passes.sum()) <= 0.85 * int(cold.n_passes.sum())  # 93 against 128 when written
    region = T.glm_region(X[0], y.astype(np.float32), 1.0, tol=1e-7, data=False)
    for res in (lead_in, cold):
        T.assert_within(T.as_theta(res.coef[0, 0, 0], res.intercept[0, 0, 0]), region.optimum, region.radius,
                        "C=1", informative=None)
