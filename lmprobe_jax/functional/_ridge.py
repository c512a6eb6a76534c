r"""Ridge regression and ridge classification, every layer and every ``alpha`` from few factorisations.

.. math::

    \min_{w, b} \; \sum_i s_i (y_i - x_i^\top w - b)^2 + \alpha \lVert w \rVert^2,

scikit-learn's ``Ridge(alpha)`` objective (intercept unpenalised). Integer or boolean labels are
classification as in ``RidgeClassifier``: two classes give one target, ``-1`` / ``+1`` (the larger label
``+1``); ``K > 2`` classes give ``K`` one-vs-all targets (``+1`` for the class, ``-1`` for the rest), all
solved from the same factorisation, and the predicted class is the largest of the ``K`` scores. ``alpha``
corresponds to ``1 / (2 C)`` of :func:`fit_logistic`.

Per layer, the weighted, centred matrix ``Xs = sqrt(s) (X - xbar)`` is factorised once:

* primal (``N >= D``): ``Xs^T Xs = V diag(lam) V^T``, and ``w(alpha) = V diag(1/(lam+alpha)) V^T Xs^T ys``;
* dual (``N < D``): ``Xs Xs^T = U diag(mu) U^T``, and ``w(alpha) = Xs^T U diag(1/(mu+alpha)) U^T ys``.

Every ``alpha`` of a grid then costs ``O(D^2)`` (primal) or ``O(N D)`` (dual), not a new solve. One
step of iterative refinement (residual computed from ``Xs`` itself, not from the rounded Gram matrix)
brings float32 solutions to float64 closed-form agreement on well-conditioned problems.

On the CPU, a short grid without leave-one-out (:func:`fit_ridge` with at most
:data:`_CHOLESKY_MAX_ALPHAS` values) skips the eigendecomposition: each ``alpha`` gets a Cholesky
factorisation of the Gram matrix plus ``alpha I``, about 15x cheaper than ``eigh`` (one core, 769
columns: 2.5 ms against 40 ms; the refined solution is as accurate). Where a Cholesky breaks down
(``alpha`` below the float resolution of a singular Gram matrix), that layer is solved through the
eigendecomposition, whose clipped eigenvalues always give a solution.

The same factorisation gives exact leave-one-out predictions (the hat-matrix identity
``e_i = (y_i - yhat_i) / (1 - h_ii)``), as scikit-learn's ``RidgeCV`` computes them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.linalg import cho_solve

from . import _checks
from ._batching import any_across_batch, default_layer_batch_size, over_layers
from ._precision import matmul


class RidgeFit(NamedTuple):
    """Ridge probes: regression, or two classes. ``[L]`` is present for 3-D ``X``, ``[G]`` for a 1-D
    ``alpha`` grid.

    Attributes:
      coef: ``([L,] [G,] D)``.
      intercept: ``([L,] [G])``.
    """

    coef: Array
    intercept: Array


class MulticlassRidgeFit(NamedTuple):
    """Ridge classifiers for ``K > 2`` classes, one ``-1`` / ``+1`` target per class (``RidgeClassifier``'s
    one-vs-all). ``[L]`` / ``[G]`` as in :class:`RidgeFit`.

    Attributes:
      coef: ``([L,] [G,] K, D)``, row ``k`` scoring class ``k`` (of the sorted labels).
      intercept: ``([L,] [G,] K)``.
    """

    coef: Array
    intercept: Array


class RidgeLOO(NamedTuple):
    """Exact leave-one-out results of :func:`ridge_loo`.

    Attributes:
      fit: the :class:`RidgeFit` (or :class:`MulticlassRidgeFit`) on all samples.
      predictions: ``([L,] [G,] [K,] N)``, the prediction (regression) or decision value
        (classification; one row per class for ``K > 2``) for each sample from the model fitted without it.
      targets: ``([K,] N)`` the targets the predictions estimate (``±1`` for classification).
    """

    fit: RidgeFit | MulticlassRidgeFit
    predictions: Array
    targets: Array


def ridge_targets(y: Any, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(Y (T, N) float32, classes or None)``: float ``y`` is regression (``T = 1``), integer/bool ``y``
    classification (``T = 1`` for two classes, else ``T = K`` one-vs-all targets). Under ``jit`` labels
    must be two classes coded ``0`` / ``1`` (the number of classes is not known there)."""
    y_arr = _checks.check_n_samples(n, y, "y")
    if not _checks.is_concrete(y_arr):  # under jit: float targets, or labels coded 0/1
        if jnp.issubdtype(y_arr.dtype, jnp.floating):
            return y_arr.astype(jnp.float32)[None], None
        return (2.0 * y_arr.astype(jnp.float32) - 1.0)[None], None
    if y_arr.dtype.kind == "f":
        if not np.all(np.isfinite(y_arr)):
            raise ValueError("y contains NaN or infinity; drop those samples or impute the targets.")
        return y_arr.astype(np.float32)[None], None
    if y_arr.dtype.kind not in "iub":
        raise ValueError(
            f"y has dtype {y_arr.dtype}; give float targets (regression) or integer/bool labels "
            f"(classification)."
        )
    codes, classes = _checks.check_class_labels(y_arr, n)
    if classes.size == 2:
        return (2.0 * codes - 1.0).astype(np.float32)[None], classes
    return np.where(codes[None] == np.arange(classes.size)[:, None], 1.0, -1.0).astype(np.float32), classes


