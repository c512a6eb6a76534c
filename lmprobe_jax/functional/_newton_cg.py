r"""The solver core: one problem, a quasi-Newton phase, then truncated Newton (Newton-CG), one loop.

It minimises the scaled objective of :mod:`._glm` for one design matrix. Every iteration picks a
direction, searches along it without a pass over ``X`` (:mod:`._linesearch`), and takes one pass for
the new gradient:

* **quasi-Newton** (L-BFGS, :mod:`._lbfgs`): the direction costs one pass (``X d``); two per iteration
  in all. A solve starts here unless its caller passes ``newton_first`` (the layer's spectrum is steep):
  from the intercept-only optimum (or the best multiple of a warm start), its first direction is the
  preconditioned gradient, i.e. the mass-mean direction, with an exact step. On well-conditioned
  problems it reaches scikit-learn's tolerance in a handful of passes.
* **Newton-CG**: the direction solves ``H d = -g`` by preconditioned conjugate gradients, two passes per
  CG step; CG's own products give ``X d``. Inexact Newton with the forcing term of Eisenstat & Walker
  converges superlinearly where L-BFGS crawls: ill-conditioned layers, tight tolerances. CG also stops
  once its residual, to first order the next gradient, has every entry within ``tol / 2``: the stopping
  test reads the max-abs entry, and a 2-norm held to the same level asks up to ``sqrt(D)`` times more.
  Where the problem carries bfloat16 copies of ``X`` (``data.rounded``: softmax solves, on CPUs with
  bfloat16 dot instructions), CG's products use them, and one exact Hessian product of the direction (two
  passes) gives ``X d`` and checks the rounding against CG's loosest forcing term; the steps turn exact
  for good once the gradient test is met, once ``F`` nears its float resolution, or after a step whose
  rounding failed that check. The gradient, line search and stopping tests never see the rounding.

The data decide when to hand over: once the best scaled gradient of the last ``switch_window``
quasi-Newton iterations is above ``switch_progress`` times the best before them (each quasi-Newton
iteration buys less than a Newton step would), or the quasi-Newton line search can no longer measure
progress, the solve continues in Newton-CG and stays there. Under ``vmap`` the phase is one for the
batch (any problem's hand-over moves them all), so each iteration runs one kind of step.

Stopping rule: the scaled gradient's max-abs entry is ``<= tol`` (scikit-learn's criterion) *and* the
relative objective gap is at most ``gap_tol``, by the last Newton step's decrement ``-g.d / (2 F)`` or by
the strong-convexity bound at the current point (:meth:`._glm.GLM.gap_bound`: no pass over ``X``, or one
where that falls short; it ends well-conditioned solves in their quasi-Newton phase, with no certifying
Newton step). The first alone is loose when ``F`` is small (nearly separable layers at large ``C``),
which the second closes. Or the float floor is reached (counted as converged): the Newton decrement is
below the float resolution of ``F`` and a full Newton step no longer halves the gradient's norm (in exact
arithmetic it would leave at most CG's forcing term of it, 0.3: rounding, not the optimiser, now sets the
gradient; the better of the two iterates is kept); or, with the gradient test met, two Newton steps in a
row lowered ``F`` by less than its float resolution. A Newton step whose line search finds no decrease
stops the loop, unconverged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ._batching import any_across_batch
from ._glm import GLM, Evaluation, GLMData, Params, axpy, dot, flatten, guard, optimality, unflatten
from ._lbfgs import LBFGSMemory, apply_compact, compact_inverse, empty_memory, lbfgs_direction, remember
from ._linesearch import line_search
from ._precision import row_sums, vdot
from ._preconditioners import Preconditioner

# The loosest CG forcing term: a Newton direction's residual is at most this fraction of the gradient.
_MAX_FORCING = 0.3


class SolveResult(NamedTuple):
    """Solution of one problem.

    Attributes:
      coef: ``(D,)`` or ``(K, D)``.
      intercept: ``()`` or ``(K,)``; zero when ``fit_intercept`` is False.
      n_iter: int32 ``()``, iterations taken (quasi-Newton and Newton).
      converged: bool ``()``, True when the scaled gradient's max-abs entry fell to ``<= tol`` and the
        relative objective gap (a Newton decrement or the strong-convexity bound) was ``<= gap_tol``, or
        when the solve reached the float floor (see the module docstring). False when ``max_iter`` ran out, when a
        Newton step's line search could not decrease the objective, or when the iterate became
        non-finite.
      optimality: ``()``, the scaled gradient's max-abs entry at the returned solution.
      n_cg: int32 ``()``, conjugate-gradient steps (two passes over ``X`` each).
      n_passes: int32 ``()``, passes over ``X`` in all: the solve's work.
    """

    coef: Array
    intercept: Array
    n_iter: Array
    converged: Array
    optimality: Array
    n_cg: Array
    n_passes: Array

    def as_fit(self, fit_type: type) -> tuple:
        """These arrays as ``fit_type``, a NamedTuple whose fields are some of these (by name)."""
        return fit_type(*(getattr(self, name) for name in fit_type._fields))


class Settings(NamedTuple):
    """The settings of one solve: ``tol``, ``gap_tol`` and ``max_iter`` may be traced (a new value does not
    recompile); the rest are static.

    Attributes:
      tol: the scaled-gradient tolerance.
      gap_tol: bound on the relative objective-gap estimate (``inf``: the gradient test alone).
      max_iter: most iterations.
      max_cg_iter: most CG steps per Newton step.
      memory: L-BFGS pairs (0: Newton-CG from the first step).
      switch_window, switch_progress, switch_after: the hand-over rule (see the module docstring); it
        is not applied before ``switch_after`` quasi-Newton iterations.
      refine: Newton steps in the step length after the first (:mod:`._linesearch`).
      gap_bound: the strong-convexity bound may pass the gap test (else only a Newton decrement does).
    """

    tol: float
    gap_tol: float
    max_iter: int
    max_cg_iter: int
    memory: int
    switch_window: int
    switch_progress: float
    switch_after: int
    refine: int = 1
    gap_bound: bool = True


class _Phase(NamedTuple):
    """Which kind of step comes next, and the progress per pass each kind made last (see :func:`_next_phase`)."""

    newton: Array  # bool (): Newton-CG steps (else quasi-Newton)
    locked: Array  # bool (): Newton-CG to the end (the quasi-Newton phase can no longer finish the solve)
    since: Array  # int32 (): iterations since the phase began (a quasi-Newton phase is judged from switch_after on)
    best: Array  # (switch_window + 1,): the best optimality after each of the phase's last iterations
    qn_rate: Array  # (): decades of optimality per pass over X of the last judged quasi-Newton window
    newton_rate: Array  # (): the same for the last Newton step (a prior until one is taken)


class _Progress(NamedTuple):
    n_iter: Array  # int32 ()
    n_cg: Array  # int32 ()
    n_passes: Array  # int32 ()
    phase: _Phase
    stalled: Array  # bool (): a Newton step's line search found no decrease
    at_floor: Array  # bool (): float rounding, not the optimiser, now limits progress
    unresolved: Array  # bool (): the last Newton step lowered F by less than its float resolution
    last_cg: Array  # int32 (): CG steps of the last Newton step (0 after a quasi-Newton one)
    exact: Array  # bool (): CG's Hessian products are float32 from now on (not data.rounded's)


class _State(NamedTuple):
    params: Params
    z: Array  # the predictor at params, kept current so no step needs a pass to find it
    ev: Evaluation  # the loss at z, kept so no line search or CG step evaluates it again
    grad: Params
    optimality: Array  # ()
    gap: Array  # (): the relative objective gap: the last Newton decrement's or the strong-convexity bound
    memory: LBFGSMemory | None
    precond: Any  # the preconditioner's state
    progress: _Progress


def warm_start(glm: GLM, data: GLMData, null: Params, candidate: Params) -> tuple[Params, Array]:
    r"""``(start, z)``: the best point on the ray ``null + t (candidate - null)`` from ``null`` (``W = 0`` and
    the best intercept) through ``candidate``, found with one pass over ``X``. Its step may be 0 (the cold
    start) or beyond 1.

    ``phi(t)`` needs only ``z_null + t X (candidate - null)``, so Newton steps in ``t`` cost no pass. They
    start at ``t = 1``, the candidate itself: a path's previous solution is near the optimum, where
    ``phi``'s curvature (falling with the margins on nearly separable layers) is far below its value at
    ``null``, and steps from the quadratic model at ``null`` stopped well short of it."""
    d = Params(candidate.coef - null.coef, candidate.intercept - null.intercept)
    a = glm.predictor(data.X, d)
    z = jnp.broadcast_to(null.intercept[..., None], a.shape).astype(a.dtype)
    ev = glm.evaluate(data, z)
    slope = vdot(ev.residual, a)  # W = 0 at null: the penalty has no slope there
    ls = line_search(glm, data, null, z, ev, slope, d, a, refine=2, first=1.0)[0]
    # Where F cannot measurably fall along the ray (the cold start's zeros differ from null in the intercept
    # alone, whose slope there is rounding), the search would take its first trial untested: stay at null.
    t = jnp.where(ls.at_precision, 0.0, ls.step)
    return axpy(t, d, null), z + t * a


def minimise(glm: GLM, data: GLMData, start: Params, z0: Array, passes0: Array, *, precond: Preconditioner,
             settings: Settings, newton_first: Array | bool = False,
             memory: LBFGSMemory | None = None) -> tuple[SolveResult, LBFGSMemory | None]:
    """Minimise the scaled objective from ``start`` (predictor ``z0``, found with ``passes0`` passes).

    Args:
      glm: the model (static): loss, intercept, products.
      data: the problem's arrays (:meth:`GLM.data`).
      start: the starting point; ``z0`` its predictor.
      passes0: int32 ``()``, passes over ``X`` already spent on the start (counted in ``n_passes``).
      precond: the preconditioner (see :mod:`._preconditioners`).
      settings: static settings.
      newton_first: bool ``()`` (traced): take Newton-CG steps from the first iteration, as with no
        quasi-Newton memory (the caller saw an ill-conditioned layer: its Nystrom preconditioner is built).
      memory: the L-BFGS pairs to start from (``settings.memory`` of them: a path's previous ``C``'s, see
        :func:`._lbfgs.reweight_penalty`), or None for an empty memory.

    Returns:
      ``(result, memory)``: a :class:`SolveResult` and the L-BFGS memory at the end (None without one).
    """
    s = settings
    dtype = z0.dtype
    ev0 = glm.evaluate(data, z0)
    g0 = glm.gradient(data, start, ev0)
    opt0 = optimality(g0)
    size = start.coef.size + start.intercept.size
    if s.memory and memory is None:
        memory = empty_memory(s.memory, size, dtype)
    progress = _Progress(
        n_iter=jnp.int32(0), n_cg=jnp.int32(0), n_passes=passes0 + 1,
        phase=_first_phase(opt0, s, jnp.asarray(newton_first)),
        stalled=jnp.bool_(False), at_floor=jnp.bool_(False), unresolved=jnp.bool_(False), last_cg=jnp.int32(0),
        exact=jnp.bool_(data.rounded is None),
    )
    init = _State(start, z0, ev0, g0, opt0, jnp.asarray(jnp.inf, dtype), memory,
                  precond.build(data, glm.curvature(data, ev0.aux)), progress)
    norms = column_norms(data.X)
    rounding_scale = gradient_rounding_scale(norms)
    x_norm = jnp.sqrt(jnp.sum(jnp.square(norms[:-1])))

    def newton_direction(st: _State, pstate: Any) -> tuple[Params, Array, Array, Array, Array]:
        g_norm = jnp.sqrt(dot(st.grad, st.grad))
        # Inexact Newton forcing term (Dembo & Steihaug 1983; Eisenstat & Walker 1996): loose far from
        # the optimum, tight near it; relative to the starting gradient, so it does not depend on C.
        forcing = jnp.minimum(0.1, jnp.sqrt(st.optimality / guard(opt0)))
        cg_precond = precond
        if s.memory:
            # The quasi-Newton phase's inverse-Hessian estimate as CG's preconditioner (Morales & Nocedal,
            # "Automatic preconditioning by limited memory quasi-Newton updating", SIAM J. Optim. 2000),
            # on top of the layer's: it knows the curvature along the directions already explored (and, on a
            # layer solved Newton-first, along the last Newton steps). In compact form, built once a step.
            def apply_m(u: Array) -> Array:
                return flatten(precond.apply(pstate, unflatten(u, st.grad)))

            inverse = compact_inverse(st.memory, apply_m)

            def apply_memory(state: Any, v: Params) -> Params:
                return unflatten(apply_compact(inverse, flatten(v), flatten(precond.apply(state, v))), v)

            cg_precond = precond._replace(apply=apply_memory)
        # A Newton step taken to compare it with the quasi-Newton phase (not locked in) gets a CG budget of
        # about two quasi-Newton windows' passes: its direction is still a descent direction if cut short.
        budget = jnp.where(st.progress.phase.locked, s.max_cg_iter, min(s.max_cg_iter, 2 * s.switch_window))

        # No tighter than the stopping test needs: the next gradient is, to first order, the CG residual.
        def solve(rounded: bool) -> tuple[Params, Array, Array, Array]:
            return conjugate_gradients(glm, data, st.ev.aux, st.grad, cg_precond, pstate,
                                       (forcing * g_norm) ** 2, budget, reach=0.5 * s.tol,
                                       loose2=(_MAX_FORCING * g_norm) ** 2, rounded=rounded)

        if data.rounded is None:
            return *solve(False), jnp.bool_(True)
        exact = any_across_batch(st.progress.exact)  # one kind of product for the batch
        return *jax.lax.cond(exact, lambda: solve(False), lambda: solve(True)), exact

    def quasi_newton_direction(st: _State, pstate: Any) -> tuple[Params, Array, Array, Array, Array]:
        def apply_m(v: Array) -> Array:
            return flatten(precond.apply(pstate, unflatten(v, st.grad)))

        d = unflatten(lbfgs_direction(st.memory, flatten(st.grad), apply_m), st.grad)
        return d, glm.predictor(data.X, d), jnp.int32(0), jnp.bool_(False), jnp.bool_(True)

    def cond(st: _State) -> Array:
        pr = st.progress
        unfinished = ~_converged(st, s) & ~pr.stalled & ~pr.at_floor
        return (pr.n_iter < s.max_iter) & unfinished & jnp.isfinite(st.optimality)

    def body(st: _State) -> _State:
        pr = st.progress
        pstate = precond.refresh(st.precond, data, glm.curvature(data, st.ev.aux), pr.last_cg)
        newton = any_across_batch(pr.phase.newton)
        if s.memory:
            d, a, k, solved, exact_step = jax.lax.cond(newton, newton_direction, quasi_newton_direction, st,
                                                       pstate)
        else:
            d, a, k, solved, exact_step = newton_direction(st, pstate)
        ls, ev = line_search(glm, data, st.params, st.z, st.ev, dot(st.grad, d), d, a, refine=s.refine)
        params = axpy(ls.step, d, st.params)
        z = st.z + ls.step * a
        g = glm.gradient(data, params, ev)
        opt = optimality(g)
        memory = st.memory
        if s.memory:
            step = flatten(Params(ls.step * d.coef, ls.step * d.intercept))
            remembered = remember(memory, step, flatten(g) - flatten(st.grad))
            memory = remembered
        # A quasi-Newton step's own gap estimate can be off by orders of magnitude on ill-conditioned layers:
        # a met gradient test whose gap the bound does not certify hands over to Newton-CG.
        met = opt <= s.tol
        step_passes = jnp.where(newton, 2 * (k + ~exact_step), 1) + 1  # a rounded CG's exact product: 2 more
        # Below F's float resolution a quasi-Newton step is taken untested (its quadratic model's step), which
        # near the optimum is the line search's step: the phase goes on while it still lowers the gradient.
        blind = ls.at_precision & (newton | (opt >= st.optimality))
        forced = (ls.step == 0) | blind | (met & (s.gap_tol < float("inf")))
        phase = _next_phase(pr.phase, newton, opt, step_passes, forced, s)
        passes = pr.n_passes + step_passes
        stalled = newton & exact_step & (ls.step == 0) & ~ls.at_precision
        # The gradient test is met and two Newton steps in a row lowered F by less than its float
        # resolution: the gap estimate is then rounding noise, not a gap the optimiser can close.
        settled = newton & exact_step & met & ~ls.at_precision & ls.unresolved & pr.unresolved
        # The gap test passes on a Newton decrement (a quasi-Newton step's estimate says nothing) or on the
        # strong-convexity bound at the new point (no Newton step), computed once the gradient test is met
        # (for softmax it costs a few elementwise passes over the K x N logits): first the bound that needs
        # no pass over X, then, where it falls short, the one whose intercept coupling costs a pass.
        gap = jnp.where(newton & exact_step, ls.gap, jnp.inf)
        if s.gap_bound:
            bound = _if(any_across_batch(met), lambda: glm.gap_bound(data, params, g, ev, x_norm), dtype)
            if glm.fit_intercept:  # without an intercept there is no coupling: the two bounds are one
                exact = any_across_batch(met & (bound > s.gap_tol))
                bound = jnp.minimum(bound, _if(exact, lambda: glm.gap_bound(data, params, g, ev, None), dtype))
                passes = passes + exact.astype(passes.dtype)
            gap = jnp.minimum(gap, bound)
        # In the precision regime, a full Newton step that does not lower the gradient means float
        # rounding now sets the gradient: keep the better iterate and stop there. Only for a direction CG
        # solved to its forcing tolerance: a decrement from a CG cut short (or broken down by rounding, as
        # when lambda is below float32's resolution of X^T S X) says nothing of the gap, and counting it
        # returned a zero probe as converged on wide separable layers at C = 1e20.
        # A direction from a CG that did not reach its tolerance counts too where the gradient is already
        # within its own float rounding (ill-conditioned layers: outlier features of scale 400 put the
        # float32 floor of a softmax gradient near 1e-5, and CG's rounding keeps it from converging).
        # Where such a step shrinks the gradient's norm by less than half (in exact arithmetic, with a model
        # this accurate, it leaves CG's residual: at most _MAX_FORCING of it), rounding sets the gradient too:
        # the solve stops at the better of the two iterates.
        at_rounding = within_rounding(g, ev.residual, rounding_scale)
        worse = opt >= st.optimality
        stuck = worse | (dot(g, g) > 0.25 * dot(st.grad, st.grad))
        at_floor = newton & exact_step & (solved | at_rounding) & ls.at_precision & stuck
        # Rounded Hessian products serve the steps far from the optimum. The products turn float32 once the
        # gradient test is met (the step that certifies the gap solves the exact system), near F's float
        # resolution (the float-floor tests above read exact steps), or after a rounded step whose true
        # residual strayed from CG's by more than the loosest forcing term (the rounding then limits it).
        poor = newton & ~exact_step & ~solved
        exact_next = pr.exact | met | ls.at_precision | poor
        new = _State(params, z, ev, g, opt, gap, memory, pstate, _Progress(
            pr.n_iter + 1, pr.n_cg + k, passes, phase, stalled, settled | at_floor, ls.unresolved & newton, k,
            exact_next))
        kept = st._replace(precond=pstate, progress=pr._replace(
            n_iter=pr.n_iter + 1, n_cg=pr.n_cg + k, n_passes=passes, at_floor=jnp.bool_(True), last_cg=k,
            exact=exact_next))
        # A step that overflowed (separable softmax layers at C >= 1e8) is not taken: the last finite
        # iterate is kept and the solve stops there, unconverged.
        overflowed = ~(jnp.isfinite(opt) & jnp.all(jnp.isfinite(params.coef)) & jnp.all(jnp.isfinite(params.intercept)))
        broken = st._replace(precond=pstate, progress=pr._replace(
            n_iter=pr.n_iter + 1, n_cg=pr.n_cg + k, n_passes=passes, stalled=jnp.bool_(True), last_cg=k,
            exact=exact_next))
        new = jax.tree.map(lambda a_, b_: jnp.where(overflowed, a_, b_), broken, new)
        return jax.tree.map(lambda a_, b_: jnp.where(at_floor & worse & ~overflowed, a_, b_), kept, new)

    st = jax.lax.while_loop(cond, body, init)
    pr = st.progress
    return SolveResult(
        coef=st.params.coef, intercept=st.params.intercept, n_iter=pr.n_iter,
        converged=_converged(st, s) | pr.at_floor,
        optimality=st.optimality, n_cg=pr.n_cg, n_passes=pr.n_passes,
    ), st.memory


def column_norms(X: Array) -> Array:
    """``(D + 1,)``: the 2-norms of ``X``'s columns and of the intercept's column of ones (one pass over ``X``)."""
    n = jnp.asarray(X.shape[0], X.dtype)
    return jnp.concatenate([jnp.sqrt(jnp.sum(jnp.square(X), axis=0)), jnp.sqrt(n)[None]])


def gradient_rounding_scale(norms: Array) -> Array:
    r"""``(D + 1,)`` ``c`` such that ``c_j ||r||_2`` bounds the float rounding of ``(X^T r)_j`` (the last entry
    for the intercept's column of ones), from :func:`column_norms`.

    Each entry is a sum of ``N`` products; with probabilistic rounding (Higham & Mary 2019, lambda = 8)
    its error is at most ``8 sqrt(N) u sum_i |x_ij r_i| <= 8 sqrt(N) u ||x_j||_2 ||r||_2`` (Cauchy-Schwarz),
    so ``c_j = 8 sqrt(N) u ||x_j||_2``.
    """
    n = jnp.square(norms[-1])
    u = jnp.finfo(norms.dtype).eps / 2
    return 8 * jnp.sqrt(n) * u * norms


def within_rounding(g: Params, residual: Array, scale: Array) -> Array:
    """Whether every gradient entry is within its float rounding (:func:`gradient_rounding_scale`), for
    ``residual`` ``(N,)`` or ``(K, N)`` (one bound per class row)."""
    r = jnp.sqrt(row_sums(jnp.square(residual)))[..., None]  # (1,) or (K, 1)
    bound = r * scale
    coef = jnp.abs(g.coef).reshape(bound.shape[:-1] + (-1,))
    return jnp.all(coef <= bound[..., :-1]) & jnp.all(jnp.abs(g.intercept) <= bound[..., -1])


def _first_phase(opt0: Array, s: Settings, newton_first: Array) -> _Phase:
    prior = jnp.log10(1.0 / s.switch_progress) / (2 * s.switch_window)  # what a Newton step is assumed to do
    newton = jnp.bool_(s.memory == 0) | newton_first
    return _Phase(newton, newton, jnp.int32(0),
                  jnp.full(s.switch_window + 1, opt0), jnp.zeros((), opt0.dtype), prior.astype(opt0.dtype))


def _next_phase(ph: _Phase, newton: Array, opt: Array, passes: Array, forced: Array, s: Settings) -> _Phase:
    """The phase after a step of the kind ``newton`` that cost ``passes`` passes and left ``opt``.

    Progress is measured in decades of the best scaled gradient per pass over ``X``. A quasi-Newton
    phase, once ``switch_after`` iterations old, hands over to Newton-CG when its last ``switch_window``
    iterations made less progress per pass than the last Newton step did (or, before any, than the prior
    a ``switch_progress`` reduction over the window sets); a Newton step hands back when it made less than
    that window did. The Newton rate the quasi-Newton phase is judged against is the last step's, or half
    the one before it (the prior before any) where that is more. ``forced`` (the quasi-Newton step could
    not measure progress, or a gap test must be passed on a Newton decrement) locks the solve into
    Newton-CG.
    """
    best_now = jnp.minimum(ph.best[-1], opt)
    best = jnp.concatenate([ph.best[1:], best_now[None]])
    fresh = jnp.full_like(ph.best, best_now)
    decades = lambda before: jnp.log10(guard(before) / guard(best_now))
    # Quasi-Newton: judge the window.
    judged = ph.since + 1 >= max(s.switch_window, s.switch_after)
    qn_rate = jnp.where(judged, decades(best[0]) / (2 * s.switch_window), ph.qn_rate)
    leave = forced | (judged & (qn_rate < ph.newton_rate))
    after_qn = _Phase(leave, forced, jnp.where(leave, 0, ph.since + 1), jnp.where(leave, fresh, best), qn_rate,
                      ph.newton_rate)
    # Newton: judge the step.
    step_rate = decades(ph.best[-1]) / guard(passes.astype(opt.dtype))
    locked = ph.locked | forced
    back = ~locked & (step_rate < ph.qn_rate)
    since_back = max(s.switch_after - s.switch_window, 0)  # the memory is filled: one window decides
    # One step lowers the record by half at most: its max-abs gradient can rise while F falls, and a rate
    # of zero would keep a slowing quasi-Newton phase from ever handing over again.
    newton_rate = jnp.maximum(step_rate, 0.5 * ph.newton_rate)
    after_newton = _Phase(~back, locked, jnp.where(back, since_back, ph.since + 1), jnp.where(back, fresh, best),
                          ph.qn_rate, newton_rate)
    return jax.tree.map(lambda a, b: jnp.where(newton, a, b), after_newton, after_qn)


def _if(predicate: Array, bound: Any, dtype: Any) -> Array:
    """``bound()`` where ``predicate`` holds (a branch, not a select: the predicate is one for a batch), else inf."""
    return jax.lax.cond(predicate, bound, lambda: jnp.asarray(jnp.inf, dtype))


def _converged(st: _State, s: Settings) -> Array:
    return (st.optimality <= s.tol) & (st.gap <= s.gap_tol)


class _CGState(NamedTuple):
    d: Params  # the Newton direction being built
    a: Array  # X d, accumulated from the products below
    r: Params  # residual -g - H d
    p: Params  # search direction
    rr: Array  # (): r.r, the squared residual norm the stopping rule tests
    rz: Array  # (): r.M r, the preconditioned inner product CG's step sizes use
    k: Array  # int32 (): CG iterations taken


def conjugate_gradients(glm: GLM, data: GLMData, aux: Array, g: Params, precond: Preconditioner, pstate: Any,
                        tol2: Array, max_steps: Array | int, *, reach: Array | float = 0.0,
                        loose2: Array | float = 0.0,
                        rounded: bool = False) -> tuple[Params, Array, Array, Array]:
    """``(d, X d, steps, solved)``: preconditioned CG on ``H d = -g`` (``H`` at the point whose loss ``aux``
    is given) until ``|r|^2 <= tol2``, or the residual's max-abs entry is ``<= reach`` with ``|r|^2 <= loose2``
    (either: ``solved``), or ``max_steps``.

    ``rounded`` (static): CG's products from ``data.rounded`` (:meth:`._glm.GLM.rounded_hvp`), then one exact
    product ``H d`` (two passes, which give ``X d``); ``solved`` then says whether the true residual
    ``-g - H d`` is within ``sqrt(loose2)`` of CG's own: whether the rounding moved the step by less than the
    loosest forcing term allows."""

    def cond(cg: _CGState) -> Array:
        # r.M r > 0 always holds for a positive definite M; if rounding ever breaks it, stopping keeps the
        # direction built so far (a descent direction) instead of stepping on garbage.
        return (cg.k < max_steps) & ~solved(cg) & (cg.rz > 0)

    def solved(cg: _CGState) -> Array:
        return (cg.rr <= tol2) | ((cg.rr <= loose2) & (optimality(cg.r) <= reach))

    def body(cg: _CGState) -> _CGState:
        hp, u = (glm.rounded_hvp(data, aux, cg.p), None) if rounded else glm.hvp(data, aux, cg.p)
        alpha = cg.rz / guard(dot(cg.p, hp))  # H is positive definite up to rounding
        r = axpy(-alpha, hp, cg.r)
        m = precond.apply(pstate, r)
        rz = dot(r, m)
        beta = rz / guard(cg.rz)
        a = cg.a if rounded else cg.a + alpha * u
        return _CGState(axpy(alpha, cg.p, cg.d), a, r, axpy(beta, cg.p, m), dot(r, r), rz, cg.k + 1)

    r = Params(-g.coef, -g.intercept)
    m = precond.apply(pstate, r)
    zero = Params(jnp.zeros_like(g.coef), jnp.zeros_like(g.intercept))
    init = _CGState(zero, jnp.zeros_like(aux), r, m, dot(r, r), dot(r, m), jnp.int32(0))
    cg = jax.lax.while_loop(cond, body, init)
    if not rounded:
        return cg.d, cg.a, cg.k, solved(cg)
    hd, a = glm.hvp(data, aux, cg.d)
    drift = axpy(-1.0, cg.r, axpy(-1.0, hd, r))  # the true residual -g - H d less CG's
    return cg.d, a, cg.k, dot(drift, drift) <= loose2
