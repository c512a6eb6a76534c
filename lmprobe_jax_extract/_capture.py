"""Running one padded batch through the model and pooling the requested layers where they live.

Two backends give the same numbers:

* ``local``: forward hooks on the decoder blocks. Each hook pools its block's output at once (so no
  ``(B, T, D)`` tensor outlives its block), and the hook on the last requested block stops the forward
  -- later blocks, the final norm and the LM head never run.
* ``nnsight``: an nnsight trace that pools inside the trace and saves only the pooled tensors, then
  stops. With ``remote=True`` the trace runs on NDIF (the model must then be a hub id NDIF serves);
  that path cannot be exercised offline and is a thin pass-through.

Both return ``{(layer, pooling): tensor}`` with tensors still on the model's device.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from lmprobe_jax_store import EMBEDDINGS, LayerName

from ._pooling import pool


class _StopForward(Exception):
    """Raised by the hook on the last requested block: nothing after it is needed."""


def _block_output(output: Any) -> torch.Tensor:
    # Decoder blocks return a tensor (transformers >= 5) or a tuple whose first item is the hidden state.
    return output if torch.is_tensor(output) else output[0]


def model_inputs(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """Forward kwargs for a padded batch. ``position_ids`` come from the mask, so a left-padded prompt
    gets the positions it would have alone (Hugging Face does not derive them for every model)."""
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    parameters = inspect.signature(model.forward).parameters
    if "position_ids" in parameters:
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    if "use_cache" in parameters:
        inputs["use_cache"] = False
    return inputs


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a batch's token ids go: the device the input embeddings run on (under accelerate's
    ``device_map`` that is the embedding's execution device, even when its weights are offloaded)."""
    embeddings = model.get_input_embeddings()
    execution = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
    return embeddings.weight.device


def _pool_all(hidden: torch.Tensor, mask: torch.Tensor, layer: LayerName, poolings, out: dict) -> None:
    hidden = hidden.detach()
    for pooling in poolings:
        out[(layer, pooling)] = pool(hidden, mask, pooling)


def capture_local(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    inputs: dict,
    layers: list[LayerName],
    poolings: list[str],
) -> dict[tuple[LayerName, str], torch.Tensor]:
    """Pooled activations of ``layers`` for one batch, by forward hooks (see module docstring)."""
    mask = inputs["attention_mask"]
    indices = [layer for layer in layers if layer != EMBEDDINGS]
    last = max(indices) if indices else None
    out: dict = {}
    handles = []

    def embeddings_hook(module, args, kwargs):
        _pool_all(args[0] if args else kwargs["hidden_states"], mask, EMBEDDINGS, poolings, out)
        if last is None:
            raise _StopForward

    def block_hook(index):
        def hook(module, args, output):
            _pool_all(_block_output(output), mask, index, poolings, out)
            if index == last:
                raise _StopForward

        return hook

    try:
        if EMBEDDINGS in layers:
            handles.append(blocks[0].register_forward_pre_hook(embeddings_hook, with_kwargs=True))
        handles.extend(blocks[index].register_forward_hook(block_hook(index)) for index in indices)
        with torch.inference_mode():
            model(**inputs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return out


def wrap_nnsight(model: torch.nn.Module, tokenizer: Any):
    """An nnsight ``TransformersModel`` around an already loaded model (nothing is reloaded)."""
    from nnsight import TransformersModel

    return TransformersModel(model, task="text-generation", tokenizer=tokenizer)


def capture_nnsight(
    traced,
    blocks_path: str,
    inputs: dict,
    layers: list[LayerName],
    poolings: list[str],
    *,
    remote: bool = False,
) -> dict[tuple[LayerName, str], torch.Tensor]:
    """Pooled activations of ``layers`` for one batch, through an nnsight trace (see module docstring).

    Modules are read in execution order (nnsight 0.8 raises ``OutOfOrderError`` otherwise), a block's
    ``.output`` is its ``(B, T, D)`` hidden state, and only ``.save()``d values leave the trace.
    """
    blocks = traced
    for attribute in blocks_path.split("."):
        blocks = getattr(blocks, attribute)
    mask = inputs["attention_mask"]
    indices = [layer for layer in layers if layer != EMBEDDINGS]
    saved: dict = {}
    with torch.no_grad(), traced.trace(dict(inputs), remote=remote) as tracer:
        if EMBEDDINGS in layers:
            hidden = blocks[0].input
            for pooling in poolings:
                saved[(EMBEDDINGS, pooling)] = pool(hidden, mask, pooling).save()
        for index in indices:
            hidden = _block_output(blocks[index].output)
            for pooling in poolings:
                saved[(index, pooling)] = pool(hidden, mask, pooling).save()
        tracer.stop()
    return {key: value.detach() for key, value in saved.items()}
