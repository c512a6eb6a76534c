"""lmprobe's ``lmprobe.extraction`` name that its users call: a model's depth read from its config."""

from __future__ import annotations

from typing import Any


def get_num_layers_from_config(model_name: Any) -> int:
    """Number of decoder blocks of ``model_name`` (a hub id, a directory, a ``.gguf`` file), from its
    config alone: no weights are loaded (:func:`lmprobe_jax_extract.model_layer_count`)."""
    from lmprobe_jax_extract import model_layer_count

    return model_layer_count(model_name)
