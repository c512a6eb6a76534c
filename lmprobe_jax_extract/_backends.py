"""lmprobe's extraction-backend objects: a model and its tokenizer, and the hidden states of a batch of
prompts at given layers, unpooled.

:func:`extract_activations` is what lmprobe-jax's own code uses (pooled, cached, resumable); these
classes are for code written against lmprobe's backend interface -- custom extraction loops, or a
backend of one's own (subclass :class:`ExtractionBackend`). Both run the same batch machinery: the
same tokenisation (each prompt with its special tokens), padding on the tokenizer's side with position
ids from the mask, hooks (``"local"``) or an nnsight trace (``"nnsight"``), out-of-memory back-off.

``extract_batch(prompts, layer_indices)`` returns ``activations`` ``(B, T, D * len(layer_indices))`` (the
layers' hidden states concatenated in the order asked, in the model's dtype, zero at padding) and the
``attention_mask`` ``(B, T)``, on the CPU. Layer ``i`` is the residual stream leaving decoder block
``i``; negative indices count from the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from lmprobe_jax_store import normalise_layer

from ._blocks import find_decoder_layers
from ._capture import model_inputs, wrap_nnsight
from ._extract import _Runner, check_prompts, encode_prompts
from ._source import clear_model_cache, resolve_source

#: lmprobe's name for :func:`clear_model_cache` (the loaded model and tokenizer are kept between calls).
clear_local_model_cache = clear_model_cache


def _get_decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder blocks of ``model`` (lmprobe's helper, on :func:`find_decoder_layers`)."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(  # noqa: TRY004  (lmprobe raises ValueError here; its callers catch that)
            f"Could not find decoder layers: {type(model).__name__} is not a torch module. Pass a Hugging "
            "Face causal LM (or a torch model whose blocks live in a ModuleList)."
        )
    return find_decoder_layers(model)[1]


def _named_child(block: Any, names: tuple[str, ...], what: str) -> torch.nn.Module:
    for name in names:
        if hasattr(block, name):
            return getattr(block, name)
    raise ValueError(
        f"Cannot find the {what} sub-module of {type(block).__name__}: expected one of {names}. For the "
        "attention / MLP signals of another architecture pass layout=BlockLayout(...)."
    )


def _get_attn_submodule(block: Any) -> torch.nn.Module:
    """The attention sub-module of a decoder block (lmprobe's helper; the names :mod:`._layout` knows)."""
    return _named_child(block, ("self_attn", "attention", "attn"), "attention")


def _get_mlp_submodule(block: Any) -> torch.nn.Module:
    """The MLP sub-module of a decoder block (lmprobe's helper)."""
    return _named_child(block, ("mlp", "feed_forward", "ffn"), "MLP")


def _get_local_model(model_name: Any, device: str = "auto", dtype: Any = torch.float32) -> tuple[Any, Any]:
    """``(model, tokenizer)``: ``model_name`` (a hub id, a directory, a ``.gguf`` file) loaded in ``dtype``
    on ``device`` (``"auto"``: CUDA when available, else the CPU), in eval mode; the last one loaded is
    kept for the next call (:func:`clear_local_model_cache` frees it)."""
    source = resolve_source(model_name)
    model = source.load_model(
        source.compute_dtype(dtype), source.device(None if device == "auto" else device)
    )
    return model, source.load_tokenizer()


class ExtractionBackend(ABC):
    """A model and its tokenizer, able to return a batch's hidden states at given layers (lmprobe's
    interface: implement ``extract_batch``, ``extract_batch_with_logits``, ``tokenizer`` and ``model``)."""

    def __init__(self, model_name: Any, device: str = "auto"):
        self.model_name = model_name
        self.device = device

    @abstractmethod
    def extract_batch(
        self, prompts: list[str], layer_indices: list[int], **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(activations (B, T, D * L), attention_mask (B, T))`` for ``prompts`` at ``layer_indices``."""

    @abstractmethod
    def extract_batch_with_logits(
        self, prompts: list[str], layer_indices: list[int], **kwargs: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(activations or None when layer_indices is empty, attention_mask, logits (B, T, V),
        top-k indices or None)``."""

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The model's tokenizer."""

    @property
    @abstractmethod
    def model(self) -> Any:
        """The model object the backend runs."""


class LocalBackend(ExtractionBackend):
    """Hugging Face transformers with forward hooks on the decoder blocks (no nnsight); the forward
    stops after the last requested block. ``dtype``: the model's compute dtype (a torch dtype or its
    name)."""

    _engine = "local"

    def __init__(self, model_name: Any, device: str = "auto", dtype: Any = torch.float32):
        super().__init__(model_name, device)
        self.dtype = dtype
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            self._loaded = _get_local_model(self.model_name, self.device, self.dtype)
        return self._loaded

    @property
    def model(self) -> Any:
        """The loaded ``transformers`` model."""
        return self._load()[0]

    @property
    def tokenizer(self) -> Any:
        return self._load()[1]

    def _traced(self) -> Any:
        return None

    def _remote(self, kwargs: dict) -> bool:
        return False

    def _batch(
        self, prompts: Any, layer_indices: list[int], remote: bool
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Activations, mask, and the runner (for a further forward of the same padded batch)."""
        prompts = check_prompts(prompts)
        net, tok = self._load()
        blocks_path, blocks = find_decoder_layers(net)
        layers = [normalise_layer(int(i), len(blocks)) for i in layer_indices]
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        runner = _Runner(
            net, blocks_path, blocks, encode_prompts(tok, prompts, None), pad, tok.padding_side,
            sorted(set(layers)), ["all"], self._engine, self._traced(), remote, next(net.parameters()).dtype,
        )  # fmt: skip
        rows = np.arange(len(prompts))
        tokens = runner.run(rows)  # {(layer, "all"): (real tokens, D)}
        _, mask = runner._pad(rows)
        mask = mask.cpu()
        real = mask.bool()
        width = next(iter(tokens.values())).shape[1] if tokens else 0
        acts = torch.zeros((*mask.shape, width * len(layers)), dtype=runner.storage_dtype)
        for k, layer in enumerate(layers):
            acts[..., k * width : (k + 1) * width][real] = tokens[(layer, "all")]
        return acts, mask, runner

    def extract_batch(
        self, prompts: list[str], layer_indices: list[int], **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not layer_indices:
            raise ValueError("layer_indices is empty: ask for at least one layer.")
        acts, mask, _ = self._batch(prompts, list(layer_indices), self._remote(kwargs))
        return acts, mask

    def extract_batch_with_logits(
        self, prompts: list[str], layer_indices: list[int], **kwargs: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, None]:
        """As :meth:`extract_batch`, plus the logits ``(B, T, V)`` of a full forward of the same padded
        batch (a second pass: the first stops after the last requested block)."""
        layers = list(layer_indices) or [-1]
        acts, mask, runner = self._batch(prompts, layers, self._remote(kwargs))
        ids, device_mask = runner._pad(np.arange(len(mask)))
        with torch.inference_mode():
            logits = runner.model(**model_inputs(runner.model, ids, device_mask)).logits.cpu()
        return (acts if layer_indices else None), mask, logits, None


class NnsightBackend(LocalBackend):
    """The same extraction through an nnsight trace; ``remote=True`` runs it on NDIF (the model must be a
    hub id NDIF serves; each call may override it with ``remote=``). ``model`` is the nnsight wrapper."""

    _engine = "nnsight"

    def __init__(self, model_name: Any, device: str = "auto", remote: bool = False):
        super().__init__(model_name, device, dtype=None)
        self.remote = remote
        self._wrapped: Any = None

    @property
    def model(self) -> Any:
        """The nnsight model around the loaded ``transformers`` model."""
        return self._traced()

    def _traced(self) -> Any:
        if self._wrapped is None:
            self._wrapped = wrap_nnsight(*self._load())
        return self._wrapped

    def _remote(self, kwargs: dict) -> bool:
        return bool(kwargs.get("remote", self.remote))


def resolve_backend(
    backend: str, model_name: Any, device: str = "auto", remote: bool = False, dtype: Any = None
) -> ExtractionBackend:
    """The backend object for ``"local"`` or ``"nnsight"`` (lmprobe's function; its ``"chunked"`` and
    ``"disk_offload"`` backends are accelerate's ``device_map`` here: :func:`extract_activations`)."""
    if backend == "nnsight":
        return NnsightBackend(model_name, device, remote=remote)
    if backend == "local":
        if remote:
            raise ValueError(
                "backend='local' does not support remote=True: use backend='nnsight' for remote execution."
            )
        return LocalBackend(model_name, device, dtype=torch.float32 if dtype is None else dtype)
    raise ValueError(
        f"Unknown backend: {backend!r}. Available backends: 'local', 'nnsight' (a model larger than one "
        "device: extract_activations(..., device_map='auto'))."
    )