# Most alphas a ridge fit without leave-one-out solves on the CPU by a Cholesky factorisation per alpha rather
# than one eigendecomposition. One core, 12 layers, the whole solve, Cholesky vs eigh (interleaved medians of
# 5, `python benchmarks/solver_choices.py ridge-method`): 3000 x 768: 1 alpha 0.296 vs 0.719 s, 8: 0.624 vs
# 0.717, 12: 0.822 vs 0.716; 600 x 2048 (dual): 8: 0.289 vs 0.312, 12: 0.385 vs 0.320; 3000 x 256: 8: 0.065
# vs 0.075, 12: 0.080 vs 0.077. Coefficient errors against the float64 closed form alike (throwaway script:
# 1.5e-6 vs 1.1e-6 at 768 features; 4 x 3000 x 2048: 2.4e-6 vs 4.0e-5, Cholesky the closer, and 1 alpha 1.09
# vs 3.71 s). Other backends keep the eigendecomposition until measured there (`python
# benchmarks/gpu_sweep.py --only ridge` times both).
_CHOLESKY_MAX_ALPHAS = 8


class _Centred(NamedTuple):
    """One layer's weighted, centred data and its Gram matrix."""

    xs: Array  # (N, D) sqrt(s) * (X - xbar)
    ys: Array  # (T, N) sqrt(s) * (Y - ybar)
    xbar: Array  # (D,)
    ybar: Array  # (T,)
    gram: Array  # Xs^T Xs (primal, N >= D) or Xs Xs^T (dual)


class _Spectral(NamedTuple):
    """One layer's eigendecomposition. ``basis`` is ``V`` (primal, ``(D, D)``) or ``U`` (dual, ``(N, N)``)."""

    basis: Array
    eig: Array  # eigenvalues lam (primal) or mu (dual), clipped at 0
    shift: Array  # (): dual with intercept only: the eigenvalue given to the null vector sqrt(s)


def _centre(x: Array, Y: Array, s: Array, fit_intercept: bool) -> _Centred:
    root = jnp.sqrt(s)
    if fit_intercept:
        total = jnp.sum(s)
        xbar = matmul(s, x) / total
        ybar = matmul(Y, s) / total
    else:
        xbar = jnp.zeros(x.shape[1], x.dtype)
        ybar = jnp.zeros(Y.shape[0], x.dtype)
    xs = root[:, None] * (x - xbar)
    ys = root * (Y - ybar[:, None])
    n, d = x.shape
    gram = matmul(xs.T, xs) if n >= d else matmul(xs, xs.T)
    return _Centred(xs, ys, xbar, ybar, gram)


