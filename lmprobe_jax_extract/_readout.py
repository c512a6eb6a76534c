"""Exporting a causal LM's readout -- final norm + unembedding (+ logit scaling / soft-capping) -- into
the store's format (:mod:`lmprobe_jax_store._readout`), and checking the export against the model's own
logits before it is trusted.

Norms it knows: :class:`torch.nn.LayerNorm` (GPT-2, GPT-NeoX, OPT, Bloom; weight and bias either
optional), :class:`torch.nn.RMSNorm`, and Hugging Face's ``*RMSNorm`` classes (Llama, Mistral, Qwen,
SmolLM, Phi-3, ...; Gemma's multiply by ``1 + weight``, which the export folds into the weight). Any
other class is refused, and so is a known class whose output the exported formula does not reproduce
on random input. Logit transforms read from the config: Gemma 2's ``final_logit_softcapping``,
Cohere's ``logit_scale`` and Granite's ``logits_scaling``. Finally the whole readout is checked on a real
forward pass: the model's logits against the formula applied to the last block's output.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from lmprobe_jax_store import readout_logits_numpy

from ._capture import _block_output

# Relative error (max |difference| / max |logit|) a faithful export stays under: float32 arithmetic
# differs only in summation order; 16-bit models round their own logits to ~3 significant digits.
_TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 3e-2}


def _unsupported(model: nn.Module, module: nn.Module, why: str) -> ValueError:
    return ValueError(
        f"Cannot export the readout of {type(model).__name__}: its final norm is a "
        f"{type(module).__name__}, {why}. lmprobe-jax exports torch.nn.LayerNorm, torch.nn.RMSNorm and "
        "Hugging Face's *RMSNorm classes; extract pooled activations instead (extract_activations), or "
        "open an issue with the model's name."
    )


def final_norm_module(model: nn.Module, blocks_path: str) -> nn.Module:
    """The final norm: the one norm module beside the decoder-block list (``model.norm`` for Llama,
    ``transformer.ln_f`` for GPT-2, ``gpt_neox.final_layer_norm`` for Pythia)."""
    parent = model.get_submodule(blocks_path.rpartition(".")[0]) if "." in blocks_path else model
    norms = [
        (name, module)
        for name, module in parent.named_children()
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm")
    ]
    if len(norms) != 1:
        found = ", ".join(name for name, _ in norms) or "none"
        raise ValueError(
            f"Cannot find the final norm of {type(model).__name__}: expected one norm module beside its "
            f"decoder blocks ({blocks_path}), found {found}. Only decoder-only models whose last block "
            "feeds a final norm and the LM head are supported."
        )
    return norms[0][1]


def _norm_parameters(model: nn.Module, norm: nn.Module, hidden: int) -> dict[str, Any]:
    """kind, eps, weight offset, weight and bias of a supported norm, or a ValueError."""
    name = type(norm).__name__
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    if isinstance(norm, nn.LayerNorm):
        if tuple(norm.normalized_shape) != (hidden,):
            raise _unsupported(
                model, norm, f"normalising over {tuple(norm.normalized_shape)}, not ({hidden},)"
            )
        kind, eps, offset = "layer", float(norm.eps), 0.0
    elif isinstance(norm, nn.RMSNorm) or name.endswith("RMSNorm"):
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        if eps is None and isinstance(norm, nn.RMSNorm):
            eps = torch.finfo(weight.dtype if weight is not None else torch.float32).eps
        if eps is None or bias is not None:
            raise _unsupported(model, norm, "with no eps attribute" if eps is None else "with a bias")
        # Gemma's RMSNorm scales by (1 + weight) (transformers' GemmaRMSNorm, Gemma2/3 alike).
        kind, eps, offset = "rms", float(eps), 1.0 if name.startswith("Gemma") else 0.0
    else:
        raise _unsupported(model, norm, "which is not a LayerNorm or an RMSNorm")
    ones = torch.ones(hidden)
    weight = ones if weight is None else weight.detach().float().cpu() + offset
    if weight.shape != (hidden,):
        raise _unsupported(model, norm, f"with a weight of shape {tuple(weight.shape)}, not ({hidden},)")
    return {
        "kind": kind,
        "eps": eps,
        "offset": offset,
        "weight": weight.numpy(),
        "bias": None if bias is None else bias.detach().float().cpu().numpy(),
    }


def _logit_transforms(model: nn.Module) -> tuple[float, float | None]:
    """``(logit_scale, logit_softcap)`` from the config (1.0 and None when it names neither)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
        scale *= float(config.logit_scale)
    if getattr(config, "logits_scaling", None) is not None:  # Granite: logits / logits_scaling
        scale /= float(config.logits_scaling)
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3: cap * tanh(logits / cap)
    return scale, None if cap is None else float(cap)


