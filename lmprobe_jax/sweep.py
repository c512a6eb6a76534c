"""A layer sweep straight from activations: per-layer cross-validated scores and a probe per layer.

``sweep_activations(X, y)`` takes ``(L, N, D)`` activations (or an :class:`lmprobe_jax_store.ActivationStore`)
and returns, for every layer, held-out accuracy / AUROC / log-loss on each fold, the chosen
regularisation value, and a probe refitted on all rows -- every layer in one batched solve. Nothing
here needs a model, so benchmark scripts and research code can sweep cached activations directly.

Each layer is standardised first (mean 0, variance 1 per feature, statistics over all N rows: a
label-free step, as lmprobe's per-layer scaler), then probed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone

from lmprobe_jax_store import ActivationStore

from . import functional as F
from .classifiers import BATCHED, build_classifier
from .sklearn import LogisticCVProbe

#: Classifier names a sweep knows (batched estimators; see :mod:`lmprobe_jax.classifiers`).
SWEEP_CLASSIFIERS = BATCHED


def standardize(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer, per-feature standardisation of ``(L, N, D)``: ``(X - mean) / scale`` with mean and
    scale ``(L, 1, D)`` (a constant feature keeps scale 1, as StandardScaler)."""
    X = np.asarray(X, np.float32)
    mean = X.mean(axis=1, keepdims=True)
    scale = X.std(axis=1, keepdims=True)
    scale[scale < 10 * np.finfo(np.float32).eps * np.maximum(np.abs(mean), 1)] = 1.0
    return (X - mean) / scale, mean, scale


@dataclass
class SweepResult:
    """Per-layer cross-validated scores of a sweep. ``L`` layers, ``F`` folds.

    Attributes:
      layers: the layer index of each row.
      classifier: the classifier name.
      accuracy, roc_auc, log_loss: ``(L, F)`` held-out scores at each layer's chosen value.
      best_value: ``(L,)`` the chosen ``C`` (logistic) or None.
      estimator: the batched estimator refitted on all rows (``select_layer(i)`` gives one layer's).
      mean, scale: ``(L, 1, D)`` the standardisation applied before the estimator.
      fold_ids: ``(N,)`` the fold of each row.
    """

    layers: list[int]
    classifier: str
    accuracy: np.ndarray
    roc_auc: np.ndarray
    log_loss: np.ndarray
    best_value: np.ndarray | None
    estimator: Any
    mean: np.ndarray
    scale: np.ndarray
    fold_ids: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def best_layer(self) -> int:
        """The layer with the best mean held-out accuracy (ties: better AUROC, then the earlier layer)."""
        acc = self.accuracy.mean(axis=1)
        auc = np.nan_to_num(self.roc_auc.mean(axis=1), nan=-1.0)
        order = np.lexsort((np.arange(len(acc)), -auc, -acc))
        return self.layers[int(order[0])]

    def table(self) -> list[dict]:
        """One dict per layer: mean and standard deviation over folds of each score, and the value."""
        rows = []
        for i, layer in enumerate(self.layers):
            row = {"layer": layer if layer == "embeddings" else int(layer)}
            for name in ("accuracy", "roc_auc", "log_loss"):
                scores = getattr(self, name)[i]
                row[name] = float(np.mean(scores))
                row[f"{name}_std"] = float(np.std(scores))
            if self.best_value is not None:
                row["C"] = float(self.best_value[i])
            rows.append(row)
        return rows


