r"""Truncated Newton (Newton-CG) for L2-penalised generalised linear models, one problem at a time.

The solver minimises, for one design matrix ``X`` of shape ``(N, D)``,

.. math::

    F(W, b) = C \sum_i s_i \, \ell(z_i, y_i) + \tfrac12 \lVert W \rVert_F^2,
    \qquad z_i = W x_i + b,

which is scikit-learn's ``LogisticRegression`` objective (intercept ``b`` unpenalised). ``W`` is ``(D,)``
for a scalar linear predictor (binary logistic) or ``(K, D)`` for a vector one (multinomial, laid out as
scikit-learn's ``coef_``); the predictor ``z`` is then ``(N,)`` or ``(K, N)``. The loss
enters only through its derivatives with respect to ``z`` (a :class:`GLMLoss`), so every solver iteration
costs matrix products with ``X`` and ``O(N K)`` elementwise work:

* the gradient ``C (s * dl/dz) X + W`` — one pass over ``X``;
* each conjugate-gradient step, a Hessian-vector product ``C X^T (s * d2l/dz2 [X v]) + v`` — two passes;
* the line search works on ``z + t * (X d)``, where ``X d`` is accumulated from the CG steps' own
  products, so it costs no pass over ``X`` at all.

Written for one problem; batching over a regularisation grid, cross-validation folds (sample weights)
and layers is done with ``jax.vmap`` by the callers. When ``X`` is shared (``in_axes=None``) across a
batch of problems, the products in :mod:`._products` become one matrix-matrix product per step that
reads ``X`` once for all of them. Under vmap the ``while_loop`` runs until the slowest problem stops; finished problems
are carried through unchanged, so their ``n_iter`` stays exact.

Stopping rule: the *scaled* gradient ``grad F / (C sum_i s_i)`` — the gradient of scikit-learn's
internal objective ``mean_s(loss) + ||W||^2 / (2 C sum s)`` on which its ``tol`` acts — has max-abs
entry ``<= tol``, *and* the last Newton step's decrement ``-g.d / 2`` (an estimate of ``F - min F``) was
at most ``tol * F``. The first is scikit-learn's criterion; alone it is loose when ``F`` is small
against ``C sum s`` (nearly separable layers at large ``C``: a 9e-5 relative objective gap at
``tol=1e-7`` on the benchmark's deepest layer), which the second closes. Or the float floor is
reached (counted as converged): once the Newton decrement says the remaining decrease is below the float
resolution of ``F``, full Newton steps stop lowering the gradient; or, with the gradient test met, two
steps in a row lowered ``F`` by less than its float resolution (the gap estimate is then rounding
noise). A failed line search otherwise also stops the loop, unconverged.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import functools

import jax
import jax.numpy as jnp
from jax import Array

from ._batching import any_across_batch, default_layer_batch_size, over_layers
from ._checks import check_positive_int, compute_dtype
from ._hessian_inverse import (
    LaggedHessianInverse,
    apply_lagged_inverse,
    lagged_build_threshold,
    lagged_hessian_inverse,
    no_lagged_inverse,
)
from ._nystrom import NystromApprox, apply_preconditioner, nystrom_gram
from ._precision import vdot
from ._products import matvec, rmatvec
from ._woodbury import apply_woodbury, layer_kernel, use_woodbury, woodbury_inverse

# The Armijo constant and the most halvings tried before the step is declared impossible.
_ARMIJO_C1 = 1e-4
_MAX_HALVINGS = 30


class GLMLoss(NamedTuple):
    """A per-sample loss, given by its derivatives with respect to the linear predictor ``z``.

    Each function maps a predictor ``z`` of shape ``(N,)`` (scalar) or ``(K, N)`` (vector, class axis
    first) and labels ``y`` of shape ``(N,)`` to per-sample results; none applies sample weights.

    Attributes:
      value: ``(z, y) -> (N,)`` the loss of each sample.
      grad: ``(z, y) -> like z``, ``dl/dz``.
      hvp: ``(z, y, u) -> like z``, the per-sample Hessian ``d2l/dz2`` applied to ``u``.
      curvature: ``(z, y) -> like z``, the diagonal of that Hessian (sizes the preconditioner).
    """

    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    hvp: Callable[[Array, Array, Array], Array]
    curvature: Callable[[Array, Array], Array]


class NewtonCGResult(NamedTuple):
    """Solution of one problem.

    Attributes:
      coef: ``(D,)`` or ``(K, D)``.
      intercept: ``()`` or ``(K,)``; zero when ``fit_intercept`` is False.
      n_iter: int32 ``()``, Newton iterations taken.
      converged: bool ``()``, True when the scaled gradient's max-abs entry fell to ``<= tol`` and the
        last Newton step's estimate of the relative objective gap was ``<= tol``, or when
        the solve reached the float floor: the Newton decrement (twice the predicted decrease
        ``F - min F``) was below ``eps * F`` and a full Newton step no longer lowered the gradient
        (float32 rounding of the gradient can sit above a tight ``tol``), or the gradient test held
        and two steps in a row lowered ``F`` by less than ``eps * F``.
        False when ``max_iter`` ran out, when the line search could not decrease the objective
        before either held, or when the iterate became non-finite.
      optimality: ``()``, the scaled gradient's max-abs entry at the returned solution.
      n_cg: int32 ``()``, conjugate-gradient steps over all Newton iterations (each is two passes over
        ``X``: the solve's work).
    """

    coef: Array
    intercept: Array
    n_iter: Array
    converged: Array
    optimality: Array
    n_cg: Array

    def as_fit(self, fit_type: type) -> tuple:
        """These arrays as ``fit_type``, a NamedTuple whose fields are some of these (by name)."""
        return fit_type(*(getattr(self, name) for name in fit_type._fields))


class _NewtonState(NamedTuple):
    coef: Array  # (D,) or (K, D)
    intercept: Array  # () or (K,)
    z: Array  # (N,) or (K, N): coef @ X^T + intercept, kept current so steps need no pass over X
    grad_coef: Array  # like coef: gradient of F
    grad_intercept: Array  # like intercept
    optimality: Array  # (): max |grad F| / (C sum s)
    optimality0: Array  # (): the same at the starting point
    gap: Array  # (): -slope / (2 F) of the last Newton direction: its estimate of (F - min F) / F
    n_iter: Array  # int32 ()
    stalled: Array  # bool (): the last line search found no decreasing step
    at_floor: Array  # bool (): float32 rounding, not the optimiser, now limits progress (see body)
    n_cg: Array  # int32 (): CG steps so far
    unresolved: Array  # bool (): the last step lowered F by less than F's float resolution
    inverse: LaggedHessianInverse | None  # with hessian_refresh: the inverse Newton matrix CG uses
    last_cg: Array  # int32 (): CG steps of the last Newton step


class _CGState(NamedTuple):
    d_coef: Array  # the Newton direction being built
    d_intercept: Array
    a: Array  # X @ d_coef + d_intercept, accumulated from the products below
    r_coef: Array  # residual -g - H d
    r_intercept: Array
    p_coef: Array  # search direction
    p_intercept: Array
    rr: Array  # (): r . r, the squared residual norm the stopping rule tests
    rz: Array  # (): r . P^-1 r, the preconditioned inner product CG's step sizes use
    k: Array  # int32 (): CG iterations taken


def _dot(a: Array, b: Array) -> Array:
    return vdot(a, b)


def gradient_rounding_scale(X: Array) -> Array:
    r"""``c`` such that ``c ||r||_2`` bounds the float rounding of each entry of ``X^T r`` (``X`` ``(N, D)``).

    Each entry is a sum of ``N`` products; with probabilistic rounding (Higham & Mary 2019, lambda = 8)
    its error is at most ``8 sqrt(N) u sum_i |x_ij r_i| <= 8 sqrt(N) u ||x_j||_2 ||r||_2`` (Cauchy-Schwarz),
    so ``c = 8 sqrt(N) u max_j ||x_j||_2``: one pass over ``X`` per problem.
    """
    u = jnp.finfo(X.dtype).eps / 2
    n = jnp.asarray(X.shape[0], X.dtype)
    return 8 * jnp.sqrt(n) * u * jnp.sqrt(jnp.max(jnp.sum(jnp.square(X), axis=0)))


def newton_cg(
    loss: GLMLoss,
    X: Array,
    y: Array,
    sample_weight: Array,
    C: Array,
    coef0: Array,
    intercept0: Array,
    *,
    fit_intercept: bool,
    tol: float,
    max_iter: int,
    max_cg_iter: int,
    precond: NystromApprox | None = None,
    gap_tol: float | None = None,
    lagged: LaggedHessianInverse | None = None,
    kernel: Array | None = None,
    hessian_refresh: int = 0,
) -> NewtonCGResult:
    """Minimise ``C sum_i s_i l(x_i W + b, y_i) + ||W||^2 / 2`` by truncated Newton.

    Args:
      loss: the per-sample loss.
      X: ``(N, D)`` design matrix (float32 or float64; the computation runs in its dtype).
      y: ``(N,)`` labels in the form ``loss`` expects.
      sample_weight: ``(N,)`` non-negative weights; zeros drop samples (how CV folds are expressed).
      C: ``()`` inverse regularisation strength, ``> 0``.
      coef0: ``(D,)`` or ``(K, D)`` starting point; ``intercept0`` ``()`` or ``(K,)``.
      fit_intercept: whether ``b`` is optimised (static).
      tol: stop when ``max |grad F| / (C sum s) <= tol`` (traced: a new value does not recompile).
      max_iter: most Newton iterations (traced).
      max_cg_iter: most CG iterations per Newton step (static).
      precond: a Nyström approximation of ``[X, 1]^T [X, 1]`` to precondition CG with, or None.
      gap_tol: bound on the relative objective-gap estimate (traced; default ``tol``; ``inf`` keeps
        scikit-learn's gradient criterion alone, as cross-validation folds do).
      lagged: for a scalar predictor, an inverse Hessian from earlier on a path; once ``lagged.active``,
        CG is preconditioned with it instead of ``precond`` (see :mod:`._hessian_inverse`).
      kernel: for a scalar predictor, ``[X, 1] [X, 1]^T`` ``(N, N)`` (:func:`._woodbury.layer_kernel`):
        CG is then preconditioned with the exact inverse Newton matrix, rebuilt at every Newton step
        through it (:mod:`._woodbury`; for wide ``X``), instead of ``precond`` and ``lagged``.
      hessian_refresh: for a scalar predictor, when ``> 0`` (static): before every Newton step that
        follows one whose CG took at least this many steps, the exact inverse Newton matrix
        ``(C [X, 1]^T S [X, 1] + I)^-1`` at the current iterate is (re)built
        (:func:`._hessian_inverse.lagged_hessian_inverse`) and preconditions CG from then on, in place
        of ``precond`` (which serves the steps before) and ``lagged``.

    Returns:
      A :class:`NewtonCGResult`.
    """
    dtype = X.dtype
    gap_tol = tol if gap_tol is None else gap_tol
    C = jnp.asarray(C, dtype)
    s = sample_weight.astype(dtype)
    scale = C * jnp.sum(s)  # turns F's gradient into scikit-learn's mean-loss gradient

    def intercept_part(v: Array) -> Array:
        return v if fit_intercept else jnp.zeros_like(v)

    rounding_scale = gradient_rounding_scale(X)

    def gradient(coef: Array, z: Array) -> tuple[Array, Array, Array, Array]:
        """``(g_coef, g_intercept, optimality, rounding)``: the gradient, its scaled max-abs entry, and
        a bound on that entry's float rounding (see :func:`gradient_rounding_scale`)."""
        r = s * loss.grad(z, y)
        dz = C * r
        g_coef = rmatvec(X, dz) + coef
        g_int = intercept_part(jnp.sum(dz, axis=-1))
        opt = jnp.maximum(jnp.max(jnp.abs(g_coef)), jnp.max(jnp.abs(g_int))) / scale
        return g_coef, g_int, opt, rounding_scale * jnp.sqrt(_dot(r, r)) / jnp.sum(s)

    def solve_newton_direction(st: _NewtonState, lagged: LaggedHessianInverse | None) -> _CGState:
        """Conjugate gradients on ``H d = -g``, preconditioned when ``precond`` is given."""
        g_norm = jnp.sqrt(_dot(st.grad_coef, st.grad_coef) + _dot(st.grad_intercept, st.grad_intercept))
        # Inexact Newton forcing term (Dembo & Steihaug 1983; Eisenstat & Walker 1996): loose far from
        # the optimum, tight near it, which keeps Newton's superlinear convergence. It is relative to
        # the starting gradient, not to scikit-learn's C-scaled one, so the CG effort does not depend
        # on how C scales the objective; the 0.1 cap measured faster than 0.5 (fewer Newton steps).
        forcing = jnp.minimum(0.1, jnp.sqrt(st.optimality / st.optimality0))
        # No tighter than the stopping test needs: the next gradient is, to first order, the CG
        # residual, so a residual of half the tolerance (in the 2-norm, which bounds the tested max-abs
        # entry) already passes it. Solving further only polishes a step that ends the loop anyway;
        # on the benchmark's 8-C grid this cut CG steps by ~10% (up to 0.3: above, more Newton steps).
        floor = 0.5 * tol * scale / jnp.maximum(g_norm, jnp.finfo(dtype).tiny)
        forcing = jnp.minimum(0.3, jnp.maximum(forcing, floor))
        cg_tol2 = (forcing * g_norm) ** 2
        if precond is None:
            def solve_gram(v_coef: Array, v_int: Array) -> tuple[Array, Array]:
                return v_coef, v_int
        else:
            # H ~ a (A + I / a), with a = C * mean curvature (per class for a vector predictor).
            a = C * jnp.sum(s * loss.curvature(st.z, y), axis=-1) / s.shape[0]
            mu = 1.0 / jnp.maximum(a, jnp.finfo(dtype).tiny)

            def solve_gram(v_coef: Array, v_int: Array) -> tuple[Array, Array]:
                m_coef, m_int = apply_preconditioner(precond, mu, v_coef, v_int)
                if m_int.ndim:
                    # Softmax is unchanged by adding one constant to every intercept: H is singular
                    # along that direction, and the gradient has no part in it. The per-class mu
                    # would put some in; removing the mean keeps CG in H's range.
                    m_int = m_int - jnp.mean(m_int, axis=-1, keepdims=True)
                return m_coef, intercept_part(m_int)

        if kernel is not None:
            exact = woodbury_inverse(X, kernel, C * s * loss.curvature(st.z, y), fit_intercept=fit_intercept)

        def solve_m(v_coef: Array, v_int: Array) -> tuple[Array, Array]:
            if kernel is not None:
                m_coef, m_int = apply_woodbury(exact, X, v_coef, v_int, fit_intercept=fit_intercept)
                return m_coef, intercept_part(m_int)
            if lagged is None:
                return solve_gram(v_coef, v_int)

            def solve_lagged() -> tuple[Array, Array]:
                m_coef, m_int = apply_lagged_inverse(lagged, v_coef, v_int)
                return m_coef, intercept_part(m_int)

            # The flag is shared by every problem of a layer (the folds' vmap leaves it unbatched); under
            # a vmap of the caller's, any_across_batch keeps it one flag, so this stays a branch (one of
            # the two runs), not a select that would compute both.
            return jax.lax.cond(any_across_batch(lagged.active), solve_lagged, lambda: solve_gram(v_coef, v_int))

        def cond(cg: _CGState) -> Array:
            # r.P^-1 r > 0 always holds for a positive definite P; if rounding ever breaks it, stopping
            # keeps the direction built so far (a descent direction) instead of stepping on garbage.
            return (cg.k < max_cg_iter) & (cg.rr > cg_tol2) & (cg.rz > 0)

        def body(cg: _CGState) -> _CGState:
            u = matvec(X, cg.p_coef) + cg.p_intercept[..., None]
            hu = C * s * loss.hvp(st.z, y, u)
            hp_coef = rmatvec(X, hu) + cg.p_coef
            hp_int = intercept_part(jnp.sum(hu, axis=-1))
            curvature = _dot(cg.p_coef, hp_coef) + _dot(cg.p_intercept, hp_int)
            # F is strongly convex (the penalty adds I), so curvature > 0 up to rounding.
            alpha = cg.rz / jnp.maximum(curvature, jnp.finfo(dtype).tiny)
            r_coef = cg.r_coef - alpha * hp_coef
            r_int = cg.r_intercept - alpha * hp_int
            m_coef, m_int = solve_m(r_coef, r_int)
            rz = _dot(r_coef, m_coef) + _dot(r_int, m_int)
            beta = rz / jnp.maximum(cg.rz, jnp.finfo(dtype).tiny)
            return _CGState(
                d_coef=cg.d_coef + alpha * cg.p_coef,
                d_intercept=cg.d_intercept + alpha * cg.p_intercept,
                a=cg.a + alpha * u,
                r_coef=r_coef,
                r_intercept=r_int,
                p_coef=m_coef + beta * cg.p_coef,
                p_intercept=m_int + beta * cg.p_intercept,
                rr=_dot(r_coef, r_coef) + _dot(r_int, r_int),
                rz=rz,
                k=cg.k + 1,
            )

        r_coef, r_int = -st.grad_coef, -st.grad_intercept
        m_coef, m_int = solve_m(r_coef, r_int)
        init = _CGState(
            d_coef=jnp.zeros_like(st.coef),
            d_intercept=jnp.zeros_like(st.intercept),
            a=jnp.zeros_like(st.z),
            r_coef=r_coef,
            r_intercept=r_int,
            p_coef=m_coef,
            p_intercept=m_int,
            rr=g_norm**2,
            rz=_dot(r_coef, m_coef) + _dot(r_int, m_int),
            k=jnp.int32(0),
        )
        return jax.lax.while_loop(cond, body, init)

    def line_search(st: _NewtonState, cg: _CGState) -> tuple[Array, Array, Array, Array]:
        """``(t, at_precision, gap, unresolved)``: the largest ``t`` in ``1, 1/2, 1/4, ...`` meeting
        Armijo's condition, or 0 if none does; ``t = 1`` once the decrease is below float resolution
        (see below); the Newton decrement's estimate of the relative objective gap; and whether the
        step's decrease of ``F`` is below the float resolution of ``F``.

        The decrease ``F(t) - F(0)`` is summed from per-sample differences ``l(z + t a) - l(z)`` rather
        than as a difference of two totals: in float32 the totals carry rounding of order
        ``1e-7 * F``, which would hide the small decreases of the last Newton steps.
        """
        slope = _dot(st.grad_coef, cg.d_coef) + _dot(st.grad_intercept, cg.d_intercept)
        base = loss.value(st.z, y)
        wd = _dot(st.coef, cg.d_coef)
        dd = _dot(cg.d_coef, cg.d_coef)

        def decrease(t: Array) -> Array:
            data = C * jnp.sum(s * (loss.value(st.z + t * cg.a, y) - base))
            return data + t * wd + 0.5 * t * t * dd

        def cond(carry: tuple[Array, Array, Array]) -> Array:
            t, k, ok = carry
            return (~ok) & (k < _MAX_HALVINGS)

        def body(carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
            t, k, _ = carry
            t = t * 0.5
            return t, k + 1, decrease(t) <= _ARMIJO_C1 * t * slope

        t0 = jnp.asarray(1.0, dtype)
        ok0 = (slope < 0) & (decrease(t0) <= _ARMIJO_C1 * t0 * slope)
        t, _, ok = jax.lax.while_loop(cond, body, (t0, jnp.int32(0), ok0))
        # The Newton decrement -slope / 2 estimates F - min F. Below the float resolution of F itself,
        # the line search can no longer measure progress; there the model is quadratic to working
        # precision, so the full Newton step is taken without a test (the caller then judges it by
        # the gradient, which float32 still resolves).
        objective = C * jnp.sum(s * base) + 0.5 * _dot(st.coef, st.coef)
        at_precision = -slope <= jnp.finfo(dtype).eps * objective
        t = jnp.where(at_precision, t0, jnp.where(ok, t, jnp.zeros_like(t)))
        unresolved = -decrease(t) <= jnp.finfo(dtype).eps * objective
        return t, at_precision, -slope / (2 * objective), unresolved

    def cond(st: _NewtonState) -> Array:
        unfinished = ((st.optimality > tol) | (st.gap > gap_tol)) & ~st.stalled & ~st.at_floor
        return (st.n_iter < max_iter) & unfinished & jnp.isfinite(st.optimality)

    def refreshed_inverse(st: _NewtonState) -> LaggedHessianInverse | None:
        """With ``hessian_refresh``, the state's inverse Newton matrix, (re)built at this iterate when the
        last step's CG work says the preconditioner in use no longer pays; without, the state's None."""
        if not hessian_refresh:
            return st.inverse
        due = st.last_cg >= hessian_refresh

        def build() -> LaggedHessianInverse:
            return lagged_hessian_inverse(X, s * loss.curvature(st.z, y), C, fit_intercept=fit_intercept)

        # One decision for a whole vmapped batch (layers): a batched predicate would build every step.
        return jax.lax.cond(any_across_batch(due), build, lambda: st.inverse)

    def body(st: _NewtonState) -> _NewtonState:
        inverse = refreshed_inverse(st)
        cg = solve_newton_direction(st, inverse if hessian_refresh else lagged)
        t, at_precision, gap, unresolved = line_search(st, cg)
        coef = st.coef + t * cg.d_coef
        intercept = st.intercept + t * cg.d_intercept
        z = st.z + t * cg.a
        g_coef, g_int, opt, rounding = gradient(coef, z)
        stalled = (t == 0) & ~at_precision
        # The gradient test is met and two steps in a row lowered F by less than its float resolution:
        # the gap estimate is then float32 noise (Newton directions from a gradient at its rounding
        # floor), not a gap the optimiser can close. On wide nearly separable layers (200 x 4096,
        # C = 100) it sat at 2e-7 above tol = 1e-7 while F changed by single ulps, and the solves ran to
        # max_iter; the objective gap to scikit-learn's float64 optimum after 100 steps was the same
        # (3e-7 / 8e-7) as where this now stops (6-9 steps). One such step alone measured too early.
        settled = (opt <= tol) & ~at_precision & unresolved & st.unresolved
        new = _NewtonState(coef, intercept, z, g_coef, g_int, opt, st.optimality0, gap, st.n_iter + 1,
                           stalled, settled, st.n_cg + cg.k, unresolved, inverse, cg.k)
        # In the precision regime, a full Newton step that does not lower the gradient means float32
        # rounding (not the optimiser) now sets the gradient: keep the better iterate and stop there;
        # only where the gradient is within its own rounding (at C >= 1e10 the unscaled arithmetic
        # loses everything, CG steps come out zero, and a zero probe was reported converged).
        at_floor = at_precision & (opt >= st.optimality) & (opt <= rounding)
        kept = st._replace(n_iter=st.n_iter + 1, at_floor=jnp.bool_(True), n_cg=st.n_cg + cg.k, inverse=inverse,
                           last_cg=cg.k)
        # A step that overflowed (separable softmax layers at C >= 1e8: CG's products in C's units) is
        # not taken: the last finite iterate is kept and the solve stops there, unconverged.
        overflowed = ~(jnp.isfinite(opt) & jnp.all(jnp.isfinite(coef)) & jnp.all(jnp.isfinite(intercept)))
        broken = st._replace(n_iter=st.n_iter + 1, stalled=jnp.bool_(True), n_cg=st.n_cg + cg.k, inverse=inverse,
                             last_cg=cg.k)
        new = jax.tree.map(lambda a, b: jnp.where(overflowed, a, b), broken, new)
        return jax.tree.map(lambda a, b: jnp.where(at_floor & ~overflowed, a, b), kept, new)

    coef0 = coef0.astype(dtype)
    intercept0 = intercept_part(intercept0.astype(dtype))
    z0 = matvec(X, coef0) + intercept0[..., None]
    g_coef, g_int, opt, _ = gradient(coef0, z0)
    inf = jnp.asarray(jnp.inf, dtype)
    init = _NewtonState(
        coef0, intercept0, z0, g_coef, g_int, opt, opt, inf, jnp.int32(0), jnp.bool_(False), jnp.bool_(False),
        jnp.int32(0), jnp.bool_(False),
        no_lagged_inverse(X.shape[-1], dtype) if hessian_refresh else None, jnp.int32(0),
    )
    st = jax.lax.while_loop(cond, body, init)
    return NewtonCGResult(
        coef=st.coef,
        intercept=st.intercept,
        n_iter=st.n_iter,
        converged=((st.optimality <= tol) & (st.gap <= gap_tol)) | st.at_floor,
        optimality=st.optimality,
        n_cg=st.n_cg,
    )


def default_precondition_rank(n_features: int, rank: int | None) -> int:
    """``rank`` if given (0 disables), else ``min(64, D)``: on the benchmark's 768-feature layers, rank
    32-128 all halved the solve time; 64 was the fastest."""
    if rank is None:
        return min(64, n_features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= n_features:
        raise ValueError(f"precondition_rank must be an integer in [0, D={n_features}] or None; got {rank!r}.")
    return rank


def default_max_cg_iter(n_features: int) -> int:
    """CG solves the ``(D+1)``-dimensional Newton system exactly in ``D+1`` steps in exact arithmetic;
    with the forcing sequence it needs far fewer. The cap only guards against a stalled inner loop."""
    return min(n_features + 1, 250)


# On an accelerator, (re)build the exact inverse Newton matrix after a Newton step whose CG took this many
# steps. H100, 32 layers x 6144 x 4096, C = 1 (`python benchmarks/gpu_sweep.py --studies refresh`):
# never 2.78 s (715 lock-step CG steps); 10: 1.95 s (61); 20: 1.55 s (113); 40: 1.72 s (136); the 8-C grid
# 7.52 -> 4.68 s at 20. Each build (a weighted Gram and a (D+1)-square inverse per layer) costs ~0.1-0.2 s.
_HESSIAN_REFRESH_CG = 20


# Device memory assumed where the backend does not report its limit.
_ASSUMED_DEVICE_BYTES = 16 * 2**30


def default_hessian_refresh(n_features: int, n_outputs: int | None, woodbury: bool, layers_at_once: int = 1) -> int:
    """newton_cg's ``hessian_refresh`` for this problem: :data:`_HESSIAN_REFRESH_CG` on an accelerator for
    scalar predictors whose inverses fit, else 0 (off).

    They fit when ``layers_at_once`` layers' ``(D+1)^2`` float32 inverses, four times over (room for a
    build's Gram matrix, Cholesky factor and triangular inverse beside the inverse in use), take at most
    a quarter of the device's memory (32 layers of 4096 features: 8.6 GB of an H100's 80). Otherwise
    (wide models, many layers at once) the solve keeps the Nystrom preconditioner alone; a smaller
    ``layer_batch_size`` brings the inverses back.
    """
    if jax.default_backend() == "cpu" or n_outputs is not None or woodbury:
        return 0
    stats = jax.devices()[0].memory_stats() or {}
    budget = stats.get("bytes_limit", _ASSUMED_DEVICE_BYTES) / 4
    if 4 * layers_at_once * (n_features + 1) ** 2 * 4 > budget:
        return 0
    return _HESSIAN_REFRESH_CG


def solver_options(
    shape: tuple[int, int, int],
    n_outputs: int | None,
    *,
    fit_intercept: bool,
    max_iter: int,
    max_cg_iter: int | None,
    precondition_rank: int | None,
    layer_batch_size: int | None,
) -> dict:
    """Validate the public solver settings for ``X`` of ``shape`` ``(L, N, D)`` and fill in defaults.

    Returns the static keyword arguments of :func:`solve_layers` other than ``tol``.
    """
    n_layers, n_samples, n_features = shape
    n_coef = n_features * (n_outputs or 1)
    rank = default_precondition_rank(n_features, precondition_rank)
    # Wide binary layers get the exact inverse Newton matrix (see _woodbury), which leaves nothing for
    # a Nystrom preconditioner to do.
    woodbury = n_outputs is None and use_woodbury(n_samples, n_features)
    batch = default_layer_batch_size(n_layers, layer_batch_size)
    return dict(
        n_outputs=n_outputs,
        fit_intercept=bool(fit_intercept),
        max_iter=check_positive_int(max_iter, "max_iter"),
        max_cg_iter=default_max_cg_iter(n_coef) if max_cg_iter is None else check_positive_int(
            max_cg_iter, "max_cg_iter"
        ),
        precondition_rank=0 if woodbury else rank,
        layer_batch_size=batch,
        woodbury=woodbury,
        hessian_refresh=default_hessian_refresh(n_features, n_outputs, woodbury, min(batch, n_layers)),
    )


@functools.partial(jax.jit, static_argnames=("rank", "fit_intercept", "layer_batch_size"))
def layer_preconditioners(X: Array, *, rank: int, fit_intercept: bool, layer_batch_size: int) -> NystromApprox:
    """Every layer's rank-``rank`` Nyström approximation of ``[X, 1]^T [X, 1]`` (fields with a leading
    ``L`` axis), for :func:`solve_layers`'s ``precond``.

    Computed apart so that several solves on the same ``X`` share it (a cross-validation's folds and its
    refit): each solve then neither recomputes it nor compiles its QR, Cholesky and SVD again (~0.8 s of
    a solve's ~2.5 s compile on the CPU).
    """
    dtype = compute_dtype(X.dtype)
    return over_layers(
        lambda x: _preconditioner(x.astype(dtype), rank, fit_intercept), X, layer_batch_size=layer_batch_size
    )


def _preconditioner(x: Array, rank: int, fit_intercept: bool) -> NystromApprox:
    return nystrom_gram(x, rank, fit_intercept=fit_intercept)


@functools.partial(
    jax.jit,
    static_argnames=(
        "loss", "n_outputs", "fit_intercept", "max_cg_iter", "precondition_rank", "layer_batch_size", "woodbury",
        "hessian_refresh",
    ),
)
def solve_layers(
    loss: GLMLoss,
    X: Array,
    y: Array,
    sample_weight: Array,
    Cs: Array,
    *,
    n_outputs: int | None,
    fit_intercept: bool,
    tol: float,
    max_iter: int,
    max_cg_iter: int,
    precondition_rank: int,
    layer_batch_size: int,
    gap_tol: float | None = None,
    precond: NystromApprox | None = None,
    init: tuple[Array, Array] | None = None,
    woodbury: bool = False,
    hessian_refresh: int = 0,
) -> NewtonCGResult:
    """Every (layer, weight set, C) problem in one compiled call.

    A grid is solved as a regularisation path: ``C`` in increasing order (``lax.scan``), each solve
    warm-started from the previous ``C``'s solution (extrapolated along the path from the third value
    on), with the weight sets (CV folds) batched at every step. Small ``C`` are the easy, nearly
    quadratic problems; starting the hard, large-``C`` ones near their optimum cut the 8-value grid's
    solve time by about 2x against all problems solved from zero in lock-step (where every batched step
    waits for the slowest problem). The ``C`` order given is kept in the output.

    CG is preconditioned with the layer's Nyström approximation of its Gram matrix. For a scalar
    predictor with layers solved one at a time (the CPU default), a path also builds the exact inverse
    Hessian at a solution once the CG work justifies it, and preconditions the following ``C`` with it
    (:mod:`._hessian_inverse`; on the benchmark's 8-C grid, CG steps 6070 -> 2053, time -26%; 2048-2102
    over the Nystrom test matrix's seeds 0-3). With ``hessian_refresh`` (the accelerator default for a
    scalar predictor and one weight set), each Newton loop instead builds the exact inverse Newton matrix
    at its current iterate whenever a step's CG grew long (:func:`newton_cg`; H100, 32 x 6144 x 4096:
    C=1 2.78 -> 1.55 s, the 8-C grid 7.52 -> 4.68 s).

    Args:
      loss: the per-sample loss (static; hashable).
      X: ``(L, N, D)`` in any float storage; computed in :func:`compute_dtype` of it.
      y: ``(N,)`` labels as ``loss`` expects them.
      sample_weight: ``(W, N)``; one row per weight set (CV folds are weight sets sharing ``X``).
      Cs: ``(G,)`` shared by all layers, or ``(L, G)``, one grid per layer.
      n_outputs: None for a scalar predictor (``coef`` ``(D,)``), ``K`` for a vector one (``(K, D)``).
      precondition_rank: rank of the per-layer Nyström preconditioner shared by all of a layer's
        problems (0: plain CG).
      gap_tol: see :func:`newton_cg`.
      precond: the preconditioners from :func:`layer_preconditioners` (same ``X`` and rank), or None to
        compute them here.
      init: ``(coef (L, W, [K,] D), intercept (L, W, [K]))`` where the first (smallest) ``C`` of each
        path starts, or None for zeros.
      woodbury: precondition CG with the exact inverse Newton matrix through the layer's ``N x N``
        kernel (scalar predictors; :mod:`._woodbury`, chosen by :func:`solver_options` for wide ``X``).
      hessian_refresh: :func:`newton_cg`'s, for scalar predictors with a single weight set (ignored
        otherwise: it would hold one ``(D+1)^2`` matrix per fold); chosen by :func:`solver_options`.

    Returns:
      :class:`NewtonCGResult` with leading axes ``(L, W, G)``. No validation: callers check inputs.
    """
    dtype = compute_dtype(X.dtype)
    X = X.astype(dtype)
    weights = sample_weight.astype(dtype)
    Cs = jnp.broadcast_to(Cs.astype(dtype), X.shape[:1] + Cs.shape[-1:])
    lead = () if n_outputs is None else (n_outputs,)

    n_samples, n_features = X.shape[1:]
    n_c = Cs.shape[-1]
    # The lagged inverse Hessian (see _hessian_inverse) for scalar predictors on a path, when layers are
    # solved one at a time. Under a vmap over layers the build decision would be one for all of them
    # (any_across_batch: any layer due rebuilds every layer's inverse); vmapped layers (the accelerator
    # default) get the in-loop inverse (hessian_refresh) instead, or the Nystrom preconditioner alone. It is
    # built after the second C at the earliest, for the ones after: a path of two or fewer never gets
    # one (nor its compile time).
    # The exact inverse Newton matrix, rebuilt inside each Newton loop (newton_cg's hessian_refresh), for
    # scalar predictors with one weight set: it would be one (D+1)^2 matrix per fold otherwise.
    refresh = hessian_refresh if n_outputs is None and weights.shape[0] == 1 and not woodbury else 0
    use_lagged = n_outputs is None and layer_batch_size == 1 and n_c > 2 and not woodbury and not refresh
    threshold = lagged_build_threshold(n_samples, n_features, weights.shape[0])

    def layer(per_layer: tuple) -> NewtonCGResult:
        x, cs, precond_l, init_l = per_layer
        if precond_l is None and precondition_rank:
            precond_l = _preconditioner(x, precondition_rank, fit_intercept)
        kernel = layer_kernel(x, fit_intercept=fit_intercept) if woodbury else None

        def one(
            lagged: LaggedHessianInverse | None, s: Array, c: Array, coef0: Array, intercept0: Array
        ) -> NewtonCGResult:
            return newton_cg(
                loss, x, y, s, c, coef0, intercept0, fit_intercept=fit_intercept, tol=tol,
                max_iter=max_iter, max_cg_iter=max_cg_iter, precond=precond_l, gap_tol=gap_tol, lagged=lagged,
                kernel=kernel, hessian_refresh=refresh,
            )

        def update_lagged(lagged: LaggedHessianInverse, res: NewtonCGResult, c_next: Array, n_done: Array):
            """(Re)build the inverse Hessian at these solutions (curvatures averaged over the weight sets,
            scaled by the next ``C``) when this ``C``'s CG work says the one in use no longer pays."""
            # Not after the first C: its solve starts cold, so its CG count says little about the path's.
            due = (n_done >= 1) & (jnp.max(res.n_cg) * (n_c - 1 - n_done) >= threshold)

            def build() -> LaggedHessianInverse:
                z = matvec(x, res.coef) + res.intercept[..., None]  # (W, N)
                curvature = jnp.mean(weights * loss.curvature(z, y), axis=0)
                return lagged_hessian_inverse(x, curvature, c_next, fit_intercept=fit_intercept)

            # Under a vmap of the caller's (say over label sets), one decision for the whole batch:
            # a batched predicate would make the cond a select that builds at every C.
            return jax.lax.cond(any_across_batch(due), build, lambda: lagged)

        def step(carry: tuple, cs_here: tuple[Array, Array]) -> tuple[tuple, NewtonCGResult]:
            # Secant predictor along the path: the last solution moved on by the last change, scaled to
            # this log-C step (at most 1x, so an uneven grid cannot throw the start far off). Free: no
            # pass over X. On the benchmark's 8-C grid it saved 1-3 Newton steps per C on the nearly
            # separable layer (CG steps -16% at tol 1e-7, -20% at 1e-4 over three layers).
            last, before, log_last, log_before, n_done, lagged = carry
            c, c_next = cs_here
            log_c = jnp.log(c)
            ratio = jnp.clip((log_c - log_last) / jnp.maximum(log_last - log_before, jnp.finfo(dtype).tiny), 0, 1)
            ratio = jnp.where(n_done >= 2, ratio, 0)
            start = jax.tree.map(lambda a, b: a + ratio * (a - b), last, before)
            res = jax.vmap(functools.partial(one, lagged), in_axes=(0, None, 0, 0))(weights, c, *start)
            if lagged is not None:
                lagged = update_lagged(lagged, res, c_next, n_done)
            return ((res.coef, res.intercept), last, log_c, log_last, n_done + 1, lagged), res

        n_w = weights.shape[0]
        if init_l is None:
            init_l = (jnp.zeros((n_w,) + lead + x.shape[-1:], dtype), jnp.zeros((n_w,) + lead, dtype))
        else:
            init_l = tuple(a.astype(dtype) for a in init_l)
        order = jnp.argsort(cs)
        log0 = jnp.zeros((), dtype)
        lagged0 = no_lagged_inverse(n_features, dtype) if use_lagged else None
        carry0 = (init_l, init_l, log0, log0, jnp.int32(0), lagged0)
        ascending = cs[order]
        # Each step also sees the next C (the lagged inverse is scaled for it; the last step's is never
        # used, as nothing is left to build for).
        _, path = jax.lax.scan(step, carry0, (ascending, jnp.roll(ascending, -1)))  # fields (G, W, ...)
        unsorted = jnp.argsort(order)
        return NewtonCGResult(*(jnp.swapaxes(a[unsorted], 0, 1) for a in path))

    return over_layers(layer, (X, Cs, precond, init), layer_batch_size=layer_batch_size)
