"""Logits from cached last-layer activations: the model's readout (final norm + unembedding) applied to
its stored residual streams, without running the model (lmprobe's ``logit_utils``, same names).

* :func:`download_lm_head_weights` -- the readout's tensors, read from the checkpoint without loading
  the model (:func:`lmprobe_jax_extract.readout_from_checkpoint`: only the shards that hold them; any
  architecture transformers knows, its final norm and LM head found from the model's own modules and
  the norm's formula checked against the module, Gemma's ``1 + weight`` folded in, logit scaling and
  soft-capping kept in the returned config).
* :func:`apply_norm` -- the final norm, :func:`lmprobe_jax.lens.final_norm` on torch tensors.
* :func:`compute_perplexity_from_activations` -- per-prompt perplexity of the model's next-token
  predictions from cached ``"all"``-pooled last-layer activations (:func:`lmprobe_jax.cache.load_layer_across_prompts`),
  every prompt's tokens in one compiled program, the vocabulary streamed in windows
  (:mod:`lmprobe_jax.lens`), so no ``(tokens, vocabulary)`` logits are held.

The formulas are :mod:`lmprobe_jax_store._readout`'s, computed once by :mod:`lmprobe_jax.lens`; this
module only converts between lmprobe's torch tensors / config dict and that readout.
"""

from __future__ import annotations

import itertools
import logging
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .lens import Readout, final_norm, readout_from_arrays, readout_head
from .lens._loss import chunked_ce

logger = logging.getLogger(__name__)

NORM_TYPES = {"rms": "rms_norm", "layer": "layer_norm"}
"""The store's norm kinds and lmprobe's names for them."""

_VOCAB_CHUNK = 4096


def _detect_norm_type(config: Any) -> tuple[str, float]:
    """``(norm_type, eps)`` declared by a config's attributes, for models transformers cannot build:
    ``rms_norm_eps`` -> ``"rms_norm"``; ``layer_norm_eps`` / ``layer_norm_epsilon`` -> ``"layer_norm"``;
    neither -> ``("rms_norm", 1e-5)`` with a logged warning."""
    if hasattr(config, "rms_norm_eps"):
        return "rms_norm", config.rms_norm_eps
    for name in ("layer_norm_eps", "layer_norm_epsilon"):
        if hasattr(config, name):
            return "layer_norm", getattr(config, name)
    logger.warning(
        "Could not detect norm type from config (no rms_norm_eps, layer_norm_eps or layer_norm_epsilon "
        "attribute); assuming an RMS norm with eps=1e-5."
    )
    return "rms_norm", 1e-5


def _declared_readout(model_name: str, config: Any) -> tuple[dict, dict[str, np.ndarray]]:
    """The readout of a model whose class transformers cannot build: the norm its config declares and
    the Llama-style tensor names (``model.norm``, ``lm_head`` or the tied ``model.embed_tokens``).
    Nothing checks it against the model: a warning says so."""
    from lmprobe_jax_extract._checkpoint import read_checkpoint_tensors

    norm_type, eps = _detect_norm_type(config)
    heads = ["lm_head.weight"]
    if getattr(config, "tie_word_embeddings", False):
        heads.insert(0, "model.embed_tokens.weight")
    found = read_checkpoint_tensors(
        model_name,
        {
            "norm.weight": ["model.norm.weight"],
            "norm.bias": ["model.norm.bias"],
            "unembed.weight": [*heads, "model.embed_tokens.weight"],
        },
    )
    if "norm.weight" not in found or "unembed.weight" not in found:
        raise KeyError(
            f"Could not find lm_head or embed_tokens weights for {model_name}: found {sorted(found)} under "
            "Llama-style names (model.norm, lm_head, model.embed_tokens)."
        )
    logger.warning(
        "transformers cannot build %s's class, so its readout was read by Llama-style tensor names and the "
        "%s its config declares, unchecked against the model.",
        model_name,
        norm_type,
    )
    arrays = {name: t.float().numpy() for name, t in found.items()}
    vocab, hidden = arrays["unembed.weight"].shape
    kind = "rms" if norm_type == "rms_norm" else "layer"
    meta = {"norm": kind, "eps": float(eps), "logit_scale": 1.0, "logit_softcap": None}
    return {**meta, "vocab_size": vocab, "hidden_size": hidden}, arrays


