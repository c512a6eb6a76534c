"""lmprobe_jax_extract: the torch side of lmprobe-jax. Runs a language model once over prompts and keeps
one pooled vector per prompt per layer, in an activation store (:mod:`lmprobe_jax_store`) keyed by
exactly what produced it.

* :func:`extract_activations` -- model + prompts -> :class:`~lmprobe_jax_store.ActivationStore` (on disk
  or in memory).
* :func:`extract_token_streams` -- model + texts -> a token-level store: every token's stream, token
  and next-token ids, and the model's readout (final norm + unembedding), for lenses.
* :func:`depth_analysis`, :func:`residual_erasure`, :func:`integrated_gradients` -- how each block writes
  to the residual stream and what skipping or erasing it does (Csordas et al.'s depth-efficiency
  measures), batched interventions on the model.
* :class:`LocalBackend` / :class:`NnsightBackend` (:func:`resolve_backend`) -- lmprobe's backend objects:
  a batch's unpooled hidden states at given layers, for code written against lmprobe's interface.
* :func:`readout_from_checkpoint` -- that readout read from a checkpoint's safetensors files (only the
  shards holding it), without loading the model.
* Layer ``i`` is the residual stream leaving decoder block ``i`` (before the final norm); the stream
  entering block 0 is :data:`~lmprobe_jax_store.EMBEDDINGS`. Poolings: :data:`~lmprobe_jax_store.POOLINGS`.

This package never imports jax: the JAX side reads its stores as numpy arrays.
"""

from lmprobe_jax_store import EMBEDDINGS, POOLINGS, ActivationStore, library_version, resolve_layers

from ._attribution import Erasure, IntegratedGradients, integrated_gradients, residual_erasure
from ._backends import ExtractionBackend, LocalBackend, NnsightBackend, resolve_backend
from ._blocks import find_decoder_layers
from ._checkpoint import UnknownArchitecture, readout_from_checkpoint
from ._depth import Contributions, DepthAnalysis, SkipEffects, depth_analysis
from ._extract import BACKENDS, check_prompts, extract_activations
from ._layout import SUPPORTED_MODEL_TYPES, BlockLayout, block_layout
from ._pooling import pool
from ._readout import check_readout, export_readout
from ._signals import SIGNALS, SignalBatch, SignalCapture, check_signals
from ._source import clear_model_cache, gguf_to_directory, model_layer_count, smollm2_directory
from ._tokens import extract_token_streams

__version__ = library_version()

__all__ = [
    "BACKENDS",
    "EMBEDDINGS",
    "POOLINGS",
    "SIGNALS",
    "SUPPORTED_MODEL_TYPES",
    "ActivationStore",
    "BlockLayout",
    "Contributions",
    "DepthAnalysis",
    "Erasure",
    "ExtractionBackend",
    "IntegratedGradients",
    "LocalBackend",
    "NnsightBackend",
    "SignalBatch",
    "SignalCapture",
    "SkipEffects",
    "UnknownArchitecture",
    "block_layout",
    "check_prompts",
    "check_readout",
    "check_signals",
    "clear_model_cache",
    "depth_analysis",
    "export_readout",
    "extract_activations",
    "extract_token_streams",
    "find_decoder_layers",
    "gguf_to_directory",
    "integrated_gradients",
    "model_layer_count",
    "pool",
    "readout_from_checkpoint",
    "residual_erasure",
    "resolve_backend",
    "resolve_layers",
    "smollm2_directory",
]
