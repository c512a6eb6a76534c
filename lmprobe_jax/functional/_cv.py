"""Cross-validation and regularisation paths: every layer x grid value x fold in one compiled solve.

Folds are sample-weight masks over the same ``X``: fold ``f``'s training problem weights the samples
outside ``f``. The ``F`` fold problems are solved together, as one warm-started path over the ``C``
grid, so each solver step reads a layer's ``X`` once for all of them (one ``(F, N) x (N, D)`` product).
Fold problems only have to rank the grid, so they stop at ``cv_tol`` (default 1e-4, the ``tol`` of
``LogisticRegressionCV``); the refit on all samples at each layer's best ``C`` — the probe users keep —
is then solved to the tight ``tol``, one ``C`` per layer, in a second batched call."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from . import _aot, _checks, _metrics
from ._budget import default_workspace
from ._folds import HeldOut, held_out_rows, stratified_folds
from ._glm import DEFAULT_TOL
from ._group_lasso import GroupLassoFit, group_lasso_weight_sets, grouped_activations, targets_for_loss
from ._logistic import BINARY_LOGISTIC, LogisticFit
from ._multinomial import SOFTMAX, MultinomialFit, label_count, softmax_workspace
from ._newton_cg import SolveResult
from ._path import layer_preconditioners, solve_layers, solver_options
from ._policy import SolverPolicy
from ._precision import einsum
from ._predict import decision_function
from ._ridge import validated_solve

_HIGHER_IS_BETTER = {"accuracy": True, "roc_auc": True, "log_loss": False, "mse": False}


class CVResult(NamedTuple):
    """Cross-validated probes for every layer. ``L`` layers, ``G`` grid values, ``F`` folds.

    Attributes:
      grid: ``(G,)`` numpy float64, the ``C`` (or ``alpha``) values, in the order given.
      accuracy: ``(L, G, F)`` held-out accuracy per layer, grid value and fold.
      log_loss: ``(L, G, F)`` held-out mean log-loss (NaN for ridge).
      roc_auc: ``(L, G, F)`` held-out AUROC (NaN for multinomial fits).
      mse: ``(L, G, F)`` held-out mean squared error of the decision values against ``±1`` targets
        (ridge only; NaN otherwise). For ridge, ``F = 1``: the exact leave-one-out fold.
      best_index: int ``(L,)`` grid index with the best mean score over folds (first of ties).
      best_value: ``(L,)`` numpy float64, the grid value at ``best_index``.
      fit: the refit on all samples at each layer's best value: a fit with ``coef`` ``(L, [K,] D)``.
      fold_ids: ``(N,)`` fold of each sample (-1 for leave-one-out).
      n_iter: int ``(L, G, F + 1)`` solver iterations of each problem (last column: the refit, the
        same for every ``G``); zeros for ridge.
      converged: bool ``(L, G, F + 1)``.
    """

    grid: np.ndarray
    accuracy: Array
    log_loss: Array
    roc_auc: Array
    mse: Array
    best_index: Array
    best_value: np.ndarray
    fit: Any
    fold_ids: np.ndarray
    n_iter: Array
    converged: Array


def _best(scores: Array, scoring: str) -> Array:
    mean = jnp.nanmean(scores, axis=-1)
    return jnp.argmax(mean if _HIGHER_IS_BETTER[scoring] else -mean, axis=-1)


def _fold_ids(y: np.ndarray, folds: Any, groups: Any, random_state: int | None) -> np.ndarray:
    if isinstance(folds, (int, np.integer)) and not isinstance(folds, bool):
        if not _checks.is_concrete(y):
            raise ValueError(
                "folds is a number of stratified folds, which needs the labels' values, but y is traced (under "
                "jit/vmap); give folds as (N,) fold ids, e.g. stratified_folds(y_example, 5)."
            )
        return stratified_folds(y, int(folds), groups=groups, random_state=random_state)
    if groups is not None:
        raise ValueError(
            "groups only shapes folds that are built here (an integer folds); with fold ids of your own, "
            "keep each group inside one fold when making them."
        )
    ids = _checks.check_n_samples(y.shape[0], folds, "folds").astype(np.int64)
    if ids.min() < 0 or np.unique(ids).size < 2:
        raise ValueError("folds, given as fold ids, needs non-negative integers with at least two folds.")
    return np.unique(ids, return_inverse=True)[1].astype(np.int32)


def asks_softmax(n_labels: int, multinomial: bool | None) -> bool:
    """Whether a logistic CV fits softmax: as ``multinomial`` says, else for more than two classes."""
    return n_labels > 2 if multinomial is None else bool(multinomial)


def logistic_cv_setup(
    y: Any, n: int, C: Any, *, folds: Any, groups: Any, random_state: int | None, scoring: str,
    multinomial: bool | None, sample_weight: Any, n_classes: int | None,
) -> tuple[Any, np.ndarray, bool, np.ndarray, Any, np.ndarray]:
    """The checked inputs of a logistic CV (in memory or row-streamed, so both refuse and fold alike):
    ``(codes (N,), classes (K,), softmax, sample weights (N,), C grid (G,), fold ids (N,))``."""
    codes, classes = _checks.check_class_labels(y, n, n_classes=n_classes)
    softmax = asks_softmax(classes.size, multinomial)
    if not softmax and classes.size != 2:
        _checks.check_binary_labels(y, n)  # raises the binary message
    if scoring not in ("accuracy", "log_loss", "roc_auc") or (softmax and scoring == "roc_auc"):
        options = "'accuracy' or 'log_loss'" if softmax else "'accuracy', 'log_loss' or 'roc_auc'"
        raise ValueError(f"scoring={scoring!r} is not available here; use {options}.")
    sw = _checks.check_sample_weight(sample_weight, n)
    Cs, _ = _checks.check_grid(C, "C")
    return codes, classes, softmax, sw, Cs, _fold_ids(codes, folds, groups, random_state)


def logistic_cv_workspace(
    n_rows: int, n_features: int, y: Any = None, *args: Any, folds: Any = 5, multinomial: bool | None = None,
    n_classes: int | None = None, **kwargs: Any,
) -> int:
    """:func:`cross_validate_logistic`'s work space for the streaming planner (its own arguments after
    ``X``): a softmax CV solves its folds side by side, each over every row (held-out rows weigh 0), and
    the refit beside them."""
    n_labels = label_count(y, n_classes)
    if not asks_softmax(n_labels, multinomial):
        return default_workspace(n_rows, n_features)
    try:
        n_folds = int(folds) if np.ndim(folds) == 0 else np.unique(np.asarray(folds)).size
    except (TypeError, ValueError):
        n_folds = 5  # the solver refuses these folds with its own message
    class_bytes = softmax_workspace(n_rows, n_features, n_labels, n_folds + 1)
    return default_workspace(n_rows, n_features) + class_bytes


def training_weights(fold_ids: np.ndarray, sw: Any) -> np.ndarray:
    """``(F, N)``: fold ``f``'s training problem as sample weights, ``sw`` outside fold ``f``, 0 in it."""
    n_folds = int(fold_ids.max()) + 1
    return (fold_ids[None, :] != np.arange(n_folds)[:, None]) * np.asarray(sw)


