r"""Multinomial (softmax) L2-penalised logistic regression, for every layer and every ``C`` at once.

.. math::

    \min_{W, b} \; C \sum_i s_i \Big(\log \sum_k e^{z_{ik}} - z_{i y_i}\Big) + \tfrac12 \lVert W \rVert_F^2,
    \qquad z_i = W x_i + b,

with ``W`` of shape ``(K, D)`` (one row per class, the full "symmetric" parametrisation) and ``b``
unpenalised: scikit-learn's ``LogisticRegression`` objective for ``K > 2`` classes. The solver only
ever forms the ``(K, N)`` logits, never an ``(N, K, D)`` tensor: a Hessian-vector product is two
``(K, N) x (N, D)``-sized products with ``X``.

The intercept is defined up to a common shift (adding a constant to every ``b_k`` changes no
probability); started from zero, the solver keeps ``sum_k b_k = 0``, as scikit-learn's lbfgs does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from . import _checks
from ._batching import squeeze_axes
from ._budget import default_workspace
from ._glm import DEFAULT_TOL, GLMLoss
from ._implicit import solve_problems
from ._path import solver_options
from ._policy import SolverPolicy


def _softmax_evaluate(z: Array, y: Array) -> tuple[Array, Array, Array]:
    # log sum_k e^{z_k} - z_y, as m + log1p(S), S = sum_{k != k*} e^{d_k - m}, with d = z - z_y and m = d_{k*}
    # its largest entry. The difference of logsumexp(z) and z_y cancels: for a confidently right sample
    # (loss ~ e^{-margin}) it is float32 noise of order 1e-7 * |z_y|, which hid the line search's small
    # decreases at large C (a stalled refit on separable data). Here nothing cancels, and the same
    # exponentials give the probabilities: p = e^{d - m} / (1 + S), with e^0 = 1 at k*. Entries tied at
    # the top count in S as 1 each but one; a max and a comparison instead of an argmax (a variadic
    # reduction, 60% of this function's time on the CPU at 300 x 8000).
    d = z - jnp.take_along_axis(z, y[None, :].astype(jnp.int32), axis=0)
    m = jnp.max(d, axis=0, keepdims=True)
    top = d == m
    e = jnp.exp(d - m)
    others = jnp.sum(jnp.where(top, 0.0, e), axis=0) + (jnp.sum(top, axis=0) - 1).astype(z.dtype)
    p = jnp.where(top, 1.0, e) / (1.0 + others)
    return m[0] + jnp.log1p(others), p - jax.nn.one_hot(y, z.shape[0], dtype=z.dtype, axis=0), p


def _softmax_value(z: Array, y: Array) -> Array:
    return _softmax_evaluate(z, y)[0]


def _softmax_hvp(p: Array, u: Array) -> Array:
    pu = p * u
    return pu - p * jnp.sum(pu, axis=0, keepdims=True)


def _softmax_curvature(p: Array) -> Array:
    return p * (1 - p)


def _softmax_null_intercept(y: Array, weight: Array, n_classes: int) -> Array:
    # Log class frequencies (half a sample added to each, so absent classes stay finite), centred: the
    # softmax optimum with W = 0, in scikit-learn's sum-zero form.
    n = y.shape[0]
    counts = n * jax.ops.segment_sum(weight, y.astype(jnp.int32), num_segments=n_classes)
    logs = jnp.log(counts + 0.5)
    return logs - jnp.mean(logs)


SOFTMAX = GLMLoss(evaluate=_softmax_evaluate, hvp=_softmax_hvp, curvature=_softmax_curvature,
                  null_intercept=_softmax_null_intercept)


class MultinomialFit(NamedTuple):
    """Softmax probes. ``[L]`` is present for 3-D ``X``, ``[G]`` for a 1-D ``C`` grid.

    Attributes:
      coef: ``([L,] [G,] K, D)``, row ``k`` for the ``k``-th class in sorted label order.
      intercept: ``([L,] [G,] K)``.
      n_iter, converged, optimality: ``([L,] [G])``, as in :class:`LogisticFit`.
    """

    coef: Array
    intercept: Array
    n_iter: Array
    converged: Array
    optimality: Array


def fit_multinomial(
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
    n_classes: int | None = None,
    policy: SolverPolicy | None = None,
) -> MultinomialFit:
    """Fit K-class softmax regression on every layer (and every ``C``) in one compiled solve.

    Matches ``sklearn.linear_model.LogisticRegression(C=C)`` on ``K >= 3`` classes. With ``K = 2`` it
    solves the symmetric two-row model, which is :func:`fit_logistic` at ``2 C`` with
    ``coef = w / 2 * [-1, 1]``, not scikit-learn's binary parametrisation.

    Args:
      X: ``(N, D)`` or ``(L, N, D)`` activations (see :func:`fit_logistic`).
      y: ``(N,)`` class labels (any sortable values); classes are the sorted distinct labels.
      C, sample_weight, fit_intercept, tol, max_iter, max_cg_iter, layer_batch_size, policy: as in
        :func:`fit_logistic`.
      precondition_rank: as in :func:`fit_logistic` (a softmax layer gets the preconditioner, and Newton-CG
        from the first step, only where the probe finds its spectrum steeper than
        ``policy.softmax_nystrom_decay``; other layers start with L-BFGS and no preconditioner).
      n_classes: only for labels traced by a transformation of yours (say ``vmap`` over label sets),
        which must then be codes ``0 .. n_classes - 1`` (the number of classes sets the program's shapes).

    Returns:
      A :class:`MultinomialFit`.

    Example:
      >>> import numpy as np
      >>> X = np.random.default_rng(0).normal(size=(2, 90, 4)).astype(np.float32)
      >>> y = np.argmax(X[0, :, :3], axis=1)
      >>> fit_multinomial(X, y, C=1.0).coef.shape
      (2, 3, 4)
    """
    X3, was_2d, n = _checks.check_bucketed_activations(X)
    codes, classes = _checks.check_class_labels(y, n, n_classes=n_classes)
    sw = _checks.check_sample_weight(sample_weight, n)
    Cs, is_grid = _checks.check_grid(C, "C")
    options = solver_options(
        (X3.shape[0], n, X3.shape[2]), int(classes.size), fit_intercept=fit_intercept, max_iter=max_iter,
        max_cg_iter=max_cg_iter, precondition_rank=precondition_rank, layer_batch_size=layer_batch_size,
        policy=policy,
    )
    rows = X3.shape[1]  # padded rows weigh nothing (see _checks.bucket_rows)
    fit = solve_problems(
        SOFTMAX, X3, jnp.asarray(_checks.pad_rows(codes, rows)), jnp.asarray(_checks.pad_rows(sw, rows)[None]),
        jnp.asarray(Cs), tol=_checks.check_tol(tol), **options,
    )
    return squeeze_axes(fit, layer=was_2d, weights=True, grid=not is_grid).as_fit(MultinomialFit)


#: float32 values a softmax solve of one layer holds per (padded) row and class (logits, probabilities, the
#: Hessian products' K x N temporaries) and per feature and class (the L-BFGS pairs, CG's vectors, the
#: line search's iterates): peaks measured on 600-8000 rows, 128-2048 features, 200-2000 classes, rounded
#: up (RESULTS.md, "What a softmax solve holds").
ROW_CLASS_VALUES, FEATURE_CLASS_VALUES = 12, 96


def softmax_workspace(n_rows: int, n_features: int, n_classes: int, n_problems: int = 1) -> int:
    """Bytes ``4 P (12 B K + 96 K (D + 1))`` that ``P`` softmax problems on one layer hold beyond ``X``
    and its copies: ``B = bucket_rows(N)`` rows, ``K`` classes (the ``K x N`` and ``K x D`` arrays that
    dwarf a layer from a few hundred classes on)."""
    rows = _checks.bucket_rows(n_rows)
    per_problem = ROW_CLASS_VALUES * rows * n_classes + FEATURE_CLASS_VALUES * n_classes * (n_features + 1)
    return 4 * n_problems * per_problem


def label_count(y: Any, n_classes: int | None = None) -> int:
    """The number of classes a solver will see in ``y`` (``n_classes`` when given), for planning memory
    before it checks the labels: 0 when ``y`` cannot be read (the solver then says what is wrong)."""
    try:
        if n_classes is not None:
            return max(int(n_classes), 0)
        y = np.asarray(y)
        return int(np.unique(y).size) if y.ndim == 1 else 0
    except (TypeError, ValueError):
        return 0


def fit_multinomial_workspace(n_rows: int, n_features: int, y: Any = None, *args: Any,
                              n_classes: int | None = None, **kwargs: Any) -> int:
    """:func:`fit_multinomial`'s work space for the streaming planner (its own arguments after ``X``)."""
    class_bytes = softmax_workspace(n_rows, n_features, label_count(y, n_classes))
    return default_workspace(n_rows, n_features) + class_bytes
