r"""Principal components of every layer at once, and how well each separates two classes.

For layer ``l`` with rows ``x_i`` of weight ``w_i`` (0 leaves a row out of the fit):

.. math::

    \mu_l = \frac{\sum_i w_i x_i}{\sum_i w_i}, \qquad
    \Sigma_l = \frac{\sum_i w_i (x_i - \mu_l)(x_i - \mu_l)^\top}{\sum_i w_i - 1},

and the basis is the top ``k`` eigenvectors of ``\Sigma_l`` (an exact symmetric eigensolver),
each signed so that its largest-magnitude entry is positive; their eigenvalues are the explained
variances (scikit-learn's ``PCA.explained_variance_`` for unit weights). A row is projected as
``(x - \mu_l) V_l``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import Array

from . import _checks
from ._metrics import roc_auc


class PCAFit(NamedTuple):
    """Per-layer principal components.

    Attributes:
      mean: ``(L, D)`` the weighted mean of each layer's rows.
      components: ``(L, D, k)`` orthonormal columns, by decreasing variance.
      explained_variance: ``(L, k)`` the variance along each component (denominator ``sum(w) - 1``).
    """

    mean: Array
    components: Array
    explained_variance: Array


@jax.jit
def _moments(X: Array, w: Array) -> tuple[Array, Array]:
    """Each layer's weighted mean ``(L, D)`` and covariance ``(L, D, D)``, a layer at a time: one layer's
    centred copy in memory, not all of them (``X`` may be :func:`._checks.solver_view`'s ``uint16``)."""
    dtype = jnp.promote_types(X.dtype, jnp.float32)
    w = w.astype(dtype)
    total = jnp.sum(w)

    def layer(x: Array) -> tuple[Array, Array]:
        x = _checks.as_compute(x, dtype)
        mean = jnp.einsum("n,nd->d", w, x, precision="highest") / total
        centred = x - mean
        return mean, jnp.einsum("nd,n,ne->de", centred, w, centred, precision="highest") / (total - 1)

    return jax.lax.map(layer, X)


def _top_eigenpairs(cov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues ``(k,)`` and eigenvectors ``(D, k)`` of one symmetric matrix, in
    decreasing order, each vector signed so that its largest-magnitude entry is positive."""
    d = cov.shape[0]
    values, vectors = scipy.linalg.eigh(cov, subset_by_index=[d - k, d - 1])
    values, vectors = values[::-1], vectors[:, ::-1]
    peak = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(k)]
    return np.maximum(values, 0), vectors * np.where(peak < 0, -1.0, 1.0)


def fit_pca(X: Any, k: int, sample_weight: Any = None) -> PCAFit:
    """The top ``k`` principal components of each layer's rows (see module doc).

    The weighted means and covariances are one layer-batched program; each layer's top ``k`` eigenpairs
    come from LAPACK's subset solver on the host, in the covariances' precision (XLA's CPU ``eigh``
    computes all ``D`` of them: 5x slower at ``D = 576``; float64 on a float32 covariance would be
    1.5x slower and no more accurate than the covariance's own rounding).

    Args:
      X: ``(L, N, D)`` float; float16 input is widened to float32.
      k: components per layer, ``1 <= k <= D``.
      sample_weight: ``(N,)`` non-negative row weights (0 for padding or rows left out of the fit); None:
        all ones. Their sum must exceed 1.

    Returns:
      A :class:`PCAFit` in ``X``'s float dtype (at least float32). Memory: one layer's centred copy in
      that dtype and the ``(L, D, D)`` covariances.
    """
    X = jnp.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X has shape {X.shape}; expected (L, N, D) (one layer: X[None]).")
    n_rows, dim = X.shape[1:]
    if not 1 <= int(k) <= dim:
        raise ValueError(f"k={k} components asked of {dim}-dimensional rows; choose 1 <= k <= {dim}.")
    w = jnp.ones(n_rows) if sample_weight is None else jnp.asarray(sample_weight)
    if w.shape != (n_rows,) or float(jnp.sum(w)) <= 1 or bool(jnp.any(w < 0)):
        raise ValueError(
            f"sample_weight must be {n_rows} non-negative weights summing to more than 1; got shape {w.shape}."
        )
    mean, cov = _moments(_checks.solver_view(X), w)
    pairs = [_top_eigenpairs(c, int(k)) for c in np.asarray(cov)]
    dtype = mean.dtype
    values = jnp.asarray(np.stack([v for v, _ in pairs]), dtype)
    vectors = jnp.asarray(np.stack([u for _, u in pairs]), dtype)
    return PCAFit(mean, vectors, values)


def pca_project(X: Array, fit: PCAFit) -> Array:
    """``(L, N, k)`` coordinates ``(x - mean) V`` of each layer's rows ``X`` ``(L, N, D)``, centred a layer at
    a time (one layer's centred copy in memory; a bfloat16 ``X`` reaches the program as its bits, see
    :func:`_checks.solver_view`)."""
    return _project(_checks.solver_view(_checks.as_jax_array(X)), fit)


@jax.jit
def _project(X: Array, fit: PCAFit) -> Array:
    def layer(args: tuple[Array, Array, Array]) -> Array:
        x, mean, components = args
        centred = _checks.as_compute(x, components.dtype) - mean
        return jnp.einsum("nd,dk->nk", centred, components, precision="highest")

    return jax.lax.map(layer, (X, fit.mean, fit.components))


@jax.jit
def max_component_auroc(y: Array, coordinates: Array) -> Array:
    r"""``(...)`` the best separation of two classes by one component: ``max_j max(A_j, 1 - A_j)``.

    ``A_j`` is the ROC AUC of component ``j``'s coordinate as a score for ``y``; a component that is
    constant over the rows separates nothing and counts 0.5.

    Args:
      y: ``(N,)`` binary labels, both classes present.
      coordinates: ``(..., N, k)`` projections (e.g. ``(L, N, k)`` from :func:`pca_project`).
    """
    scores = jnp.swapaxes(coordinates, -1, -2)  # (..., k, N)
    auc = roc_auc(y, scores)
    constant = jnp.max(scores, axis=-1) == jnp.min(scores, axis=-1)
    auc = jnp.where(constant, 0.5, jnp.maximum(auc, 1 - auc))
    return jnp.max(auc, axis=-1)
