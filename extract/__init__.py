"""extract: the torch side of lmprobe-jax. Runs a language model once over prompts and keeps one pooled
vector per prompt per layer, in an activation store keyed by exactly what produced it.

* :func:`extract_activations` -- model + prompts -> :class:`ActivationStore` (on disk or in memory).
* :class:`ActivationStore` -- ``load(layer, pooling)`` -> ``(N, D)`` memory-mapped numpy,
  ``stack(layers, pooling)`` -> ``(L, N, D)``.
* Layer ``i`` is the residual stream leaving decoder block ``i`` (before the final norm); the stream
  entering block 0 is :data:`EMBEDDINGS`. Poolings: :data:`POOLINGS`.

This package never imports jax: the JAX side reads its stores as numpy arrays.
"""

from ._extract import BACKENDS, check_prompts, extract_activations
from ._layers import EMBEDDINGS, find_decoder_layers, resolve_layers
from ._pooling import POOLINGS, pool
from ._source import gguf_to_directory, model_layer_count
from ._store import ActivationStore
from ._version import library_version

__version__ = library_version()

__all__ = [
    "BACKENDS",
    "EMBEDDINGS",
    "POOLINGS",
    "ActivationStore",
    "check_prompts",
    "extract_activations",
    "find_decoder_layers",
    "gguf_to_directory",
    "model_layer_count",
    "pool",
    "resolve_layers",
]