def scored_held_out(fold_ids: np.ndarray, sw: Any) -> HeldOut:
    """Each fold's held-out rows ``(F, M)`` with their sample weights, ``M`` padded to its compile bucket
    (padding weighs 0)."""
    held_out = held_out_rows(fold_ids)
    held_out = HeldOut(*(_checks.pad_rows(a, _checks.bucket_rows(a.shape[1])) for a in held_out))
    return held_out._replace(weight=held_out.weight * sw[held_out.index])


def chosen_value(scores: Array, scoring: str, grid: Any) -> tuple[Any, Any]:
    """``(best_index (L,), best_value (L,))`` from held-out ``scores`` ``(L, G, F)``: the best mean over
    folds, first of ties (numpy when concrete; traced under a caller's jit)."""
    return value_at(_best(scores, scoring), grid)


def value_at(best: Any, grid: Any) -> tuple[Any, Any]:
    """``(best (L,), grid[best] (L,))``, numpy when both are concrete (traced under a caller's jit)."""
    best = np.asarray(best) if _checks.is_concrete(best) else best
    value = grid[best] if isinstance(best, np.ndarray) and isinstance(grid, np.ndarray) else jnp.asarray(grid)[best]
    return best, value


def cross_validate_logistic(
    X: Any,
    y: Any,
    C: Any = (0.01, 0.1, 1.0, 10.0),
    *,
    folds: Any = 5,
    groups: Any = None,
    random_state: int | None = 0,
    scoring: str = "accuracy",
    multinomial: bool | None = None,
    sample_weight: Any = None,
    fit_intercept: bool = True,
    tol: float = DEFAULT_TOL,
    cv_tol: float = 1e-4,
    max_iter: int = 100,
    max_cg_iter: int | None = None,
    precondition_rank: int | None = None,
    layer_batch_size: int | None = None,
    n_classes: int | None = None,
    policy: SolverPolicy | None = None,
) -> CVResult:
    """K-fold cross-validated L2 logistic regression on every layer over a ``C`` grid, with refit.

    What ``LogisticRegressionCV(Cs=C, cv=StratifiedKFold(folds), refit=True)`` does per layer, as one
    batched solve (see the module docstring).

    Args:
      X: ``(N, D)`` or ``(L, N, D)``; a 2-D ``X`` is one layer (``L = 1`` in the result).
      y: ``(N,)`` labels: two classes for binary logistic, more for softmax.
      C: 1-D grid of inverse regularisation strengths.
      folds: number of stratified folds, or ``(N,)`` fold ids of your own.
      groups: ``(N,)`` group labels kept within one fold (only with an integer ``folds``).
      random_state: seed of the fold shuffle.
      scoring: ``"accuracy"``, ``"log_loss"`` or ``"roc_auc"`` (binary only): how the best ``C`` is chosen.
      multinomial: force softmax (True) or binary (False); default: softmax for more than two classes.
      tol: tolerance of the refit (as in :func:`fit_logistic`).
      cv_tol: tolerance of the fold problems, which only score the grid: scikit-learn's gradient
        criterion alone (no objective-gap bound), as in ``LogisticRegressionCV``.
      sample_weight, fit_intercept, max_iter, max_cg_iter, precondition_rank, layer_batch_size, policy: as
        in :func:`fit_logistic`.
      n_classes: only for labels traced by a transformation of yours (say ``vmap`` over label sets),
        which must then be codes ``0 .. n_classes - 1``, with ``folds`` given as fold ids.

    Under your own ``jit`` / ``vmap``, ``X``, ``C``, ``y`` (with ``n_classes``) and ``sample_weight`` may be
    traced; ``folds`` and ``groups`` must be concrete (fold assignment is data preparation on the host).
    ``best_value`` is then a JAX array.

    Returns:
      A :class:`CVResult` whose ``fit`` is a :class:`LogisticFit` (or :class:`MultinomialFit`).
    """
    X3, _, n = _checks.check_bucketed_activations(X)
    X3 = _checks.solver_view(X3)  # the solver programs' X (below) only
    codes, classes, softmax, sw, Cs, fold_ids = logistic_cv_setup(
        y, n, C, folds=folds, groups=groups, random_state=random_state, scoring=scoring, multinomial=multinomial,
        sample_weight=sample_weight, n_classes=n_classes)
    rows = X3.shape[1]  # padded rows weigh nothing in any fold (see _checks.bucket_rows)
    train = _checks.pad_rows(training_weights(fold_ids, sw), rows)
    codes_rows = _checks.pad_rows(codes, rows)
    loss = SOFTMAX if softmax else BINARY_LOGISTIC
    y_solver = codes_rows if softmax else codes_rows.astype(np.float32)
    options = solver_options(
        (X3.shape[0], n, X3.shape[2]), int(classes.size) if softmax else None, fit_intercept=fit_intercept,
        max_iter=max_iter, max_cg_iter=max_cg_iter, precondition_rank=precondition_rank,
        layer_batch_size=layer_batch_size, policy=policy,
    )
    # One preconditioner per layer for the folds and the refit alike (computed and compiled once).
    precond = None
    if options["policy"].nystrom_rank:
        precond = _aot.call(
            layer_preconditioners, X=X3, sample_weight=train, fit_intercept=options["fit_intercept"],
            layer_batch_size=options["layer_batch_size"], policy=options["policy"],
        )
    folds_res = _aot.call(
        solve_layers, loss=loss, X=X3, y=y_solver, sample_weight=train, Cs=Cs,
        tol=_checks.check_tol(cv_tol), gap_tol=float("inf"), precond=precond, **options,
    )  # fields (L, F, G, ...): scikit-learn's gradient criterion alone, as LogisticRegressionCV
    fit_type = MultinomialFit if softmax else LogisticFit
    scores, best, init = _aot.call(
        _scored_folds, fit=folds_res.as_fit(fit_type), X3=X3, y=codes_rows,
        held_out=scored_held_out(fold_ids, sw), softmax=softmax, scoring=scoring,
    )  # scores (L, G, F) each, best (L,), init at best (L, 1, [K,] D) and (L, 1, [K])
    refit_args = dict(loss=loss, X=X3, y=y_solver, sample_weight=_checks.pad_rows(sw, rows)[None],
                      tol=_checks.check_tol(tol), precond=precond, init=init, **options)
    # The refit's program loads while the folds are solved (its C is known only once they are).
    _aot.prefetch(solve_layers, **refit_args, Cs=np.empty((X3.shape[0], 1), Cs.dtype))
    _, best_value = value_at(best, Cs)
    refit_res = _aot.call(solve_layers, **refit_args, Cs=best_value[:, None])  # fields (L, 1, 1, ...)
    refit, n_iter, converged = _aot.call(_with_refit, folds_res=folds_res, refit_res=refit_res)
    return CVResult(
        grid=Cs, **scores._asdict(), best_index=best, best_value=best_value, fit=refit.as_fit(fit_type),
        fold_ids=fold_ids, n_iter=n_iter, converged=converged,
    )


