"""A layer sweep straight from activations: per-layer cross-validated scores and a probe per layer.

``sweep_activations(X, y)`` takes ``(L, N, D)`` activations (or an :class:`lmprobe_jax_store.ActivationStore`)
and returns, for every layer, held-out accuracy / AUROC / log-loss on each fold, the chosen
regularisation value, and a probe refitted on all rows -- every layer in one batched solve. Nothing
here needs a model, so benchmark scripts and research code can sweep cached activations directly.

Each layer is standardised first (mean 0, variance 1 per feature, statistics over all N rows: a
label-free step, as lmprobe's per-layer scaler), then probed.

Out of core: a store, or an array larger than ``memory_budget``, is swept a chunk of layers at a time
(every row of a layer is in its chunk, so the statistics and folds are those of the whole sweep): a
reader thread reads and standardises the next chunk in place while the current one is probed, and
the chunks' results are joined. With ``mesh``, each chunk's layers are split over the mesh's devices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone

from lmprobe_jax_store import ActivationStore

from . import functional as F
from .classifiers import BATCHED, build_classifier
from .functional import _budget, _mesh
from .functional._sources import LayerSource, layer_source, prefetched, read_chunk
from .sklearn import LogisticCVProbe, concatenate_layer_fits

#: Classifier names a sweep knows (batched estimators; see :mod:`lmprobe_jax.classifiers`).
SWEEP_CLASSIFIERS = BATCHED

#: The solver each classifier's sweep runs on a chunk: its copies of a layer size the chunks.
_SOLVERS = {"logistic_regression": F.cross_validate_logistic, "logistic_regression_cv": F.cross_validate_logistic,
            "ridge": F.fit_ridge, "mass_mean": F.fit_mass_mean, "lda": F.fit_mass_mean}


def standardize(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer, per-feature standardisation of ``(L, N, D)``: ``(X - mean) / scale`` with mean and
    scale ``(L, 1, D)`` (a constant feature keeps scale 1, as StandardScaler). One float32 copy of ``X``."""
    X = np.array(X, np.float32)
    mean, scale = standardize_in_place(X)
    return X, mean, scale


# Rows per block when summing squared deviations (bounds the temporary to a block of rows).
_MOMENT_ROWS = 1024


