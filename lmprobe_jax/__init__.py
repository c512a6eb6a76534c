"""lmprobe-jax: linear probes for every layer of a language model at once.

* :mod:`lmprobe_jax.functional` — batched, jit-compiled solvers (logistic, multinomial, ridge,
  mass-mean, group lasso over layers), cross-validation, layer selection, metrics and prediction.
* :mod:`lmprobe_jax.sklearn` — scikit-learn estimators over those solvers; :mod:`lmprobe_jax.classifiers`
  — the classifier names.
* :class:`Probe` (``LinearProbe``) / :class:`LayerSweepResult` — lmprobe's high-level API (models through
  :mod:`lmprobe_jax_extract`, imported only when a model is used; stores through :mod:`lmprobe_jax_store`).
* :class:`SampleScan` — a PCA lens of every layer's stream, attention and MLP writes over a corpus.
* Baselines (:class:`BaselineProbe`, :class:`ActivationBaseline`, :class:`BaselineBattery`),
  :class:`ProbeEnsemble`, and cache management (:mod:`lmprobe_jax.cache`), with lmprobe's names.
* :func:`set_profiling` (:mod:`lmprobe_jax.profiling`): each Probe call's step times; lmprobe's backend
  objects in :mod:`lmprobe_jax.backends` (imports torch).
* :func:`sweep_activations` — a per-layer cross-validated sweep straight from activations.
* :func:`parse_layers` — the layer-spec grammar.
* :func:`enable_compilation_cache` — keep compiled solvers on disk between processes.
"""

import importlib
import os

from lmprobe_jax_store import library_version

__version__ = library_version()

# Public names loaded on first use (jax, scikit-learn, and some a model), so `import lmprobe_jax` -- and a
# command that only reads a store -- loads none of them: name -> module.
_LAZY = {
    "enable_compilation_cache": "compilation",
    "LayerSpec": "layers",
    "parse_layers": "layers",
    "Probe": "probe",
    "LinearProbe": "probe",
    "LayerSweepResult": "probe",
    "sweep_activations": "sweep",
    "SweepResult": "sweep",
    "BaselineProbe": "baseline",
    "ActivationBaseline": "activation_baseline",
    "BaselineBattery": "battery",
    "BaselineResult": "battery",
    "BaselineResults": "battery",
    "ProbeEnsemble": "ensemble",
    "SampleScan": "sample_scan",
    "CacheInfo": "cache",
    "CachedPromptInfo": "cache",
    "ModelCacheInfo": "cache",
    "cache_info": "cache",
    "discover_cached": "cache",
    "evict": "cache",
    "load_activations": "cache",
    "load_layer_across_prompts": "cache",
    "load_layer_last_token": "cache",
    "set_cache_dtype": "cache",
    "set_cache_limit": "cache",
    "PerLayerScaler": "scaling",
    "set_profiling": "profiling",
    "is_profiling": "profiling",
}

__all__ = [
    "ActivationBaseline",
    "BaselineBattery",
    "BaselineProbe",
    "BaselineResult",
    "BaselineResults",
    "CacheInfo",
    "CachedPromptInfo",
    "LayerSpec",
    "LayerSweepResult",
    "LinearProbe",
    "ModelCacheInfo",
    "PerLayerScaler",
    "Probe",
    "ProbeEnsemble",
    "SampleScan",
    "SweepResult",
    "__version__",
    "cache_info",
    "clear_model_cache",
    "discover_cached",
    "enable_compilation_cache",
    "evict",
    "functional",
    "is_profiling",
    "load_activations",
    "load_layer_across_prompts",
    "load_layer_last_token",
    "parse_layers",
    "set_cache_dtype",
    "set_cache_limit",
    "set_max_threads",
    "set_profiling",
    "sweep_activations",
]


def set_max_threads(n: int) -> None:
    """Use at most ``n`` CPU threads: torch's intra- and inter-op pools (when torch is installed), the
    BLAS / OpenMP pools already loaded (threadpoolctl), and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` /
    ``OPENBLAS_NUM_THREADS`` / ``NUMEXPR_NUM_THREADS`` for libraries loaded later (lmprobe's function).
    XLA's CPU thread pool is sized when JAX starts: set ``XLA_FLAGS`` before importing jax to limit it."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of threads, not {n!r}.")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    try:
        import torch
    except ImportError:  # torch is only needed to read models
        return
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # torch allows it once, before any parallel work; the intra-op limit still holds
        pass


def clear_model_cache() -> None:
    """Release the model and tokenizer kept loaded between calls (lmprobe's name)."""
    from lmprobe_jax_extract import clear_model_cache as clear

    clear()


def __getattr__(name: str):
    if name == "functional":
        return importlib.import_module(".functional", __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lmprobe_jax' has no attribute {name!r}")