def _eigendecompose(c: _Centred, s: Array, fit_intercept: bool) -> _Spectral:
    gram = c.gram
    shift = jnp.zeros((), gram.dtype)
    n, d = c.xs.shape
    if n < d and fit_intercept:
        # Centring makes q = sqrt(s) / |sqrt(s)| an exact null vector of the kernel, but a float32
        # eigh returns its eigenvalue only to ~eps * |K|, which spoils 1 - h_ii (of order alpha/mu)
        # in the LOO formula. Moving q's eigenvalue to a known `shift` keeps it exact; ys is
        # orthogonal to q, so the ridge solution is unchanged.
        root = jnp.sqrt(s)
        q = root / jnp.linalg.norm(root)
        shift = jnp.trace(gram) + 1.0
        gram = gram + shift * jnp.outer(q, q)
    eig, basis = jnp.linalg.eigh(gram)
    return _Spectral(basis, jnp.maximum(eig, 0), shift)


def _spectral_solver(sp: _Spectral, alpha: Array) -> Callable[[Array], Array]:
    """Rows ``rhs`` -> rows of ``(Gram + alpha I)^-1 rhs`` through the eigendecomposition."""
    inv = 1.0 / (sp.eig + alpha)
    return lambda rhs: matmul(matmul(rhs, sp.basis) * inv, sp.basis.T)


def _cholesky_solver(c: _Centred, alpha: Array) -> Callable[[Array], Array]:
    """The same through a Cholesky factorisation of ``Gram + alpha I`` (NaN where it breaks down)."""
    lower = jnp.linalg.cholesky(c.gram + alpha * jnp.eye(c.gram.shape[0], dtype=c.gram.dtype))
    return lambda rhs: cho_solve((lower, True), rhs.T).T


def _coef(c: _Centred, solve: Callable[[Array], Array], alpha: Array) -> tuple[Array, Array, Array]:
    """``(T, D)`` ridge weights at one ``alpha`` (two steps of iterative refinement), the weighted training
    residuals ``sqrt(s) (y - yhat)`` ``(T, N)``, and the drift ``(T,)``: the last refinement step's size
    relative to the weights. ``solve`` applies ``(Gram + alpha I)^-1`` to rows: ``Xs^T Xs`` (primal) or
    ``Xs Xs^T`` (dual).

    Refinement converges (each step shrinks the error by about ``eps * cond``) while ``eps * cond < 1``;
    a drift that stays large says the working precision cannot solve this system (float32 from
    ``cond ~ 1e7``), and :func:`validated_solve` solves that layer again in float64."""
    n, d = c.xs.shape

    def drift(step: Array, total: Array) -> Array:
        return jnp.linalg.norm(step, axis=-1) / jnp.maximum(jnp.linalg.norm(total, axis=-1), jnp.finfo(total.dtype).tiny)

    if n >= d:
        coef = solve(matmul(c.ys, c.xs))
        coef = coef + solve(matmul(c.ys - matmul(coef, c.xs.T), c.xs) - alpha * coef)
        step = solve(matmul(c.ys - matmul(coef, c.xs.T), c.xs) - alpha * coef)
        coef = coef + step
        return coef, c.ys - matmul(coef, c.xs.T), drift(step, coef)
    beta = solve(c.ys)
    beta = beta + solve(c.ys - matmul(matmul(beta, c.xs), c.xs.T) - alpha * beta)
    step = solve(c.ys - matmul(matmul(beta, c.xs), c.xs.T) - alpha * beta)
    beta = beta + step
    # In the dual, ys - Xs w = alpha * beta exactly: no cancellation when the fit nearly interpolates.
    return matmul(beta, c.xs), alpha * beta, drift(step, beta)


