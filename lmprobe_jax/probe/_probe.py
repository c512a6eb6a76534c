"""``Probe``: lmprobe 0.10.3's high-level estimator, as an orchestrator of lmprobe-jax's pieces.

``fit`` = read the arguments (:mod:`._labels`) -> resolve the layer spec once
(:func:`lmprobe_jax.layers.parse_layers`) -> activations (:func:`lmprobe_jax_extract.extract_activations`,
one pass for every layer the spec needs, from a content-keyed cache) -> the mode's strategy
(:mod:`._modes`: fixed / auto / fast_auto / sweep), which fits the feature ``Pipeline``
(:mod:`._features`) and a classifier from the registry (:mod:`lmprobe_jax.classifiers`). Prediction of
the built-in linear classifiers goes through :mod:`lmprobe_jax.functional`'s ``predict_proba`` /
``decision_function``. No solver code here.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone, is_regressor
from sklearn.metrics import accuracy_score, f1_score, precision_score, r2_score, recall_score, roc_auc_score

from lmprobe_jax_store import layer_order

from .. import functional as F
from ..classifiers import (
    _resolve_compute_backend,
    build_classifier,
    check_name,
    linear_fit,
    validate_classifier,
)
from ..exceptions import NotFittedError
from ..extraction import ActivationExtractor
from ..functional._selection import _IMPORTANCE_METRICS as IMPORTANCE_METRICS
from ..layers import LayerSpec, check_layer_spec, parse_layers
from ..pooling import pad_tokens, parse_pooling_strategy, reduce_token_scores, resolve_pooling
from ..profiling import current, profile_section, profiled
from ._features import (
    check_preprocessing,
    layer_blocks,
    parse_preprocessing,
    preprocessing_steps,
    scaling_strategy,
    split_preprocessing,
)
from ._labels import check_labels, check_prompts, split_fit_args, to_numpy
from ._modes import MODES

TASKS = ("classification", "regression")
DTYPES = ("float32", "float16", "bfloat16")


def default_cache_dir() -> Path | None:
    """Where Probes cache activations by default (:func:`lmprobe_jax.cache.activation_cache_dir`:
    ``$LMPROBE_CACHE_DIR``, else ``$LMPROBE_JAX_CACHE/activations``)."""
    from ..cache import activation_cache_dir

    return activation_cache_dir()


def auroc(labels: Any, proba: np.ndarray) -> float:
    """Area under the ROC curve of two-class ``labels`` ``(N,)`` against ``proba``: ``(N, 2)`` class
    probabilities (the second column scores) or ``(N,)`` scores; NaN unless ``labels`` hold two classes."""
    proba, labels = np.asarray(proba), np.asarray(labels)
    score = proba[:, 1] if proba.ndim == 2 and proba.shape[1] == 2 else proba
    return float(roc_auc_score(labels, score)) if np.unique(labels).size == 2 else float("nan")


class Probe(BaseEstimator):
    """Train a linear probe on a language model's activations (lmprobe's ``Probe``, same parameters).

    Parameters (lmprobe's; see its documentation for the full meaning):
      model: hub id, local directory, ``.gguf`` file, or ``(model, tokenizer)``; optional when only the
        ``*_from_activations`` methods are used.
      layers: a layer spec (:mod:`lmprobe_jax.layers`): int, list, fraction, ``"middle"``, ``"last"``,
        ``"all"``, ``"embeddings"``, ``"auto"``, ``"fast_auto"``, ``"sweep"``, ``"sweep:N"``,
        ``"sweep:A-B"``.
      pooling, train_pooling: ``last_token``, ``first_token``, ``mean``, ``max``, ``min``, ``all``.
      inference_pooling: the same, plus ``"score:<p>"`` / ``"activation:<p>"``
        (:mod:`lmprobe_jax.pooling`); bare ``max`` / ``min`` are score-level; ``all`` gives per-token
        results, padded ``(N, T, ...)``.
      classifier: a name of :mod:`lmprobe_jax.classifiers` or an sklearn estimator.
      task: ``"classification"`` or ``"regression"`` (default classifier then ``"ridge_regression"``).
      device, remote, backend, dtype, batch_size, max_retries: extraction settings (``backend``
        ``"local"`` or ``"nnsight"``; ``remote`` needs ``"nnsight"``).
      random_state: seed for folds and PCA, passed to classifiers that take one.
      auto_candidates, auto_alpha, fast_auto_top_k: layer selection.
      normalize_layers: True / ``"per_neuron"``, ``"per_layer"`` or False.
      classifier_kwargs: constructor arguments of a named classifier.
      preprocessing, pca_components: ``"standard"``, ``"pca:N"`` (or ``"pca"`` with ``pca_components``),
        ``"standard+pca:N"``.
      mass_mean_augment: append the projection on the class-mean difference as one more feature.
      compute_backend: ``"sklearn"`` / ``"auto"`` (the built-in estimators, on JAX's device, GPU included)
        or ``"cuml"`` (RAPIDS cuML's estimators where cuML has one; needs cuML installed).
      cache_dir: where activations are cached (default :func:`default_cache_dir`); None disables it.
      progress: show extraction progress bars.

    Attributes after ``fit``: ``classifier_``, ``classes_`` (None for regression), ``layers_`` (the
    layers the final probe reads), ``candidate_layers_``, ``selected_layers_`` (auto / fast_auto),
    ``features_`` (the fitted feature Pipeline), ``scaler_`` (its per-layer scaler) and
    ``preprocessing_pipeline_`` (its preprocessing steps, or None),
    ``layer_importances_``, ``sweep_result_`` (a :class:`LayerSweepResult`, sweep modes), ``sweep_``
    (the cross-validation table) and ``best_layer_``.

    lmprobe's private-looking names that its users reach for are real here: ``_extractor`` (the
    :class:`~lmprobe_jax.extraction.ActivationExtractor` every extraction goes through: loaded model,
    backend, layers, batch size), ``_get_scaling_strategy``, ``_parse_preprocessing_spec``,
    ``_preprocessing_includes_standard``, ``_get_remote``, ``_try_auroc``, ``_to_numpy``,
    ``_train_pooling`` / ``_inference_pooling`` (None without a model), ``_classifier_template``,
    ``_compute_backend``.
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
        max_retries: int | None = None,
        classifier_kwargs: dict | None = None,
        preprocessing: str | Sequence[str] | None = None,
        pca_components: int | None = None,
        mass_mean_augment: bool = False,
        compute_backend: str = "sklearn",
        cache_dir: str | os.PathLike | None = "default",
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
        self.max_retries = max_retries
        self.classifier_kwargs = classifier_kwargs
        self.preprocessing = preprocessing
        self.pca_components = pca_components
        self.mass_mean_augment = mass_mean_augment
        self.compute_backend = compute_backend
        self.cache_dir = cache_dir
        self.progress = progress
        self._check_params()

    # -- parameters ---------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        """Refuse bad parameters at construction, as lmprobe does (a layer range needs the model;
        ``normalize_layers`` is checked by fit, :meth:`_check_fit_params`, as lmprobe does)."""
        resolve_pooling(self.pooling, self.train_pooling, self.inference_pooling)
        if self.task not in TASKS:
            raise ValueError(f"Unknown task {self.task!r}: choose 'classification' or 'regression'.")
        if isinstance(self.classifier, str):
            check_name(self._classifier_name())
            build_classifier(
                self._classifier_name(), classifier_kwargs=self.classifier_kwargs
            )  # bad kwargs raise
        else:
            validate_classifier(self.classifier)
        parse_preprocessing(self.preprocessing)
        check_preprocessing(self.preprocessing, self.pca_components)
        check_layer_spec(self.layers)
        if self.backend not in ("local", "nnsight"):
            raise ValueError(f"Unknown backend {self.backend!r}: choose 'local' or 'nnsight'.")
        if self.backend == "local" and self.remote:
            raise ValueError("backend='local' does not support remote=True: use backend='nnsight' for NDIF.")
        if isinstance(self.dtype, str) and self.dtype.removeprefix("torch.") not in DTYPES:
            raise ValueError(f"Unknown dtype {self.dtype!r}: use one of {DTYPES} or None (float32).")
        _resolve_compute_backend(self.compute_backend)  # an unknown name, or "cuml" without cuML, raises

    def _check_fit_params(self) -> None:
        """Parameters lmprobe checks when fitting rather than at construction."""
        self._get_scaling_strategy()

    def _get_scaling_strategy(self) -> str | None:
        """``"per_neuron"``, ``"per_layer"`` or None (no scaler): what ``normalize_layers`` asks for
        (lmprobe's helper; raises ValueError for any other value)."""
        return scaling_strategy(self.normalize_layers)

    # lmprobe's helper: the preprocessing steps as written, split on "+", or None
    _parse_preprocessing_spec = staticmethod(split_preprocessing)

    def _preprocessing_includes_standard(self) -> bool:
        """Whether ``preprocessing`` has a StandardScaler step (lmprobe's helper)."""
        return "standard" in parse_preprocessing(self.preprocessing)

    def _with_params(self, **changes: Any) -> Probe:
        """A new unfitted Probe with this one's parameters, some changed (the model's depth memo kept)."""
        new = type(self)(**{**self.get_params(deep=False), **changes})
        new._model_layers = getattr(self, "_model_layers", None)
        return new

    def _classifier_name(self) -> Any:
        if self.task == "regression" and self.classifier == "logistic_regression":
            return "ridge_regression"  # lmprobe's regression default
        return self.classifier

    def _new_classifier(self) -> BaseEstimator:
        if not isinstance(self.classifier, str):
            est = clone(self.classifier)
            if self.random_state is not None and "random_state" in est.get_params():
                est.set_params(random_state=self.random_state)
            return est
        return build_classifier(
            self._classifier_name(), self.random_state, self.classifier_kwargs, self._compute_backend
        )

    @property
    def _compute_backend(self) -> str:
        """``"sklearn"`` or ``"cuml"``: what ``compute_backend`` builds (lmprobe's attribute)."""
        return _resolve_compute_backend(self.compute_backend)

    @property
    def _classifier_template(self) -> BaseEstimator:
        """A new unfitted classifier as this probe would build it (lmprobe's attribute name)."""
        return self._new_classifier()

    @property
    def _train_pooling(self) -> str | None:
        """The pooling of training prompts; None without a model (no prompts to pool), as lmprobe."""
        return None if self.model is None else self.train_pooling or self.pooling

    @property
    def _inference_pooling(self) -> str | None:
        """The pooling of prompts at prediction; None without a model, as lmprobe."""
        return None if self.model is None else self.inference_pooling or self.pooling

    @_inference_pooling.setter
    def _inference_pooling(self, value: str) -> None:
        """lmprobe code switches a fitted probe's inference pooling by this name."""
        parse_pooling_strategy(value)
        self.inference_pooling = value

    @property
    def _cache_dir(self) -> str | os.PathLike | None:
        return default_cache_dir() if self.cache_dir == "default" else self.cache_dir

    # -- activations ----------------------------------------------------------------------------------------
    def _check_model(self) -> None:
        if self.model is None:
            raise ValueError(
                "No model specified: this Probe was built without model=..., so it cannot read prompts. Pass "
                "model=..., or use fit_from_activations / predict_from_activations."
            )

    def _n_model_layers(self) -> int:
        if getattr(self, "_model_layers", None) is None:
            self._check_model()
            self._model_layers = self._extractor.n_model_layers
        return self._model_layers

    @property
    def _extractor(self) -> ActivationExtractor | None:
        """The :class:`~lmprobe_jax.extraction.ActivationExtractor` this probe extracts through (lmprobe's
        attribute: ``_extractor.model`` is the loaded model, ``_extractor._backend`` the backend object),
        reading the probe's layers (``layers_`` once fitted); None without a model. Made on first use and
        again when a parameter it holds changes."""
        if self.model is None:
            return None
        layers = self.layers_ if hasattr(self, "layers_") else self.layers
        key = (self.model, self.device, layers, self.batch_size, self.auto_candidates, self.remote,
               self.backend, self.dtype)  # fmt: skip
        cached = self.__dict__.get("_extractor_cache")
        if cached is None or not _same(cached[0], key):
            extractor = ActivationExtractor(
                self.model, self.device, layers, self.batch_size, self.auto_candidates, self.remote,
                self.backend, self.dtype,
            )  # fmt: skip
            extractor._model_layers = getattr(self, "_model_layers", None)
            cached = self.__dict__["_extractor_cache"] = (key, extractor)
        return cached[1]

    def __getstate__(self) -> dict:
        """Pickles leave out the extractor (it may hold the loaded model); it is made again on use."""
        state = super().__getstate__()
        state.pop("_extractor_cache", None)
        return state

    # lmprobe's helpers, as its users call them: AUROC of labels and probabilities (NaN for one class),
    # and a torch tensor / list / array as a numpy array
    _try_auroc = staticmethod(auroc)
    _to_numpy = staticmethod(to_numpy)

    def _get_remote(self, remote: bool | None) -> bool:
        """A call's ``remote=`` argument, or the probe's when None (lmprobe's helper)."""
        return self.remote if remote is None else remote

    def _extract(
        self,
        prompts: list[str],
        layers: list[Any],
        pooling: str,
        *,
        batch_size: int | None = None,
        remote: bool | None = None,
        invalidate_cache: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(L, N, D)`` activations of ``layers`` in that order (for ``"all"``: ``(L, T, D)`` token rows
        and the ``(N + 1,)`` offsets of each prompt's rows; else offsets None)."""
        self._n_model_layers()
        with profile_section(current(), "extract_and_pool"):
            store = self._extractor.extract_store(
                prompts,
                pooling,
                layers=layers,
                cache_dir=self._cache_dir,
                batch_size=batch_size,
                remote=self._get_remote(remote),
                overwrite=invalidate_cache,
                progress=self.progress,
            )
            X = store.stack(layers, pooling, dtype=np.float32)
        return X, (store.offsets() if pooling == "all" else None)

    def _layer_spec(self, n_layers: int) -> LayerSpec:
        return parse_layers(self.layers, n_layers, auto_candidates=self.auto_candidates)

    def warmup(
        self,
        prompts: list[str],
        remote: bool | None = None,
        max_retries: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Extract and cache the activations every layer this probe may need, without training."""
        self._check_model()
        prompts = check_prompts(prompts)
        spec = self._layer_spec(self._n_model_layers())
        poolings = {self._train_pooling, parse_pooling_strategy(self._inference_pooling).extraction}
        for pooling in poolings:
            self._extract(prompts, spec.layers, pooling, batch_size=batch_size, remote=remote)

    # -- fitting --------------------------------------------------------------------------------------------
    @profiled("Probe.fit")
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
        ``fit(prompts, labels)`` (numbers, bools or class names; regression targets with
        ``task="regression"``); :mod:`._labels` says how the two are told apart. Extraction runs once
        for every layer the layer spec needs. ``max_retries`` is nnsight's (remote) retry count."""
        self._check_model()
        self._check_fit_params()
        prompts, y, contrastive = split_fit_args(positive_prompts, negative_prompts)
        if contrastive and self.task == "regression":
            raise ValueError("task='regression' needs fit(prompts, targets), not two prompt lists.")
        y = check_labels(y, len(prompts), task=self.task, training=True)
        sw = _check_sample_weight(sample_weight, len(prompts))
        n_model = self._n_model_layers()
        spec = self._layer_spec(n_model)
        X, offsets = self._extract(
            prompts,
            spec.layers,
            self._train_pooling,
            batch_size=batch_size,
            remote=remote,
            invalidate_cache=invalidate_cache,
        )
        if offsets is not None:  # pooling "all": every real token is a training row with its prompt's label
            counts = np.diff(offsets)
            y, sw = np.repeat(y, counts), None if sw is None else np.repeat(sw, counts)
        self._fit_arrays(X, y, spec, sw)
        self.n_model_layers_, self.input_layers_ = n_model, None
        return self

    @profiled("Probe.fit_from_activations")
    def fit_from_activations(self, X: Any, y: Any, sample_weight: Any = None, n_layers: int = 1) -> Probe:
        """Fit from activations: ``(N, n_layers * D)`` (layers concatenated, lmprobe's layout) or
        ``(L, N, D)``. Int / list / named specs take every block of ``X`` as the probe's layers (as
        lmprobe); ``"auto"``, ``"fast_auto"`` and ``"sweep*"`` select among ``X``'s blocks."""
        self._check_fit_params()
        X3 = _as_blocks(X, n_layers)
        y = check_labels(y, X3.shape[1], task=self.task, training=True)
        sw = _check_sample_weight(sample_weight, X3.shape[1])
        spec = self._layer_spec(X3.shape[0]) if isinstance(self.layers, (str, LayerSpec)) else None
        if spec is None or spec.mode == "fixed":
            spec = LayerSpec("fixed", list(range(X3.shape[0])))
        self._fit_arrays(X3[spec.layers], y, spec, sw)
        self.n_model_layers_, self.input_layers_ = X3.shape[0], list(range(X3.shape[0]))
        return self

    def _fit_arrays(self, X: np.ndarray, y: np.ndarray, spec: LayerSpec, sw: np.ndarray | None) -> None:
        """Fit on ``X`` ``(len(spec.layers), N, D)``, the blocks of ``spec.layers`` in that order."""
        self.layer_spec_, self.candidate_layers_ = spec, list(spec.layers)
        self.selected_layers_ = self.best_layer_ = self.sweep_ = self.sweep_result_ = None
        self.layer_importances_ = self._evaluation_results_ = None
        self.n_features_per_layer_ = X.shape[2]
        if self.task == "classification":
            if is_regressor(self._new_classifier()):
                raise ValueError(
                    f"classifier {self._classifier_name()!r} is a regressor: use task='regression' for it, "
                    "or a classifier such as 'ridge' for labels."
                )
            self.classes_, codes = np.unique(y, return_inverse=True)  # classifiers see 0..K-1
        else:
            self.classes_, codes = None, y
        MODES[spec.mode].fit(self, X, codes, sw, list(spec.layers))

    def _layer_probe(self, fit_layer: Callable[[Probe], None], layer: Any) -> Probe:
        """A fitted single-layer Probe of this probe's sweep: ``fit_layer`` sets its fitted state."""
        probe = self._with_params(layers=layer)
        probe.layer_spec_, probe.candidate_layers_ = LayerSpec("fixed", [layer]), [layer]
        probe.selected_layers_ = probe.best_layer_ = probe.sweep_ = probe.sweep_result_ = None
        probe.layer_importances_ = probe._evaluation_results_ = None
        probe.classes_, probe.n_features_per_layer_ = self.classes_, self.n_features_per_layer_
        probe.n_model_layers_ = getattr(self, "n_model_layers_", None)
        probe.input_layers_ = getattr(self, "input_layers_", None)
        fit_layer(probe)
        return probe

    def use_layer_of_sweep(self, layer: Any) -> None:
        """Make this sweep probe predict with layer ``layer``'s probe (from ``sweep_result_``)."""
        source = self.sweep_result_[layer]
        for name in ("layers_", "features_", "scaler_", "classifier_"):
            setattr(self, name, getattr(source, name))

    # -- prediction -----------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "classifier_"):
            raise NotFittedError(
                f"This {type(self).__name__} has not been fitted yet: call fit (or fit_from_activations) first."
            )

    def _check_classification(self, what: str) -> None:
        if self.task != "classification":
            raise ValueError(f"{what} is for classification probes; this probe's task is regression.")

    def _features(self, X: np.ndarray) -> np.ndarray:
        """Classifier features of ``X`` ``(len(layers_), N, D)``."""
        with profile_section(current(), "transform"):
            return np.asarray(self.features_.transform(layer_blocks(X)), np.float32)

    @property
    def preprocessing_pipeline_(self) -> Any:
        """The fitted preprocessing steps (``"scaler"``, ``"pca"``) as a Pipeline, or None (lmprobe's)."""
        self._check_fitted()
        return preprocessing_steps(self.features_)

    @property
    def _mass_mean_direction_(self) -> np.ndarray | None:
        """The unit class-mean difference of ``mass_mean_augment`` (lmprobe's attribute), or None."""
        self._check_fitted()
        augment = self.features_.named_steps.get("augment")
        return None if augment is None else augment.transformer_list[1][1].direction_

    def _apply(self, features: np.ndarray, kind: str) -> np.ndarray:
        """``"proba"`` ``(N, K)``, ``"predict"`` ``(N,)`` labels / values: the built-in linear classifiers
        through :mod:`lmprobe_jax.functional`, any other estimator through its own methods."""
        with profile_section(current(), "predict"):
            return self._apply_classifier(features, kind)

    def _apply_classifier(self, features: np.ndarray, kind: str) -> np.ndarray:
        fit = linear_fit(self.classifier_)
        if kind == "proba":
            self._check_classification("predict_proba")
            if fit is not None:
                return np.asarray(F.predict_proba(fit, features), np.float64)
            if not hasattr(self.classifier_, "predict_proba"):
                raise ValueError(f"{type(self.classifier_).__name__} does not support predict_proba.")
            return np.asarray(self.classifier_.predict_proba(features))
        if self.task == "regression":
            return (
                np.asarray(F.decision_function(fit, features))
                if fit is not None
                else self.classifier_.predict(features)
            )
        codes = (
            np.asarray(F.predict(fit, features)) if fit is not None else self.classifier_.predict(features)
        )
        return self.classes_[np.asarray(codes, np.int64)]

    def _per_prompt(self, X: np.ndarray, offsets: np.ndarray | None, kind: str) -> np.ndarray:
        """``kind`` on activations of exactly ``layers_``: per prompt, or per token (padded) for
        ``inference_pooling="all"``, or reduced per-token scores for score-level pooling."""
        features = self._features(X)
        if offsets is None:
            return self._apply(features, kind)
        pooling = parse_pooling_strategy(self._inference_pooling)
        if not pooling.is_score_pooling:  # "all": one result per token, padded to (N, T_max, ...)
            if kind == "proba" or self.task == "regression":
                return pad_tokens(self._apply(features, kind), offsets)
            proba = pad_tokens(self._apply(features, "proba"), offsets, fill=0.0)
            return self.classes_[np.argmax(proba, axis=-1)]
        if self.task == "regression":
            return reduce_token_scores(self._apply(features, "predict"), offsets, pooling.base_strategy)
        proba = self._apply(features, "proba")
        if proba.shape[1] != 2:
            raise ValueError("Score-level pooling needs a binary classifier (it reduces the positive class).")
        positive = reduce_token_scores(proba[:, 1], offsets, pooling.base_strategy)
        proba = np.stack([1 - positive, positive], axis=1)
        return proba if kind == "proba" else self.classes_[(positive > 0.5).astype(int)]

    def _predict_prompts(
        self, prompts: Any, kind: str, remote: bool | None, batch_size: int | None
    ) -> np.ndarray:
        self._check_fitted()
        self._check_model()
        prompts = check_prompts(prompts)
        X, offsets = self._extract(
            prompts,
            self.layers_,
            parse_pooling_strategy(self._inference_pooling).extraction,
            batch_size=batch_size,
            remote=remote,
        )
        return self._per_prompt(X, offsets, kind)

    @profiled("Probe.predict")
    def predict(
        self, prompts: list[str], remote: bool | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Class labels (regression: predictions) ``(N,)``; ``(N, T)`` with ``inference_pooling="all"``."""
        return self._predict_prompts(prompts, "predict", remote, batch_size)

    @profiled("Probe.predict_proba")
    def predict_proba(
        self, prompts: list[str], remote: bool | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Class probabilities ``(N, K)``; with ``inference_pooling="all"`` ``(N, T, K)``, NaN after each
        prompt's last token (:meth:`predict_proba_per_token` gives the unpadded list)."""
        return self._predict_prompts(prompts, "proba", remote, batch_size)

    def predict_proba_per_token(self, prompts: list[str], batch_size: int | None = None) -> list[np.ndarray]:
        """Every real token's class probabilities: a list of ``(T_i, K)`` arrays, one per prompt."""
        self._check_fitted()
        self._check_model()
        X, offsets = self._extract(check_prompts(prompts), self.layers_, "all", batch_size=batch_size)
        proba = self._apply(self._features(X), "proba")
        return [proba[a:b] for a, b in itertools.pairwise(offsets)]

    def score(
        self, prompts: list[str], labels: Any, remote: bool | None = None, batch_size: int | None = None
    ) -> float:
        """Accuracy (R^2 for regression). Labels may hold one class only (e.g. monitoring data)."""
        pred = self.predict(prompts, remote=remote, batch_size=batch_size)
        return self._score(pred, labels)

    def _score(self, pred: np.ndarray, labels: Any) -> float:
        y = check_labels(labels, len(pred), task=self.task, training=False)
        if self.task == "regression":
            return float(r2_score(y, pred))
        if (y.dtype.kind in "USO") != (self.classes_.dtype.kind in "USO"):
            raise ValueError(
                f"The labels hold {y.dtype.kind in 'USO' and 'strings' or 'numbers'} but this probe's classes are "
                f"{self.classes_.tolist()}: pass labels of the same kind as in fit."
            )
        return float(accuracy_score(y, pred))

    @profiled("Probe.evaluate")
    def evaluate(self, prompts: list[str], labels: Any, remote: bool | None = None) -> dict:
        """accuracy, auroc (binary), f1, precision, recall, n_eval and eval_hash (``"sha256:..."``); for
        sweeps also ``layer_results`` (every layer's metrics), ``best_layer`` (chosen on the training set
        by cross-validation, or, when it was too small to hold rows out, here) and ``best_accuracy``."""
        self._check_fitted()
        self._check_classification("evaluate")
        prompts = check_prompts(prompts)
        y = check_labels(labels, len(prompts), task=self.task, training=False)
        digest = hashlib.sha256(
            "\n".join(sorted(prompts + [str(v) for v in y.tolist()])).encode()
        ).hexdigest()
        meta = {"n_eval": len(prompts), "eval_hash": f"sha256:{digest}"}
        acc = current()
        if self.sweep_result_ is None:
            with profile_section(acc, "extract_and_predict"):
                proba = self.predict_proba(prompts, remote=remote)
            with profile_section(acc, "score"):
                result = {**classification_metrics(y, proba, self.classes_), **meta}
        else:
            with profile_section(acc, "extract_and_predict"):
                proba = self.sweep_result_.predict_proba(prompts)
            with profile_section(acc, "score"):
                per_layer = {layer: classification_metrics(y, p, self.classes_) for layer, p in proba.items()}
            best = self.best_layer_
            if best is None:  # no cross-validation was possible: lmprobe's choice, on this set
                best = max(per_layer, key=lambda layer: (per_layer[layer]["accuracy"], -layer_order(layer)))
                self.use_layer_of_sweep(best)
            result = {
                **per_layer[best],
                **meta,
                "layer_results": per_layer,
                "best_layer": best,
                "best_accuracy": per_layer[best]["accuracy"],
            }
        self._evaluation_results_ = result
        return result

    # -- from activations -------------------------------------------------------------------------------------
    def _check_activation_input(self, X: Any) -> np.ndarray:
        """Blocks of ``layers_`` from ``X``: either exactly the probe's layers, or (after
        ``fit_from_activations``) the same blocks it was fitted from."""
        self._check_fitted()
        source = getattr(self, "input_layers_", None)
        n = len(source) if source is not None else len(self.layers_)
        X3 = _as_blocks(X, n)
        if X3.shape[0] != n:
            raise ValueError(f"X holds {X3.shape[0]} layers; the probe expects {n}.")
        if X3.shape[2] != self.n_features_per_layer_:
            raise ValueError(
                f"Expected {self.n_features_per_layer_} features per layer, as in fit; X has {X3.shape[2]}."
            )
        return X3[[source.index(layer) for layer in self.layers_]] if source is not None else X3

    @profiled("Probe.predict_from_activations")
    def predict_from_activations(self, X: Any) -> np.ndarray:
        """Predictions from activations laid out as in :meth:`fit_from_activations`."""
        return self._apply(self._features(self._check_activation_input(X)), "predict")

    @profiled("Probe.predict_proba_from_activations")
    def predict_proba_from_activations(self, X: Any) -> np.ndarray:
        self._check_fitted()
        self._check_classification("predict_proba")
        return self._apply(self._features(self._check_activation_input(X)), "proba")

    def score_from_activations(self, X: Any, y: Any) -> float:
        return self._score(self.predict_from_activations(X), y)

    # -- layer importance -------------------------------------------------------------------------------------
    def compute_layer_importance(self, metric: str = "l2", normalize: bool = True) -> np.ndarray:
        """Per-layer importance ``(len(layers_),)`` from the classifier's coefficients (lmprobe's)."""
        self._check_fitted()
        if metric not in IMPORTANCE_METRICS:
            raise ValueError(f"Unknown metric {metric!r}: choose from {IMPORTANCE_METRICS}.")
        coef = getattr(self.classifier_, "coef_", None)
        if coef is None:
            raise RuntimeError(
                f"{type(self.classifier_).__name__} has no coef_: layer importance needs a linear model."
            )
        if self.preprocessing or self.mass_mean_augment:
            raise RuntimeError("Layer importance is undefined after preprocessing or augmentation.")
        n_layers = len(self.layers_)
        coef = np.asarray(coef, np.float64).reshape(-1, n_layers, np.asarray(coef).shape[-1] // n_layers)
        per_layer = coef.transpose(1, 0, 2).reshape(-1)  # every class's weights of a layer form its group
        importance = np.asarray(F.layer_importance(per_layer, metric, n_layers=n_layers, normalize=normalize))
        self.layer_importances_ = importance
        return importance

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted probe to directory ``path`` (``probe.json`` + ``arrays.safetensors``),
        atomically: readers see the old probe or the new one, never a mix (:mod:`._io`)."""
        from ._io import save_probe

        self._check_fitted()
        save_probe(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Probe:
        """Read a probe written by :meth:`save`. Only JSON and safetensors are read; no code runs; the
        arrays' checksum must match the JSON's."""
        from ._io import load_probe

        return load_probe(cls, path)

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
    ):
        """Train a probe at every layer of ``layers`` from one extraction pass (:mod:`._sweep_result`).

        The built-in batched classifiers train every layer in one solve; with ``cv=True`` they also
        cross-validate each layer on the training rows first (``result.sweep``). ``negative_prompts``
        may be labels. Extra keyword arguments go to :class:`Probe` (``cache_dir``, ``progress``, ...)."""
        from ._sweep_result import sweep_layers

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
        return sweep_layers(base, positive_prompts, negative_prompts, layers, cv=cv)


LinearProbe = Probe  # lmprobe's alias


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> dict:
    """accuracy, f1, precision, recall (positive: ``classes[1]``) and auroc for two classes; accuracy
    only for more. AUROC is NaN when ``y`` holds one class."""
    pred = classes[np.argmax(proba, axis=1)]
    if len(classes) != 2:
        return {"accuracy": float(accuracy_score(y, pred))}
    y_pos, p_pos = y == classes[1], pred == classes[1]
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "auroc": auroc(y_pos, proba),
        "f1": float(f1_score(y_pos, p_pos, zero_division=0)),
        "precision": float(precision_score(y_pos, p_pos, zero_division=0)),
        "recall": float(recall_score(y_pos, p_pos, zero_division=0)),
    }


def _check_sample_weight(sample_weight: Any, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    sw = to_numpy(sample_weight).astype(np.float64)
    if sw.shape != (n,):
        raise ValueError(
            f"sample_weight length {sw.shape[0] if sw.ndim else 0} does not match the {n} training samples."
        )
    if not np.all(np.isfinite(sw)) or np.any(sw < 0):
        raise ValueError("sample_weight must be finite and non-negative.")
    return sw


def _same(a: tuple, b: tuple) -> bool:
    """Whether two parameter tuples hold the same values (objects such as models: the same object)."""
    return all(x is y or (type(x) is type(y) and isinstance(x, (str, int, float, list, tuple)) and x == y)
               for x, y in zip(a, b, strict=True))  # fmt: skip


def _as_blocks(X: Any, n_layers: int) -> np.ndarray:
    """``(N, n_layers * D)`` or ``(L, N, D)`` activations as ``(L, N, D)`` float32."""
    X = to_numpy(X)
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must hold numbers; got dtype {X.dtype}.")
    X = X.astype(np.float32, copy=False)
    if not np.all(np.isfinite(X)):
        raise ValueError("X holds NaN or infinite values.")
    if X.ndim == 3:
        return X
    if X.ndim != 2:
        raise ValueError(f"X must be (N, n_layers * D) or (L, N, D); got shape {X.shape}.")
    if n_layers < 1 or X.shape[1] % n_layers:
        raise ValueError(f"X has {X.shape[1]} features, not a multiple of n_layers={n_layers}.")
    return X.reshape(X.shape[0], n_layers, -1).transpose(1, 0, 2)


__all__ = [
    "LinearProbe",
    "NotFittedError",
    "Probe",
    "classification_metrics",
    "default_cache_dir",
]
