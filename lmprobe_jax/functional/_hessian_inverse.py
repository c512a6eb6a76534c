r"""A lagged Hessian preconditioner: the exact inverse of the Newton matrix from earlier on a path.

Along a regularisation path, the Newton matrix of the (scaled, :mod:`._glm`) binary logistic objective,
``H(C, w) = [X, 1]^T S(w) [X, 1] + lambda(C) I`` (``S`` the weighted per-sample curvatures at ``w``),
changes slowly: preconditioning a later system with ``P`` built at the solution ``w'`` of an earlier
``C``, for the ``lambda`` of the ``C`` it will serve first, leaves CG a few steps per Newton step where
the Gram-only Nystrom preconditioner (:mod:`._nystrom`) needs tens: that one knows a single mean
curvature, and at large ``C`` the curvatures of well-classified samples vanish, so the Hessian's spectrum
is no longer the Gram's.

It is not free: one weighted Gram product (``2 N D^2`` flops) and a ``(D + 1)``-square inverse
(~``3 D^3`` flops; 3/4 and ~2 D^3 by halves, see :func:`spd_inverse`). So a path builds it only when the
CG work it is doing says so (:func:`lagged_build_threshold`), and again later if the work climbs back.
Applying it is one dense ``(D + 1)``-square matrix-vector product per CG step. The same build serves an
accelerator's in-solve refresh (:func:`._preconditioners.refreshed`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import solve_triangular

from ._precision import matmul

# With halve_builds, an n-square build step works on halves above this size (more of the work in matrix
# products; each level adds compile time, and off the CPU many product shapes to autotune: RESULTS.md).
_TRIANGULAR_LEAF = 400


class LaggedHessianInverse(NamedTuple):
    """A path's lagged preconditioner.

    Attributes:
      inverse: ``(D + 1, D + 1)``, ``([X, 1]^T diag(s) [X, 1] + lambda I)^{-1}``; the last row and column
        belong to the intercept.
      active: bool ``()``, whether ``inverse`` has been built (until then CG uses the Nyström one).
    """

    inverse: Array
    active: Array


def no_lagged_inverse(n_features: int, dtype: jnp.dtype) -> LaggedHessianInverse:
    """The placeholder a path starts with: not active (its zero matrix is never applied)."""
    return LaggedHessianInverse(jnp.zeros((n_features + 1, n_features + 1), dtype), jnp.bool_(False))


def lagged_build_threshold(n_samples: int, n_features: int, n_weight_sets: int, factor: float) -> float:
    """How much CG work still ahead justifies (re)building the inverse, in CG steps (of all weight sets).

    A path builds it after any ``C`` but the first (whose solve starts cold) whose CG steps times the
    number of ``C`` left reach ``factor`` times the build's cost in CG steps (CG steps grow with ``C``, so
    that product underestimates the work ahead). The build costs about ``2 N (D+1)^2 + 3 (D+1)^3`` flops
    (weighted Gram, Cholesky, triangular inverse, product); a CG step with ``W`` weight sets costs
    ``4 N (D+1) W`` flops but runs below the rate of the build's matrix-matrix products, as if ``W + 4``
    wide (fitted on one core; the fits and the factor's measurements are in benchmarks/RESULTS.md).
    """
    d1 = n_features + 1
    build = 2.0 * n_samples * d1**2 + 3.0 * d1**3
    cg_step = 4.0 * n_samples * d1 * (n_weight_sets + 4)
    return factor * build / cg_step


def _lower_triangular_inverse(lower: Array, halve: bool) -> Array:
    n = lower.shape[0]
    if not (halve and n > _TRIANGULAR_LEAF):
        return solve_triangular(lower, jnp.eye(n, dtype=lower.dtype), lower=True)
    h = n // 2
    top = _lower_triangular_inverse(lower[:h, :h], halve)
    bottom = _lower_triangular_inverse(lower[h:, h:], halve)
    return jnp.block([[top, jnp.zeros((h, n - h), lower.dtype)], [-matmul(bottom, matmul(lower[h:, :h], top)), bottom]])


def lagged_hessian_inverse(X: Array, curvature: Array, penalty: Array, *, fit_intercept: bool,
                           halve: bool) -> LaggedHessianInverse:
    """The inverse of ``[X, 1]^T diag(curvature) [X, 1] + penalty I``: the Newton matrix of the scaled
    objective (:mod:`._glm`) at the curvatures given, its intercept entry shifted by ``penalty`` too.

    Args:
      X: ``(N, D)``.
      curvature: ``(N,)`` non-negative per-sample weights (``omega`` times the loss curvature).
      penalty: ``()`` the ``lambda = 1 / (C sum s)`` of the ``C`` it will serve.
      fit_intercept: whether the column of ones takes part (else the intercept block is ``penalty``).
      halve: build by halves (the policy's ``halve_builds``).

    ``active`` is False where the build is not finite (a shift below the float resolution of a singular
    Gram, at very large ``C``): the solve then keeps its other preconditioner.
    """
    ones = jnp.ones(X.shape[:1], X.dtype) if fit_intercept else jnp.zeros(X.shape[:1], X.dtype)
    gram_xx = _weighted_gram(X, curvature, halve)
    gram_x1 = matmul(curvature * ones, X)
    gram_11 = jnp.sum(curvature * ones)
    gram = jnp.block([[gram_xx, gram_x1[:, None]], [gram_x1[None, :], gram_11[None, None]]])
    # The shift, floored where float32 can still resolve it against the Gram's diagonal.
    shift = jnp.maximum(penalty, 8 * jnp.finfo(X.dtype).eps * jnp.max(jnp.diagonal(gram)))
    inverse = spd_inverse(gram + shift * jnp.eye(gram.shape[0], dtype=X.dtype), halve)
    return LaggedHessianInverse(inverse, jnp.all(jnp.isfinite(inverse)))


def _weighted_gram(X: Array, curvature: Array, halve: bool) -> Array:
    """``X^T diag(curvature) X``. By halves, as ``R^T R`` with ``R = sqrt(curvature) X`` split into column
    halves ``[A, B]``: three products (``A^T A``, ``A^T B``, ``B^T B``) for the four blocks, 3/4 of the
    flops; each half is scaled straight from ``X`` (one ``N x D`` temporary in all, not three)."""
    if not (halve and X.shape[1] > _TRIANGULAR_LEAF):
        return matmul((X * curvature[:, None]).T, X)
    root = jnp.sqrt(curvature)[:, None]
    h = X.shape[1] // 2
    a, b = X[:, :h] * root, X[:, h:] * root
    upper = matmul(a.T, b)
    return jnp.block([[matmul(a.T, a), upper], [upper.T, matmul(b.T, b)]])


def spd_inverse(matrix: Array, halve: bool) -> Array:
    """The inverse of a symmetric positive definite ``(n, n)`` matrix, as ``L^-T L^-1`` (``L`` its
    Cholesky factor, inverted by halves with ``halve``).

    By halves, with ``L^-1 = [[P, 0], [Q, R]]``, the product skips the zero block: ``[[P^T P + Q^T Q,
    Q^T R], [R^T Q, R^T R]]``, half the flops of the full product.
    """
    lower_inv = _lower_triangular_inverse(jnp.linalg.cholesky(matrix), halve)
    n = lower_inv.shape[0]
    if not (halve and n > _TRIANGULAR_LEAF):
        return matmul(lower_inv.T, lower_inv)
    h = n // 2
    p, q, r = lower_inv[:h, :h], lower_inv[h:, :h], lower_inv[h:, h:]
    upper = matmul(q.T, r)
    return jnp.block([[matmul(p.T, p) + matmul(q.T, q), upper], [upper.T, matmul(r.T, r)]])


def apply_lagged_inverse(approx: LaggedHessianInverse, v_coef: Array, v_int: Array) -> tuple[Array, Array]:
    """``P^{-1} v`` for ``v = (v_coef (D,), v_int ())``."""
    out = matmul(jnp.concatenate([v_coef, v_int[None]]), approx.inverse)
    return out[:-1], out[-1]
