"""lmprobe's high-level API on lmprobe-jax's pieces: :class:`Probe` (alias ``LinearProbe``) and
:class:`LayerSweepResult`.

Where each part lives: ``_probe.py`` (the estimator: parameters, fit / predict / evaluate, the order of
the steps), ``_modes/`` (one file per layer mode: ``fixed``, ``auto``, ``fast_auto``, ``sweep``),
``_features.py`` (the feature Pipeline: per-layer scaler, preprocessing, mass-mean augmentation),
``_labels.py`` (how ``fit``'s arguments are read), ``_sweep_result.py`` (``LayerSweepResult``, ``Probe.sweep_layers``), ``_io.py`` (atomic
save / load without pickle). Classifier names: :mod:`lmprobe_jax.classifiers`; pooling names and
score-level pooling: :mod:`lmprobe_jax.pooling`.

Differences from lmprobe, each deliberate:

* ``fit(prompts, labels)`` recognises labels by what they hold, in every mode (:mod:`._labels`) --
  lmprobe takes float regression targets, or labels with ``layers="sweep"``, for negative prompts.
* ``pooling="all"`` trains on real tokens only (no pad rows); ``first_token`` is mask-correct.
* The activation cache is keyed by the weights, tokenizer, dtypes and prompts, not the model name.
* ``save`` / ``load`` write safetensors + JSON, atomically, with a checksum; loading runs no code.
* ``layers="sweep*"`` picks its best layer by cross-validation on the training set, never by peeking at
  the evaluation set; ``sweep_layers`` trains all layer probes in one batched solve.
"""

from ..exceptions import NotFittedError
from ..scaling import PerLayerScaler
from ._compat import _parse_sweep_spec, _resolve_dtype  # noqa: F401  (lmprobe's, imported by its users)
from ._features import MassMeanProjection
from ._probe import LinearProbe, Probe, classification_metrics, default_cache_dir
from ._sweep_result import LayerSweepResult

__all__ = [
    "LayerSweepResult",
    "LinearProbe",
    "MassMeanProjection",
    "NotFittedError",
    "PerLayerScaler",
    "Probe",
    "classification_metrics",
    "default_cache_dir",
]