def _as_layers(X: Any, y: Any, layers: Any, pooling: str | None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    if isinstance(X, ActivationStore):
        store = X
        names = [layer for layer in store.layers if layer != "embeddings"] if layers is None else list(layers)
        y = store.labels if y is None else y
        if y is None:
            raise ValueError("The store holds no labels: pass y.")
        names = [n if n == "embeddings" else int(n) for n in names]
        return store.stack(names, pooling, dtype=np.float32), np.asarray(y), names
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X must be (L, N, D) activations or an ActivationStore; got shape {X.shape}.")
    names = list(range(X.shape[0])) if layers is None else [int(n) for n in layers]
    if len(names) != X.shape[0]:
        raise ValueError(f"layers names {len(names)} layers but X holds {X.shape[0]}.")
    if y is None:
        raise ValueError("y is required with array activations.")
    return X, np.asarray(y), names


def sweep_activations(
    X: Any,
    y: Any = None,
    *,
    classifier: str = "logistic_regression",
    classifier_kwargs: dict | None = None,
    C: Any = None,
    folds: int = 5,
    groups: Any = None,
    random_state: int | None = 0,
    layers: Any = None,
    pooling: str | None = None,
    sample_weight: Any = None,
) -> SweepResult:
    """Cross-validate a probe on every layer and refit it, all layers batched.

    Args:
      X: ``(L, N, D)`` activations or an :class:`lmprobe_jax_store.ActivationStore` (then ``layers`` and
        ``pooling`` pick what to stack, and ``y`` defaults to the store's labels).
      y: ``(N,)`` class labels (two classes for mass-mean).
      classifier: one of :data:`SWEEP_CLASSIFIERS`. Logistic ones run
        :func:`lmprobe_jax.functional.cross_validate_logistic` (every fold and ``C`` of every layer in one
        solve); the others fit each fold with the held-out rows weighted 0.
      C: the ``C`` grid for ``"logistic_regression_cv"`` (default ``logspace(-4, 4, 10)``) or the single
        ``C`` for ``"logistic_regression"`` (default ``classifier_kwargs["C"]`` or 1).
      folds, groups, random_state: stratified folds; rows sharing a group stay in one fold.
      layers: names of the layers of ``X`` (default ``0..L-1``).

    Returns:
      A :class:`SweepResult`.
    """
    if classifier not in SWEEP_CLASSIFIERS:
        raise ValueError(f"A sweep runs one of {SWEEP_CLASSIFIERS}; got {classifier!r}.")
    X, y, names = _as_layers(X, y, layers, pooling)
    Xs, mean, scale = standardize(X)
    kwargs = dict(classifier_kwargs or {})
    if classifier.startswith("logistic"):
        if classifier == "logistic_regression":
            grid = [kwargs.pop("C", 1.0) if C is None else C]
        else:
            grid = kwargs.pop("Cs", 10) if C is None else C
        options = {k: v for k, v in kwargs.items() if k in ("fit_intercept", "tol", "max_iter")}
        est = LogisticCVProbe(Cs=grid, cv=folds, random_state=random_state, **options)
        est.fit(Xs, y, sample_weight=sample_weight, groups=groups)
        best = np.argmax(est.scores_.mean(-1), axis=-1)
        pick = np.arange(len(names))
        acc, auc, ll = (getattr(est, f"cv_{m}_")[pick, best] for m in ("accuracy", "roc_auc", "log_loss"))
        fold_ids = F.stratified_folds(y, folds, groups=groups, random_state=random_state)
        return SweepResult(names, classifier, acc, auc, ll, est.C_, est, mean, scale, fold_ids)

    est = build_classifier(classifier, classifier_kwargs=kwargs)
    classes = np.unique(y)
    fold_ids = F.stratified_folds(y, folds, groups=groups, random_state=random_state)
    base_w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, float)
    multiclass = classes.size > 2  # ridge's one-vs-all: scores (L, N, K), AUROC NaN
    labels = np.searchsorted(classes, y)  # 0..K-1; for two classes, 1 is the positive (larger) label
    z = []
    for f in range(folds):
        train = ((fold_ids != f) * base_w).astype(np.float32)
        z.append(np.asarray(clone(est).fit(Xs, y, sample_weight=train).decision_function(Xs), np.float32))  # (L, N[, K])
    # These probes' proba is sigmoid(z) (softmax(z) for more than two classes), so the log-loss of the
    # decision values is theirs.
    acc, ll, auc = (np.asarray(a).T for a in F.fold_scores(
        np.stack(z), labels.astype(np.int32), F.held_out_rows(fold_ids, base_w), softmax=multiclass))
    est = clone(est).fit(Xs, y, sample_weight=sample_weight)
    return SweepResult(names, classifier, acc, auc, ll, None, est, mean, scale, fold_ids)
