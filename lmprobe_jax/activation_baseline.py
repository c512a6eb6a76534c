"""``ActivationBaseline``: is the probe's direction special, or would any view of the activations do?

Methods (lmprobe's): ``"random_direction"`` (the activations projected on one random unit vector, seeded
by ``random_state``), ``"pca"`` (their top ``n_components`` principal components), ``"layer_0"`` (block
0's output instead of ``layers``; ``layers="embeddings"`` on a :class:`~lmprobe_jax.Probe` reads the
stream entering block 0). Several layers are concatenated, as in lmprobe. Activations come from the same
content-keyed cache as :class:`~lmprobe_jax.Probe` (one extraction pass); classifiers from
:mod:`lmprobe_jax.classifiers`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA

from .baseline import PromptClassifier
from .probe import Probe
from .probe._features import layer_blocks
from .probe._labels import check_labels, check_prompts, split_fit_args

METHODS = ("random_direction", "pca", "layer_0")


class ActivationBaseline(PromptClassifier):
    """An activation baseline with lmprobe's parameters (module doc).

    Attributes after ``fit``: ``classifier_``, ``classes_``, ``layers_`` (the blocks read),
    ``random_direction_`` ``(L * D,)`` (random_direction) or ``pca_`` (pca).
    """

    VALID_METHODS = METHODS

    def __init__(
        self,
        model: Any,
        method: str = "random_direction",
        layers: Any = -1,
        pooling: str = "last_token",
        classifier: str | BaseEstimator = "logistic_regression",
        device: str = "auto",
        remote: bool = False,
        random_state: int | None = None,
        n_components: int = 10,
        batch_size: int = 8,
        backend: str = "local",
    ):
        self.model = model
        self.method = method
        self.layers = layers
        self.pooling = pooling
        self.classifier = classifier
        self.device = device
        self.remote = remote
        self.random_state = random_state
        self.n_components = n_components
        self.batch_size = batch_size
        self.backend = backend
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: choose from {METHODS}.")

    def _reader(self) -> Probe:
        """A Probe used only for its extraction (same cache, device and backend settings)."""
        return Probe(
            model=self.model,
            layers=0 if self.method == "layer_0" else self.layers,
            pooling=self.pooling,
            device=self.device,
            remote=self.remote,
            batch_size=self.batch_size,
            backend=self.backend,
            progress=False,
        )

    def activations(self, prompts: list[str]) -> np.ndarray:
        """``(N, L * D)`` pooled activations of the baseline's layers, concatenated."""
        reader = self._reader()
        layers = getattr(self, "layers_", None) or reader._layer_spec(reader._n_model_layers()).layers
        X, _ = reader._extract(check_prompts(prompts), layers, self.pooling)
        self.layers_ = list(layers)
        return layer_blocks(X)

    def transform(self, X: np.ndarray, *, fit: bool = False) -> np.ndarray:
        """The baseline's features of activations ``X`` ``(N, L * D)``."""
        if self.method == "random_direction":
            if fit:
                # lmprobe's generator and draw, so one seed gives both libraries the same direction
                direction = np.random.RandomState(self.random_state).randn(X.shape[1])
                self.random_direction_ = direction / np.linalg.norm(direction)
            return (np.asarray(X, np.float64) @ self.random_direction_)[:, None].astype(np.float32)
        if self.method == "pca":
            if fit:
                n = min(self.n_components, X.shape[0], X.shape[1])
                self.pca_ = PCA(n_components=n, random_state=self.random_state).fit(X)
            return np.asarray(self.pca_.transform(X), np.float32)
        return np.asarray(X, np.float32)

    def fit(self, positive_prompts: Any, negative_prompts: Any = None) -> ActivationBaseline:
        prompts, y, _ = split_fit_args(positive_prompts, negative_prompts)
        y = check_labels(y, len(prompts), task="classification", training=True)
        self.layers_ = None
        features = self.transform(self.activations(prompts), fit=True)
        self.classes_, codes = np.unique(y, return_inverse=True)
        self.classifier_ = self._new_classifier().fit(features, codes)
        return self

    def predict(self, prompts: list[str]) -> np.ndarray:
        self._check_fitted()
        return self.classes_[np.asarray(self.classifier_.predict(self.transform(self.activations(prompts))))]

    def predict_proba(self, prompts: list[str]) -> np.ndarray:
        self._check_fitted()
        return np.asarray(self.classifier_.predict_proba(self.transform(self.activations(prompts))))