class _FoldScores(NamedTuple):
    """The held-out scores of a :class:`CVResult`, each ``(L, G, F)``."""

    accuracy: Array
    log_loss: Array
    roc_auc: Array
    mse: Array


# Jitted, and run through _aot, for their compile count, not their speed: op by op, each of their small
# array operations is compiled on first use (~0.06 s apiece, ~2 s per first CV call in all).
@functools.partial(jax.jit, static_argnames=("softmax", "scoring"))
def _scored_folds(
    fit: Any, X3: Array, y: Array, held_out: HeldOut, *, softmax: bool, scoring: str
) -> tuple[_FoldScores, Array, tuple[Array, Array]]:
    """The held-out scores of fold fits ``(L, F, G, ...)`` (``mse`` NaN), each layer's best grid index
    ``(L,)`` by ``scoring``, and where the refit starts: the folds' mean solution at that index,
    ``(L, 1, [K,] D)`` and ``(L, 1, [K])`` (each fold saw most of the samples, so their mean is near the
    refit's optimum)."""
    def held_out_values(layer: tuple[Any, Array]) -> Array:  # (F, G, M[, K])
        # Each fold's fits on its own held-out rows only (1/F of the products on every row), one layer's
        # rows gathered at a time: the fold axis takes the place of decision_function's layer axis.
        fit_l, X = layer
        rows = _checks.as_compute(jnp.take(X, held_out.index, axis=0), fit_l.coef.dtype)
        return decision_function(fit_l, rows)

    z = jax.lax.map(held_out_values, (fit, X3))  # (L, F, G, M[, K])
    acc, ll, auc = (jnp.moveaxis(a, 0, -1) for a in _metrics.held_out_scores(
        jnp.moveaxis(z, 1, 0), y[held_out.index], held_out.weight, softmax=softmax))  # (L, G, F) each
    best = _best({"accuracy": acc, "log_loss": ll, "roc_auc": auc}[scoring], scoring)
    layers = jnp.arange(best.shape[0])
    init = tuple(jnp.mean(a[layers, :, best], axis=1, keepdims=True) for a in (fit.coef, fit.intercept))
    return _FoldScores(acc, ll, auc, jnp.full_like(acc, jnp.nan)), best, init


