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
from ._glm import DEFAULT_TOL, GLMLoss
from ._implicit import solve_problems
from ._path import solver_options
from ._policy import SolverPolicy
from ._woodbury import use_woodbury


def _binary_evaluate(z: Array, y: Array) -> tuple[Array, Array, Array]:
    # log(1 + exp(-margin)) through softplus, finite for every float z; the probability is the aux.
    p = jax.nn.sigmoid(z)
    return jax.nn.softplus(-(2 * y - 1) * z), p - y, p


def _binary_hvp(p: Array, u: Array) -> Array:
    return p * (1 - p) * u


def _binary_curvature(p: Array) -> Array:
    return p * (1 - p)


def _binary_null_intercept(y: Array, weight: Array, n_outputs: None) -> Array:
    del n_outputs
    # The log-odds of the weighted positive rate, shrunk by half a sample each way so it stays finite.
    n = y.shape[0]
    rate = (n * jnp.sum(weight * y) + 0.5) / (n + 1.0)
    return jnp.log(rate) - jnp.log1p(-rate)


BINARY_LOGISTIC = GLMLoss(evaluate=_binary_evaluate, hvp=_binary_hvp, curvature=_binary_curvature,
                          null_intercept=_binary_null_intercept)


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
    tol: float = DEFAULT_TOL,
    max_iter: int = 100,
    max_cg_iter: int | None = None,
    precondition_rank: int | None = None,
    layer_batch_size: int | None = None,
    policy: SolverPolicy | None = None,
) -> LogisticFit:
    """Fit binary L2 logistic regression on every layer (and every ``C``) in one compiled solve.

    Matches ``sklearn.linear_model.LogisticRegression(C=C, fit_intercept=..., sample_weight=...)`` number
    for number at a tight ``tol`` (see the module docstring for the objective). A solve on a layer
    whose spectrum is flat starts with L-BFGS from the intercept-only optimum (its first step is the
    mass-mean direction) and hands over to Newton-CG when the data show the quasi-Newton steps stopped
    paying, by progress per pass over ``X``; a layer whose spectrum is steep (its Nystrom preconditioner
    is built) takes Newton-CG steps from the first iteration (:mod:`._newton_cg`). A grid of ``C`` is
    solved as a warm-started path in increasing ``C``; with layers solved one at a time (the CPU default;
    see ``layer_batch_size``) a path's later, harder solves may be preconditioned with an exact inverse
    Hessian from earlier on it; on an accelerator the exact inverse Newton matrix is rebuilt inside the
    solve whenever CG work grows (for up to 8192 features: ``(D+1)^2`` floats per layer). Wide layers
    (``N^2 <= 16 D``) take Newton steps preconditioned with the exact inverse Newton matrix through the
    ``N x N`` kernel ``X X^T`` (``precondition_rank`` is then unused). Which parts are used is the
    ``policy``'s (:class:`~lmprobe_jax.functional.SolverPolicy`); none changes the optimum.

    Args:
      X: ``(N, D)`` or ``(L, N, D)`` activations, float16/bfloat16/float32/float64 (computed in float32,
        or float64 when ``jax_enable_x64`` is on and ``X`` is float64).
      y: ``(N,)`` two distinct labels; the larger one is the positive class.
      C: inverse regularisation strength, a scalar or a 1-D grid (adds a ``G`` axis after ``L``).
        Traced: a new value or grid of the same length does not recompile. Any ``C > 0`` is solved in
        scikit-learn's scaled objective, so ``C = 1e12`` ("no regularisation") stays finite in float32.
      sample_weight: ``(N,)`` non-negative weights, default ones.
      fit_intercept: fit an unpenalised intercept.
      tol: stop when the max-abs gradient of scikit-learn's scaled objective
        ``mean_s(loss) + ||w||^2 / (2 C sum s)`` is ``<= tol`` (scikit-learn's ``tol``) *and* a Newton
        step predicted a relative objective gap ``<= tol``; or at the float floor. The default 1e-7 reaches
        scikit-learn's tight-tolerance optimum to float32 rounding; scikit-learn's own default, 1e-4, ends
        at a lower objective than its default fit (the gap test is the difference: on nearly separable
        layers the gradient test alone is loose). Traced: a new value does not recompile.
      max_iter: most iterations per problem (quasi-Newton and Newton).
      max_cg_iter: most conjugate-gradient steps per Newton iteration (default ``min(D + 1, 250)``).
      precondition_rank: rank of the randomized Nyström preconditioner of each layer's Gram matrix
        (default 64 on the CPU up to D = 1024, then ``D / 16`` up to 256; 64 on an accelerator; at most
        ``D``; built where the layer's spectrum is far from flat; ``min(256, D)`` for a layer whose rows are
        streamed; 0 for none). A solver setting: the optimum does not depend on it.
      layer_batch_size: solve this many layers at a time (default: 1 on the CPU, all on an accelerator).
        Peak memory is about ``L * N * D * 4`` bytes for ``X``, plus ``k * N * D * 4`` for the ``k``
        layers the loop over layers copies out of ``X`` when ``k < L`` (one layer on the CPU: 1.3 GB at
        80000 x 4096), plus ``k * G * (N + 20 (D + 1)) * 4`` bytes of solver state for ``k`` layers at a time (the L-BFGS memory holds 2 x 10 vectors of ``D + 1``);
        on an accelerator also ``k * (D + 1)^2 * 4`` bytes for the inverse Newton matrices (2.1 GB for 32
        layers of 4096 features), a few times that while they are built.
      policy: the solver's parts (default :func:`~lmprobe_jax.functional.default_policy`: the backend's).

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
        policy=policy,
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
