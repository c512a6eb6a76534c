r"""Derivatives of a solved probe by implicit differentiation of its optimality condition.

The Newton-CG solve is a ``while_loop``, which JAX can run forward but not reverse-differentiate. The
solution ``theta*(X, C, s)`` of every problem is instead defined by its optimality condition

.. math::

    g(\theta; X, C, s) = \nabla_\theta F(\theta; X, C, s) = 0,
    \qquad F = C \sum_i s_i \, \ell(x_i W + b, y_i) + \tfrac12 \lVert W \rVert^2,

so by the implicit function theorem ``d theta* = -H^{-1} d_{X, C, s} g`` with ``H = d_theta g``, the
objective's Hessian (positive definite: the penalty adds ``I``; the intercept's direction is fixed by
the data). A :func:`jax.custom_vjp` does that bookkeeping (as jaxopt's ``implicit_diff`` does;
:func:`jax.lax.custom_root` refuses reverse mode with respect to closed-over data in jax 0.10): the forward
pass runs the solver unchanged, and a derivative solves one linear system with ``H`` by conjugate gradients (``H`` is symmetric positive definite), using
Hessian-vector products of ``F`` by automatic differentiation. Reverse mode (``grad``, ``vjp``) works with
respect to ``X``, ``C`` and ``sample_weight``; forward mode (``jvp``, ``jacfwd``) does not.

Derivatives are those of the exact optimum; the solver stops at ``tol``, so they agree with finite
differences of its output to about ``tol`` times the conditioning.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

from . import _aot
from ._checks import is_concrete, solver_view
from ._glm import GLMLoss
from ._newton_cg import SolveResult
from ._path import solve_layers
from ._precision import einsum

# Relative residual of the conjugate-gradient solve with the Hessian in a derivative (float32 floor).
_TANGENT_TOL = 1e-6


def _objective(loss: GLMLoss, X: Array, y: Array, s: Array, Cs: Array, fit_intercept: bool) -> Callable:
    """``(coef (L, W, G, [K,] D), intercept (L, W, G, [K])) -> sum over every problem of F``."""

    def total(params: tuple[Array, Array]) -> Array:
        coef, intercept = params
        if not fit_intercept:
            intercept = jax.lax.stop_gradient(intercept)
        z = einsum("lwg...d,lnd->lwg...n", coef, X.astype(coef.dtype)) + intercept[..., None]

        def data(z_one: Array) -> Array:  # one problem's per-sample losses (N,)
            return loss.evaluate(z_one, y)[0]

        losses = jax.vmap(jax.vmap(jax.vmap(data)))(z)  # (L, W, G, N)
        weighted = Cs[:, None, :] * jnp.sum(s[None, :, None, :] * losses, axis=-1)  # (L, W, G)
        return jnp.sum(weighted) + 0.5 * jnp.sum(coef * coef)

    return total


def _implicit_solution(loss: GLMLoss, fit_intercept: bool) -> Callable:
    """``(X, y, s, grid, coef, intercept) -> (coef, intercept)``: the identity on a solution, whose reverse
    derivative with respect to ``X``, ``s`` and ``grid`` is the implicit one (``y`` and the solution itself
    get none)."""

    def optimality(params: tuple[Array, Array], X: Array, y: Array, s: Array, grid: Array) -> tuple[Array, Array]:
        g_coef, g_int = jax.grad(_objective(loss, X, y, s, grid, fit_intercept))(params)
        # Without an intercept it stays at zero: its condition is intercept = 0.
        return g_coef, g_int if fit_intercept else params[1]

    @jax.custom_vjp
    def solution(X: Array, y: Array, s: Array, grid: Array, coef: Array, intercept: Array) -> tuple[Array, Array]:
        return coef, intercept

    def forward(X, y, s, grid, coef, intercept):
        return (coef, intercept), (X, y, s, grid, coef, intercept)

    def backward(saved, cotangent):
        X, y, s, grid, coef, intercept = saved
        at = (coef, intercept)

        def hvp(v):  # H v, H the objective's Hessian at the solution (symmetric positive definite)
            return jax.jvp(lambda p: optimality(p, X, y, s, grid), (at,), (v,))[1]

        u = jax.scipy.sparse.linalg.cg(hvp, cotangent, tol=_TANGENT_TOL)[0]
        _, pullback = jax.vjp(lambda X, s, grid: optimality(at, X, y, s, grid), X, s, grid)
        dX, ds, dgrid = pullback(jax.tree.map(jnp.negative, u))
        return dX, None, ds, dgrid, None, None

    solution.defvjp(forward, backward)
    return solution


def solve_problems(loss: GLMLoss, X: Array, y: Array, sample_weight: Array, Cs: Array, **options) -> SolveResult:
    """:func:`._path.solve_layers` (same arguments), with ``coef`` and ``intercept`` reverse-differentiable
    with respect to ``X`` ``(L, N, D)``, ``sample_weight`` ``(W, N)`` and ``Cs`` ``(G,)`` through their
    optimality condition (see the module docstring) when any of them is traced (under a caller's ``jit``,
    ``vmap``, ``grad``, ...). Concrete inputs run the solver alone: nothing else is traced or compiled."""
    if is_concrete(X, sample_weight, Cs):
        return _aot.call(solve_layers, loss=loss, X=solver_view(X), y=y, sample_weight=sample_weight, Cs=Cs,
                         **options)
    # The solver itself sees no derivatives (its while_loop cannot be transposed); they enter below.
    stop = jax.lax.stop_gradient
    res = solve_layers(loss, stop(X), y, stop(sample_weight), stop(Cs), **options)
    dtype = res.coef.dtype
    grid = jnp.broadcast_to(Cs.astype(dtype), (X.shape[0], Cs.shape[-1]))
    coef, intercept = _implicit_solution(loss, options["fit_intercept"])(
        X.astype(dtype), y, sample_weight.astype(dtype), grid, res.coef, res.intercept
    )
    return res._replace(coef=coef, intercept=intercept)
