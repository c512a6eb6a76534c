"""The features a Probe's classifier sees: one scikit-learn ``Pipeline`` over concatenated layers.

``(N, L * D)`` activations (the probe's layers side by side) go through, in order:

1. ``scale``: the per-layer scaler (``normalize_layers``; absent when False): scikit-learn's
   StandardScaler for one layer per neuron, as lmprobe, else :class:`lmprobe_jax.scaling.PerLayerScaler`;
2. ``preprocessing``: ``"standard"`` (StandardScaler, step ``"scaler"``), ``"pca:N"`` (PCA, step
   ``"pca"``), chained with ``+``; a chain that starts with ``"standard"`` makes step 1 redundant (any
   per-feature affine map followed by standardisation is standardisation), so it is left out with a
   warning, as lmprobe does;
3. with ``mass_mean_augment``, the projection of the *scaled* activations on the unit difference of the
   class means (:class:`MassMeanProjection`) is appended as one more column (a ``FeatureUnion`` of 2
   and 3).

The pipeline is fitted with the labels (only the projection reads them) and the sample weights (only
the scaler reads them); the Probe keeps it as ``features_`` and its step 2 as
``preprocessing_pipeline_`` (lmprobe's attribute; None without preprocessing).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler

from ..scaling import PerLayerScaler


class MassMeanProjection(TransformerMixin, BaseEstimator):
    """One feature: the projection on the unit difference of the two class means (``classes_[1]`` minus
    ``classes_[0]``), fitted on the rows it is given. Attributes: ``direction_`` ``(D,)``."""

    def fit(self, X: Any, y: Any = None) -> MassMeanProjection:
        X = np.asarray(X, np.float64)
        classes = np.unique(y)
        if classes.size != 2:
            raise ValueError(f"mass_mean_augment needs two classes; the labels hold {classes.size}.")
        direction = X[y == classes[1]].mean(0) - X[y == classes[0]].mean(0)
        self.direction_ = direction / max(np.linalg.norm(direction), 1e-12)
        return self

    def transform(self, X: Any) -> np.ndarray:
        return (np.asarray(X, np.float64) @ self.direction_)[:, None].astype(np.float32)


def scaling_strategy(normalize_layers: Any) -> str | None:
    """``normalize_layers`` as the per-layer scaler's strategy: True -> ``"per_neuron"``,
    ``"per_neuron"`` / ``"per_layer"`` as given, False -> None (no scaler); ValueError otherwise."""
    if normalize_layers is False:
        return None
    if normalize_layers is True:
        return "per_neuron"
    if normalize_layers in ("per_neuron", "per_layer"):
        return normalize_layers
    raise ValueError(
        f"Invalid normalize_layers {normalize_layers!r}: choose True, False, 'per_neuron' or 'per_layer'."
    )


def layer_scaler(n_layers: int, strategy: str) -> StandardScaler | PerLayerScaler:
    """The unfitted scaler of ``strategy`` (:func:`scaling_strategy`) for ``n_layers`` concatenated layers."""
    if n_layers == 1 and strategy == "per_neuron":
        return StandardScaler()
    return PerLayerScaler(n_layers, strategy=strategy)


def split_preprocessing(preprocessing: str | Sequence[str] | None) -> list[str] | None:
    """``"standard+pca:50"`` -> ``["standard", "pca:50"]``, a list as is, None -> None (the steps as
    written, not yet checked: :func:`parse_preprocessing`)."""
    if preprocessing is None:
        return None
    if isinstance(preprocessing, str):
        return [step.strip() for step in preprocessing.split("+")]
    return list(preprocessing)


def parse_preprocessing(preprocessing: str | Sequence[str] | None) -> list[str]:
    """``"standard+pca:50"`` or ``["standard", "pca"]`` -> the list of step names (``"standard_scaler"``
    is an alias of ``"standard"``); raises for unknown steps."""
    steps = split_preprocessing(preprocessing) or []
    names = []
    for step in steps:
        step = str(step).strip()
        step = "standard" if step == "standard_scaler" else step
        if step != "standard" and not re.fullmatch(r"pca(:\d+)?", step):
            raise ValueError(
                f"Unknown preprocessing step {step!r}: use 'standard', 'pca', 'pca:N' or a '+'-joined chain."
            )
        names.append(step)
    return names


def check_preprocessing(preprocessing: Any, pca_components: int | None) -> None:
    for step in parse_preprocessing(preprocessing):
        if step == "pca" and pca_components is None:
            raise ValueError("PCA requested but no component count: write 'pca:N' or pass pca_components=N.")


def _steps(preprocessing: Any, pca_components: int | None, random_state: int | None) -> list:
    out = []
    for step in parse_preprocessing(preprocessing):
        if step == "standard":
            out.append(("scaler", StandardScaler()))
        else:
            n = int(step[4:]) if ":" in step else pca_components
            out.append(("pca", PCA(n_components=n, random_state=0 if random_state is None else random_state)))
    return out


def build_features(
    n_layers: int,
    *,
    normalize_layers: bool | str,
    preprocessing: Any,
    pca_components: int | None,
    mass_mean_augment: bool,
    random_state: int | None,
) -> Pipeline:
    """The unfitted feature pipeline of a probe reading ``n_layers`` concatenated layers."""
    steps: list = []
    pre_names = parse_preprocessing(preprocessing)
    strategy = scaling_strategy(normalize_layers)
    if strategy is not None and pre_names[:1] == ["standard"]:
        warnings.warn(
            f"normalize_layers={normalize_layers!r} is auto-disabled: preprocessing starts with 'standard', "
            "which standardises every feature anyway.",
            stacklevel=5,
        )
    elif strategy is not None:
        steps.append(("scale", layer_scaler(n_layers, strategy)))
    pre = _steps(preprocessing, pca_components, random_state)
    if mass_mean_augment:
        body = Pipeline(pre) if pre else "passthrough"
        steps.append(("augment", FeatureUnion([("features", body), ("mass_mean", MassMeanProjection())])))
    else:
        steps.extend(pre)
    return Pipeline(steps or [("identity", "passthrough")])


def fit_features(pipeline: Pipeline, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None) -> np.ndarray:
    """Fit ``pipeline`` on ``X`` ``(N, L * D)`` and return the classifier's training features."""
    params = {} if sw is None or "scale" not in pipeline.named_steps else {"scale__sample_weight": sw}
    return np.asarray(pipeline.fit_transform(X, y, **params), np.float32)


def preprocessing_steps(features: Pipeline) -> Pipeline | None:
    """The preprocessing part (step 2) of a fitted feature pipeline, or None."""
    if "augment" in features.named_steps:
        body = features.named_steps["augment"].transformer_list[0][1]
        return None if isinstance(body, str) else body
    steps = [(n, s) for n, s in features.steps if n not in ("scale", "identity")]
    return Pipeline(steps) if steps else None


def layer_blocks(X: np.ndarray) -> np.ndarray:
    """``(L, N, D)`` -> ``(N, L * D)``, layers side by side (lmprobe's layout)."""
    return X.transpose(1, 0, 2).reshape(X.shape[1], -1)
