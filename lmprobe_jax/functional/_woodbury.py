r"""The exact Newton matrix inverse for wide layers (``N`` well below ``D``), through the ``N x N`` kernel.

The binary logistic Newton matrix is ``H = P + A^T R^2 A`` with ``A = [X, 1]`` (``N x (D + 1)``),
``R^2 = diag(C s_i l''(z_i))`` and ``P = diag(1, ..., 1, 0)`` (the intercept is not penalised). With
``M = (I + A^T R^2 A)^{-1}``, Woodbury's identity gives

.. math::

    M = I - A^T R \, (I + R K R)^{-1} R A, \qquad K = A A^T = X X^T + 1 1^T,

an ``N x N`` inverse instead of a ``(D + 1)``-square one, and ``H = M^{-1} - e e^T`` (``e`` the
intercept's unit vector) is a rank-one downdate (Sherman-Morrison):
``H^{-1} = M + q q^T / (1 - q_e)`` with ``q = M e``. Preconditioned with ``H^{-1}`` itself, CG solves the
Newton system in one step. Building it costs the ``N x N`` inverse (``~N^3`` flops) and one pass over
``X`` per Newton step; applying it, two passes. ``K`` is computed once per layer and serves every
``C`` and every fold (only ``R`` changes).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array

from ._hessian_inverse import spd_inverse
from ._precision import matmul, vdot
from ._products import Products


class WoodburyInverse(NamedTuple):
    """``H^{-1}`` at one Newton iterate (see the module docstring).

    Attributes:
      root: ``(N,)`` ``R``'s diagonal, ``sqrt(C s_i l''(z_i))``.
      inner_inverse: ``(N, N)`` ``(I + R K R)^{-1}``.
      q_coef, q_int: ``(D,)`` and ``()``, ``q = M e`` (zeros without an intercept).
      downdate: ``()`` ``1 / (1 - q_e)`` (zero without an intercept).
    """

    root: Array
    inner_inverse: Array
    q_coef: Array
    q_int: Array
    downdate: Array


def use_woodbury(n_samples: int, n_features: int, ratio: float = 16.0) -> bool:
    """Whether a ``(N, D)`` binary layer is wide enough for the exact inverse: ``N^2 <= ratio D`` (and
    ``N <= D / 2``). Per Newton step it costs ~``N^3`` flops against the ~10-15 CG steps of ``4 N D`` it
    replaces (the policy's ``woodbury_ratio``; measurements in benchmarks/RESULTS.md)."""
    return n_samples * n_samples <= ratio * n_features and 2 * n_samples <= n_features


def layer_kernel(X: Array, *, fit_intercept: bool) -> Array:
    """``K = X X^T (+ 1 1^T with an intercept)``, ``(N, N)``, for ``X`` ``(N, D)``."""
    return matmul(X, X.T) + (1.0 if fit_intercept else 0.0)


def _inner(approx: WoodburyInverse, u: Array) -> Array:
    """``R (I + R K R)^{-1} R u`` for ``u = A v`` ``(N,)``: then ``M v = v - A^T`` of it."""
    return approx.root * matmul(approx.inner_inverse, approx.root * u)


def _apply_m(approx: WoodburyInverse, X: Array, v_coef: Array, v_int: Array, fit_intercept: bool,
             products: Products) -> tuple[Array, Array]:
    w = _inner(approx, products.matvec(X, v_coef) + (v_int if fit_intercept else 0.0))
    return v_coef - products.rmatvec(X, w), (v_int - jnp.sum(w)) if fit_intercept else v_int


def woodbury_inverse(X: Array, kernel: Array, curvature: Array, *, fit_intercept: bool, products: Products,
                     halve: bool) -> WoodburyInverse:
    """``H^{-1}`` for the curvatures ``curvature`` ``(N,)`` (``C`` times sample weight times ``l''``);
    ``halve``: the policy's ``halve_builds``."""
    root = jnp.sqrt(jnp.maximum(curvature, 0.0))
    inner = jnp.eye(root.shape[0], dtype=X.dtype) + root[:, None] * kernel * root[None, :]
    approx = WoodburyInverse(root, spd_inverse(inner, halve), jnp.zeros(X.shape[1:], X.dtype), jnp.zeros((), X.dtype),
                             jnp.zeros((), X.dtype))
    if not fit_intercept:
        return approx
    # q = M e: A e is the column of ones, so no product with X is needed to form it.
    w = _inner(approx, jnp.ones(X.shape[:1], X.dtype))
    q_coef, q_int = -products.rmatvec(X, w), 1.0 - jnp.sum(w)
    # 1 - q_e = 1 / (H^-1)_ee > 0 for a positive definite H (any sample with curvature); rounding guard.
    downdate = 1.0 / jnp.maximum(1.0 - q_int, jnp.finfo(X.dtype).eps)
    return approx._replace(q_coef=q_coef, q_int=q_int, downdate=downdate)


def apply_woodbury(approx: WoodburyInverse, X: Array, v_coef: Array, v_int: Array, *, fit_intercept: bool,
                   products: Products) -> tuple[Array, Array]:
    """``H^{-1} v`` for ``v = (v_coef (D,), v_int ())``."""
    m_coef, m_int = _apply_m(approx, X, v_coef, v_int, fit_intercept, products)
    if not fit_intercept:
        return m_coef, m_int
    scale = approx.downdate * (vdot(approx.q_coef, v_coef) + approx.q_int * v_int)
    return m_coef + scale * approx.q_coef, m_int + scale * approx.q_int
