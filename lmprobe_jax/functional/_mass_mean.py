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
from jax import Array

from . import _checks
from ._batching import default_layer_batch_size, over_layers
from ._logistic import BINARY_LOGISTIC
from ._newton_cg import newton_cg
from ._precision import matmul


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


@functools.partial(jax.jit, static_argnames=("iid", "layer_batch_size"))
def mass_mean_solve(
    X: Array, y: Array, s: Array, shrinkage: Array, calibration_C: Array, *, iid: bool, layer_batch_size: int
) -> MassMeanFit:
    """Jitted core: ``X (L, N, D)``, ``y`` in {0, 1} ``(N,)``, ``s (N,)``. Returns ``(L, ...)`` fields."""
    dtype = _checks.compute_dtype(X.dtype)
    X, y, s = X.astype(dtype), y.astype(dtype), s.astype(dtype)
    w_pos, w_neg = s * y, s * (1 - y)

    def layer(x: Array) -> MassMeanFit:
        mu_pos = matmul(w_pos, x) / jnp.sum(w_pos)
        mu_neg = matmul(w_neg, x) / jnp.sum(w_neg)
        theta = mu_pos - mu_neg
        if iid:
            centred = x - jnp.where(y[:, None] > 0, mu_pos, mu_neg)
            cov = matmul((centred * s[:, None]).T, centred) / jnp.sum(s)
            # Shrinkage relative to the average variance keeps the solve well posed when D > N.
            ridge = shrinkage * jnp.trace(cov) / cov.shape[0]
            factor = jax.scipy.linalg.cho_factor(cov + ridge * jnp.eye(cov.shape[0], dtype=dtype))
            theta = jax.scipy.linalg.cho_solve(factor, theta)
        projection = matmul(x, theta)[:, None]
        # Scale the 1-D feature to unit spread so calibration_C means the same for every layer.
        centre = jnp.sum(s * projection[:, 0]) / jnp.sum(s)
        spread = jnp.sqrt(jnp.sum(s * (projection[:, 0] - centre) ** 2) / jnp.sum(s))
        spread = jnp.maximum(spread, jnp.finfo(dtype).tiny)
        cal = newton_cg(
            BINARY_LOGISTIC, projection / spread, y, s, calibration_C, jnp.zeros(1, dtype), jnp.zeros((), dtype),
            fit_intercept=True, tol=1e-7, max_iter=50, max_cg_iter=2,
        )
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
    X3, was_2d = _checks.check_activations(X)
    n = X3.shape[1]
    y01, _ = _checks.check_binary_labels(y, n)
    sw = _checks.check_sample_weight(sample_weight, n)
    if not (0 <= float(shrinkage) < float("inf")):
        raise ValueError(f"shrinkage must be a finite float >= 0; got {shrinkage!r}.")
    _checks.check_grid(calibration_C, "calibration_C")
    fit = mass_mean_solve(
        X3, jnp.asarray(y01), jnp.asarray(sw), jnp.asarray(shrinkage), jnp.asarray(calibration_C),
        iid=bool(iid), layer_batch_size=default_layer_batch_size(X3.shape[0], layer_batch_size),
    )
    return MassMeanFit(*(a[0] for a in fit)) if was_2d else fit
