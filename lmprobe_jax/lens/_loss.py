"""Training losses over the whole vocabulary in bounded memory: per-token KL(reference || lens) and
cross-entropy to a label, streamed over vocabulary windows in the forward pass (the engine's online
accumulators) and again in a custom backward pass.

With ``y`` the lens logits, ``q = softmax(y)``, ``p`` the reference distribution (or the one-hot label),
``d KL(p || q) / d y = d CE / d y = q - p``, so the backward pass recomputes each window's logits, forms
``(q - p) * g`` (``g`` the incoming cotangent; times the head's soft-cap derivative) and multiplies it
into the head: ``d features = dy @ W``, and, when asked, ``d W = dy^T features``, ``d b = sum dy``. Per
window it holds ``(L, t, vc)``; nothing ever holds ``(L, t, V)``. Cost: the forward's logits are computed
again in the backward pass (3 products with the head per step instead of autodiff's 2) -- the price of
the bound. The reference is a constant: no gradient flows into it (as under ``lax.stop_gradient``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import Array, lax

from ._engine import log_normaliser, online_softmax_stats, vocab_windows, window
from ._head import Head, logits_at, raw_logits, window_logits


def _backward(head: Head, features: Array, g: Array, lse: Array, target, vocab_chunk: int, head_grad: bool):
    """Cotangents of features and head for ``dy = (q - p) g`` over all windows; ``target(start, size,
    valid)`` gives ``p`` on a window, ``(t, size)`` or ``(L, t, size)``."""
    n_classes = head.n_classes
    size, n_windows = vocab_windows(n_classes, vocab_chunk)

    def step(carry, j):
        d_features, d_weight, d_bias = carry
        start, valid = window(j, size, n_classes)
        raw = raw_logits(head, features, start, size)
        q = jnp.exp(head.transform(raw) - lse[..., None])
        dy = jnp.where(valid, (q - target(start, size, valid)) * g[..., None] * head.transform_grad(raw), 0.0)
        w = lax.dynamic_slice_in_dim(head.weight, start, size, 1 if head.per_layer else 0)
        if head.per_layer:
            d_features = d_features + jnp.einsum("ltc,lcf->ltf", dy, w)
        else:
            d_features = d_features + jnp.einsum("ltc,cf->ltf", dy, w)
        if head_grad:
            if head.per_layer:
                dw, db = jnp.einsum("ltc,ltf->lcf", dy, features), dy.sum(1)
                d_weight = lax.dynamic_update_slice_in_dim(
                    d_weight, lax.dynamic_slice_in_dim(d_weight, start, size, 1) + dw, start, 1
                )
                d_bias = lax.dynamic_update_slice_in_dim(
                    d_bias, lax.dynamic_slice_in_dim(d_bias, start, size, 1) + db, start, 1
                )
            else:
                dw, db = jnp.einsum("ltc,ltf->cf", dy, features), dy.sum((0, 1))
                d_weight = lax.dynamic_update_slice_in_dim(
                    d_weight, lax.dynamic_slice_in_dim(d_weight, start, size, 0) + dw, start, 0
                )
                d_bias = lax.dynamic_update_slice_in_dim(
                    d_bias, lax.dynamic_slice_in_dim(d_bias, start, size, 0) + db, start, 0
                )
        return (d_features, d_weight, d_bias), None

    init = (jnp.zeros_like(features), jnp.zeros_like(head.weight), jnp.zeros_like(head.bias))
    (d_features, d_weight, d_bias), _ = lax.scan(step, init, jnp.arange(n_windows))
    d_head = Head(d_weight, d_bias, jnp.zeros_like(head.scale), jnp.zeros_like(head.softcap))
    return d_features, d_head if head_grad else None


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def chunked_kl(
    vocab_chunk: int, head_grad: bool, features: Array, head: Head, ref_features: Array, ref_head: Head
) -> Array:
    """Per-token ``KL(p || q)`` ``(L, t)``: ``q`` from ``features`` ``(L, t, F)`` through ``head``, ``p``
    from ``ref_features`` ``(t, F_ref)`` through ``ref_head`` (both over the same classes), streamed over
    windows of ``vocab_chunk`` classes. Differentiable in ``features`` (and in ``head`` when
    ``head_grad``; otherwise its cotangent is zero); the reference is a constant."""
    return _kl_forward(vocab_chunk, head_grad, features, head, ref_features, ref_head)[0]


def _kl_forward(vocab_chunk, head_grad, features, head, ref_features, ref_head):
    del head_grad
    lens_acc, ref_acc = online_softmax_stats(
        head, features, ref_head, ref_features, head.n_classes, k=1, vocab_chunk=vocab_chunk
    )
    lse, ref_lse = log_normaliser(lens_acc), log_normaliser(ref_acc)
    kl = ref_acc.cross / ref_acc.s + lse - ref_lse
    return kl, (features, head, ref_features, ref_head, lse, ref_lse)


def _kl_backward(vocab_chunk, head_grad, residuals, g):
    features, head, ref_features, ref_head, lse, ref_lse = residuals

    def target(start, size, valid):
        z = window_logits(ref_head, ref_features, start, size)
        return jnp.where(valid, jnp.exp(z - ref_lse[..., None]), 0.0)

    d_features, d_head = _backward(head, features, g, lse, target, vocab_chunk, head_grad)
    return d_features, d_head, None, None


chunked_kl.defvjp(_kl_forward, _kl_backward)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def chunked_ce(vocab_chunk: int, head_grad: bool, features: Array, head: Head, labels: Array) -> Array:
    """Per-token cross-entropy ``(L, t)`` of ``features`` ``(L, t, F)`` through ``head`` to ``labels``
    ``(t,)`` (0 where a label is negative: no next token), streamed over windows of ``vocab_chunk``
    classes. Differentiable in ``features`` (and ``head`` when ``head_grad``)."""
    return _ce_forward(vocab_chunk, head_grad, features, head, labels)[0]


def _ce_forward(vocab_chunk, head_grad, features, head, labels):
    del head_grad
    lens_acc, _ = online_softmax_stats(
        head, features, None, None, head.n_classes, k=1, vocab_chunk=vocab_chunk
    )
    lse = log_normaliser(lens_acc)
    ce = jnp.where(labels >= 0, lse - logits_at(head, features, labels), 0.0)
    return ce, (features, head, labels, lse)


def _ce_backward(vocab_chunk, head_grad, residuals, g):
    features, head, labels, lse = residuals
    g = jnp.where(labels >= 0, g, 0.0)

    def target(start, size, valid):
        return ((start + jnp.arange(size))[None, :] == labels[:, None]) & valid

    d_features, d_head = _backward(head, features, g, lse, target, vocab_chunk, head_grad)
    return d_features, d_head, None


chunked_ce.defvjp(_ce_forward, _ce_backward)
