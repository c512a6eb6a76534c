"""The model's readout as JAX arrays: final norm + unembedding, so any residual stream becomes the model's
logits (the formula of :mod:`lmprobe_jax_store._readout`)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from lmprobe_jax_store import ActivationStore, read_readout

from ._head import Head


class Readout(NamedTuple):
    """A causal LM's readout: final norm, unembedding and logit transforms, as arrays (a pytree: pass it
    through ``jit`` / ``vmap`` like any other argument).

    For a stream ``h`` ``(..., D)``::

        n = h - center * mean(h)                          center = 1: LayerNorm, 0: RMSNorm
        u = n / sqrt(mean(n ** 2) + eps) * norm_weight + norm_bias
        z = scale * (u @ unembed.T + unembed_bias)
        logits = softcap * tanh(z / softcap)   if softcap > 0 else z

    Attributes:
      norm_weight: ``(D,)`` float32 (Gemma's ``1 + weight`` already folded in).
      norm_bias: ``(D,)`` float32 (zeros where the norm has none).
      unembed: ``(V, D)`` float32, the LM head's weight (the embedding matrix when tied).
      unembed_bias: ``(V,)`` float32 (zeros where the head has none).
      center: ``()`` float32, 1.0 for LayerNorm, 0.0 for RMSNorm.
      eps: ``()`` float32.
      scale: ``()`` float32, 1.0 unless the model scales its logits (Cohere, Granite).
      softcap: ``()`` float32, 0.0 unless the model soft-caps its logits (Gemma 2).
    """

    norm_weight: Array
    norm_bias: Array
    unembed: Array
    unembed_bias: Array
    center: Array
    eps: Array
    scale: Array
    softcap: Array

    @property
    def kind(self) -> str:
        """``"layer"`` or ``"rms"``."""
        return "layer" if float(self.center) else "rms"


def readout_from_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> Readout:
    """A :class:`Readout` from a store's readout description and arrays
    (:func:`lmprobe_jax_store.read_readout`)."""
    weight = np.asarray(arrays["unembed.weight"], np.float32)
    vocab, hidden = weight.shape
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return Readout(
        norm_weight=f32(arrays["norm.weight"]),
        norm_bias=f32(arrays.get("norm.bias", np.zeros(hidden))),
        unembed=f32(weight),
        unembed_bias=f32(arrays.get("unembed.bias", np.zeros(vocab))),
        center=f32(1.0 if meta["norm"] == "layer" else 0.0),
        eps=f32(meta["eps"]),
        scale=f32(meta["logit_scale"]),
        softcap=f32(meta["logit_softcap"] or 0.0),
    )


def load_readout(store: ActivationStore) -> Readout:
    """The readout of a token-level store (:func:`lmprobe_jax_extract.extract_token_streams`)."""
    return readout_from_arrays(*read_readout(store))


def final_norm(readout: Readout, h: Array) -> Array:
    """The model's final norm applied to streams ``h`` ``(..., D)``; float32 ``(..., D)``."""
    h = jnp.asarray(h, jnp.float32)
    n = h - readout.center * jnp.mean(h, axis=-1, keepdims=True)
    u = n * lax.rsqrt(jnp.mean(n * n, axis=-1, keepdims=True) + readout.eps)
    return u * readout.norm_weight + readout.norm_bias


def readout_head(readout: Readout) -> Head:
    """The unembedding as a :class:`Head` shared by every layer."""
    return Head(readout.unembed, readout.unembed_bias, readout.scale, readout.softcap)


def readout_logits(readout: Readout, h: Array) -> Array:
    """The model's logits for streams ``h`` ``(..., D)``: ``(..., V)`` float32. Materialises the whole
    vocabulary axis -- for many tokens use :func:`lmprobe_jax.lens.lens_metrics`, which streams it."""
    head = readout_head(readout)
    return head.transform(final_norm(readout, h) @ head.weight.T + head.bias)