def export_readout(model: nn.Module, blocks_path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(description, arrays)`` of ``model``'s readout in the store's format (float32 arrays).

    Raises ValueError for a model without an unembedding (``get_output_embeddings()`` is None: load it
    with ``AutoModelForCausalLM``), an unknown final-norm class, or a norm the formula does not
    reproduce.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None or head.weight.ndim != 2:
        raise ValueError(
            f"{type(model).__name__} has no unembedding (get_output_embeddings() gives "
            f"{type(head).__name__}): a lens needs the LM head; load the model with "
            "AutoModelForCausalLM rather than AutoModel."
        )
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return describe_readout(
        model,
        final_norm_module(model, blocks_path),
        head.weight,
        getattr(head, "bias", None),
        tied=embeddings is not None and embeddings.weight.data_ptr() == head.weight.data_ptr(),
        head_class=type(head).__name__,
    )


def describe_readout(
    model: nn.Module,
    norm: nn.Module,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    *,
    tied: bool,
    head_class: str,
) -> tuple[dict, dict[str, np.ndarray]]:
    """``(description, arrays)`` from the pieces of a readout: ``model`` (its class and config: logit
    transforms), its final ``norm`` module (with real weights), the unembedding ``(V, D)`` and its bias.
    The norm formula is checked against the module on random input (:func:`_check_norm`)."""
    vocab, hidden = head_weight.shape
    params = _norm_parameters(model, norm, hidden)
    scale, cap = _logit_transforms(model)
    arrays = {"norm.weight": params["weight"], "unembed.weight": head_weight.detach().float().cpu().numpy()}
    if params["bias"] is not None:
        arrays["norm.bias"] = params["bias"]
    if head_bias is not None:
        arrays["unembed.bias"] = head_bias.detach().float().cpu().numpy()
    meta = {
        "norm": params["kind"],
        "eps": params["eps"],
        "norm_weight_offset": params["offset"],
        "logit_scale": scale,
        "logit_softcap": cap,
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "tied": bool(tied),
        "norm_class": type(norm).__name__,
        "head_class": head_class,
    }
    _check_norm(model, norm, meta, arrays)
    return meta, arrays


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _check_norm(model: nn.Module, norm: nn.Module, meta: dict, arrays: dict) -> None:
    """The exported norm formula reproduces a float32 copy of the module on random input."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, meta["hidden_size"], generator=generator) * 3 + 0.5
    with torch.no_grad():
        want = copy.deepcopy(norm).float().cpu()(x).double().numpy()
    h = x.double().numpy()
    if meta["norm"] == "layer":
        h = h - h.mean(-1, keepdims=True)
    got = h / np.sqrt((h**2).mean(-1, keepdims=True) + meta["eps"]) * arrays["norm.weight"]
    if "norm.bias" in arrays:
        got = got + arrays["norm.bias"]
    error = _relative_error(got, want)
    if not error < _TOLERANCE[torch.float32]:
        raise _unsupported(
            model, norm, f"whose output differs from a {meta['norm']} norm's by {error:.2g} (relative)"
        )


def check_readout(
    model: nn.Module, blocks: nn.ModuleList, meta: dict, arrays: dict, input_ids: list[int]
) -> dict:
    """Run ``model`` on one text and compare its logits with the readout applied to the last block's
    output. Returns ``{"tokens", "relative_error"}``; raises ValueError when the error exceeds what the
    model's dtype explains (something between the last block and the logits was not exported)."""
    captured = {}

    def hook(module, args, output):
        captured["h"] = _block_output(output).detach()

    device = next(model.parameters()).device
    ids = torch.as_tensor([input_ids], dtype=torch.long, device=device)
    handle = blocks[-1].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    finally:
        handle.remove()
    want = logits[0].double().cpu().numpy()
    got = readout_logits_numpy(meta, arrays, captured["h"][0].double().cpu().numpy())
    dtype = next(model.parameters()).dtype
    error = _relative_error(got, want)
    if not error < _TOLERANCE.get(dtype, _TOLERANCE[torch.float16]):
        raise ValueError(
            f"The exported readout of {type(model).__name__} does not reproduce the model's logits "
            f"(relative error {error:.2g} on {len(input_ids)} tokens): something between its last block "
            f"and its logits ({meta['norm_class']} -> {meta['head_class']}) is not a final norm + "
            "unembedding. This model is not supported for lenses."
        )
    return {"tokens": len(input_ids), "relative_error": error}
