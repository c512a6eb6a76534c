"""``"sweep"``, ``"sweep:N"``, ``"sweep:A-B"``: an independent probe per layer; the probe becomes the
layer that cross-validates best on the training rows.

Built-in batched classifiers (:data:`lmprobe_jax.classifiers.BATCHED`) with the default per-layer
standardisation train and cross-validate every layer in one solve
(:func:`lmprobe_jax.sweep.sweep_activations`); any other set-up (preprocessing, augmentation, another
classifier) fits each layer's full pipeline and cross-validates it with scikit-learn's
``cross_val_score``. Folds: ``min(5, rows of the rarest class)``; with fewer than 2 rows in a class
nothing can be held out, so the first layer is used until :meth:`Probe.evaluate` picks one (lmprobe's
behaviour) and a warning says so.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ...classifiers import is_batched
from ...sweep import standardize, sweep_activations
from .._features import layer_blocks
from .fixed import fit_blocks


class BatchedFit(NamedTuple):
    """One estimator fitted on every layer at once (3-D input) and the per-layer standardisation
    ``(L, 1, D)`` applied before it (:class:`lmprobe_jax.sweep.SweepResult` has the same fields)."""

    layers: list[int]
    estimator: Any
    mean: np.ndarray
    scale: np.ndarray


def can_batch(probe: Any) -> bool:
    return (
        is_batched(probe._classifier_name(), probe.classifier_kwargs, probe._compute_backend)
        and probe.normalize_layers is not False
        and not probe.preprocessing
        and not probe.mass_mean_augment
    )


def fit_batched(
    probe: Any, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None, layers: list[int]
) -> BatchedFit:
    """Every layer of ``X`` ``(L, N, D)`` standardised and fitted in one batched solve."""
    Xs, mean, scale = standardize(X)
    estimator = probe._new_classifier()
    estimator.fit(Xs, y, **({} if sw is None else {"sample_weight": sw}))
    return BatchedFit(list(layers), estimator, mean, scale)


def install_layer(probe: Any, fits: BatchedFit, layer: int) -> None:
    """Make ``probe`` layer ``layer``'s single-layer probe, sliced out of a batched fit."""
    i = fits.layers.index(layer)
    scaler = StandardScaler()  # what a single-layer probe's per-neuron scaler is, fitted state sliced in
    scaler.mean_, scaler.scale_ = fits.mean[i, 0].astype(np.float64), fits.scale[i, 0].astype(np.float64)
    scaler.var_, scaler.n_features_in_ = scaler.scale_**2, scaler.mean_.shape[0]
    probe.layers_ = [layer]
    probe.features_ = Pipeline([("scale", scaler)])
    probe.scaler_ = scaler
    probe.classifier_ = fits.estimator.select_layer(i)


def n_folds(y: np.ndarray, task: str) -> int:
    """At most 5 folds, no more than rows of the rarest class (of rows, for regression)."""
    if task == "regression":
        return min(5, len(y))
    return int(min(5, np.unique(y, return_counts=True)[1].min()))


class Sweep:
    name = "sweep"

    def fit(self, probe: Any, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None, layers: list[int]) -> None:
        folds = n_folds(y, probe.task)
        seed = 0 if probe.random_state is None else probe.random_state
        if can_batch(probe):
            if folds >= 2:
                fits = probe.sweep_ = sweep_activations(
                    X,
                    y,
                    classifier=probe._classifier_name(),
                    classifier_kwargs=probe.classifier_kwargs,
                    layers=layers,
                    folds=folds,
                    random_state=seed,
                    sample_weight=sw,
                )
                cv_accuracy = fits.accuracy.mean(axis=1)
                best = fits.best_layer  # ties: the better AUROC, then the earlier layer
            else:
                fits, cv_accuracy = fit_batched(probe, X, y, sw, layers), None
            by_layer = {
                layer: probe._layer_probe(lambda p, layer=layer: install_layer(p, fits, layer), layer)
                for layer in layers
            }
        else:
            by_layer, scores = {}, []
            for i, layer in enumerate(layers):
                by_layer[layer] = probe._layer_probe(
                    lambda p, i=i, layer=layer: fit_blocks(p, X[i : i + 1], y, [layer], sw), layer
                )
                if folds >= 2:
                    scores.append(_cross_validate(by_layer[layer], X[i : i + 1], y, folds, seed))
            cv_accuracy = np.array(scores) if scores else None
            best = None if cv_accuracy is None else layers[int(np.argmax(cv_accuracy))]  # ties: earlier
        from .._sweep_result import LayerSweepResult

        probe.sweep_result_ = LayerSweepResult(by_layer, getattr(probe, "sweep_", None), probe)
        if cv_accuracy is None:
            warnings.warn(
                f"layers={probe.layers!r}: a class has fewer than 2 training rows, so no layer can be chosen "
                f"by cross-validation; using layer {layers[0]} until evaluate() picks one.",
                stacklevel=4,
            )
            chosen = layers[0]
        else:
            chosen = probe.best_layer_ = best
        probe.use_layer_of_sweep(chosen)


def _cross_validate(layer_probe: Any, X: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    """Mean held-out score (accuracy, or R^2 for regression) of the layer probe's whole pipeline."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

    model = Pipeline([("features", layer_probe.features_), ("classifier", layer_probe._new_classifier())])
    split = KFold if layer_probe.task == "regression" else StratifiedKFold
    cv = split(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clone(model), layer_blocks(X), y, cv=cv).mean())
