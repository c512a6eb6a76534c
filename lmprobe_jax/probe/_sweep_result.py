"""``LayerSweepResult`` (lmprobe's: a fitted probe per layer) and ``Probe.sweep_layers`` behind it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmprobe_jax_store import layer_order

from ..layers import LayerSpec, parse_layers
from ..sweep import SweepResult
from ._labels import check_labels, check_prompts, split_fit_args
from ._modes import can_batch, fit_batched, fit_blocks, install_layer


@dataclass
class LayerSweepResult:
    """A fitted probe per layer (lmprobe's ``LayerSweepResult``), plus the training-set cross-validation
    of every layer when the probes came from one batched sweep (``sweep``, a :class:`SweepResult`) and
    where the time went (``timings``: ``extract_s`` for the one extraction pass, ``fit_s`` for the
    probes, compilation included)."""

    probes: dict[Any, Any] = field(default_factory=dict)
    sweep: SweepResult | None = None
    template: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def layers(self) -> list[Any]:
        return sorted(self.probes, key=layer_order)

    def __len__(self) -> int:
        return len(self.probes)

    def __getitem__(self, layer: Any) -> Any:
        return self.probes[layer]

    def _per_layer(self, prompts: Any, kind: str) -> dict[Any, np.ndarray]:
        """``kind`` ("predict" / "proba") of every layer's probe from one extraction pass (they share
        pooling and model)."""
        prompts = check_prompts(prompts)
        template = self.template or self.probes[self.layers[0]]
        from ..pooling import parse_pooling_strategy

        template._check_model()
        pooling = parse_pooling_strategy(template._inference_pooling).extraction
        X, offsets = template._extract(prompts, self.layers, pooling)
        return {
            layer: self.probes[layer]._per_prompt(X[i : i + 1], offsets, kind)
            for i, layer in enumerate(self.layers)
        }

    def predict_proba(self, prompts: list[str]) -> dict[Any, np.ndarray]:
        return self._per_layer(prompts, "proba")

    def predict(self, prompts: list[str]) -> dict[Any, np.ndarray]:
        return self._per_layer(prompts, "predict")

    def score(self, test_prompts: list[str], test_labels: Any) -> dict[Any, float]:
        """Accuracy (R^2 for regression) of every layer's probe. ``test_labels`` must hold one label per
        prompt (an ``(N, 1)`` column is flattened; nothing is broadcast)."""
        predictions = self.predict(test_prompts)
        some = self.probes[self.layers[0]]
        return {layer: some._score(pred, test_labels) for layer, pred in predictions.items()}

    def best_layer(self, test_prompts: list[str], test_labels: Any) -> Any:
        """The layer with the best score on the given set (ties: the earlier layer)."""
        scores = self.score(test_prompts, test_labels)
        return max(self.layers, key=lambda layer: (scores[layer], -layer_order(layer)))


def sweep_layers(
    base: Any, positive_prompts: Any, negative_prompts: Any, layers: Any, *, cv: bool
) -> LayerSweepResult:
    """One extraction pass over ``layers``, then a probe per layer (one batched solve when ``base``'s
    classifier and settings allow, else layer by layer); ``cv=True`` runs the ``"sweep"`` mode's
    cross-validation too."""
    base._check_model()
    prompts, y, contrastive = split_fit_args(positive_prompts, negative_prompts)
    if contrastive and base.task == "regression":
        raise ValueError(
            "task='regression' needs sweep_layers(model, prompts, targets), not two prompt lists."
        )
    y = check_labels(y, len(prompts), task=base.task, training=True)
    n_model = base._n_model_layers()
    spec = parse_layers(layers, n_model)
    swept = list(spec.layers)
    start = time.perf_counter()
    X, offsets = base._extract(prompts, swept, base._train_pooling)
    if offsets is not None:
        y = np.repeat(y, np.diff(offsets))
    timings = {"extract_s": time.perf_counter() - start}
    start = time.perf_counter()
    if cv:
        base._fit_arrays(X, y, LayerSpec("sweep", swept), None)
        base.n_model_layers_, base.input_layers_ = n_model, None
        result = base.sweep_result_
    else:
        base.classes_, codes = (
            np.unique(y, return_inverse=True) if base.task == "classification" else (None, y)
        )
        base.n_features_per_layer_, base.n_model_layers_, base.input_layers_ = X.shape[2], n_model, None
        if can_batch(base):
            fits = fit_batched(base, X, codes, None, swept)
            probes = {
                layer: base._layer_probe(lambda p, layer=layer: install_layer(p, fits, layer), layer)
                for layer in swept
            }
        else:
            probes = {
                layer: base._layer_probe(
                    lambda p, i=i, layer=layer: fit_blocks(p, X[i : i + 1], codes, [layer], None), layer
                )
                for i, layer in enumerate(swept)
            }
        result = LayerSweepResult(probes, None, base)
    result.timings = {**timings, "fit_s": time.perf_counter() - start}
    return result