def _one_minus_hat(c: _Centred, sp: _Spectral, s: Array, alpha: Array, fit_intercept: bool) -> Array:
    """``(N,)`` ``1 - h_ii``, where ``h_ii = d yhat_i / d y_i`` is the weighted hat matrix's diagonal."""
    n, d = c.xs.shape
    lever = s / jnp.sum(s) if fit_intercept else jnp.zeros_like(s)  # the intercept's share of h_ii
    if n >= d:
        proj = matmul(c.xs, sp.basis)  # (N, D): sqrt(s_i) (x_i - xbar) in the eigenbasis
        return 1.0 - matmul(proj * proj, 1.0 / (sp.eig + alpha)) - lever
    # U is a full orthonormal basis, so sum_j U_ij^2 = 1 and 1 - sum_j U_ij^2 mu_j / (mu_j + alpha)
    # equals sum_j U_ij^2 alpha / (mu_j + alpha): no cancellation when h_ii is close to 1 (N < D).
    # With an intercept, the null vector q (q_i^2 = s_i / sum s) carries eigenvalue `shift` instead
    # of 0; its term q_i^2 alpha / (shift + alpha) replaces the lever term exactly.
    if fit_intercept:
        lever = lever * alpha / (sp.shift + alpha)
    return matmul(sp.basis * sp.basis, alpha / (sp.eig + alpha)) - lever


def ridge_method(n_alphas: int, loo: bool) -> str:
    """``"cholesky"`` (a factorisation per alpha) on the CPU for at most :data:`_CHOLESKY_MAX_ALPHAS` alphas
    without leave-one-out, else ``"eigh"`` (one eigendecomposition for every alpha, and the LOO hat matrix)."""
    cpu = jax.default_backend() == "cpu"
    return "cholesky" if cpu and not loo and n_alphas <= _CHOLESKY_MAX_ALPHAS else "eigh"


@functools.partial(jax.jit, static_argnames=("fit_intercept", "loo", "layer_batch_size", "method"))
def ridge_solve(
    X: Array, Y: Array, s: Array, alphas: Array, *, fit_intercept: bool, loo: bool, layer_batch_size: int,
    method: str = "eigh",
) -> tuple[RidgeFit, Array | None, Array]:
    """Jitted core: ``X (L, N, D)`` (any float storage, or :func:`._checks.solver_view`'s ``uint16``),
    ``Y (T, N)``, ``s (N,)``, ``alphas (G,)``.

    ``method`` (static): ``"eigh"``, or ``"cholesky"`` (without ``loo`` only; a layer where any alpha's
    factorisation breaks down is solved by ``"eigh"``); :func:`ridge_method` chooses.

    Returns ``RidgeFit`` with ``coef (L, G, T, D)``, when ``loo`` LOO predictions ``(L, G, T, N)`` (else
    None), and the refinement drift ``(L, G, T)`` (see :func:`_coef`).
    """
    if method not in ("eigh", "cholesky") or (method == "cholesky" and loo):
        raise ValueError(f"method must be 'eigh', or 'cholesky' without loo; got {method!r} (loo={loo}).")
    dtype = _checks.compute_dtype(X.dtype)
    # X a layer at a time (below): converted as a whole, a half-precision X would gain a float32 copy.
    Y, s, alphas = Y.astype(dtype), s.astype(dtype), alphas.astype(dtype)

    def fit_at(c: _Centred, solve: Callable[[Array], Array], alpha: Array) -> tuple[RidgeFit, Array, Array]:
        coef, scaled_residual, drift = _coef(c, solve, alpha)
        return RidgeFit(coef, c.ybar - matmul(coef, c.xbar)), scaled_residual, drift

    def by_eigh(c: _Centred, x: Array) -> tuple[RidgeFit, Array | None, Array]:
        sp = _eigendecompose(c, s, fit_intercept)

        def at(alpha: Array) -> tuple[RidgeFit, Array | None, Array]:
            fit, scaled_residual, drift = fit_at(c, _spectral_solver(sp, alpha), alpha)
            if not loo:
                return fit, None, drift
            direct = Y - (matmul(fit.coef, x.T) + fit.intercept[:, None])  # zero-weight rows: no scaled residual
            residual = jnp.where(s > 0, scaled_residual / jnp.sqrt(jnp.where(s > 0, s, 1.0)), direct)
            return fit, Y - residual / _one_minus_hat(c, sp, s, alpha, fit_intercept), drift

        return jax.vmap(at)(alphas)

    def layer(x: Array) -> tuple[RidgeFit, Array | None, Array]:
        x = _checks.as_compute(x, dtype)
        c = _centre(x, Y, s, fit_intercept)
        if method == "eigh":
            return by_eigh(c, x)

        def cholesky_at(alpha: Array) -> tuple[RidgeFit, Array]:
            fit, _, drift = fit_at(c, _cholesky_solver(c, alpha), alpha)
            return fit, drift

        # One factor at a time (lax.map, not vmap): an (m, m) factor per layer in memory, not one per alpha.
        fits, drift = jax.lax.map(cholesky_at, alphas)
        broke = ~jnp.all(jnp.isfinite(fits.coef))
        # One decision for a vmapped batch of layers, so the fallback stays a branch that rarely runs.
        fits, drift = jax.lax.cond(any_across_batch(broke), lambda: by_eigh(c, x)[::2], lambda: (fits, drift))
        return fits, None, drift

    return over_layers(layer, X, layer_batch_size=layer_batch_size)


