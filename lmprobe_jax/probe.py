"""``Probe`` and ``LayerSweepResult``: lmprobe 0.10.3's high-level API on lmprobe-jax's pieces.

The class orchestrates and holds no maths: activations come from :func:`lmprobe_jax_extract.extract_activations`
(one forward pass for every layer a call needs, from a content-keyed cache), layer specs from
:func:`lmprobe_jax.layers.parse_layers`, probes from :mod:`lmprobe_jax.sklearn`, sweeps from
:func:`lmprobe_jax.sweep.sweep_activations`, layer selection from the group-lasso and importance
functions of :mod:`lmprobe_jax.functional`.

Differences from lmprobe, each deliberate:

* ``fit(prompts, labels)`` recognises labels by type (numbers, bools, arrays) in every mode -- lmprobe
  takes float regression targets, or labels with ``layers="sweep"``, for negative prompts.
* ``pooling="all"`` trains on real tokens only (no pad rows); ``first_token`` is mask-correct.
* The activation cache is keyed by the weights, tokenizer, dtypes and prompts, not the model name.
* ``save`` / ``load`` write safetensors + JSON; loading runs no code (no pickle), so only the built-in
  classifiers and preprocessing steps can be saved.
* ``layers="sweep*"`` picks its best layer by cross-validation on the training set, never by peeking at
  the evaluation set; ``sweep_layers`` trains all layer probes in one batched solve.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, f1_score, precision_score, r2_score, recall_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from lmprobe_jax_store import POOLINGS, cache_root

from . import functional as F
from . import sklearn as probes
from .layers import LayerSpec, parse_layers
from .sweep import SWEEP_CLASSIFIERS, SweepResult, build_classifier, standardize, sweep_activations

SCORE_POOLINGS = ("max", "min")  # inference-only: classify every token, then reduce the scores
TASKS = ("classification", "regression")
NORMALIZE = (True, False, "per_neuron", "per_layer")
DEFAULT_CACHE = str(cache_root() / "activations")

# Everything save/load may rebuild, by class name: nothing else is ever instantiated from a file.
_SAVABLE = {
    cls.__name__: cls
    for cls in (
        probes.LogisticProbe,
        probes.LogisticCVProbe,
        probes.RidgeProbe,
        probes.RidgeRegressionProbe,
        probes.MassMeanProbe,
        probes.GroupLassoProbe,
        StandardScaler,
        PCA,
    )
}


# -- small pieces ---------------------------------------------------------------------------------------
class LayerScaler:
    """Standardisation of concatenated layer activations ``(N, L * D)`` (lmprobe's PerLayerScaler).

    ``mode="per_neuron"``: every feature its own mean and standard deviation. ``"per_layer"``: one mean
    and one standard deviation per layer block, shared by its D features (steadier with few samples).
    """

    def __init__(self, n_layers: int, mode: str = "per_neuron"):
        if mode not in ("per_neuron", "per_layer"):
            raise ValueError(f"LayerScaler mode must be 'per_neuron' or 'per_layer', not {mode!r}.")
        self.n_layers, self.mode = n_layers, mode

    def fit(self, X: np.ndarray, sample_weight: np.ndarray | None = None) -> LayerScaler:
        X = np.asarray(X, np.float64)
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        blocks = X.reshape(len(X), self.n_layers, -1)
        if self.mode == "per_neuron":
            mean = np.average(blocks, axis=0, weights=w)
            var = np.average((blocks - mean) ** 2, axis=0, weights=w)
        else:
            mean = np.average(blocks.mean(axis=2), axis=0, weights=w)[:, None] * np.ones(blocks.shape[1:])
            var = np.average(((blocks - mean) ** 2).mean(axis=2), axis=0, weights=w)[:, None] * np.ones(
                blocks.shape[1:]
            )
        scale = np.sqrt(var)
        scale[scale < 1e-12 * np.maximum(np.abs(mean), 1)] = 1.0
        self.mean_, self.scale_ = mean.reshape(-1), scale.reshape(-1)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, np.float64) - self.mean_) / self.scale_).astype(np.float32)


def _parse_preprocessing(preprocessing: str | Sequence[str] | None, pca_components: int | None) -> list:
    """``"standard"``, ``"pca"``, ``"pca:N"``, ``"standard+pca"`` (or a list of steps) -> unfitted steps."""
    if preprocessing is None:
        return []
    steps = preprocessing.split("+") if isinstance(preprocessing, str) else list(preprocessing)
    out = []
    for step in steps:
        step = step.strip()
        if step == "standard":
            out.append(StandardScaler())
        elif match := re.fullmatch(r"pca(?::(\d+))?", step):
            n = int(match[1]) if match[1] else pca_components
            out.append(PCA(n_components=n, random_state=0))
        else:
            raise ValueError(
                f"Unknown preprocessing step {step!r}: use 'standard', 'pca', 'pca:N' or a '+'-joined chain."
            )
    return out


def _labels_or_prompts(second: Any) -> str:
    """'labels' when ``second`` holds labels (numbers, bools, an array or tensor), 'prompts' when it
    holds strings; raises otherwise. Labels are recognised by type, never by position."""
    if hasattr(second, "dtype") and hasattr(second, "shape"):  # numpy, torch, jax arrays
        return "labels"
    items = list(second)
    if not items:
        raise ValueError(
            "The second argument of fit is empty: pass negative prompts or one label per prompt."
        )
    if all(isinstance(item, str) for item in items):
        return "prompts"
    if all(isinstance(item, (bool, int, float, np.number, np.bool_)) for item in items):
        return "labels"
    raise ValueError(
        "The second argument of fit mixes strings and other values: pass negative prompts (all strings) "
        "or labels (all numbers)."
    )


def _check_prompts(prompts: Any, what: str = "prompts") -> list[str]:
    # Prompts only ever go to lmprobe_jax_extract, which owns their validation (imported here, not at start-up).
    from lmprobe_jax_extract import check_prompts

    return check_prompts(prompts, what)


def _to_numpy(X: Any) -> np.ndarray:
    if hasattr(X, "detach"):  # a torch tensor, without importing torch
        X = X.detach().cpu().float().numpy()
    return np.asarray(X)


def _estimator_state(est: Any, key: str, arrays: dict) -> dict:
    """JSON description of a fitted built-in estimator; its array attributes go into ``arrays``."""
    name = type(est).__name__
    if name not in _SAVABLE:
        raise ValueError(
            f"{name} cannot be saved without pickle: save/load supports the built-in classifiers and "
            "preprocessing steps only."
        )
    attrs: dict = {}
    for attr, value in vars(est).items():
        if not attr.endswith("_") or attr.startswith("_"):
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            arrays[f"{key}.{attr}"] = np.ascontiguousarray(value)
        elif isinstance(value, np.ndarray):
            attrs[attr] = {"list": value.tolist(), "dtype": value.dtype.str}
        elif isinstance(value, (bool, int, float, str, type(None), np.number, np.bool_)):
            attrs[attr] = value.item() if isinstance(value, (np.number, np.bool_)) else value
    params = {
        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in est.get_params(deep=False).items()
    }
    return {"class": name, "params": params, "attrs": attrs}


def _estimator_from_state(state: dict, key: str, arrays: dict) -> Any:
    cls = _SAVABLE.get(state["class"])
    if cls is None:
        raise ValueError(f"Unknown estimator {state['class']!r} in a saved probe.")
    est = cls(**state["params"])
    for attr, value in state["attrs"].items():
        setattr(
            est, attr, np.array(value["list"], dtype=value["dtype"]) if isinstance(value, dict) else value
        )
    prefix = f"{key}."
    for name, value in arrays.items():
        if name.startswith(prefix):
            setattr(est, name[len(prefix) :], value)
    return est


class BatchedFit(NamedTuple):
    """One estimator fitted on every layer at once (3-D input) and the per-layer standardisation
    ``(L, 1, D)`` applied before it; :class:`SweepResult` carries the same fields plus cross-validation."""

    layers: list[int]
    estimator: Any
    mean: np.ndarray
    scale: np.ndarray


# -- the Probe -------------------------------------------------------------------------------------------
class Probe:
    """Train a linear probe on a language model's activations (lmprobe's ``Probe``, same parameters).

    Parameters (lmprobe's; see its documentation for the full meaning):
      model: hub id, local directory, ``.gguf`` file, or ``(model, tokenizer)``; optional when only the
        ``*_from_activations`` methods are used.
      layers: a layer spec (:mod:`lmprobe_jax.layers`): int, list, fraction, ``"middle"``, ``"last"``,
        ``"all"``, ``"auto"``, ``"fast_auto"``, ``"sweep"``, ``"sweep:N"``, ``"sweep:A-B"``.
      pooling, train_pooling, inference_pooling: ``last_token``, ``first_token``, ``mean``, ``max``,
        ``min``, ``all``; ``inference_pooling`` also takes score-level ``"max"`` / ``"min"`` (every token
        classified, the positive-class probability reduced over real tokens).
      classifier: ``"logistic_regression"``, ``"logistic_regression_cv"``, ``"ridge"``,
        ``"ridge_regression"``, ``"mass_mean"``, ``"lda"``, ``"group_lasso"``, or an sklearn estimator.
      task: ``"classification"`` or ``"regression"`` (default classifier then ``"ridge_regression"``).
      device, remote, backend, dtype, batch_size: extraction settings (``backend`` ``"local"`` or
        ``"nnsight"``; ``device="auto"`` picks CUDA when present).
      random_state: seed for folds and PCA, passed to classifiers that take one.
      auto_candidates, auto_alpha, fast_auto_top_k: layer selection (``"auto"``: group lasso among the
        candidates at ``auto_alpha``; ``"fast_auto"``: the top-k layers by coefficient importance).
      normalize_layers: True / ``"per_neuron"``, ``"per_layer"`` or False (:class:`LayerScaler`).
      classifier_kwargs: constructor arguments of a named classifier.
      preprocessing, pca_components: ``"standard"``, ``"pca"``, ``"pca:N"``, ``"standard+pca"``.
      mass_mean_augment: append the projection on the class-mean difference as one more feature.
      cache_dir: where activations are cached (default ``~/.cache/lmprobe-jax/activations``, or
        ``$LMPROBE_JAX_CACHE/activations``); None disables the cache.
      progress: show extraction progress bars.

    Attributes after ``fit``: ``classifier_``, ``classes_``, ``selected_layers_`` (auto / fast_auto),
    ``candidate_layers_``, ``layers_`` (the layers the final probe reads), ``scaler_``,
    ``layer_importances_`` (after :meth:`compute_layer_importance`), ``sweep_`` and ``best_layer_``
    (sweep modes).
    """

    def __init__(
        self,
        model: Any = None,
        layers: Any = "middle",
        pooling: str = "last_token",
        train_pooling: str | None = None,
        inference_pooling: str | None = None,
        classifier: str | BaseEstimator = "logistic_regression",
        task: str = "classification",
        device: str = "auto",
        remote: bool = False,
        random_state: int | None = None,
        batch_size: int = 8,
        auto_candidates: Sequence[int | float] | None = None,
        auto_alpha: float = 0.01,
        normalize_layers: bool | str = True,
        fast_auto_top_k: int | None = None,
        backend: str = "local",
        dtype: str | None = None,
        classifier_kwargs: dict | None = None,
        preprocessing: str | Sequence[str] | None = None,
        pca_components: int | None = None,
        mass_mean_augment: bool = False,
        cache_dir: str | os.PathLike | None = DEFAULT_CACHE,
        progress: bool = True,
    ):
        self.model = model
        self.layers = layers
        self.pooling = pooling
        self.train_pooling = train_pooling
        self.inference_pooling = inference_pooling
        self.classifier = classifier
        self.task = task
        self.device = device
        self.remote = remote
        self.random_state = random_state
        self.batch_size = batch_size
        self.auto_candidates = auto_candidates
        self.auto_alpha = auto_alpha
        self.normalize_layers = normalize_layers
        self.fast_auto_top_k = fast_auto_top_k
        self.backend = backend
        self.dtype = dtype
        self.classifier_kwargs = classifier_kwargs
        self.preprocessing = preprocessing
        self.pca_components = pca_components
        self.mass_mean_augment = mass_mean_augment
        self.cache_dir = cache_dir
        self.progress = progress
        self._validate_params()

    # -- parameters ---------------------------------------------------------------------------------------
    def _validate_params(self) -> None:
        for name in ("pooling", "train_pooling"):
            value = getattr(self, name)
            if value is not None and value not in POOLINGS:
                raise ValueError(f"Unknown {name} {value!r}: choose from {POOLINGS}.")
        if self.inference_pooling is not None and self.inference_pooling not in POOLINGS:
            raise ValueError(
                f"Unknown inference_pooling {self.inference_pooling!r}: choose from {POOLINGS}."
            )
        if self.task not in TASKS:
            raise ValueError(f"Unknown task {self.task!r}: choose 'classification' or 'regression'.")
        if self.normalize_layers not in NORMALIZE:
            raise ValueError(f"normalize_layers must be one of {NORMALIZE}, not {self.normalize_layers!r}.")
        if isinstance(self.classifier, str):
            build_classifier(self._classifier_name(), self.classifier_kwargs)  # raises on unknown names
        elif not hasattr(self.classifier, "fit"):
            raise ValueError("classifier must be a name or an sklearn estimator (an object with fit).")
        _parse_preprocessing(self.preprocessing, self.pca_components)
        if isinstance(self.layers, str):  # the syntax now; ranges once the model's depth is known
            try:
                parse_layers(self.layers, 4096)
            except ValueError as err:
                if "Unknown layer spec" in str(err):
                    raise
        if self.backend not in ("local", "nnsight"):
            raise ValueError(f"Unknown backend {self.backend!r}: choose 'local' or 'nnsight'.")

    def _classifier_name(self) -> str:
        if self.task == "regression" and self.classifier == "logistic_regression":
            return "ridge_regression"  # lmprobe's regression default
        return self.classifier

    def _new_classifier(self) -> BaseEstimator:
        if not isinstance(self.classifier, str):
            est = clone(self.classifier)
            if self.random_state is not None and "random_state" in est.get_params():
                est.set_params(random_state=self.random_state)
            return est
        return build_classifier(self._classifier_name(), self.classifier_kwargs, self.random_state)

    @property
    def _train_pooling(self) -> str:
        return self.train_pooling or self.pooling

    @property
    def _inference_pooling(self) -> str:
        return self.inference_pooling or self.pooling

    # -- activations ----------------------------------------------------------------------------------------
    def _n_model_layers(self) -> int:
        if getattr(self, "_model_layers", None) is None:
            if self.model is None:
                raise ValueError(
                    "This Probe has no model: pass model=... or use the *_from_activations methods."
                )
            from lmprobe_jax_extract import model_layer_count

            self._model_layers = model_layer_count(self.model)
        return self._model_layers

    def _extract(
        self,
        prompts: list[str],
        layers: list[int],
        pooling: str,
        *,
        batch_size: int | None = None,
        remote: bool | None = None,
        invalidate_cache: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(L, N, D)`` activations of ``layers`` (for ``"all"``: ``(L, T, D)`` token rows and the
        ``(N + 1,)`` offsets of each prompt's rows; else offsets None)."""
        self._n_model_layers()  # raises when the Probe has no model
        from lmprobe_jax_extract import extract_activations

        store = extract_activations(
            self.model,
            prompts,
            layers=sorted(set(layers)),
            pooling=pooling,
            cache_dir=self.cache_dir,
            batch_size=batch_size or self.batch_size,
            dtype=self.dtype,
            device=None if self.device == "auto" else self.device,
            backend=self.backend,
            remote=self.remote if remote is None else remote,
            overwrite=invalidate_cache,
            progress=self.progress,
        )
        X = store.stack(layers, pooling, dtype=np.float32)
        return X, (store.offsets() if pooling == "all" else None)

    def warmup(
        self,
        prompts: list[str],
        remote: bool | None = None,
        max_retries: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Extract and cache the activations every layer this probe may need, without training."""
        prompts = _check_prompts(prompts)
        spec = self._layer_spec(self._n_model_layers())
        for pooling in {self._train_pooling, self._inference_pooling}:
            self._extract(
                prompts,
                spec.layers,
                "all" if pooling in SCORE_POOLINGS else pooling,
                batch_size=batch_size,
                remote=remote,
            )

    def _layer_spec(self, n_layers: int) -> LayerSpec:
        return parse_layers(self.layers, n_layers, auto_candidates=self.auto_candidates)

    # -- fitting --------------------------------------------------------------------------------------------
    def _labels(self, y: Any, n: int) -> np.ndarray:
        y = _to_numpy(y)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"labels has shape {y.shape}; expected ({n},), one label per prompt.")
        if self.task == "classification" and y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise ValueError(
                    "Float labels were given to a classifier: use task='regression' for continuous targets, "
                    "or integer class labels."
                )
            y = y.astype(np.int64)
        if self.task == "classification" and np.unique(y).size < 2:
            raise ValueError(f"labels hold one class only ({np.unique(y).tolist()}); a classifier needs two.")
        return y

    def _training_data(self, positive_prompts: Any, negative_prompts: Any) -> tuple[list[str], np.ndarray]:
        first = _check_prompts(positive_prompts, "positive_prompts")
        if negative_prompts is None:
            raise ValueError("fit needs negative prompts (contrastive) or labels: fit(prompts, labels).")
        if _labels_or_prompts(negative_prompts) == "prompts":
            if self.task == "regression":
                raise ValueError("task='regression' needs fit(prompts, targets), not two prompt lists.")
            negatives = _check_prompts(negative_prompts, "negative_prompts")
            y = np.r_[np.ones(len(first), np.int64), np.zeros(len(negatives), np.int64)]
            return first + negatives, y
        return first, self._labels(negative_prompts, len(first))

    def _training_arrays(
        self, prompts: list[str], y: np.ndarray, layers: list[int], sample_weight: Any, **extract_kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(L, N, D)`` training activations of ``layers``, labels and weights (token rows for "all")."""
        X, offsets = self._extract(prompts, layers, self._train_pooling, **extract_kwargs)
        sw = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        if sw is not None and sw.shape != (len(prompts),):
            raise ValueError(f"sample_weight has shape {sw.shape}; expected ({len(prompts)},).")
        if offsets is not None:  # pooling "all": every real token is a training row with its prompt's label
            counts = np.diff(offsets)
            y = np.repeat(y, counts)
            sw = None if sw is None else np.repeat(sw, counts)
        return X, y, sw

    def fit(
        self,
        positive_prompts: list[str],
        negative_prompts: Any = None,
        remote: bool | None = None,
        invalidate_cache: bool = False,
        max_retries: int | None = None,
        batch_size: int | None = None,
        sample_weight: Any = None,
    ) -> Probe:
        """Fit contrastively, ``fit(positive_prompts, negative_prompts)``, or from labels,
        ``fit(prompts, labels)`` (labels: numbers or bools, an array or a list; regression targets
        with ``task="regression"``). Extraction runs once for every layer the layer spec needs.
        ``max_retries`` is accepted for lmprobe compatibility (NDIF retries are nnsight's)."""
        prompts, y = self._training_data(positive_prompts, negative_prompts)
        n_model = self._n_model_layers()
        spec = self._layer_spec(n_model)
        X, y, sw = self._training_arrays(
            prompts,
            y,
            spec.layers,
            sample_weight,
            batch_size=batch_size,
            remote=remote,
            invalidate_cache=invalidate_cache,
        )
        self._fit_layers(X, y, spec, sw)
        self.n_model_layers_, self.input_layers_ = n_model, None
        return self

    def fit_from_activations(self, X: Any, y: Any, sample_weight: Any = None, n_layers: int = 1) -> Probe:
        """Fit from activations: ``(N, n_layers * D)`` (layers concatenated, lmprobe's layout) or
        ``(L, N, D)``. Int / list / named specs take every block of ``X`` as the probe's layers (as
        lmprobe); ``"auto"``, ``"fast_auto"`` and ``"sweep*"`` select among ``X``'s blocks."""
        X3 = self._as_blocks(X, n_layers)
        y = self._labels(y, X3.shape[1])
        spec = self._layer_spec(X3.shape[0]) if isinstance(self.layers, (str, LayerSpec)) else None
        if spec is None or spec.mode == "fixed":
            spec = LayerSpec("fixed", list(range(X3.shape[0])))
        sw = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        self._fit_layers(X3[spec.layers], y, spec, sw)
        self.n_model_layers_, self.input_layers_ = X3.shape[0], list(range(X3.shape[0]))
        return self

    @staticmethod
    def _as_blocks(X: Any, n_layers: int) -> np.ndarray:
        X = _to_numpy(X).astype(np.float32, copy=False)
        if X.ndim == 3:
            return X
        if X.ndim != 2:
            raise ValueError(f"X must be (N, n_layers * D) or (L, N, D); got shape {X.shape}.")
        if n_layers < 1 or X.shape[1] % n_layers:
            raise ValueError(f"X has {X.shape[1]} features, not a multiple of n_layers={n_layers}.")
        return X.reshape(X.shape[0], n_layers, -1).transpose(1, 0, 2)

    def _fit_layers(self, X: np.ndarray, y: np.ndarray, spec: LayerSpec, sw: np.ndarray | None) -> None:
        """Fit on ``X`` ``(len(spec.layers), N, D)`` -- the blocks of ``spec.layers``, in that order."""
        self.layer_spec_ = spec
        self.candidate_layers_ = list(spec.layers)
        self.selected_layers_ = None
        self.sweep_ = None
        self.best_layer_ = None
        self.layer_importances_ = None
        if spec.mode == "fixed":
            self._fit_concat(X, y, list(spec.layers), sw)
        elif spec.mode == "auto":
            Xs = self._per_layer_scaled(X)
            selector = probes.GroupLassoProbe(alpha=self.auto_alpha).fit(Xs, y, sample_weight=sw)
            kept = [layer for layer, on in zip(spec.layers, selector.layers_kept_, strict=True) if on]
            if not kept:
                warnings.warn(
                    f"Group lasso at auto_alpha={self.auto_alpha} kept no layer; keeping every candidate. "
                    "Lower auto_alpha to select.",
                    stacklevel=3,
                )
                kept = list(spec.layers)
            self.selected_layers_ = kept
            self._fit_concat(X[[spec.layers.index(k) for k in kept]], y, kept, sw)
        elif spec.mode == "fast_auto":
            self._fit_concat(X, y, list(spec.layers), sw)
            importance = self.compute_layer_importance()
            k = self.fast_auto_top_k or max(1, len(spec.layers) // 2)
            top = sorted(np.argsort(-importance, kind="stable")[:k].tolist())
            self.selected_layers_ = [spec.layers[i] for i in top]
            self._fit_concat(X[top], y, self.selected_layers_, sw)
            self.layer_importances_ = importance  # of every candidate, from the first fit
        else:  # sweep
            self._fit_sweep(X, y, spec, sw)

    def _per_layer_scaled(self, X: np.ndarray) -> np.ndarray:
        if self.normalize_layers is False:
            return X
        flat = X.transpose(1, 0, 2).reshape(X.shape[1], -1)
        scaled = LayerScaler(X.shape[0], self._scaler_mode()).fit(flat).transform(flat)
        return scaled.reshape(X.shape[1], X.shape[0], -1).transpose(1, 0, 2)

    def _scaler_mode(self) -> str:
        return "per_layer" if self.normalize_layers == "per_layer" else "per_neuron"

    def _fit_concat(self, X: np.ndarray, y: np.ndarray, layers: list[int], sw: np.ndarray | None) -> None:
        """One probe on the concatenation of ``X``'s blocks: scaler -> preprocessing -> augment -> fit."""
        self.layers_ = list(layers)
        flat = X.transpose(1, 0, 2).reshape(X.shape[1], -1)
        self.scaler_ = None
        if self.normalize_layers is not False:
            self.scaler_ = LayerScaler(len(layers), self._scaler_mode()).fit(flat, sw)
            flat = self.scaler_.transform(flat)
        self.preprocessing_ = [
            clone(step) for step in _parse_preprocessing(self.preprocessing, self.pca_components)
        ]
        features = flat
        for step in self.preprocessing_:
            if isinstance(step, PCA) and self.random_state is not None:
                step.set_params(random_state=self.random_state)
            features = step.fit_transform(features)
        self.augment_direction_ = None
        if self.mass_mean_augment:
            classes = np.unique(y)
            if classes.size != 2:
                raise ValueError("mass_mean_augment needs two classes.")
            direction = flat[y == classes[1]].mean(0) - flat[y == classes[0]].mean(0)
            self.augment_direction_ = direction / max(np.linalg.norm(direction), 1e-12)
            features = np.hstack([features, (flat @ self.augment_direction_)[:, None]])
        self.classifier_ = self._new_classifier()
        fit_kwargs = {} if sw is None else {"sample_weight": sw}
        self.classifier_.fit(np.asarray(features, np.float32), y, **fit_kwargs)
        self.classes_ = getattr(self.classifier_, "classes_", None)

    def _fit_sweep(self, X: np.ndarray, y: np.ndarray, spec: LayerSpec, sw: np.ndarray | None) -> None:
        """Per-layer probes, batched; the best layer by cross-validation on the training rows."""
        name = self._classifier_name()
        if not isinstance(name, str) or name not in SWEEP_CLASSIFIERS:
            raise ValueError(f"layers={self.layers!r} sweeps one of {SWEEP_CLASSIFIERS}; got {name!r}.")
        if self.normalize_layers is False or self.preprocessing or self.mass_mean_augment:
            raise ValueError("A sweep standardises each layer and takes no preprocessing or augmentation.")
        self.sweep_ = sweep_activations(
            X,
            y,
            classifier=name,
            classifier_kwargs=self.classifier_kwargs,
            layers=spec.layers,
            random_state=0 if self.random_state is None else self.random_state,
            sample_weight=sw,
        )
        self.best_layer_ = self.sweep_.best_layer
        self._use_sweep_layer(self.sweep_, self.best_layer_)

    def _use_sweep_layer(self, sweep: SweepResult | BatchedFit, layer: int) -> None:
        """Become layer ``layer``'s probe out of a batched per-layer fit (its scaler and estimator)."""
        i = sweep.layers.index(layer)
        self.layers_ = [layer]
        self.scaler_ = LayerScaler(1)
        self.scaler_.mean_, self.scaler_.scale_ = (
            sweep.mean[i, 0].astype(np.float64),
            sweep.scale[i, 0].astype(np.float64),
        )
        self.preprocessing_ = []
        self.augment_direction_ = None
        self.classifier_ = sweep.estimator.select_layer(i)
        self.classes_ = getattr(self.classifier_, "classes_", None)

    # -- prediction -----------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "classifier_"):
            raise NotFittedError("This Probe is not fitted yet: call fit (or fit_from_activations) first.")

    def _features(self, X: np.ndarray) -> np.ndarray:
        """Features of ``X`` ``(len(layers_), N, D)`` for the fitted classifier."""
        flat = X.transpose(1, 0, 2).reshape(X.shape[1], -1)
        if self.scaler_ is not None:
            flat = self.scaler_.transform(flat)
        features = flat
        for step in self.preprocessing_:
            features = step.transform(features)
        if self.augment_direction_ is not None:
            features = np.hstack([features, (flat @ self.augment_direction_)[:, None]])
        return np.asarray(features, np.float32)

    def _scores_from_blocks(self, X: np.ndarray, offsets: np.ndarray | None, kind: str) -> Any:
        """``kind`` in predict / proba / decision on ``X`` holding exactly ``layers_``."""
        features = self._features(X)
        if offsets is None:
            return self._apply(features, kind)
        pooling = self._inference_pooling
        if pooling in SCORE_POOLINGS:
            per_token = self._apply(features, "proba" if self.task == "classification" else "predict")
            reduce = np.maximum.reduceat if pooling == "max" else np.minimum.reduceat
            if self.task == "regression":
                return reduce(per_token, offsets[:-1])
            positive = reduce(per_token[:, -1], offsets[:-1]) if per_token.shape[1] == 2 else None
            if positive is None:
                raise ValueError("Score-level max/min pooling needs a binary classifier.")
            proba = np.stack([1 - positive, positive], axis=1)
            return proba if kind == "proba" else self.classes_[(positive > 0.5).astype(int)]
        # inference_pooling "all": one result per token, ragged: a list with one array per prompt
        per_token = self._apply(features, kind)
        return [per_token[a:b] for a, b in itertools.pairwise(offsets)]

    def _apply(self, features: np.ndarray, kind: str) -> np.ndarray:
        if kind == "proba":
            if self.task == "regression" or not hasattr(self.classifier_, "predict_proba"):
                raise ValueError(
                    "predict_proba is for classification probes whose classifier has predict_proba."
                )
            return self.classifier_.predict_proba(features)
        return self.classifier_.predict(features)

    def _predict_prompts(self, prompts: list[str], kind: str, remote: bool | None, batch_size: int | None):
        self._check_fitted()
        prompts = _check_prompts(prompts)
        pooling = self._inference_pooling
        X, offsets = self._extract(
            prompts,
            self.layers_,
            "all" if pooling in SCORE_POOLINGS else pooling,
            batch_size=batch_size,
            remote=remote,
        )
        return self._scores_from_blocks(X, offsets, kind)

    def predict(
        self, prompts: list[str], remote: bool | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Class labels (or regression predictions) ``(N,)``."""
        return self._predict_prompts(prompts, "predict", remote, batch_size)

    def predict_proba(self, prompts: list[str], remote: bool | None = None, batch_size: int | None = None):
        """Class probabilities ``(N, K)`` (with ``inference_pooling="all"``: a list of ``(T_i, K)``)."""
        return self._predict_prompts(prompts, "proba", remote, batch_size)

    def score(
        self, prompts: list[str], labels: Any, remote: bool | None = None, batch_size: int | None = None
    ) -> float:
        """Accuracy (R^2 for regression)."""
        pred = self.predict(prompts, remote=remote, batch_size=batch_size)
        y = self._labels(labels, len(pred)) if self.task == "classification" else _to_numpy(labels)
        return float(accuracy_score(y, pred) if self.task == "classification" else r2_score(y, pred))

    def evaluate(self, prompts: list[str], labels: Any, remote: bool | None = None) -> dict:
        """accuracy, auroc, f1, precision, recall, n_eval and eval_hash (and, for sweeps, every layer's
        metrics and the layer chosen on the training set)."""
        self._check_fitted()
        prompts = _check_prompts(prompts)
        if self.task != "classification":
            raise ValueError("evaluate reports classification metrics; use score for regression (R^2).")
        y = self._labels(labels, len(prompts))
        digest = hashlib.sha256(json.dumps([prompts, y.tolist()]).encode()).hexdigest()[:16]
        if self.sweep_ is not None:
            X, _ = self._extract(prompts, self.sweep_.layers, self._inference_pooling, remote=remote)
            per_layer = {}
            for i, layer in enumerate(self.sweep_.layers):
                probe = self._sweep_layer_probe(layer)
                per_layer[layer] = _metrics(
                    y, probe._apply(probe._features(X[i : i + 1]), "proba"), probe.classes_
                )
            result = {
                **per_layer[self.best_layer_],
                "n_eval": len(y),
                "eval_hash": digest,
                "best_layer": self.best_layer_,
                "layers": per_layer,
            }
        else:
            result = {
                **_metrics(y, self.predict_proba(prompts, remote=remote), self.classes_),
                "n_eval": len(y),
                "eval_hash": digest,
            }
        self._evaluation_results_ = result
        return result

    def _sweep_layer_probe(self, layer: int, fits: BatchedFit | None = None) -> Probe:
        """A fitted single-layer Probe for one layer of this probe's sweep (or of ``fits``)."""
        probe = _copy_params(self)
        probe.layers = layer
        probe.layer_spec_, probe.candidate_layers_ = LayerSpec("fixed", [layer]), [layer]
        probe.selected_layers_ = probe.sweep_ = probe.best_layer_ = probe.layer_importances_ = None
        probe.n_model_layers_, probe.input_layers_ = self.n_model_layers_, None
        probe._use_sweep_layer(self.sweep_ if fits is None else fits, layer)
        return probe

    def _check_activation_input(self, X: Any) -> np.ndarray:
        """Blocks of ``layers_`` from ``X``: either exactly the probe's layers, or (after
        ``fit_from_activations``) the same blocks it was fitted from."""
        self._check_fitted()
        source = getattr(self, "input_layers_", None)
        if source is not None and len(source) != len(self.layers_):
            X3 = self._as_blocks(X, len(source))
            if X3.shape[0] != len(source):
                raise ValueError(f"X holds {X3.shape[0]} layers; the probe was fitted on {len(source)}.")
            return X3[[source.index(layer) for layer in self.layers_]]
        X3 = self._as_blocks(X, len(self.layers_))
        if X3.shape[0] != len(self.layers_):
            raise ValueError(
                f"X holds {X3.shape[0]} layers; this probe reads {len(self.layers_)} ({self.layers_})."
            )
        return X3

    def predict_from_activations(self, X: Any) -> np.ndarray:
        """Predictions from activations laid out as in :meth:`fit_from_activations`."""
        return self._apply(self._features(self._check_activation_input(X)), "predict")

    def predict_proba_from_activations(self, X: Any) -> np.ndarray:
        return self._apply(self._features(self._check_activation_input(X)), "proba")

    def score_from_activations(self, X: Any, y: Any) -> float:
        pred = self.predict_from_activations(X)
        if self.task == "regression":
            return float(r2_score(_to_numpy(y), pred))
        return float(accuracy_score(self._labels(y, len(pred)), pred))

    # -- layer importance -------------------------------------------------------------------------------------
    def compute_layer_importance(self, metric: str = "l2", normalize: bool = True) -> np.ndarray:
        """Per-layer importance ``(len(layers_),)`` from the classifier's coefficients (lmprobe's)."""
        if not hasattr(self, "classifier_"):
            raise RuntimeError("compute_layer_importance needs a fitted probe: call fit first.")
        coef = getattr(self.classifier_, "coef_", None)
        if coef is None:
            raise RuntimeError(
                f"{type(self.classifier_).__name__} has no coef_: layer importance needs a linear model."
            )
        if self.preprocessing_ or self.augment_direction_ is not None:
            raise RuntimeError("Layer importance is undefined after preprocessing or augmentation.")
        n_layers = len(self.layers_)
        coef = np.asarray(coef, np.float64).reshape(-1, n_layers, np.asarray(coef).shape[-1] // n_layers)
        per_layer = coef.transpose(1, 0, 2).reshape(-1)  # every class's weights of a layer form its group
        importance = np.asarray(F.layer_importance(per_layer, metric, n_layers=n_layers, normalize=normalize))
        self.layer_importances_ = importance
        return importance

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted probe to directory ``path``: ``probe.json`` and ``arrays.safetensors``."""
        from safetensors.numpy import save_file

        self._check_fitted()
        arrays: dict[str, np.ndarray] = {}
        model = self.model if isinstance(self.model, (str, os.PathLike, type(None))) else None
        config = {
            "format": "lmprobe-jax-probe",
            "version": 1,
            "params": {**_json_params(self), "model": None if model is None else str(model)},
            "layers_": self.layers_,
            "candidate_layers_": self.candidate_layers_,
            "selected_layers_": self.selected_layers_,
            "best_layer_": self.best_layer_,
            "layer_spec_": list(self.layer_spec_),
            "n_model_layers_": getattr(self, "n_model_layers_", None),
            "classifier_": _estimator_state(self.classifier_, "classifier", arrays),
            "preprocessing_": [
                _estimator_state(s, f"pre{i}", arrays) for i, s in enumerate(self.preprocessing_)
            ],
            "scaler_": None
            if self.scaler_ is None
            else {"n_layers": self.scaler_.n_layers, "mode": self.scaler_.mode},
            "sweep_table": None if self.sweep_ is None else self.sweep_.table(),
        }
        if self.scaler_ is not None:
            arrays["scaler.mean_"], arrays["scaler.scale_"] = self.scaler_.mean_, self.scaler_.scale_
        if self.augment_direction_ is not None:
            arrays["augment_direction_"] = self.augment_direction_
        if self.layer_importances_ is not None:
            arrays["layer_importances_"] = np.asarray(self.layer_importances_)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(arrays, str(path / "arrays.safetensors"))
        (path / "probe.json").write_text(json.dumps(config, indent=1, default=_json_default) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Probe:
        """Read a probe written by :meth:`save`. Only JSON and safetensors are read; no code runs."""
        from safetensors.numpy import load_file

        path = Path(path)
        if not (path / "probe.json").is_file():
            raise ValueError(f"{path} holds no saved probe (no probe.json).")
        config = json.loads((path / "probe.json").read_text())
        if config.get("format") != "lmprobe-jax-probe":
            raise ValueError(f"{path / 'probe.json'} is not an lmprobe-jax probe.")
        arrays = load_file(str(path / "arrays.safetensors"))
        probe = cls(**config["params"])
        probe.layers_ = config["layers_"]
        probe.candidate_layers_ = config["candidate_layers_"]
        probe.selected_layers_ = config["selected_layers_"]
        probe.best_layer_ = config["best_layer_"]
        probe.layer_spec_ = LayerSpec(*config["layer_spec_"])
        probe.n_model_layers_ = config["n_model_layers_"]
        probe.classifier_ = _estimator_from_state(config["classifier_"], "classifier", arrays)
        probe.classes_ = getattr(probe.classifier_, "classes_", None)
        probe.preprocessing_ = [
            _estimator_from_state(s, f"pre{i}", arrays) for i, s in enumerate(config["preprocessing_"])
        ]
        probe.scaler_ = None
        if config["scaler_"] is not None:
            probe.scaler_ = LayerScaler(config["scaler_"]["n_layers"], config["scaler_"]["mode"])
            probe.scaler_.mean_, probe.scaler_.scale_ = arrays["scaler.mean_"], arrays["scaler.scale_"]
        probe.augment_direction_ = arrays.get("augment_direction_")
        probe.layer_importances_ = arrays.get("layer_importances_")
        probe.sweep_ = None
        probe.sweep_table_ = config["sweep_table"]
        return probe

    # -- sweeps ---------------------------------------------------------------------------------------------
    @classmethod
    def sweep_layers(
        cls,
        model: Any,
        positive_prompts: list[str],
        negative_prompts: Any = None,
        layers: Any = "all",
        pooling: str = "last_token",
        classifier: str | BaseEstimator = "logistic_regression",
        device: str = "auto",
        remote: bool = False,
        random_state: int | None = None,
        batch_size: int = 8,
        backend: str = "local",
        dtype: str | None = None,
        normalize_layers: bool | str = True,
        classifier_kwargs: dict | None = None,
        preprocessing: Any = None,
        pca_components: int | None = None,
        cv: bool = False,
        **kwargs: Any,
    ) -> LayerSweepResult:
        """Train a probe at every layer of ``layers`` from one extraction pass.

        The built-in per-layer classifiers (:data:`lmprobe_jax.sweep.SWEEP_CLASSIFIERS`) train every
        layer in one batched solve; with ``cv=True`` they also cross-validate each layer on the training
        rows first (``result.sweep``, a :class:`SweepResult`). Any other classifier is fitted layer by
        layer on the same activations.
        ``negative_prompts`` may be labels. Extra keyword arguments go to :class:`Probe`
        (``cache_dir``, ``progress``, ...)."""
        base = cls(
            model=model,
            layers="all",
            pooling=pooling,
            classifier=classifier,
            device=device,
            remote=remote,
            random_state=random_state,
            batch_size=batch_size,
            backend=backend,
            dtype=dtype,
            normalize_layers=normalize_layers,
            classifier_kwargs=classifier_kwargs,
            preprocessing=preprocessing,
            pca_components=pca_components,
            **kwargs,
        )
        swept = parse_layers(layers, base._n_model_layers()).layers
        prompts, y = base._training_data(positive_prompts, negative_prompts)
        start = time.perf_counter()
        X, y, sw = base._training_arrays(prompts, y, swept, None)
        timings = {"extract_s": time.perf_counter() - start}
        start = time.perf_counter()
        name = base._classifier_name()
        batched = isinstance(name, str) and name in SWEEP_CLASSIFIERS
        if batched and normalize_layers is not False and not preprocessing:
            if cv:
                base._fit_layers(X, y, LayerSpec("sweep", swept), sw)
                fits = base.sweep_
            else:
                Xs, mean, scale = standardize(X)
                estimator = build_classifier(name, classifier_kwargs, random_state)
                estimator.fit(Xs, y, **({} if sw is None else {"sample_weight": sw}))
                fits = BatchedFit(swept, estimator, mean, scale)
            base.n_model_layers_, base.input_layers_ = base._n_model_layers(), None
            timings["fit_s"] = time.perf_counter() - start
            probes_by_layer = {layer: base._sweep_layer_probe(layer, fits) for layer in swept}
            return LayerSweepResult(probes_by_layer, base.sweep_ if cv else None, base, timings)
        by_layer = {}
        for i, layer in enumerate(swept):
            probe = _copy_params(base)
            probe.layers = layer
            probe._fit_layers(X[i : i + 1], y, LayerSpec("fixed", [layer]), sw)
            probe.n_model_layers_, probe.input_layers_ = base._n_model_layers(), None
            by_layer[layer] = probe
        timings["fit_s"] = time.perf_counter() - start
        return LayerSweepResult(by_layer, None, base, timings)


def _metrics(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> dict:
    if classes is None or len(classes) != 2:
        pred = classes[np.argmax(proba, axis=1)]
        return {"accuracy": float(accuracy_score(y, pred))}
    positive = proba[:, 1]
    pred = classes[(positive > 0.5).astype(int)]
    y_pos = y == classes[1]
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "auroc": float(roc_auc_score(y_pos, positive)) if 0 < y_pos.sum() < len(y) else float("nan"),
        "f1": float(f1_score(y_pos, pred == classes[1], zero_division=0)),
        "precision": float(precision_score(y_pos, pred == classes[1], zero_division=0)),
        "recall": float(recall_score(y_pos, pred == classes[1], zero_division=0)),
    }


_PARAMS = (
    "model",
    "layers",
    "pooling",
    "train_pooling",
    "inference_pooling",
    "classifier",
    "task",
    "device",
    "remote",
    "random_state",
    "batch_size",
    "auto_candidates",
    "auto_alpha",
    "normalize_layers",
    "fast_auto_top_k",
    "backend",
    "dtype",
    "classifier_kwargs",
    "preprocessing",
    "pca_components",
    "mass_mean_augment",
    "cache_dir",
    "progress",
)


def _copy_params(probe: Probe) -> Probe:
    new = Probe.__new__(Probe)
    for name in _PARAMS:
        setattr(new, name, getattr(probe, name))
    new._model_layers = getattr(probe, "_model_layers", None)
    return new


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


_NAMES = {
    "LogisticProbe": "logistic_regression",
    "LogisticCVProbe": "logistic_regression_cv",
    "RidgeProbe": "ridge",
    "RidgeRegressionProbe": "ridge_regression",
    "MassMeanProbe": "mass_mean",
    "GroupLassoProbe": "group_lasso",
}


def _json_params(probe: Probe) -> dict:
    """The constructor parameters as JSON; a built-in estimator instance becomes its name + kwargs."""
    params = {name: getattr(probe, name) for name in _PARAMS if name != "model"}
    if not isinstance(params["classifier"], str):
        est = params["classifier"]
        if type(est).__name__ not in _NAMES:
            raise ValueError(
                f"{type(est).__name__} cannot be saved without pickle: save/load supports the built-in "
                "classifiers only."
            )
        params["classifier"] = _NAMES[type(est).__name__]
        params["classifier_kwargs"] = est.get_params(deep=False)
    if params["cache_dir"] is not None:
        params["cache_dir"] = str(params["cache_dir"])
    return params


@dataclass
class LayerSweepResult:
    """A fitted probe per layer (lmprobe's ``LayerSweepResult``), plus the training-set cross-validation
    of every layer when the probes came from one batched sweep (``sweep``, a :class:`SweepResult`) and
    where the time went (``timings``: ``extract_s`` for the one extraction pass, ``fit_s`` for the
    probes, compilation included)."""

    probes: dict[int, Probe] = field(default_factory=dict)
    sweep: SweepResult | None = None
    template: Probe | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.probes)

    def __getitem__(self, layer: int) -> Probe:
        return self.probes[layer]

    def _per_layer(self, prompts: list[str], kind: str) -> dict[int, np.ndarray]:
        """``kind`` ("predict" / "proba") of every layer's probe from one extraction pass (they share
        pooling and model)."""
        prompts = _check_prompts(prompts)
        template = self.template or next(iter(self.probes.values()))
        X, _ = template._extract(prompts, self.layers, template._inference_pooling)
        return {
            layer: self.probes[layer]._apply(self.probes[layer]._features(X[i : i + 1]), kind)
            for i, layer in enumerate(self.layers)
        }

    def predict_proba(self, prompts: list[str]) -> dict[int, np.ndarray]:
        return self._per_layer(prompts, "proba")

    def predict(self, prompts: list[str]) -> dict[int, np.ndarray]:
        return self._per_layer(prompts, "predict")

    def score(self, test_prompts: list[str], test_labels: Any) -> dict[int, float]:
        predictions = self.predict(test_prompts)
        y = _to_numpy(test_labels)
        return {layer: float(np.mean(pred == y)) for layer, pred in predictions.items()}

    def best_layer(self, test_prompts: list[str], test_labels: Any) -> int:
        scores = self.score(test_prompts, test_labels)
        return max(self.layers, key=lambda layer: (scores[layer], -layer))
