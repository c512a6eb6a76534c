"""A causal LM's readout (final norm + unembedding) read from its checkpoint, without loading the model.

The architecture is built on the meta device (no memory, no weights); its final norm and LM head are found
as in a loaded model (:func:`~._readout.final_norm_module`, ``get_output_embeddings``), and only their
tensors are read from the safetensors files -- from the shards the checkpoint's index names, so a hub
model downloads those files and no others. A tied head (``tie_word_embeddings``) reads the input
embedding. The result is the store's readout format (:mod:`lmprobe_jax_store._readout`), described and
checked as :func:`~._readout.export_readout` does (the norm formula against the module on random input);
only the check against the whole model's logits (:func:`~._readout.check_readout`) needs every weight.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._blocks import find_decoder_layers
from ._readout import describe_readout, export_readout, final_norm_module

SAFETENSORS = "model.safetensors"
INDEX = "model.safetensors.index.json"


class UnknownArchitecture(ValueError):
    """transformers cannot build the model's class from its config (remote code, or not a config)."""


def checkpoint_file(model: str | os.PathLike, name: str, revision: str | None = None) -> Path:
    """The local path of file ``name`` of ``model`` (a directory, or a hub id: downloaded into, or found
    in, the Hugging Face cache). Raises FileNotFoundError / huggingface_hub's errors when it is absent."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} has no {name}.")
        return path / name
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(str(model), name, revision=revision))


def read_checkpoint_tensors(
    model: str | os.PathLike, wanted: dict[str, Sequence[str]], revision: str | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors checkpoint by name: ``wanted`` maps each result name to the checkpoint
    keys it may be stored under, first match wins. Reads only the shards that hold them (the index's
    ``weight_map``), or the single ``model.safetensors``. Names found under no key are left out."""
    from safetensors import safe_open

    try:
        weight_map = json.loads(checkpoint_file(model, INDEX, revision).read_text())["weight_map"]
    except Exception:  # noqa: BLE001  no index, however reported: then the single file's absence raises below
        weight_map = None
    if weight_map is None:
        files = [SAFETENSORS]
    else:
        files = sorted({weight_map[key] for keys in wanted.values() for key in keys if key in weight_map})
    out: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(checkpoint_file(model, file, revision)), framework="pt", device="cpu") as f:
            present = set(f.keys())
            for name, keys in wanted.items():
                key = next((k for k in keys if k in present), None)
                if name not in out and key is not None:
                    out[name] = f.get_tensor(key)
    return out


def _skeleton(config: Any) -> nn.Module:
    """The model's class built from ``config`` on the meta device (parameters without storage)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as err:  # transformers raises ValueError, KeyError, AttributeError... by config kind
        raise UnknownArchitecture(
            f"transformers cannot build a causal LM from this config ({type(err).__name__}: {err})."
        ) from err


def readout_from_checkpoint(
    model: Any, *, config: Any = None, revision: str | None = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """``(description, arrays)`` of ``model``'s readout (module doc), read from its checkpoint files.

    ``model``: a directory or hub id with safetensors weights; a ``.gguf`` file or a loaded
    ``torch.nn.Module`` is exported from the loaded model instead. ``config``: the model's config when
    already read (default: ``AutoConfig.from_pretrained``). Raises :class:`UnknownArchitecture` when
    transformers cannot build the model's class, KeyError when the checkpoint lacks the tensors.
    """
    if isinstance(model, nn.Module) or str(model).endswith(".gguf"):
        if not isinstance(model, nn.Module):
            from ._source import resolve_source

            model = resolve_source(model).load_model(torch.float32, "cpu")
        return export_readout(model, find_decoder_layers(model)[0])
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model), revision=revision)
    skeleton = _skeleton(config)
    norm = final_norm_module(skeleton, find_decoder_layers(skeleton)[0])
    head = skeleton.get_output_embeddings()
    names = {id(module): name for name, module in skeleton.named_modules()}
    prefix = f"{skeleton.base_model_prefix}." if skeleton.base_model_prefix else ""

    def keys(name: str) -> list[str]:  # some checkpoints store the base model's keys without its prefix
        return [name, name.removeprefix(prefix)] if prefix and name.startswith(prefix) else [name]

    wanted = {f"norm.{p}": keys(f"{names[id(norm)]}.{p}") for p, _ in norm.named_parameters()}
    wanted["head.weight"] = keys(f"{names[id(head)]}.weight")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    if tied:
        wanted["head.weight"] += keys(f"{names[id(skeleton.get_input_embeddings())]}.weight")
    if getattr(head, "bias", None) is not None:
        wanted["head.bias"] = keys(f"{names[id(head)]}.bias")
    found = read_checkpoint_tensors(model, wanted, revision)
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise KeyError(
            f"Could not find the readout's tensors {[wanted[name][0] for name in missing]} in the "
            f"checkpoint of {model}: is it a {type(skeleton).__name__} checkpoint in safetensors format?"
        )
    norm.to_empty(device="cpu")
    norm.load_state_dict(
        {name.removeprefix("norm."): t for name, t in found.items() if name.startswith("norm.")}
    )
    return describe_readout(
        skeleton,
        norm,
        found["head.weight"],
        found.get("head.bias"),
        tied=tied,
        head_class=type(head).__name__,
    )