@jax.jit
def _with_refit(folds_res: SolveResult, refit_res: SolveResult) -> tuple[SolveResult, Array, Array]:
    """The refit's fields ``(L, ...)``, and ``n_iter`` / ``converged`` ``(L, G, F + 1)``: the folds' then
    the refit's (repeated over ``G``)."""
    n_layers, _, G = folds_res.n_iter.shape

    def merged(fold_field: Array, refit_field: Array) -> Array:  # (L, F, G) + (L, 1, 1) -> (L, G, F+1)
        refit_column = jnp.broadcast_to(refit_field[:, 0, :], (n_layers, G))[..., None]
        return jnp.concatenate([jnp.swapaxes(fold_field, 1, 2), refit_column], axis=-1)

    refit = jax.tree.map(lambda a: a[:, 0, 0], refit_res)
    return refit, merged(folds_res.n_iter, refit_res.n_iter), merged(folds_res.converged, refit_res.converged)


def cross_validate_ridge(
    X: Any,
    y: Any,
    alpha: Any = (0.1, 1.0, 10.0, 100.0),
    *,
    scoring: str = "mse",
    sample_weight: Any = None,
    fit_intercept: bool = True,
    layer_batch_size: int | None = None,
) -> CVResult:
    """Leave-one-out cross-validated ridge on every layer over an ``alpha`` grid, with refit.

    What ``RidgeCV(alphas)`` / ``RidgeClassifierCV(alphas)`` (``cv=None``) do per layer: exact LOO from
    one eigendecomposition per layer (:func:`ridge_loo`), the best ``alpha`` by mean squared LOO
    error (``scoring="mse"``, scikit-learn's default; averaged over the one-vs-all targets of more than
    two classes) or, for class labels, ``"accuracy"`` (the largest score's class for more than two) or,
    for two classes, ``"roc_auc"``.

    Returns:
      A :class:`CVResult` with ``F = 1`` (the LOO fold) and ``fit`` a :class:`RidgeFit` ``(L, D)`` (a
      :class:`MulticlassRidgeFit` ``(L, K, D)`` for more than two classes).
    """
    alphas, _ = _checks.check_grid(alpha, "alpha")
    y_arr = np.asarray(y)
    classify = y_arr.dtype.kind in "iub"
    multiclass = classify and np.unique(y_arr).size > 2
    allowed = ("mse", "accuracy") if multiclass else ("mse", "accuracy", "roc_auc") if classify else ("mse",)
    if scoring not in allowed:
        raise ValueError(f"scoring={scoring!r} is not available for these targets; use " + " or ".join(
            repr(name) for name in allowed) + ".")
    # Over the bucket's rows: padded rows have zero weight, so every score below ignores them.
    loo, sw, n = validated_solve(X, y, alphas, sample_weight, fit_intercept, layer_batch_size, loo=True,
                                 keep_layer_axis=True)
    pred, target = loo.predictions, loo.targets  # (L, G, [K,] N), ([K,] N)
    mse = jnp.sum(sw * (pred - target) ** 2, axis=-1) / jnp.sum(sw)
    mse = (jnp.mean(mse, axis=-1) if multiclass else mse)[..., None]  # (L, G, 1)
    nan = jnp.full_like(mse, jnp.nan)
    if multiclass:  # the class of the largest one-vs-all score
        acc = _metrics.multiclass_accuracy(jnp.argmax(target, axis=0), jnp.swapaxes(pred, -1, -2), sw)[..., None]
        auc = nan
    elif classify:
        positive = target > 0
        acc = _metrics.binary_accuracy(positive, pred, sw)[..., None]
        auc = _metrics.roc_auc(positive, pred, sw)[..., None]
    else:
        acc = auc = nan
    best = _best({"mse": mse, "accuracy": acc, "roc_auc": auc}[scoring], scoring)
    layers = jnp.arange(mse.shape[0])
    zeros = jnp.zeros(mse.shape[:2] + (2,), jnp.int32)
    return CVResult(
        grid=alphas, accuracy=acc, log_loss=nan, roc_auc=auc, mse=mse, best_index=best,
        best_value=alphas[np.asarray(best)] if _checks.is_concrete(best, alphas) else jnp.asarray(alphas)[best],
        fit=type(loo.fit)(*(a[layers, best] for a in loo.fit)),
        fold_ids=np.full(n, -1, np.int32), n_iter=zeros, converged=zeros == 0,
    )