def download_lm_head_weights(
    model_name: str, device: str = "cpu", dtype: Any = None
) -> tuple[Any, Any, dict]:
    """The final norm's weight ``(D,)`` and the unembedding ``(V, D)`` as torch tensors, and the norm's
    config ``{"eps", "norm_type": "rms_norm" | "layer_norm", "norm_bias": (D,) or None}`` plus what
    lmprobe's omits: ``"lm_head_bias"`` ``(V,)`` or None, ``"logit_scale"``, ``"logit_softcap"``.

    Read from ``model_name``'s checkpoint (a directory or hub id; only the files holding these tensors
    are downloaded) without loading the model (module doc). The norm weight is the effective one
    (Gemma's ``1 + weight``). Tensors are float32 unless ``dtype`` is given, on ``device``.
    """
    import torch
    from transformers import AutoConfig

    from lmprobe_jax_extract import UnknownArchitecture, readout_from_checkpoint

    config = AutoConfig.from_pretrained(str(model_name))
    try:
        meta, arrays = readout_from_checkpoint(model_name, config=config)
    except UnknownArchitecture:
        meta, arrays = _declared_readout(model_name, config)

    def tensor(name: str) -> Any:
        if name not in arrays:
            return None
        return torch.from_numpy(np.asarray(arrays[name])).to(device=device, dtype=dtype or torch.float32)

    norm_config = {
        "eps": float(meta["eps"]),
        "norm_type": NORM_TYPES[meta["norm"]],
        "norm_bias": tensor("norm.bias"),
        "lm_head_bias": tensor("unembed.bias"),
        "logit_scale": float(meta["logit_scale"]),
        "logit_softcap": meta["logit_softcap"],
    }
    return tensor("norm.weight"), tensor("unembed.weight"), norm_config


def _numpy(t: Any) -> np.ndarray | None:
    return None if t is None else np.asarray(t.detach().cpu().float().numpy() if hasattr(t, "detach") else t)


def _readout(
    norm_weight: Any,
    eps: float,
    norm_type: str,
    norm_bias: Any = None,
    lm_head_weight: Any = None,
    norm_config: dict | None = None,
) -> Readout:
    """A :class:`~lmprobe_jax.lens.Readout` from lmprobe's tensors and config (an empty unembedding when
    only the norm is needed)."""
    if norm_type not in NORM_TYPES.values():
        raise ValueError(f"Unknown norm_type: {norm_type!r}; expected 'rms_norm' or 'layer_norm'.")
    weight = _numpy(norm_weight)
    config = norm_config or {}
    arrays = {
        "norm.weight": weight,
        "unembed.weight": np.zeros((0, weight.shape[-1]), np.float32)
        if lm_head_weight is None
        else _numpy(lm_head_weight),
    }
    if norm_bias is not None:
        arrays["norm.bias"] = _numpy(norm_bias)
    if config.get("lm_head_bias") is not None:
        arrays["unembed.bias"] = _numpy(config["lm_head_bias"])
    meta = {
        "norm": "rms" if norm_type == "rms_norm" else "layer",
        "eps": float(eps),
        "logit_scale": float(config.get("logit_scale", 1.0)),
        "logit_softcap": config.get("logit_softcap"),
    }
    return readout_from_arrays(meta, arrays)


def apply_norm(
    hidden_states: Any, norm_weight: Any, eps: float, norm_type: str = "rms_norm", norm_bias: Any = None
) -> Any:
    """The final norm of ``hidden_states`` ``(..., D)`` (a torch tensor; returned in its dtype and on its
    device): ``norm_type`` ``"rms_norm"`` or ``"layer_norm"``, weight ``(D,)``, optional bias (layer
    norm). Computed in float32 by :func:`lmprobe_jax.lens.final_norm`."""
    import torch

    readout = _readout(norm_weight, eps, norm_type, norm_bias)
    out = np.array(final_norm(readout, _numpy(hidden_states)))  # a writable copy for torch
    if isinstance(hidden_states, torch.Tensor):
        return torch.from_numpy(out).to(device=hidden_states.device, dtype=hidden_states.dtype)
    return out


@partial(jax.jit, static_argnames="vocab_chunk")
def _next_token_losses(readout: Readout, h: jax.Array, next_ids: jax.Array, vocab_chunk: int) -> jax.Array:
    """Cross-entropy ``(T,)`` of the readout's prediction at each stream ``h`` ``(T, D)`` to
    ``next_ids`` ``(T,)`` (0 where the id is negative), streamed over vocabulary windows."""
    return chunked_ce(vocab_chunk, False, final_norm(readout, h)[None], readout_head(readout), next_ids)[0]


