r"""Binary L2-penalised logistic regression, for every layer and every ``C`` at once.

.. math::

    \min_{w, b} \; C \sum_i s_i \log(1 + e^{-m_i}) + \tfrac12 \lVert w \rVert^2,
    \qquad m_i = (2 y_i - 1)(x_i^\top w + b),

scikit-learn's ``LogisticRegression(C=C)`` objective, intercept unpenalised. Ridge's ``alpha``
corresponds to ``1 / (2 C)``; a mean-loss parametrisation ``mean(loss) + lam ||w||^2 / 2`` has
``C = 1 / (lam * N)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from . import _checks
from ._batching import squeeze_axes
from ._implicit import solve_problems
from ._newton_cg import GLMLoss, solver_options
from ._woodbury import use_woodbury


def _binary_value(z: Array, y: Array) -> Array:
    # log(1 + exp(-margin)) through softplus, finite for every float z.
    return jax.nn.softplus(-(2 * y - 1) * z)


def _binary_grad(z: Array, y: Array) -> Array:
    return jax.nn.sigmoid(z) - y


def _binary_hvp(z: Array, y: Array, u: Array) -> Array:
    del y  # The logistic curvature does not depend on the label.
    p = jax.nn.sigmoid(z)
    return p * (1 - p) * u


def _binary_curvature(z: Array, y: Array) -> Array:
    del y
    p = jax.nn.sigmoid(z)
    return p * (1 - p)


BINARY_LOGISTIC = GLMLoss(value=_binary_value, grad=_binary_grad, hvp=_binary_hvp, curvature=_binary_curvature)


class LogisticFit(NamedTuple):
    """Binary logistic probes. ``[L]`` is present for 3-D ``X``, ``[G]`` for a 1-D ``C`` grid.

    Attributes:
      coef: ``([L,] [G,] D)`` weights of the positive class (the larger label).
      intercept: ``([L,] [G])``; zero when ``fit_intercept=False``.
      n_iter: int32 ``([L,] [G])`` Newton iterations.
      converged: bool ``([L,] [G])``; False when ``max_iter`` ran out or the solve stalled before the
        scaled gradient reached ``tol`` (see ``optimality``).
      optimality: ``([L,] [G])`` max-abs entry of the gradient of ``mean_s(loss) + ||w||^2/(2 C sum s)``.
    """

    coef: Array
    intercept: Array
    n_iter: Array
    converged: Array
    optimality: Array


def fit_logistic(
    X: Any,
    y: Any,
    C: Any = 1.0,
    *,
    sample_weight: Any = None,
    fit_intercept: bool = True,
    tol: float = 1e-7,
    max_iter: int = 100,
    max_cg_iter: int | None = None,
    precondition_rank: int | None = None,
    layer_batch_size: int | None = None,
) -> LogisticFit:
    """Fit binary L2 logistic regression on every layer (and every ``C``) in one compiled solve.

    Matches ``sklearn.linear_model.LogisticRegression(C=C, fit_intercept=..., sample_weight=...)`` number
    for number (see the module docstring for the objective). Solved by truncated Newton (Newton-CG with
    a Nyström-preconditioned CG); a grid of ``C`` is solved as a warm-started path in increasing ``C``,
    whose later, harder solves may be preconditioned with an exact inverse Hessian from earlier on the
    path when layers are solved one at a time (the CPU default; see ``layer_batch_size``); on an
    accelerator, with the exact inverse Newton matrix, rebuilt inside the solve whenever CG work grows
    (for up to 8192 features: ``(D+1)^2`` floats per layer). Wide layers
    (``N^2 <= 16 D``) are preconditioned with the exact inverse Newton matrix, rebuilt at every Newton
    step through the ``N x N`` kernel ``X X^T`` (``precondition_rank`` is then unused).

    Args:
      X: ``(N, D)`` or ``(L, N, D)`` activations, float16/bfloat16/float32/float64 (computed in float32,
        or float64 when ``jax_enable_x64`` is on and ``X`` is float64).
      y: ``(N,)`` two distinct labels; the larger one is the positive class.
      C: inverse regularisation strength, a scalar or a 1-D grid (adds a ``G`` axis after ``L``).
        Traced: a new value or grid of the same length does not recompile.
      sample_weight: ``(N,)`` non-negative weights, default ones.
      fit_intercept: fit an unpenalised intercept.
      tol: stop when the max-abs gradient of scikit-learn's scaled objective
        ``mean_s(loss) + ||w||^2 / (2 C sum s)`` is ``<= tol`` (scikit-learn's ``tol``) *and* the last
        Newton step predicted a relative objective gap ``<= tol``; or at the float floor. The second
        test matters on nearly separable layers, where the loss is small against ``C N``: there the
        gradient test alone left a 9e-5 relative gap at ``C = 100``, ``tol = 1e-7``.
      max_iter: most Newton iterations per problem.
      max_cg_iter: most conjugate-gradient steps per Newton iteration (default ``min(D + 1, 250)``).
      precondition_rank: rank of the randomized Nyström preconditioner of each layer's Gram matrix
        (default ``min(64, D)``; 0 for plain CG). A solver setting: the optimum does not depend on it.
      layer_batch_size: solve this many layers at a time (default: 1 on the CPU, all on an accelerator).
        Peak memory is about ``L * N * D * 4`` bytes for ``X``, plus ``k * N * D * 4`` for the ``k``
        layers the loop over layers copies out of ``X`` when ``k < L`` (one layer on the CPU: 1.3 GB at
        80000 x 4096), plus ``k * G * (N + D) * 4 * 8`` bytes of solver state; on an accelerator also ``k * (D + 1)^2 * 4`` bytes for
        the inverse Newton matrices (2.1 GB for 32 layers of 4096 features), a few times that while
        they are built.

    Returns:
      A :class:`LogisticFit`.

    Raises:
      ValueError: for non-finite ``X``, wrong shapes, not exactly two classes, bad ``C``/weights.

    Example:
      >>> import numpy as np
      >>> X = np.random.default_rng(0).normal(size=(3, 100, 5)).astype(np.float32)
      >>> y = (X[1, :, 0] > 0).astype(int)
      >>> fit = fit_logistic(X, y, C=[0.1, 1.0])
      >>> fit.coef.shape, bool(fit.converged.all())
      ((3, 2, 5), True)
    """
    X3, was_2d, n = _checks.check_bucketed_activations(X)
    y01, _ = _checks.check_binary_labels(y, n)
    sw = _checks.check_sample_weight(sample_weight, n)
    Cs, is_grid = _checks.check_grid(C, "C")
    options = solver_options(
        (X3.shape[0], n, X3.shape[2]), None, fit_intercept=fit_intercept, max_iter=max_iter,
        max_cg_iter=max_cg_iter, precondition_rank=precondition_rank, layer_batch_size=layer_batch_size,
    )
    rows = X3.shape[1]  # padded rows weigh nothing (see _checks.bucket_rows)
    fit = solve_problems(
        BINARY_LOGISTIC, X3, jnp.asarray(_checks.pad_rows(y01.astype(np.float32), rows)),
        jnp.asarray(_checks.pad_rows(sw, rows)[None]), jnp.asarray(Cs), tol=_checks.check_tol(tol), **options,
    )
    return squeeze_axes(fit, layer=was_2d, weights=True, grid=not is_grid).as_fit(LogisticFit)


def same_settings_padded(n_rows: int, n_features: int) -> bool:
    """Whether :func:`fit_logistic` picks the same solver settings for ``N`` rows as for ``N`` padded to
    its compile bucket (only the wide-layer preconditioner depends on ``N``): then zero-weight padding
    rows given by the caller leave its result unchanged, as its own padding does."""
    return use_woodbury(n_rows, n_features) == use_woodbury(_checks.bucket_rows(n_rows), n_features)
