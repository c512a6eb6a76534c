"""A linear head that turns per-layer features into logits: the unembedding shared by every layer (logit
and tuned lens) or one weight matrix per layer (next-token probes)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array, lax


class Head(NamedTuple):
    """``logits = transform(features @ weight.T + bias)`` over ``C`` classes (the vocabulary, or a probe's
    top-K tokens + "other").

    Attributes:
      weight: ``(C, F)`` shared by every layer, or ``(L, C, F)`` one per layer.
      bias: ``(C,)`` or ``(L, C)``.
      scale: ``()`` multiplies the logits (1.0: none).
      softcap: ``()``; when positive, logits ``z`` become ``softcap * tanh(z / softcap)`` (0.0: none).
    """

    weight: Array
    bias: Array
    scale: Array
    softcap: Array

    @property
    def per_layer(self) -> bool:
        return self.weight.ndim == 3

    @property
    def n_classes(self) -> int:
        return self.weight.shape[-2]

    def transform(self, z: Array) -> Array:
        """The scale and soft-cap applied to raw logits ``z``."""
        z = self.scale * z
        cap = jnp.where(self.softcap > 0, self.softcap, 1.0)
        return jnp.where(self.softcap > 0, cap * jnp.tanh(z / cap), z)

    def transform_grad(self, z: Array) -> Array:
        """d transform(z) / dz, elementwise, at raw logits ``z``."""
        cap = jnp.where(self.softcap > 0, self.softcap, 1.0)
        t = jnp.tanh(self.scale * z / cap)
        return self.scale * jnp.where(self.softcap > 0, 1.0 - t * t, 1.0)


def linear_head(weight: Array, bias: Array) -> Head:
    """A plain linear head (no scale, no soft-cap)."""
    return Head(weight, bias, jnp.float32(1.0), jnp.float32(0.0))


def head_window(head: Head, start: Array, size: int) -> tuple[Array, Array]:
    """Rows ``start:start + size`` of the head's classes: ``(weight, bias)`` of shapes ``(size, F)`` /
    ``(size,)`` (``(L, size, F)`` / ``(L, size)`` for a per-layer head)."""
    axis = 1 if head.per_layer else 0
    return (
        lax.dynamic_slice_in_dim(head.weight, start, size, axis),
        lax.dynamic_slice_in_dim(head.bias, start, size, axis),
    )


def raw_logits(head: Head | None, features: Array, start: Array, size: int) -> Array:
    """Untransformed logits of classes ``start:start + size`` for ``features`` ``(L, t, F)`` (or ``(t, F)``
    with a shared head); ``(..., t, size)``. ``head=None`` means the features *are* the logits."""
    if head is None:
        return lax.dynamic_slice_in_dim(features, start, size, features.ndim - 1)
    weight, bias = head_window(head, start, size)
    if head.per_layer:
        return jnp.einsum("ltf,lcf->ltc", features, weight) + bias[:, None, :]
    return features @ weight.T + bias


def window_logits(head: Head | None, features: Array, start: Array, size: int) -> Array:
    """:func:`raw_logits` with the head's scale and soft-cap applied."""
    z = raw_logits(head, features, start, size)
    return z if head is None else head.transform(z)


def logits_at(head: Head | None, features: Array, ids: Array) -> Array:
    """The logit of class ``ids[t]`` for each token: features ``(..., t, F)``, ids ``(t,)`` (clipped to the
    valid range: mask invalid ids yourself); returns ``(..., t)``."""
    ids = jnp.clip(ids, 0, features.shape[-1] - 1 if head is None else head.n_classes - 1)
    if head is None:
        return jnp.take_along_axis(features, jnp.broadcast_to(ids, features.shape[:-1])[..., None], -1)[
            ..., 0
        ]
    if head.per_layer:
        weight, bias = head.weight[:, ids], head.bias[:, ids]  # (L, t, F), (L, t)
    else:
        weight, bias = head.weight[ids], head.bias[ids]  # (t, F), (t,)
    return head.transform(jnp.sum(features * weight, axis=-1) + bias)