# Largest refinement drift (see _coef) a float32 layer keeps; above it the layer is solved in float64. At
# eps * cond ~ 1 refinement stops converging: on a near-low-rank panel layer (cond 8e8) float32 weights
# were off by 390x their norm (drift ~1), where a cond-1e8 layer (drift ~1e-2) ended 1.6e-5 from float64.
_MAX_DRIFT = 1e-3


def _float64_where_needed(X3: Array, args: tuple, options: dict, fit: RidgeFit, pred: Array | None, drift: Array):
    """Solve again, in float64 (JAX's x64 on for this call only), the layers whose float32 refinement did
    not converge (:data:`_MAX_DRIFT`); their results replace the float32 ones, cast back."""
    bad = np.flatnonzero(np.nanmax(np.where(np.isfinite(np.asarray(drift)), np.asarray(drift), np.inf), axis=(1, 2))
                         > _MAX_DRIFT)
    if bad.size == 0:
        return fit, pred
    with jax.enable_x64(True):
        exact = ridge_solve(X3[bad].astype(jnp.float64), *(a.astype(jnp.float64) for a in args),
                            **{**options, "layer_batch_size": min(options["layer_batch_size"], bad.size)})
        fit = RidgeFit(*(a.at[bad].set(b.astype(a.dtype)) for a, b in zip(fit, exact[0])))
        pred = None if pred is None else pred.at[bad].set(exact[1].astype(pred.dtype))
    return fit, pred


def validated_solve(
    X: Any, y: Any, alpha: Any, sample_weight: Any, fit_intercept: bool, layer_batch_size: int | None, *, loo: bool,
    keep_layer_axis: bool = False,
) -> tuple[RidgeLOO, Array, int]:
    """Validate at the boundary, solve, and drop the axes the caller did not ask for (``predictions`` is
    None unless ``loo``). The one path behind :func:`fit_ridge`, :func:`ridge_loo` and the ridge CV.

    Rows are padded to :func:`._checks.bucket_rows` with zero weight (one compiled program per bucket):
    returns ``(RidgeLOO with predictions and targets over the padded rows, sample weights (rows,) with
    zeros on the padding, N)``. ``keep_layer_axis`` keeps the layer axis of a 2-D ``X`` (``L = 1``).
    """
    X3, was_2d, n = _checks.check_bucketed_activations(X)
    was_2d = was_2d and not keep_layer_axis
    Y, _ = ridge_targets(y, n)
    sw = _checks.check_sample_weight(sample_weight, n)
    alphas, is_grid = _checks.check_grid(alpha, "alpha")
    rows = X3.shape[1]
    Y, sw = _checks.pad_rows(Y, rows), _checks.pad_rows(sw, rows)
    args = (jnp.asarray(Y), jnp.asarray(sw), jnp.asarray(alphas))
    options = {"fit_intercept": bool(fit_intercept), "loo": loo, "method": ridge_method(alphas.size, loo),
               "layer_batch_size": default_layer_batch_size(X3.shape[0], layer_batch_size)}
    fit, pred, drift = ridge_solve(_checks.solver_view(X3), *args, **options)
    if _checks.is_concrete(drift) and _checks.compute_dtype(X3.dtype) != jnp.float64:
        fit, pred = _float64_where_needed(X3, args, options, fit, pred, drift)

    one_target = Y.shape[0] == 1

    def squeeze(a: Array) -> Array:  # a single target's axis and the unrequested layer/grid axes
        axes = tuple(i for i, drop in ((0, was_2d), (1, not is_grid), (2, one_target)) if drop)
        return jnp.squeeze(a, axis=axes)

    fit_type = RidgeFit if one_target else MulticlassRidgeFit
    loo_result = RidgeLOO(
        fit=fit_type(*(squeeze(a) for a in fit)),
        predictions=None if pred is None else squeeze(pred),
        targets=jnp.asarray(Y[0] if one_target else Y),
    )
    return loo_result, jnp.asarray(sw), n


