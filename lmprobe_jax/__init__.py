"""lmprobe-jax: linear probes for every layer of a language model at once.

* :mod:`lmprobe_jax.functional` — batched, jit-compiled solvers (logistic, multinomial, ridge,
  mass-mean, group lasso over layers), cross-validation, layer selection, metrics and prediction.
* :mod:`lmprobe_jax.sklearn` — scikit-learn estimators over those solvers.
* :class:`Probe` / :class:`LayerSweepResult` — lmprobe's high-level API (models through
  :mod:`lmprobe_jax_extract`, imported only when a model is used; stores through
  :mod:`lmprobe_jax_store`).
* :func:`sweep_activations` — a per-layer cross-validated sweep straight from activations.
* :func:`parse_layers` — the layer-spec grammar.
* :func:`enable_compilation_cache` — keep compiled solvers on disk between processes.
"""

from . import functional
from .compilation import enable_compilation_cache
from .layers import LayerSpec, parse_layers

__version__ = "0.1.0"

__all__ = [
    "LayerSpec",
    "LayerSweepResult",
    "Probe",
    "SweepResult",
    "__version__",
    "enable_compilation_cache",
    "functional",
    "parse_layers",
    "sweep_activations",
]


def __getattr__(name: str):
    # Probe and the sweep need scikit-learn; load them on first use so `import lmprobe_jax` stays light.
    if name in ("Probe", "LayerSweepResult"):
        from . import probe

        return getattr(probe, name)
    if name in ("sweep_activations", "SweepResult"):
        from . import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'lmprobe_jax' has no attribute {name!r}")
