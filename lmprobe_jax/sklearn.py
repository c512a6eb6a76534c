"""scikit-learn estimators over :mod:`lmprobe_jax.functional`: drop-in probes that also fit every layer.

Each estimator follows the scikit-learn contract on 2-D input ``(n_samples, n_features)`` — parameters
stored by ``__init__``, validation in ``fit``, fitted attributes ending in ``_``, numpy in and numpy out —
and passes ``sklearn.utils.estimator_checks.check_estimator``. It holds no maths: every fit is one call
to a function of :mod:`lmprobe_jax.functional`, whose docstring gives the objective.

Beyond the contract, a 3-D ``X`` of shape ``(L, N, D)`` (one block of activations per layer) fits one
probe per layer in a single batched solve; fitted attributes then gain a leading ``L`` axis and
``predict`` / ``decision_function`` / ``predict_proba`` / ``score`` take and return per-layer results
(``(L, N)``, ``(L, N, K)``, ``(L,)``). scikit-learn's tools (Pipeline, GridSearchCV) only know 2-D input.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.exceptions import NotFittedError as _SklearnNotFitted
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as err:  # a dependency of lmprobe-jax, but keep the message clear if it is missing
    raise ImportError("lmprobe_jax.sklearn needs scikit-learn >= 1.6: pip install scikit-learn") from err

from . import functional as F
from .exceptions import NotFittedError

__all__ = [
    "GroupLassoProbe",
    "LogisticCVProbe",
    "LogisticProbe",
    "MassMeanProbe",
    "RidgeProbe",
    "RidgeRegressionProbe",
]


def _is_layers(X: Any) -> bool:
    ndim = X.ndim if isinstance(X, (np.ndarray, jax.Array)) else np.asarray(X).ndim
    return ndim == 3


def _fit_data(
    est: BaseEstimator, X: Any, y: Any, sample_weight: Any, *, classifier: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
    """Validate ``(X, y, sample_weight)`` for fit; returns them and ``layered``. 3-D ``X`` skips
    scikit-learn's 2-D checks (the functional layer validates it)."""
    if _is_layers(X):
        X3, _ = F._checks.layered(X)
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != X3.shape[1]:
            raise ValueError(f"y has shape {y.shape}; expected ({X3.shape[1]},), one entry per row of each layer.")
        est.n_features_in_ = X3.shape[2]
        est.n_layers_ = X3.shape[0]
        # X as given (numpy or JAX): the solver makes the one device copy, padded to its compile bucket, and
        # checks the values there (a JAX copy made here would be padded again on the device).
        return X3, y, sample_weight, True
    X, y = validate_data(est, X, y, dtype=[np.float64, np.float32], y_numeric=not classifier)
    if sample_weight is not None:
        sample_weight = _check_sample_weight(sample_weight, X)
    if hasattr(est, "n_layers_"):
        del est.n_layers_
    return X, y, sample_weight, False