def fit_ridge(
    X: Any,
    y: Any,
    alpha: Any = 1.0,
    *,
    sample_weight: Any = None,
    fit_intercept: bool = True,
    layer_batch_size: int | None = None,
) -> RidgeFit | MulticlassRidgeFit:
    """Fit ridge on every layer for every ``alpha``: one eigendecomposition per layer serves the whole grid
    (on the CPU, up to 8 alphas each get a Cholesky factorisation instead, which is faster there).

    Matches ``sklearn.linear_model.Ridge(alpha)`` for float ``y`` and ``RidgeClassifier(alpha)`` for
    integer or boolean labels (see the module docstring). Closed form: no iterations, no tolerance.

    Args:
      X: ``(N, D)`` or ``(L, N, D)`` activations (float16/bfloat16/float32/float64 storage).
      y: ``(N,)`` float targets (regression), or integer/bool class labels (classification).
      alpha: ``> 0``, a scalar or a 1-D grid (adds a ``G`` axis after ``L``). Traced: no recompile.
      sample_weight: ``(N,)`` non-negative weights, default ones.
      fit_intercept: fit an unpenalised intercept (weighted centring).
      layer_batch_size: layers factorised at a time (default 1 on the CPU, all on an accelerator).
        Memory per layer: ``X`` centred (``N D``), the Gram (``min(N, D)^2``) and its eigenvectors.

    Returns:
      A :class:`RidgeFit`; for more than two classes a :class:`MulticlassRidgeFit` (a class axis before
      ``D``).

    Example:
      >>> import numpy as np
      >>> X = np.random.default_rng(0).normal(size=(4, 50, 6)).astype(np.float32)
      >>> fit_ridge(X, X[0, :, 0] * 2.0, alpha=[0.1, 1.0, 10.0]).coef.shape
      (4, 3, 6)
    """
    return validated_solve(X, y, alpha, sample_weight, fit_intercept, layer_batch_size, loo=False)[0].fit


def ridge_loo(
    X: Any,
    y: Any,
    alpha: Any = 1.0,
    *,
    sample_weight: Any = None,
    fit_intercept: bool = True,
    layer_batch_size: int | None = None,
) -> RidgeLOO:
    """Exact leave-one-out predictions for every layer and ``alpha``, plus the full fits.

    What ``RidgeCV`` / ``RidgeClassifierCV`` (``cv=None``) evaluate, from the same factorisation as
    :func:`fit_ridge` and a few ``O(N D)`` products per ``alpha``. Score them with
    :mod:`lmprobe_jax.functional` metrics (e.g. mean squared error against ``targets``, or accuracy of
    ``sign(predictions)`` for two classes and of the ``argmax`` over the class axis for more).

    Arguments are those of :func:`fit_ridge`.
    """
    res, _, n = validated_solve(X, y, alpha, sample_weight, fit_intercept, layer_batch_size, loo=True)
    return res._replace(predictions=res.predictions[..., :n], targets=res.targets[..., :n])
