"""lmprobe's ``lmprobe.backends`` names: the extraction-backend objects of :mod:`lmprobe_jax_extract`
(importing this module imports torch; ``import lmprobe_jax`` does not)."""

from lmprobe_jax_extract._backends import (  # noqa: F401  (lmprobe's private helpers, imported by its users)
    ExtractionBackend,
    LocalBackend,
    NnsightBackend,
    _get_attn_submodule,
    _get_decoder_layers,
    _get_local_model,
    _get_mlp_submodule,
    clear_local_model_cache,
    resolve_backend,
)

__all__ = [
    "ExtractionBackend",
    "LocalBackend",
    "NnsightBackend",
    "clear_local_model_cache",
    "resolve_backend",
]
