r"""Randomized Nyström approximation of a layer's Gram matrix, used to precondition conjugate gradients.

For the Newton systems of an L2-penalised GLM, ``H = C X^T W X + I`` (``W`` the per-sample curvatures),
CG needs about ``sqrt(cond(H))`` steps, and residual-stream activations are strongly anisotropic: on the
benchmark's synthetic layers (spectrum ``~ 1/k``) CG took 30–100 steps per Newton step. Replacing ``W``
by its mean ``w`` gives ``H ~ a (A + mu I)`` with ``A = [X, 1]^T [X, 1]``, ``a = C w``, ``mu = 1 / a``. A
rank-``r`` Nyström approximation ``A ~ U diag(lam) U^T`` gives the preconditioner

.. math::

    P^{-1} v = U \operatorname{diag}\Big(\frac{\lambda_r + \mu}{\lambda + \mu}\Big) U^\top v
               + (I - U U^\top) v,

which flattens the top ``r`` directions of the spectrum (Frangella, Tropp & Udell, "Randomized Nyström
Preconditioning", SIAM J. Matrix Anal. Appl., 2023, Algorithm 2.1 and eq. 5.3). Building it costs two
products of ``X`` with ``r`` columns, one ``r x r`` Cholesky and a thin SVD; applying it costs
``O((D + 1) r)`` per vector. One approximation serves every ``C`` and fold of a layer: each problem
only changes the scalar ``mu``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._precision import einsum, matmul
from ._products import products

# The smallest factor the preconditioner scales a direction by (see apply_preconditioner).
_MIN_GAIN = 1e-4


class NystromApprox(NamedTuple):
    """``[X, 1]^T [X, 1] ~ U diag(eig) U^T`` with ``U = [basis_coef; basis_intercept]`` orthonormal.

    Attributes:
      basis_coef: ``(r, D)`` the rows of ``U^T`` restricted to the feature coordinates.
      basis_intercept: ``(r,)`` their intercept coordinate (zero when there is no intercept column).
      eig: ``(r,)`` non-negative, decreasing.
    """

    basis_coef: Array
    basis_intercept: Array
    eig: Array

    @property
    def built(self) -> Array:
        """bool ``()``: whether any eigenvalue is nonzero (a flat layer's skipped approximation,
        :func:`._preconditioners.layer_nystrom`, has none: it stands for the identity)."""
        return self.eig[0] > 0


def _test_matrix(rank: int, n_columns: int, fit_intercept: bool, seed: int) -> np.ndarray:
    """``(r, D + 1)`` Gaussian with orthonormal rows (no intercept column without an intercept).

    Drawn with numpy when the solver is traced, so it enters the program as a constant: generating and
    orthonormalising it in the program compiled a PRNG and a QR into every solver (~0.5 s on the CPU).
    """
    omega = np.random.default_rng(seed).standard_normal((n_columns, rank))
    if not fit_intercept:
        omega[-1] = 0.0
    return np.linalg.qr(omega)[0].T


def nystrom_gram(X: Array, rank: int, *, fit_intercept: bool, seed: int = 0) -> NystromApprox:
    """Rank-``rank`` Nyström approximation of ``[X, 1]^T [X, 1]`` (or ``X^T X`` without intercept).

    Args:
      X: ``(N, D)``.
      rank: ``r <= D (+ 1)``; static.
      fit_intercept: whether the column of ones is part of the matrix.
      seed: of the Gaussian test matrix (static): the same data gives the same preconditioner.
    """
    dtype = X.dtype
    d = X.shape[1]
    omega = jnp.asarray(_test_matrix(rank, d + 1, fit_intercept, seed), dtype)  # (r, D + 1), orthonormal rows
    # XLA's dot whatever the policy's products: their fused elementwise form for a few rows (a rank-8 probe)
    # was fused with the second product into one kernel, 1.2x (2048 x 512) to 60x (4096 x 4096) slower.
    dot = products(0)
    xo = dot.matvec(X, omega[:, :d]) + omega[:, d:]  # (r, N): [X, 1] applied to each test vector
    y_coef = dot.rmatvec(X, xo)  # (r, D)
    y_int = jnp.sum(xo, axis=-1) if fit_intercept else jnp.zeros(rank, dtype)
    y = jnp.concatenate([y_coef, y_int[:, None]], axis=1)  # (r, D + 1) = (A Omega)^T
    # Shift by nu for a stable Cholesky (Algorithm 2.1), removed from the eigenvalues afterwards.
    nu = jnp.sqrt(jnp.asarray(d + 1, dtype)) * jnp.finfo(dtype).eps * jnp.linalg.norm(y)
    y = y + nu * omega
    core = matmul(omega, y.T)
    chol = jnp.linalg.cholesky(0.5 * (core + core.T))
    # (r, D + 1) = (Y C^-T)^T, through the r x r inverse: a triangular solve against all D + 1 columns
    # compiled 3.5x slower on the CPU (0.35 s vs 0.1 s at r = 64) for no gain in a preconditioner.
    b = matmul(jax.scipy.linalg.solve_triangular(chol, jnp.eye(rank, dtype=dtype), lower=True), y)
    # Thin SVD of the wide b through a QR of b^T and the SVD of its r x r factor: b = R^T Q^T, and
    # R^T = U S W^T gives b = U S (Q W)^T. The same factors as a direct SVD of b, in 0.5 ms instead of
    # 1.3 ms for r = 64 on 577 columns (a direct SVD was half of building the preconditioner).
    q, r_factor = jnp.linalg.qr(b.T)  # (D + 1, r), (r, r)
    _, sing, wt = jnp.linalg.svd(r_factor.T)
    vt = matmul(wt, q.T)  # (r, D + 1), orthonormal rows
    eig = jnp.maximum(sing**2 - nu, 0)
    return NystromApprox(basis_coef=vt[:, :d], basis_intercept=vt[:, d], eig=eig)


def apply_preconditioner(approx: NystromApprox, mu: Array, v_coef: Array, v_int: Array) -> tuple[Array, Array]:
    """``P^{-1} v`` for ``A + mu I`` (see the module docstring).

    Args:
      approx: from :func:`nystrom_gram`.
      mu: ``()`` or one value per leading row of ``v_coef`` (e.g. ``(K,)`` for softmax).
      v_coef: ``(..., D)``; ``v_int``: ``(...)``.
    """
    # The basis's rows contracted as they lie: ``v_coef @ basis_coef.T`` copied a transposed basis at every
    # application in the solver's loops (1.2 ms at D = 4096, rank 256, where a pass over X takes 2.3 ms).
    proj = einsum("...d,rd->...r", v_coef, approx.basis_coef) + v_int[..., None] * approx.basis_intercept
    mu = jnp.asarray(mu)[..., None]
    # The basis is orthonormal only to rounding (~1e-6 in float32), so the identity part cancels the
    # projection no better than that: a gain below it would leave P^-1 indefinite along the top
    # directions (seen with a full-rank basis of features whose variances span 1e7: CG's r.P^-1 r
    # went negative and the solve to NaN). Floored at 1e-4, P^-1 stays positive definite; on the
    # benchmark's layers the smallest gain is ~1e-2, so nothing changes there.
    gain = jnp.maximum((approx.eig[-1] + mu) / (approx.eig + mu), _MIN_GAIN)
    scaled = proj * (gain - 1.0)
    return v_coef + matmul(scaled, approx.basis_coef), v_int + matmul(scaled, approx.basis_intercept)
