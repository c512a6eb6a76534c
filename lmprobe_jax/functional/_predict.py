"""Decision values, probabilities and class predictions for every fitted-probe type.

Shapes follow the fit: a ``coef`` of shape ``(L, [G,] D)`` applied to ``X`` ``(L, N, D)`` gives decision
values ``(L, [G,] N)``; a fit made from 2-D ``X`` (no layer axis) takes 2-D ``X``. Fits with a class
axis (multinomial, and ridge on more than two classes) add it last, as scikit-learn does:
``(..., N, K)``. Class predictions are indices into the sorted labels the fit saw (``0``/``1`` for binary
fits: ``1`` is the larger label).
"""

from __future__ import annotations

from typing import Any, Union

import jax
import jax.numpy as jnp
from jax import Array

from . import _checks
from ._logistic import LogisticFit
from ._mass_mean import MassMeanFit
from ._multinomial import MultinomialFit
from ._precision import einsum
from ._ridge import MulticlassRidgeFit, RidgeFit

ProbeFit = Union[LogisticFit, MultinomialFit, RidgeFit, MulticlassRidgeFit, MassMeanFit]
_FITS = (LogisticFit, MultinomialFit, RidgeFit, MulticlassRidgeFit, MassMeanFit)
_CLASS_AXIS = (MultinomialFit, MulticlassRidgeFit)  # coef ([L,] [G,] K, D): one row per class


def _check_fit(fit: Any) -> None:
    if not isinstance(fit, _FITS):
        raise TypeError(
            f"expected a fit returned by fit_logistic, fit_multinomial, fit_ridge or fit_mass_mean; got "
            f"{type(fit).__name__}."
        )


def decision_function(fit: ProbeFit, X: Any) -> Array:
    """Linear scores ``X w + b`` for every layer (and grid value).

    Args:
      fit: any fit of this package.
      X: ``(L, N, D)`` when the fit has a layer axis, else ``(N, D)``.

    Returns:
      ``(L, [G,] N)`` (``(L, [G,] N, K)`` for a fit with a class axis); the layer axis only for 3-D ``X``.
    """
    _check_fit(fit)
    X = _checks.as_jax_array(X)
    coef = fit.coef
    if X.ndim not in (2, 3) or X.shape[-1] != coef.shape[-1]:
        raise ValueError(
            f"X has shape {tuple(X.shape)}; this fit expects (N, {coef.shape[-1]}) or (L, N, "
            f"{coef.shape[-1]}) with the layer axis the fit was made with."
        )
    if X.ndim == 3 and X.shape[0] != coef.shape[0]:
        raise ValueError(f"X has {X.shape[0]} layers but the fit has {coef.shape[0]}.")
    if X.ndim == 3:
        z = _layer_scores(coef, _checks.solver_view(X))
    else:
        z = einsum("...d,nd->...n", coef, X.astype(coef.dtype))
    z = z + fit.intercept[..., None]
    if isinstance(fit, _CLASS_AXIS):
        z = jnp.swapaxes(z, -1, -2)
    return z


@jax.jit
def _layer_scores(coef: Array, X: Array) -> Array:
    """``(L, ..., N)`` scores ``coef[l] . X[l]`` of ``coef`` ``(L, ..., D)`` and ``X`` ``(L, N, D)``. An ``X``
    stored in another dtype (half precision, or :func:`_checks.solver_view`'s bits) is converted a layer at
    a time: converted whole, it was a copy twice its size in float32 (and on the CPU a slow one)."""
    if X.dtype == coef.dtype:
        return einsum("l...d,lnd->l...n", coef, X)

    def layer(pair: tuple[Array, Array]) -> Array:
        w, x = pair
        return einsum("...d,nd->...n", w, _checks.as_compute(x, coef.dtype))

    return jax.lax.map(layer, (coef, X))


def predict_proba(fit: ProbeFit, X: Any) -> Array:
    """Class probabilities ``(..., N, K)`` (``K = 2`` for binary fits: columns negative, positive).

    For ridge fits (least-squares classifiers without a likelihood) the scores are squashed by a
    logistic function, as lmprobe does (a softmax over the classes' scores for more than two classes);
    treat them as scores, not calibrated probabilities.
    """
    z = decision_function(fit, X)
    if isinstance(fit, _CLASS_AXIS):
        return jax.nn.softmax(z, axis=-1)
    p = jax.nn.sigmoid(z)
    return jnp.stack([1 - p, p], axis=-1)


def predict(fit: ProbeFit, X: Any) -> Array:
    """Class indices ``(..., N)`` (int32). For a regression :class:`RidgeFit`, use :func:`decision_function`."""
    z = decision_function(fit, X)
    if isinstance(fit, _CLASS_AXIS):
        return jnp.argmax(z, axis=-1).astype(jnp.int32)
    return (z > 0).astype(jnp.int32)
