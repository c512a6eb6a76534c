r"""Mass-mean probes: the difference of class means, optionally whitened by the within-class covariance.

.. math::

    \theta = \mu_+ - \mu_-, \qquad
    \theta_{\text{iid}} = (\Sigma_w + \epsilon I)^{-1} (\mu_+ - \mu_-),

where ``mu`` are (weighted) class means and ``Sigma_w`` is the pooled within-class covariance, the
direction of linear discriminant analysis (Marks & Tegmark, "The Geometry of Truth", 2023, call the
whitened probe "mass-mean with iid"). A direction has no scale or threshold of its own, so the probe is
*calibrated*: a one-feature logistic regression on the projections ``x . theta`` (with ``calibration_C``)
gives the scale ``a`` and intercept ``b``, and ``coef = a * theta``. Probabilities from
:func:`predict_proba` are then calibrated on the training data.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from . import _checks
from ._batching import any_across_batch, default_layer_batch_size, over_layers
from ._glm import GLM
from ._logistic import BINARY_LOGISTIC
from ._newton_cg import Settings, minimise
from ._policy import default_policy
from ._precision import matmul
from ._preconditioners import identity
from ._products import products

# The one-feature calibration: Newton steps from the start (a 2 x 2 system; CG's two steps solve it).
_CALIBRATION = Settings(tol=1e-7, gap_tol=1e-7, max_iter=50, max_cg_iter=2, memory=0, switch_window=1,
                        switch_progress=0.5, switch_after=0)


class MassMeanFit(NamedTuple):
    """Mass-mean probes. ``[L]`` is present for 3-D ``X``.

    Attributes:
      coef: ``([L,] D)`` calibrated weights ``a * theta``.
      intercept: ``([L])``.
      direction: ``([L,] D)`` the raw direction ``theta`` (unit-free; useful for steering).
    """

    coef: Array
    intercept: Array
    direction: Array


def _whiten(cov: Array, delta: Array) -> Array:
    """``cov^-1 delta`` by Cholesky; where ``cov`` is singular (``shrinkage=0`` with ``D > N``, or collinear
    features: the Cholesky gives NaN), the minimum-norm ``cov^+ delta`` through an eigendecomposition,
    eigenvalues below ``D * eps * max`` dropped, as a least-squares solver would."""
    solved = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(cov), delta)

    def pseudo_inverse() -> Array:
        eig, basis = jnp.linalg.eigh(cov)
        keep = eig > cov.shape[0] * jnp.finfo(cov.dtype).eps * jnp.max(eig)
        return matmul(basis, jnp.where(keep, matmul(delta, basis) / jnp.where(keep, eig, 1.0), 0.0))

    # One decision for a vmapped batch of layers, so the eigendecomposition stays a branch that rarely runs.
    return jax.lax.cond(any_across_batch(~jnp.all(jnp.isfinite(solved))), pseudo_inverse, lambda: solved)


@functools.partial(jax.jit, static_argnames=("iid", "layer_batch_size"))
def mass_mean_solve(
    X: Array, y: Array, s: Array, shrinkage: Array, calibration_C: Array, *, iid: bool, layer_batch_size: int
) -> MassMeanFit:
    """Jitted core: ``X (L, N, D)`` (as :func:`._ridge.ridge_solve`'s), ``y`` in {0, 1} ``(N,)``, ``s (N,)``.
    Returns ``(L, ...)`` fields."""
    dtype = _checks.compute_dtype(X.dtype)
    y, s = y.astype(dtype), s.astype(dtype)  # X a layer at a time (below), as in ridge_solve
    w_pos, w_neg = s * y, s * (1 - y)

    def layer(x: Array) -> MassMeanFit:
        x = _checks.as_compute(x, dtype)
        mu_pos = matmul(w_pos, x) / jnp.sum(w_pos)
        mu_neg = matmul(w_neg, x) / jnp.sum(w_neg)
        theta = mu_pos - mu_neg
        if iid:
            centred = x - jnp.where(y[:, None] > 0, mu_pos, mu_neg)
            cov = matmul((centred * s[:, None]).T, centred) / jnp.sum(s)
            # Shrinkage relative to the average variance keeps the solve well posed when D > N.
            ridge = shrinkage * jnp.trace(cov) / cov.shape[0]
            theta = _whiten(cov + ridge * jnp.eye(cov.shape[0], dtype=dtype), theta)
        projection = matmul(x, theta)[:, None]
        # Scale the 1-D feature to unit spread so calibration_C means the same for every layer.
        centre = jnp.sum(s * projection[:, 0]) / jnp.sum(s)
        spread = jnp.sqrt(jnp.sum(s * (projection[:, 0] - centre) ** 2) / jnp.sum(s))
        spread = jnp.maximum(spread, jnp.finfo(dtype).tiny)
        glm = GLM(BINARY_LOGISTIC, True, products(default_policy().fused_max_rows))
        data = glm.data(projection / spread, y, s, calibration_C)
        start = glm.null_point(data, None)
        cal, _ = minimise(glm, data, start, jnp.broadcast_to(start.intercept, y.shape), jnp.int32(0),
                          precond=identity(), settings=_CALIBRATION)
        return MassMeanFit(coef=theta * (cal.coef[0] / spread), intercept=cal.intercept, direction=theta)

    return over_layers(layer, X, layer_batch_size=layer_batch_size)


def fit_mass_mean(
    X: Any,
    y: Any,
    *,
    iid: bool = False,
    sample_weight: Any = None,
    shrinkage: float = 1e-3,
    calibration_C: float = 1.0,
    layer_batch_size: int | None = None,
) -> MassMeanFit:
    """Fit a calibrated mass-mean probe on every layer.

    Args:
      X: ``(N, D)`` or ``(L, N, D)`` activations.
      y: ``(N,)`` two distinct labels; the larger one is the positive class.
      iid: whiten the direction by the pooled within-class covariance (LDA's direction).
      sample_weight: ``(N,)`` non-negative weights for the means, covariance and calibration.
      shrinkage: for ``iid``, ``Sigma_w + shrinkage * trace(Sigma_w) / D * I`` is inverted.
      calibration_C: ``C`` of the one-feature logistic calibration (on the projection scaled to unit
        standard deviation).
      layer_batch_size: layers solved at a time (default 1 on the CPU, all on an accelerator).

    Returns:
      A :class:`MassMeanFit`.
    """
    X3, was_2d, n = _checks.check_bucketed_activations(X)
    y01, classes = _checks.check_binary_labels(y, n)
    sw = _checks.check_sample_weight(sample_weight, n)
    if _checks.is_concrete(shrinkage):
        if isinstance(shrinkage, (str, bytes)) or np.asarray(shrinkage).dtype.kind not in "biuf" or np.ndim(
            shrinkage
        ) or not 0 <= float(shrinkage) < float("inf"):
            raise ValueError(f"shrinkage must be a finite float >= 0; got {shrinkage!r}.")
        shrinkage = float(shrinkage)
    calibration, is_grid = _checks.check_grid(calibration_C, "calibration_C")
    if is_grid:
        raise ValueError(f"calibration_C must be a single value > 0; got a grid {calibration_C!r}.")
    if _checks.is_concrete(y01, sw):
        empty = [label for label, code in zip(classes, (0, 1)) if not np.any(sw[y01 == code] > 0)]
        if empty:
            raise ValueError(
                f"class {empty[0].tolist()!r} has zero total sample_weight; a class mean needs weight on at least one "
                f"of its rows. Give it positive weights, or drop the class."
            )
    rows = X3.shape[1]  # padded rows weigh nothing (see _checks.bucket_rows)
    fit = mass_mean_solve(
        _checks.solver_view(X3), jnp.asarray(_checks.pad_rows(y01, rows)),
        jnp.asarray(_checks.pad_rows(sw, rows)), jnp.asarray(shrinkage),
        jnp.asarray(calibration[0]), iid=bool(iid), layer_batch_size=default_layer_batch_size(X3.shape[0], layer_batch_size),
    )
    return MassMeanFit(*(a[0] for a in fit)) if was_2d else fit