def _bucket(n: int) -> int:
    """Token counts are padded to a power of two (at least 64), so few shapes are ever compiled."""
    return max(64, 1 << max(n - 1, 0).bit_length())


def compute_perplexity_from_activations(
    model_name: str,
    prompts: list[str],
    last_layer: int,
    device: str = "cpu",
    norm_weight: Any = None,
    lm_head_weight: Any = None,
    norm_config: dict | None = None,
    tokenizer: Any = None,
    return_per_token: bool = False,
) -> Any:
    """Perplexity of the model's next-token predictions on each prompt, from cached activations.

    For each prompt, its cached last-layer stream (every real token: extract with ``pooling="all"``)
    goes through the readout; ``loss_t = logsumexp(logits_t) - logits_t[id_{t+1}]`` for every position
    with a next token, and the result is ``exp`` of the mean, minimum and maximum loss: a float32 tensor
    ``(3,)`` per prompt (``[1, 1, 1]`` for a one-token prompt).

    Args:
      model_name: the model (hub id or directory), for the cache lookup and, when not given, the readout
        (:func:`download_lm_head_weights`) and the tokenizer.
      prompts: prompts whose ``last_layer`` activations are cached.
      last_layer: the layer to read (the last decoder block's output, before the final norm).
      device: accepted for lmprobe compatibility; the computation runs on JAX's default device.
      norm_weight, lm_head_weight, norm_config: a readout from :func:`download_lm_head_weights`.
      tokenizer: the model's tokenizer (its ids are the labels); loaded when None.
      return_per_token: also return each prompt's per-token perplexities ``(T_i - 1,)`` and token ids.

    Returns:
      A list of ``(3,)`` tensors, or ``(aggregates, per_token_perplexities, token_ids)``.

    Raises:
      FileNotFoundError: a prompt's activations are not cached.
      ValueError: the tokenizer's ids do not line up with the cached tokens.
    """
    import torch

    from . import cache

    if norm_weight is None or lm_head_weight is None or norm_config is None:
        norm_weight, lm_head_weight, norm_config = download_lm_head_weights(model_name)
    if tokenizer is None:
        from lmprobe_jax_extract._source import resolve_source

        tokenizer = resolve_source(model_name).load_tokenizer()
    readout = _readout(
        norm_weight,
        norm_config["eps"],
        norm_config["norm_type"],
        norm_config.get("norm_bias"),
        lm_head_weight,
        norm_config,
    )
    acts_list, masks_list = cache.load_layer_across_prompts(model_name, list(prompts), last_layer)
    streams, ids = [], []
    for prompt, acts, mask in zip(prompts, acts_list, masks_list):
        real = _numpy(mask)[0].astype(bool)
        streams.append(_numpy(acts)[0][real])
        ids.append(np.asarray(tokenizer(prompt, return_tensors="pt")["input_ids"])[0].astype(np.int64))
        if len(ids[-1]) != len(streams[-1]):
            raise ValueError(
                f"The tokenizer gives {len(ids[-1])} tokens for {prompt!r} but {len(streams[-1])} are "
                "cached: pass the tokenizer the activations were extracted with."
            )
    lengths = np.array([len(s) for s in streams])
    total = int(lengths.sum())
    h = np.zeros((_bucket(total), readout.norm_weight.shape[0]), np.float32)
    next_ids = np.full(len(h), -1, np.int32)
    start = 0
    for stream, token_ids in zip(streams, ids):
        h[start : start + len(stream)] = stream
        next_ids[start : start + len(stream) - 1] = token_ids[1:]
        start += len(stream)
    losses = np.asarray(
        _next_token_losses(readout, jnp.asarray(h), jnp.asarray(next_ids), _VOCAB_CHUNK), np.float64
    )
    aggregates, per_token, starts = [], [], np.concatenate([[0], np.cumsum(lengths)])
    for a, b in itertools.pairwise(starts):
        loss = losses[a : b - 1]
        stats = np.exp([loss.mean(), loss.min(), loss.max()]) if len(loss) else np.ones(3)
        aggregates.append(torch.tensor(stats, dtype=torch.float32))
        per_token.append(torch.tensor(np.exp(loss), dtype=torch.float32))
    if return_per_token:
        return aggregates, per_token, [torch.from_numpy(i) for i in ids]
    return aggregates


__all__ = ["apply_norm", "compute_perplexity_from_activations", "download_lm_head_weights"]