def cross_validate_group_lasso(
    X: Any,
    y: Any,
    alpha: Any,
    *,
    folds: Any = 5,
    groups: Any = None,
    random_state: int | None = 0,
    scoring: str = "accuracy",
    sample_weight: Any = None,
    fit_intercept: bool = True,
    tol: float = 1e-3,
    max_iter: int = 20000,
) -> CVResult:
    """K-fold cross-validated logistic group lasso over layers along an ``alpha`` path, with refit.

    Each fold (and the all-samples refit) is solved as a warm-started path over ``alpha``
    (:func:`fit_group_lasso`); folds run one after another so each keeps its working set.

    Args:
      X: ``(L, N, D)``, one group per layer.
      y: ``(N,)`` two class labels.
      alpha: 1-D grid of penalties.
      folds, groups, random_state: as in :func:`cross_validate_logistic` (``groups`` keeps paired
        prompts in one fold; the layer groups are fixed by ``X``).
      scoring: ``"accuracy"``, ``"log_loss"`` or ``"roc_auc"``: how the best ``alpha`` is chosen.
      sample_weight, fit_intercept, tol, max_iter: as in :func:`fit_group_lasso`.

    Returns:
      A :class:`CVResult` with one "layer" row (the multi-layer model): scores ``(1, A, F)``,
      ``best_index`` ``(1,)``, and ``fit`` the :class:`GroupLassoFit` on all samples at the best
      ``alpha`` (``coef`` ``(L, D)``).
    """
    if scoring not in ("accuracy", "log_loss", "roc_auc"):
        raise ValueError(f"scoring={scoring!r} is not available here; use 'accuracy', 'log_loss' or 'roc_auc'.")
    Xg, _, n = grouped_activations(X, None)
    y01 = targets_for_loss(y, n, "logistic")
    sw = _checks.check_sample_weight(sample_weight, n)
    alphas, _ = _checks.check_grid(alpha, "alpha")
    fold_ids = _fold_ids(y01.astype(np.int32), folds, groups, random_state)
    n_folds = int(fold_ids.max()) + 1
    weights = np.concatenate([training_weights(fold_ids, sw), sw[None]], axis=0)  # (F + 1, N): folds, then the refit
    res = group_lasso_weight_sets(
        Xg, jnp.asarray(y01), jnp.asarray(weights), jnp.asarray(alphas), loss="logistic",
        fit_intercept=bool(fit_intercept), tol=_checks.check_tol(tol),
        max_iter=_checks.check_positive_int(max_iter, "max_iter"), check_every=10,
    )  # fields (F + 1, A, ...)
    z = einsum("gnd,fagd->fan", Xg.astype(res.coef.dtype), res.coef[:n_folds]) + res.intercept[:n_folds, :, None]
    scores = _metrics.fold_scores(z, y01, held_out_rows(fold_ids, sw))
    acc, ll, auc = (a.T[None] for a in scores)  # (1, A, F)
    best = np.asarray(_best({"accuracy": acc, "log_loss": ll, "roc_auc": auc}[scoring], scoring))
    refit = GroupLassoFit(*(a[n_folds, best[0]] for a in res))

    def per_problem(a: Array) -> Array:  # (F + 1, A) -> (1, A, F + 1)
        return jnp.swapaxes(a, 0, 1)[None]

    return CVResult(
        grid=alphas, accuracy=acc, log_loss=ll, roc_auc=auc, mse=jnp.full_like(acc, jnp.nan),
        best_index=jnp.asarray(best), best_value=alphas[best], fit=refit, fold_ids=fold_ids,
        n_iter=per_problem(res.n_iter), converged=per_problem(res.converged),
    )
