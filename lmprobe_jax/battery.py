"""``BaselineBattery``: every applicable baseline on one task, in one report (lmprobe's API).

Text baselines (:class:`~lmprobe_jax.baseline.BaselineProbe`) need no model; activation baselines
(:class:`~lmprobe_jax.activation_baseline.ActivationBaseline`) share **one** extraction pass over the
training prompts and one over the test prompts (every layer any of them reads), and, with a built-in
batched classifier, **one** solve: each baseline's features are zero-padded to the widest and stacked as
the "layer" axis of one batched fit. A zero column leaves an L2-penalised (or mass-mean) fit unchanged --
its gradient is zero at zero weight -- so each baseline gets exactly its own probe; the padding is then
cut off its coefficients.

``fit_time`` of a baseline is its own feature time plus an equal share of the shared extraction and
solve; ``predict_time`` likewise.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from .activation_baseline import ActivationBaseline
from .baseline import BaselineProbe
from .classifiers import build_classifier, is_batched
from .exceptions import NotFittedError
from .probe import Probe
from .probe._features import layer_blocks
from .probe._labels import check_labels, check_prompts, split_fit_args

TEXT = ("bow", "tfidf", "random", "majority", "sentence_length", "sentence_transformers", "perplexity")
ACTIVATION = ("random_direction", "pca", "layer_0")
#: Every baseline name, and whether it needs a model.
BASELINE_REGISTRY: dict[str, dict] = {
    **{
        name: {"class": BaselineProbe, "needs_model": name == "perplexity", "kwargs": {"method": name}}
        for name in TEXT
    },
    **{
        name: {"class": ActivationBaseline, "needs_model": True, "kwargs": {"method": name}}
        for name in ACTIVATION
    },
}


@dataclass
class BaselineResult:
    """One baseline's ``score`` on the test set, the fitted ``baseline``, and its times in seconds."""

    name: str
    score: float
    baseline: Any
    fit_time: float = 0.0
    predict_time: float = 0.0

    def __repr__(self) -> str:
        return f"BaselineResult(name={self.name!r}, score={self.score:.4f})"


@dataclass
class BaselineResults:
    """The results of :meth:`BaselineBattery.fit`, in run order; index by position or name."""

    results: list[BaselineResult] = field(default_factory=list)

    def get_best(self, n: int = 1) -> list[BaselineResult]:
        return sorted(self.results, key=lambda r: r.score, reverse=True)[:n]

    def __iter__(self) -> Iterator[BaselineResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, key: str | int) -> BaselineResult:
        if isinstance(key, int):
            return self.results[key]
        for result in self.results:
            if result.name == key:
                return result
        raise KeyError(f"Baseline {key!r} not found; the results hold {[r.name for r in self.results]}.")

    def summary(self) -> str:
        lines = ["Baseline Results:", "-" * 60]
        for r in self.get_best(len(self.results)):
            lines.append(
                f"  {r.name:30s} {r.score:.4f}  (fit: {r.fit_time:.2f}s, predict: {r.predict_time:.2f}s)"
            )
        return "\n".join(lines)


def _trim(estimator: BaseEstimator, width: int, padded: int) -> BaseEstimator:
    """Cut the zero-padded feature columns off a fitted estimator (every fitted array whose last axis
    has the padded width)."""
    for name, value in list(vars(estimator).items()):
        if name.endswith("_") and isinstance(value, np.ndarray) and value.ndim and value.shape[-1] == padded:
            setattr(estimator, name, value[..., :width])
    estimator.n_features_in_ = width
    return estimator


