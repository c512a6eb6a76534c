r"""A lagged Hessian preconditioner: the exact inverse of the Newton matrix from earlier on a path.

Along a regularisation path, the Hessian of the binary logistic objective,
``H(C, w) = C [X, 1]^T S(w) [X, 1] + I`` (``S`` the per-sample curvatures at ``w``), changes slowly:
preconditioning a later system with ``P = c [X, 1]^T S(w') [X, 1] + I``, built at the solution ``w'`` of
an earlier ``C`` and scaled by the ``C`` it will serve first, leaves CG a few steps per Newton step
where the Gram-only Nyström preconditioner (:mod:`._nystrom`) needs tens. That one knows a single mean
curvature; at large ``C`` the curvatures of well-classified samples vanish and the Hessian's spectrum
is no longer the Gram's (on the benchmark's mid-depth layer at ``C = 100``, CG to a 1e-3 residual:
92 steps with the rank-64 Nyström preconditioner, 14 with ``P`` built three ``C`` earlier, 21 four).

It is not free: one weighted Gram product (``2 N D^2`` flops) and a ``(D + 1)``-square inverse (~``3 D^3``
flops; 3/4 and ~2 D^3 on the CPU, which halves both, see :func:`spd_inverse`), about 130 single-problem
CG steps on a 3000 x 768 layer on one core (before that halving). So a path builds it only
when the CG work it is doing says so (:func:`lagged_build_threshold`), and builds it again later if the
work climbs back (the scale ``c`` drifts from the ``C`` being solved). Applying it is one dense
``(D + 1)``-square matrix-vector product per CG step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import solve_triangular

from ._precision import matmul

# On the CPU, below this size the triangular inverse is one triangular solve; above, it recurses on
# halves so that more of the work is matrix products. On one core, for 769 columns: one solve against
# the identity 7.0 ms; leaves of 400 rows 3.8 ms; of 96 rows 2.2 ms, but each level adds compile time to
# every solver program (0.2 s, 0.4 s and 0.9 s). Other backends take one solve: on an H100 (32 layers of
# 4097 columns, newton_cg's hessian_refresh) the halves' many product shapes, each autotuned by XLA, made
# the first fit_logistic call take 86-91 s against 25 s, for the same solve time (1.54-1.78 s against
# 1.59-1.88 s).
_TRIANGULAR_LEAF = 400

# Whether builds done by halves also halve their products (the weighted Gram's symmetric blocks, the
# inverse's zero block). The switch `python benchmarks/solver_choices.py build-halves` compares.
_HALVE_PRODUCTS = True


class LaggedHessianInverse(NamedTuple):
    """A path's lagged preconditioner.

    Attributes:
      inverse: ``(D + 1, D + 1)``, ``(c [X, 1]^T diag(s) [X, 1] + I)^{-1}``; the last row and column
        belong to the intercept.
      active: bool ``()``, whether ``inverse`` has been built (until then CG uses the Nyström one).
    """

    inverse: Array
    active: Array


def no_lagged_inverse(n_features: int, dtype: jnp.dtype) -> LaggedHessianInverse:
    """The placeholder a path starts with: not active (its zero matrix is never applied)."""
    return LaggedHessianInverse(jnp.zeros((n_features + 1, n_features + 1), dtype), jnp.bool_(False))


def lagged_build_threshold(n_samples: int, n_features: int, n_weight_sets: int) -> float:
    """How much CG work still ahead justifies (re)building the inverse, in CG steps (of all weight sets).

    A path builds it after any ``C`` but the first (whose solve starts cold) whose CG steps times the
    number of ``C`` left reach this (CG steps grow with ``C``, so that product underestimates the work
    ahead; not building after the first ``C`` measured 2-7% faster on the 8-C grid). The build costs about
    ``2 N (D+1)^2 + 3 (D+1)^3`` flops (weighted Gram, Cholesky, triangular inverse, product); a CG step
    with ``W`` weight sets costs ``4 N (D+1) W`` flops but runs below the rate of the build's
    matrix-matrix products, as if ``W + 4`` wide (fitted on one core: the build cost 127 / 55 CG steps at
    ``W = 1 / 5`` on 3000 x 768, 121 / 72 on 600 x 576; the formula gives 106 / 59 and 141 / 79). The
    inverse cut the remaining CG steps about 2-3x on the benchmark's layers; of the factors tried on its
    8-C grid and CV folds (0.5, 0.75, 1, 1.5, 2, 3), 1.5 was the fastest (grid -26%, folds -25% against
    never building; 0.5 was slower than never). On the 600 x 576 SmolLM2 layers (4 ``C``, 5 folds),
    where building after the second ``C`` measured slower, it is never built.
    """
    d1 = n_features + 1
    build = 2.0 * n_samples * d1**2 + 3.0 * d1**3
    cg_step = 4.0 * n_samples * d1 * (n_weight_sets + 4)
    return 1.5 * build / cg_step


def _by_halves(n: int) -> bool:
    """Whether an ``n``-square build step works on halves (the CPU's form for large ``n``; see above)."""
    return n > _TRIANGULAR_LEAF and jax.default_backend() == "cpu"


def _lower_triangular_inverse(lower: Array) -> Array:
    n = lower.shape[0]
    if not _by_halves(n):
        return solve_triangular(lower, jnp.eye(n, dtype=lower.dtype), lower=True)
    h = n // 2
    top = _lower_triangular_inverse(lower[:h, :h])
    bottom = _lower_triangular_inverse(lower[h:, h:])
    return jnp.block([[top, jnp.zeros((h, n - h), lower.dtype)], [-matmul(bottom, matmul(lower[h:, :h], top)), bottom]])


def lagged_hessian_inverse(X: Array, curvature: Array, c: Array, *, fit_intercept: bool) -> LaggedHessianInverse:
    """The inverse of ``c [X, 1]^T diag(curvature) [X, 1] + I``.

    Args:
      X: ``(N, D)``.
      curvature: ``(N,)`` non-negative per-sample weights (sample weight times loss curvature).
      c: ``()`` the ``C`` the matrix is scaled by.
      fit_intercept: whether the column of ones takes part (else the intercept block is the identity).
    """
    ones = jnp.ones(X.shape[:1], X.dtype) if fit_intercept else jnp.zeros(X.shape[:1], X.dtype)
    xs = X * curvature[:, None]
    gram_xx = _weighted_gram(X, xs, curvature)
    gram_x1 = matmul(ones, xs)
    gram_11 = jnp.sum(curvature * ones)
    gram = jnp.block([[gram_xx, gram_x1[:, None]], [gram_x1[None, :], gram_11[None, None]]])
    return LaggedHessianInverse(spd_inverse(c * gram + jnp.eye(gram.shape[0], dtype=X.dtype)), jnp.bool_(True))


def _weighted_gram(X: Array, xs: Array, curvature: Array) -> Array:
    """``X^T diag(curvature) X`` (``xs = X * curvature[:, None]``). By halves, as ``R^T R`` with
    ``R = sqrt(curvature) X`` split into column halves ``[A, B]``: three products (``A^T A``, ``A^T B``,
    ``B^T B``) for the four blocks, 3/4 of the flops."""
    if not (_HALVE_PRODUCTS and _by_halves(X.shape[1])):
        return matmul(xs.T, X)
    root = X * jnp.sqrt(curvature)[:, None]
    h = X.shape[1] // 2
    a, b = root[:, :h], root[:, h:]
    upper = matmul(a.T, b)
    return jnp.block([[matmul(a.T, a), upper], [upper.T, matmul(b.T, b)]])


def spd_inverse(matrix: Array) -> Array:
    """The inverse of a symmetric positive definite ``(n, n)`` matrix, as ``L^-T L^-1`` (``L`` its
    Cholesky factor, inverted by halves where :func:`_by_halves`).

    By halves, with ``L^-1 = [[P, 0], [Q, R]]``, the product skips the zero block: ``[[P^T P + Q^T Q,
    Q^T R], [R^T Q, R^T R]]``, half the flops of the full product. Both halvings (this and
    :func:`_weighted_gram`'s), against the full products, on one core (12 x 3000 x 768, 8 C, interleaved
    medians of 5): CV folds and refit 1.108 -> 1.029 s, the grid 0.970 -> 0.905 s; each alone about half
    of that.
    """
    lower_inv = _lower_triangular_inverse(jnp.linalg.cholesky(matrix))
    n = lower_inv.shape[0]
    if not (_HALVE_PRODUCTS and _by_halves(n)):
        return matmul(lower_inv.T, lower_inv)
    h = n // 2
    p, q, r = lower_inv[:h, :h], lower_inv[h:, :h], lower_inv[h:, h:]
    upper = matmul(q.T, r)
    return jnp.block([[matmul(p.T, p) + matmul(q.T, q), upper], [upper.T, matmul(r.T, r)]])


def apply_lagged_inverse(approx: LaggedHessianInverse, v_coef: Array, v_int: Array) -> tuple[Array, Array]:
    """``P^{-1} v`` for ``v = (v_coef (D,), v_int ())``."""
    out = matmul(jnp.concatenate([v_coef, v_int[None]]), approx.inverse)
    return out[:-1], out[-1]