def standardize_in_place(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`standardize` on a writeable float32 ``X`` in place; returns ``(mean, scale)`` ``(L, 1, D)``.

    Means and variances are accumulated in float64; no temporary of ``X``'s size is made (numpy casts
    the float64 operands in buffered pieces), so a streamed chunk is standardised in its own memory.
    """
    mean = X.mean(axis=1, keepdims=True, dtype=np.float64)
    np.subtract(X, mean, out=X, casting="unsafe")
    squares = np.zeros(mean.shape, np.float64)
    for a in range(0, X.shape[1], _MOMENT_ROWS):
        block = X[:, a:a + _MOMENT_ROWS]
        squares[:, 0] += np.einsum("lnd,lnd->ld", block, block)
    scale = np.sqrt(squares / X.shape[1]).astype(np.float32)
    mean = mean.astype(np.float32)
    scale[scale < 10 * np.finfo(np.float32).eps * np.maximum(np.abs(mean), 1)] = 1.0
    np.divide(X, scale, out=X)
    return mean, scale


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


def _as_source(X: Any, y: Any, layers: Any, pooling: str | None) -> tuple[LayerSource, np.ndarray, list]:
    if isinstance(X, ActivationStore):  # its layers are read as swept
        source = layer_source(X, pooling=pooling, layers=layers)
        y = X.labels if y is None else y
        if y is None:
            raise ValueError("The store holds no labels: pass y.")
        return source, np.asarray(y), list(source.layers)
    X = X if isinstance(X, np.ndarray) else np.asarray(X)  # a memory map stays one
    if X.ndim != 3:
        raise ValueError(f"X must be (L, N, D) activations or an ActivationStore; got shape {X.shape}.")
    names = list(range(X.shape[0])) if layers is None else [int(n) for n in layers]
    if len(names) != X.shape[0]:
        raise ValueError(f"layers names {len(names)} layers but X holds {X.shape[0]}.")
    if y is None:
        raise ValueError("y is required with array activations.")
    return layer_source(X), np.asarray(y), names


def _read_standardized(source: LayerSource, layers: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layers of ``source`` read as float32 and standardised in their own buffer: ``(Xs, mean, scale)``."""
    moments: list = []
    chunk = read_chunk(source, layers, slice(None), np.float32,
                       transform=lambda a: moments.extend(standardize_in_place(a)))
    return chunk, *moments


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
    memory_budget: Any = None,
    mesh: Any = None,
) -> SweepResult:
    """Cross-validate a probe on every layer and refit it, all layers batched.

    Args:
      X: ``(L, N, D)`` activations (numpy, or a memory map) or an
        :class:`lmprobe_jax_store.ActivationStore` (then ``layers`` and ``pooling`` pick what to read, and
        ``y`` defaults to the store's labels).
      y: ``(N,)`` class labels (two classes for mass-mean).
      classifier: one of :data:`SWEEP_CLASSIFIERS`. Logistic ones run
        :func:`lmprobe_jax.functional.cross_validate_logistic` (every fold and ``C`` of every layer in one
        solve); the others fit each fold with the held-out rows weighted 0.
      C: the ``C`` grid for ``"logistic_regression_cv"`` (default ``logspace(-4, 4, 10)``) or the single
        ``C`` for ``"logistic_regression"`` (default ``classifier_kwargs["C"]`` or 1).
      folds, groups, random_state: stratified folds; rows sharing a group stay in one fold.
      layers: names of the layers of ``X`` (default ``0..L-1``).
      memory_budget: bytes (or ``"4GB"``) of memory the sweep may hold; default half the available
        memory. Layers are read, standardised and probed a chunk at a time within it.
      mesh: a ``jax.sharding.Mesh``: each chunk's layers are split over its ``"layers"`` (else first)
        axis, every device probing its own (the layer count must divide evenly).

    Peak memory: two float32 chunks (the one being probed, the next being read), the solver's copy of the
    chunk padded to its row bucket, the loop's copy of the layer being probed (chunks of two or more
    layers), its copies of a layer (the logistic CV's: 4) and its work space,
    within ``memory_budget``; an in-memory ``X`` that fits is read as one chunk (one float32 copy of it
    besides ``X``).

    Returns:
      A :class:`SweepResult`.

    Raises:
      ValueError: for an unknown classifier, a store that does not match its manifest, a budget too
        small for one layer, or a mesh whose layer axis does not divide the layer count.
    """
    if classifier not in SWEEP_CLASSIFIERS:
        raise ValueError(f"A sweep runs one of {SWEEP_CLASSIFIERS}; got {classifier!r}.")
    source, y, names = _as_source(X, y, layers, pooling)
    n_layers, n_rows, n_features = source.shape
    per_chunk = _budget.plan_chunks(
        n_layers, n_rows, n_features, budget=_budget.memory_budget(memory_budget),
        extra_copies=_SOLVERS[classifier].streamed_copies,
        workspace=_SOLVERS[classifier].streamed_workspace(n_rows, n_features, y, folds=folds),
    ).layers
    if mesh is not None:
        m = _mesh.n_shards(mesh)
        if n_layers % m:
            raise ValueError(
                f"A sweep of {n_layers} layers cannot be split evenly over the mesh's {m}-device "
                f"{_mesh.layer_axis(mesh)!r} axis; sweep a multiple of {m} layers (layers=...) or use another mesh."
            )
        per_chunk = max(1, per_chunk // _mesh.local_shards(mesh)) * m
    starts = range(0, n_layers, per_chunk)
    chunks = prefetched(
        functools.partial(_read_standardized, source, range(a, min(a + per_chunk, n_layers))) for a in starts)
    parts = []
    for a, (Xs, mean, scale) in zip(starts, chunks):
        if mesh is not None:
            Xs = _mesh.place_layers(lambda block, rows, chunk=Xs: chunk[block.start:block.stop, rows],
                                    Xs.shape[0], Xs.shape[1:], Xs.dtype, mesh)
        parts.append(_sweep_chunk(Xs, y, names[a:a + per_chunk], mean, scale, classifier, classifier_kwargs, C,
                                  folds, groups, random_state, sample_weight))
        del Xs
    return parts[0] if len(parts) == 1 else _joined(parts)


def _joined(parts: list[SweepResult]) -> SweepResult:
    """Chunks' sweeps as one: per-layer fields joined, the estimators' fitted layers concatenated."""
    first = parts[0]

    def cat(name: str) -> np.ndarray | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else np.concatenate([np.asarray(v) for v in values])

    return SweepResult(
        layers=[layer for p in parts for layer in p.layers], classifier=first.classifier, accuracy=cat("accuracy"),
        roc_auc=cat("roc_auc"), log_loss=cat("log_loss"), best_value=cat("best_value"),
        estimator=concatenate_layer_fits([p.estimator for p in parts]), mean=cat("mean"), scale=cat("scale"),
        fold_ids=first.fold_ids, extra=first.extra,
    )


def _sweep_chunk(Xs: Any, y: np.ndarray, names: list[int], mean: np.ndarray, scale: np.ndarray, classifier: str,
                 classifier_kwargs: dict | None, C: Any, folds: int, groups: Any, random_state: int | None,
                 sample_weight: Any) -> SweepResult:
    """The sweep of standardised layers ``Xs`` ``(k, N, D)`` (numpy, or a JAX array split over a mesh)."""
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