class BaselineBattery:
    """Run the applicable baselines (all of :data:`BASELINE_REGISTRY`, those needing a model only with
    one; ``include`` / ``exclude`` filter) and score them on the test prompts (default: the training
    prompts) with ``scorer(y_true, y_pred)`` (default accuracy)."""

    def __init__(
        self,
        model: Any = None,
        layers: Any = -1,
        pooling: str = "last_token",
        classifier: str | BaseEstimator = "logistic_regression",
        device: str = "auto",
        remote: bool = False,
        random_state: int | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        scorer: Callable[[np.ndarray, np.ndarray], float] | None = None,
        batch_size: int = 8,
    ):
        self.model = model
        self.layers = layers
        self.pooling = pooling
        self.classifier = classifier
        self.device = device
        self.remote = remote
        self.random_state = random_state
        self.include = include
        self.exclude = exclude or []
        self.scorer = scorer or (lambda y_true, y_pred: float(np.mean(y_true == y_pred)))
        self.batch_size = batch_size
        self.results_: BaselineResults | None = None
        self._baselines: dict[str, Any] = {}
        unknown = sorted((set(include or []) | set(self.exclude)) - set(BASELINE_REGISTRY))
        if unknown:
            raise ValueError(f"Unknown baselines {unknown}: choose from {sorted(BASELINE_REGISTRY)}.")

    @property
    def available_baselines(self) -> list[str]:
        return list(BASELINE_REGISTRY)

    @property
    def applicable_baselines(self) -> list[str]:
        """Every registered baseline whose needs are met (a model; the sentence-transformers package),
        filtered by ``include`` / ``exclude``."""
        return [
            name
            for name, spec in BASELINE_REGISTRY.items()
            if not (spec["needs_model"] and self.model is None)
            and not (
                name == "sentence_transformers" and importlib.util.find_spec("sentence_transformers") is None
            )
            and (self.include is None or name in self.include)
            and name not in self.exclude
        ]

    def get_baseline(self, name: str) -> Any:
        if name not in self._baselines:
            raise KeyError(f"Baseline {name!r} was not fitted; fitted: {sorted(self._baselines)}.")
        return self._baselines[name]

    def get_best(self, n: int = 1) -> list[BaselineResult]:
        if self.results_ is None:
            raise RuntimeError("This BaselineBattery is not fitted yet: call fit first.")
        return self.results_.get_best(n)

    def fit(
        self,
        positive_prompts: Any,
        negative_prompts: Any = None,
        test_prompts: list[str] | None = None,
        test_labels: Any = None,
    ) -> BaselineResults:
        prompts, y, _ = split_fit_args(positive_prompts, negative_prompts)
        y = check_labels(y, len(prompts), task="classification", training=True)
        if test_prompts is None:
            test_prompts, y_test = prompts, y
        else:
            test_prompts = check_prompts(test_prompts, "test_prompts")
            y_test = check_labels(test_labels, len(test_prompts), task="classification", training=False)
        self._baselines, results = {}, []
        names = self.applicable_baselines
        for name in names:
            if name in TEXT:
                start = time.perf_counter()
                baseline = BaselineProbe(
                    method=name,
                    classifier=self.classifier,
                    random_state=self.random_state,
                    model=self.model,
                    device=self.device,
                    remote=self.remote,
                )
                baseline.fit(prompts, y)
                fit_time = time.perf_counter() - start
                start = time.perf_counter()
                score = self.scorer(y_test, baseline.predict(test_prompts))
                results.append(
                    BaselineResult(name, float(score), baseline, fit_time, time.perf_counter() - start)
                )
                self._baselines[name] = baseline
        active = [name for name in names if name in ACTIVATION]
        if active:
            results.extend(self._activation_baselines(active, prompts, y, test_prompts, y_test))
        order = {name: i for i, name in enumerate(names)}
        self.results_ = BaselineResults(sorted(results, key=lambda r: order[r.name]))
        return self.results_

    def _activation_baselines(
        self, names: list[str], prompts: list[str], y: np.ndarray, test_prompts: list[str], y_test: np.ndarray
    ) -> list[BaselineResult]:
        """Every activation baseline from one extraction pass per prompt set and one batched solve."""
        start = time.perf_counter()
        reader = Probe(
            model=self.model,
            layers=self.layers,
            pooling=self.pooling,
            device=self.device,
            remote=self.remote,
            batch_size=self.batch_size,
            progress=False,
        )
        layers = reader._layer_spec(reader._n_model_layers()).layers
        needed = list(dict.fromkeys([*layers, *([0] if "layer_0" in names else [])]))
        X_train, _ = reader._extract(prompts, needed, self.pooling)
        baselines, train, reads = [], [], []
        for name in names:
            baseline = ActivationBaseline(
                self.model,
                method=name,
                layers=self.layers,
                pooling=self.pooling,
                classifier=self.classifier,
                device=self.device,
                remote=self.remote,
                random_state=self.random_state,
                batch_size=self.batch_size,
            )
            baseline.layers_ = [0] if name == "layer_0" else list(layers)
            rows = [needed.index(layer) for layer in baseline.layers_]
            train.append(baseline.transform(layer_blocks(X_train[rows]), fit=True))
            baselines.append(baseline)
            reads.append(rows)
        classes, codes = np.unique(y, return_inverse=True)
        if isinstance(self.classifier, str) and is_batched(self.classifier, None):
            width = max(f.shape[1] for f in train)
            stacked = np.stack([np.pad(f, ((0, 0), (0, width - f.shape[1]))) for f in train])  # (B, N, width)
            batched = build_classifier(self.classifier, self.random_state).fit(stacked, codes)
            fitted = [_trim(batched.select_layer(i), f.shape[1], width) for i, f in enumerate(train)]
        else:
            fitted = [
                baseline._new_classifier().fit(f, codes) for baseline, f in zip(baselines, train, strict=True)
            ]
        for baseline, classifier in zip(baselines, fitted, strict=True):
            baseline.classifier_, baseline.classes_ = classifier, classes
        fit_share = (time.perf_counter() - start) / len(names)
        start = time.perf_counter()
        X_test, _ = reader._extract(test_prompts, needed, self.pooling)
        results = []
        for name, baseline, rows in zip(names, baselines, reads, strict=True):
            pred = classes[
                np.asarray(baseline.classifier_.predict(baseline.transform(layer_blocks(X_test[rows]))))
            ]
            results.append(BaselineResult(name, float(self.scorer(y_test, pred)), baseline, fit_share))
            self._baselines[name] = baseline
        predict_share = (time.perf_counter() - start) / len(names)
        for result in results:
            result.predict_time = predict_share
        return results


__all__ = ["BASELINE_REGISTRY", "BaselineBattery", "BaselineResult", "BaselineResults", "NotFittedError"]