def _solve(X: np.ndarray, solver: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``solver(X, *args, **kwargs)`` with its arrays as numpy: float64 ``X`` is solved in float64 (JAX's
    x64 turned on for this call only, so the process's setting is left alone), anything else in float32."""
    with jax.enable_x64(X.dtype == np.float64):
        return jax.tree.map(np.asarray, solver(X, *args, **kwargs))


def _check_fitted(est: BaseEstimator) -> None:
    """scikit-learn's fitted check, raising our NotFittedError (also a RuntimeError, what lmprobe's
    estimators raise and its users catch)."""
    try:
        check_is_fitted(est)
    except _SklearnNotFitted:
        raise NotFittedError(f"This {type(est).__name__} has not been fitted yet: call fit() first.") from None


def _predict_data(est: BaseEstimator, X: Any) -> np.ndarray:
    _check_fitted(est)
    layered = hasattr(est, "n_layers_")
    if _is_layers(X):
        if not layered:
            raise ValueError("this probe was fitted on 2-D X; predict on (N, D) input, or refit on (L, N, D).")
        X3, _ = F._checks.host_activations(X)
        if X3.shape[0] != est.n_layers_ or X3.shape[2] != est.n_features_in_:
            raise ValueError(
                f"X has shape {tuple(X3.shape)}; this probe was fitted on {est.n_layers_} layers of "
                f"{est.n_features_in_} features."
            )
        return X3
    if layered:
        raise ValueError("this probe was fitted on (L, N, D) activations; predict on the same layout.")
    return validate_data(est, X, reset=False, dtype=[np.float64, np.float32])


def _warn_unconverged(est: BaseEstimator, converged: np.ndarray, n_iter: np.ndarray) -> None:
    """One ConvergenceWarning per fit, naming the layers that did not converge."""
    bad = np.flatnonzero(~np.asarray(converged, bool).reshape(-1))
    if bad.size:
        where = f" (layers {bad.tolist()})" if hasattr(est, "n_layers_") else ""
        warnings.warn(
            f"{type(est).__name__} failed to converge{where} after {int(np.max(n_iter))} iteration(s). Increase "
            f"max_iter (max_iter={est.max_iter}) or loosen tol (tol={est.tol}), or standardise the features.",
            ConvergenceWarning,
            stacklevel=3,
        )


# Fitted attributes of a 3-D fit that describe every layer alike (the classes, the C grid), even when
# their length happens to equal the number of layers.
_SHARED_FITTED = ("classes_", "Cs_")


def _per_layer(name: str, value: Any, n_layers: int) -> bool:
    """Whether fitted attribute ``name`` of a 3-D fit has one entry per layer (a leading ``L`` axis)."""
    return isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n_layers and (
        name not in _SHARED_FITTED)


def _fitted(est: BaseEstimator) -> dict:
    return {name: value for name, value in vars(est).items()
            if name.endswith("_") and not name.startswith("_") and name != "n_layers_"}


def concatenate_layer_fits(estimators: list) -> BaseEstimator:
    """One 3-D fit of all the layers of ``estimators`` (3-D fits of the same estimator and data on
    consecutive chunks of layers): per-layer fitted arrays are concatenated, the rest taken from the first.
    The inverse of slicing with :meth:`_PerLayer.select_layer`; how a streamed sweep joins its chunks."""
    first = estimators[0]
    joined = clone(first)
    for name, value in _fitted(first).items():
        if _per_layer(name, value, first.n_layers_):
            value = np.concatenate([getattr(est, name) for est in estimators])
        setattr(joined, name, value)
    joined.n_layers_ = sum(est.n_layers_ for est in estimators)
    return joined


class _PerLayer:
    """``select_layer(i)``: the fitted 2-D probe of layer ``i`` out of a 3-D ``(L, N, D)`` fit."""

    def select_layer(self, layer: int):
        """A fitted estimator for layer ``layer`` alone (takes ``(N, D)`` input), sliced from a 3-D fit:
        every fitted array with a leading ``L`` axis is indexed, everything else is copied."""
        _check_fitted(self)
        if not hasattr(self, "n_layers_"):
            raise ValueError("select_layer needs a probe fitted on (L, N, D) activations.")
        n_layers = self.n_layers_
        if not -n_layers <= int(layer) < n_layers:
            raise ValueError(f"layer {layer} is out of range for a fit on {n_layers} layers.")
        single = clone(self)
        for name, value in _fitted(self).items():
            setattr(single, name, value[int(layer)] if _per_layer(name, value, n_layers) else value)
        return single


class _LinearClassifier(_PerLayer, ClassifierMixin, BaseEstimator):
    """Shared prediction for classifiers stored as ``coef_`` ``([L,] K', D)``, ``intercept_`` ``([L,] K')``."""

    def _set_classes(self, y: np.ndarray) -> None:
        """Check classification targets and set ``classes_`` (two or more)."""
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if self.classes_.size < 2:
            raise ValueError(f"y has one class only ({self.classes_.tolist()}); a classifier needs two or more.")

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores ``(N,)`` for two classes (positive: ``classes_[1]``) or ``(N, K)``; per layer for 3-D X."""
        X = _predict_data(self, X)
        if X.ndim == 3:
            z = np.einsum("lkd,lnd->lnk", self.coef_, X) + self.intercept_[:, None, :]
        else:
            z = X @ self.coef_.T + self.intercept_
        return z[..., 0] if z.shape[-1] == 1 else z

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, K)`` (per layer for 3-D X)."""
        z = self.decision_function(X)
        if z.ndim == (3 if hasattr(self, "n_layers_") else 2):
            z = z - z.max(axis=-1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=-1, keepdims=True)
        p = 1.0 / (1.0 + np.exp(-z))
        return np.stack([1 - p, p], axis=-1)

    def predict(self, X: Any) -> np.ndarray:
        """Class labels ``(N,)`` (``(L, N)`` for 3-D X)."""
        z = self.decision_function(X)
        multiclass = z.ndim == (3 if hasattr(self, "n_layers_") else 2)
        idx = np.argmax(z, axis=-1) if multiclass else (z > 0).astype(int)
        return self.classes_[idx]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """Mean accuracy; a ``(L,)`` array of per-layer accuracies for 3-D X."""
        if not _is_layers(X):
            return super().score(X, y, sample_weight=sample_weight)
        pred = self.predict(X)
        w = np.ones(pred.shape[1]) if sample_weight is None else np.asarray(sample_weight, float)
        return (w * (pred == np.asarray(y)[None])).sum(axis=1) / w.sum()


class _BinaryLinearClassifier(_LinearClassifier):
    """A linear classifier whose solver knows two classes only (the larger label is positive)."""

    def _binary_targets(self, y: np.ndarray) -> np.ndarray:
        """Set ``classes_`` and return ``y`` as ``0`` / ``1`` (1 for ``classes_[1]``)."""
        check_classification_targets(y)
        classes = np.unique(y)
        if classes.size > 2:
            raise ValueError(
                f"Only binary classification is supported. {type(self).__name__} got {classes.size} classes; use "
                f"LogisticProbe for more than two."
            )
        if classes.size < 2:
            raise ValueError(
                f"Both classes must have training rows: y has one class only ({classes.tolist()}). Pass rows "
                "of two classes."
            )
        self.classes_ = classes
        return (y == classes[1]).astype(np.int32)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class LogisticProbe(_LinearClassifier):
    """L2 logistic regression, ``sklearn.linear_model.LogisticRegression``'s objective and optimum.

    Two classes fit :func:`lmprobe_jax.functional.fit_logistic`; more fit the softmax model
    (:func:`~lmprobe_jax.functional.fit_multinomial`), as scikit-learn does.

    Parameters:
      C: inverse regularisation strength, > 0.
      fit_intercept: fit an unpenalised intercept.
      tol: stopping tolerance (scikit-learn's scaled-gradient meaning, plus a relative objective-gap
        bound; see :func:`~lmprobe_jax.functional.fit_logistic`).
      max_iter: most Newton iterations.

    Attributes:
      coef_: ``(1, D)`` or ``(K, D)``; ``(L, 1 or K, D)`` after a 3-D fit.
      intercept_: ``(1,)`` or ``(K,)``; ``(L, 1 or K)``.
      classes_, n_features_in_, n_iter_ (``([L])``), converged_ (``([L])``), n_layers_ (3-D fits).
    """

    def __init__(self, C: float = 1.0, *, fit_intercept: bool = True, tol: float = 1e-7, max_iter: int = 100):
        self.C = C
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LogisticProbe:
        X, y, sample_weight, layered = _fit_data(self, X, y, sample_weight, classifier=True)
        self._set_classes(y)
        opts = dict(sample_weight=sample_weight, fit_intercept=self.fit_intercept, tol=self.tol, max_iter=self.max_iter)
        if self.classes_.size == 2:
            fit = _solve(X, F.fit_logistic, y, self.C, **opts)
            coef, intercept = np.asarray(fit.coef)[..., None, :], np.asarray(fit.intercept)[..., None]
        else:
            fit = _solve(X, F.fit_multinomial, y, self.C, **opts)
            coef, intercept = np.asarray(fit.coef), np.asarray(fit.intercept)
        self.coef_, self.intercept_ = coef.astype(X.dtype), intercept.astype(X.dtype)
        self.n_iter_, self.converged_ = np.asarray(fit.n_iter), np.asarray(fit.converged)
        _warn_unconverged(self, self.converged_, self.n_iter_)
        return self


class RidgeProbe(_LinearClassifier):
    """Ridge classifier on ``-1/+1`` targets, ``sklearn.linear_model.RidgeClassifier``'s solution: one
    target for two classes, one per class (one-vs-all) for more.

    Parameters:
      alpha: regularisation strength, > 0.
      fit_intercept: fit an unpenalised intercept.

    Attributes:
      coef_: ``(1, D)`` or ``(K, D)`` (``(L, 1 or K, D)`` after a 3-D fit); intercept_, classes_,
        n_features_in_.
    """

    def __init__(self, alpha: float = 1.0, *, fit_intercept: bool = True):
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> RidgeProbe:
        X, y, sample_weight, layered = _fit_data(self, X, y, sample_weight, classifier=True)
        self._set_classes(y)
        codes = np.searchsorted(self.classes_, y).astype(np.int32)  # 0..K-1 in the order of classes_
        fit = _solve(X, F.fit_ridge, codes, self.alpha, sample_weight=sample_weight, fit_intercept=self.fit_intercept)
        coef, intercept = np.asarray(fit.coef, X.dtype), np.asarray(fit.intercept, X.dtype)
        if self.classes_.size == 2:
            coef, intercept = coef[..., None, :], intercept[..., None]
        self.coef_, self.intercept_ = coef, intercept
        return self


class MassMeanProbe(_BinaryLinearClassifier):
    """Difference-of-means probe (with ``iid=True``, the LDA direction), calibrated by a 1-D logistic fit.

    See :func:`lmprobe_jax.functional.fit_mass_mean`. Binary only.

    Attributes:
      coef_: ``(1, D)``; direction_: ``(D,)`` the raw direction; ``L``-leading after a 3-D fit.
    """

    def __init__(self, *, iid: bool = False, shrinkage: float = 1e-3, calibration_C: float = 1.0):
        self.iid = iid
        self.shrinkage = shrinkage
        self.calibration_C = calibration_C

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MassMeanProbe:
        X, y, sample_weight, layered = _fit_data(self, X, y, sample_weight, classifier=True)
        fit = _solve(X, F.fit_mass_mean, self._binary_targets(y), iid=self.iid, sample_weight=sample_weight,
                              shrinkage=self.shrinkage, calibration_C=self.calibration_C)
        self.coef_ = np.asarray(fit.coef, X.dtype)[..., None, :]
        self.intercept_ = np.asarray(fit.intercept, X.dtype)[..., None]
        self.direction_ = np.asarray(fit.direction, X.dtype)
        return self


class GroupLassoProbe(_BinaryLinearClassifier):
    """Logistic group lasso: one probe on all layers, whole layers switched off (lmprobe's "auto").

    With 3-D ``X`` ``(L, N, D)`` the layers are the groups and, unlike the other probes, one model spans
    all layers: ``coef_`` is ``(1, L * D)`` (layer-major) and ``predict`` takes 3-D ``X``. With 2-D ``X``
    the groups are ``groups`` (default: each feature alone, the plain L1 lasso). Binary only. See
    :func:`lmprobe_jax.functional.fit_group_lasso` for the objective.

    Attributes:
      coef_, intercept_, classes_, n_iter_, converged_, kkt_violation_, layers_kept_ (3-D fits: bool
      ``(L,)``), n_features_in_.
    """

    def __init__(self, alpha: float = 0.01, *, groups: Any = None, fit_intercept: bool = True, tol: float = 1e-3,
                 max_iter: int = 20000):
        self.alpha = alpha
        self.groups = groups
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> GroupLassoProbe:
        X, y, sample_weight, layered = _fit_data(self, X, y, sample_weight, classifier=True)
        y01 = self._binary_targets(y)
        groups = None if layered else (np.arange(X.shape[1]) if self.groups is None else self.groups)
        fit = _solve(X, F.fit_group_lasso, y01, self.alpha, groups=groups,
                                sample_weight=sample_weight, fit_intercept=self.fit_intercept, tol=self.tol,
                                max_iter=self.max_iter)
        coef = np.asarray(fit.coef, X.dtype)
        self.layers_kept_ = np.any(coef != 0, axis=-1) if layered else None
        self.coef_ = coef.reshape(1, -1)
        self.intercept_ = np.asarray(fit.intercept, X.dtype).reshape(1)
        self.n_iter_, self.converged_ = int(fit.n_iter), bool(fit.converged)
        self.kkt_violation_ = float(fit.kkt_violation)
        _warn_unconverged(self, np.asarray([self.converged_]), np.asarray([self.n_iter_]))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores ``(N,)``: one model over all layers, so a 3-D ``X`` gives one score per row."""
        _check_fitted(self)
        if self.layers_kept_ is not None:
            X3, _ = F._checks.host_activations(X)
            if X3.ndim != 3 or X3.shape[0] * X3.shape[2] != self.coef_.shape[1]:
                raise ValueError(f"X must be (L, N, D) with L * D = {self.coef_.shape[1]}, as in fit.")
            flat = np.transpose(X3, (1, 0, 2)).reshape(X3.shape[1], -1)
            return flat @ self.coef_[0] + self.intercept_[0]
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_[0] + self.intercept_[0]

    def predict(self, X: Any) -> np.ndarray:
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(int)]

    def predict_proba(self, X: Any) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1 - p, p], axis=-1)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        w = None if sample_weight is None else np.asarray(sample_weight, float)
        return float(np.average(self.predict(X) == np.asarray(y), weights=w))


class LogisticCVProbe(_LinearClassifier):
    """Cross-validated L2 logistic regression, what ``sklearn.linear_model.LogisticRegressionCV`` does
    (best ``C`` of a grid by held-out score, then a refit on all rows), as one batched solve: every
    fold and grid value of every layer together (:func:`lmprobe_jax.functional.cross_validate_logistic`).

    Parameters:
      Cs: an int (that many values on ``logspace(-4, 4)``, scikit-learn's default grid) or a 1-D grid.
      cv: number of stratified folds (shuffled with ``random_state``), or a scikit-learn splitter / list
        of ``(train, test)`` pairs whose test sets partition the rows (each trains on the rest).
      scoring: ``"accuracy"``, ``"log_loss"`` or ``"roc_auc"`` (binary): how ``C`` is chosen.
      random_state: seed of the fold assignment.
      fit_intercept, tol, max_iter: as :class:`LogisticProbe`.

    Attributes:
      C_: ``(1,)`` the chosen ``C`` (``(L,)`` after a 3-D fit); Cs_: the grid; scores_: held-out
      ``scoring`` per grid value and fold ``([L,] G, F)``; cv_accuracy_, cv_roc_auc_ (NaN for more
      than two classes), cv_log_loss_: every held-out metric, same shape; coef_, intercept_, classes_, n_iter_,
      converged_ (of the refit), n_features_in_, n_layers_ (3-D fits).

    ``fit`` also takes ``groups`` ``(N,)``: rows sharing a group never straddle folds.
    """

    def __init__(self, Cs: Any = 10, *, cv: int = 5, scoring: str = "accuracy", random_state: int | None = 0,
                 fit_intercept: bool = True, tol: float = 1e-7, max_iter: int = 100):
        self.Cs = Cs
        self.cv = cv
        self.scoring = scoring
        self.random_state = random_state
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any, sample_weight: Any = None, groups: Any = None) -> LogisticCVProbe:
        X, y, sample_weight, layered = _fit_data(self, X, y, sample_weight, classifier=True)
        self._set_classes(y)
        grid = np.logspace(-4, 4, self.Cs) if isinstance(self.Cs, (int, np.integer)) else self.Cs
        res = _solve(
            X, F.cross_validate_logistic, y, grid, folds=_folds(self.cv, X, y, groups), groups=groups, random_state=self.random_state, scoring=self.scoring,
            sample_weight=sample_weight, fit_intercept=self.fit_intercept, tol=self.tol, max_iter=self.max_iter,
        )
        coef, intercept = np.asarray(res.fit.coef), np.asarray(res.fit.intercept)
        if self.classes_.size == 2:
            coef, intercept = coef[..., None, :], intercept[..., None]
        scores = np.asarray({"accuracy": res.accuracy, "log_loss": res.log_loss, "roc_auc": res.roc_auc}[
            self.scoring])
        self.Cs_ = np.asarray(res.grid)
        self.C_ = np.asarray(res.best_value) if layered else np.asarray(res.best_value)[:1]
        self.scores_ = scores if layered else scores[0]
        for name, value in (("accuracy", res.accuracy), ("roc_auc", res.roc_auc), ("log_loss", res.log_loss)):
            setattr(self, f"cv_{name}_", np.asarray(value) if layered else np.asarray(value)[0])
        if not layered:
            coef, intercept = coef[0], intercept[0]
        self.coef_, self.intercept_ = coef.astype(X.dtype), intercept.astype(X.dtype)
        n_iter, converged = np.asarray(res.n_iter)[:, 0, -1], np.asarray(res.converged)[:, 0, -1]
        self.n_iter_, self.converged_ = (n_iter, converged) if layered else (n_iter[0], converged[0])
        _warn_unconverged(self, self.converged_, self.n_iter_)
        return self


def _folds(cv: Any, X: Any, y: np.ndarray, groups: Any) -> Any:
    """``cv`` as :func:`~lmprobe_jax.functional.cross_validate_logistic` takes it: an int stays one; a
    scikit-learn splitter (``split``) or an iterable of ``(train, test)`` index pairs becomes fold ids. The
    folds are solved as weight masks over all rows, so each split must train on exactly the rows it does
    not test, and the test sets must cover every row once (KFold, StratifiedKFold, GroupKFold,
    LeaveOneGroupOut, PredefinedSplit without -1 entries do)."""
    if isinstance(cv, (int, np.integer)) and not isinstance(cv, bool):
        return int(cv)
    n = len(y)
    splits = list(cv.split(X[0] if X.ndim == 3 else X, y, groups)) if hasattr(cv, "split") else list(cv)
    ids = np.full(n, -1, np.int64)
    for f, (train, test) in enumerate(splits):
        test = np.asarray(test).reshape(-1)
        rest = np.setdiff1d(np.arange(n), test)
        if np.any(ids[test] >= 0) or not np.array_equal(np.unique(np.asarray(train)), rest):
            raise ValueError(
                f"cv split {f} does not train on exactly the rows it leaves out of its test set, or tests a "
                f"row another split already tests; LogisticCVProbe needs a partition of the rows into test "
                f"folds (e.g. KFold, GroupKFold, LeaveOneGroupOut), or an int."
            )
        ids[test] = f
    if np.any(ids < 0):
        raise ValueError(f"cv's test sets leave {int(np.sum(ids < 0))} rows untested; every row needs one test fold.")
    return ids


class RidgeRegressionProbe(_PerLayer, RegressorMixin, BaseEstimator):
    """Ridge regression, ``sklearn.linear_model.Ridge``'s solution, for continuous targets.

    Attributes:
      coef_: ``(D,)`` (``(L, D)`` after a 3-D fit); intercept_: ``()`` (``(L,)``); n_features_in_.
    """

    def __init__(self, alpha: float = 1.0, *, fit_intercept: bool = True):
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> RidgeRegressionProbe:
        X, y, sample_weight, layered = _fit_data(self, X, y, sample_weight, classifier=False)
        fit = _solve(X, F.fit_ridge, np.asarray(y, np.float64), self.alpha, sample_weight=sample_weight,
                          fit_intercept=self.fit_intercept)
        self.coef_ = np.asarray(fit.coef, X.dtype)
        self.intercept_ = np.asarray(fit.intercept, X.dtype)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions ``(N,)`` (``(L, N)`` for 3-D X)."""
        X = _predict_data(self, X)
        if X.ndim == 3:
            return np.einsum("ld,lnd->ln", self.coef_, X) + self.intercept_[:, None]
        return X @ self.coef_ + self.intercept_

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """R^2; ``(L,)`` per layer for 3-D X."""
        if not _is_layers(X):
            return super().score(X, y, sample_weight=sample_weight)
        pred = self.predict(X)
        y = np.asarray(y, float)
        w = np.ones(y.shape[0]) if sample_weight is None else np.asarray(sample_weight, float)
        mean = np.average(y, weights=w)
        return 1 - (w * (pred - y) ** 2).sum(1) / (w * (y - mean) ** 2).sum()
