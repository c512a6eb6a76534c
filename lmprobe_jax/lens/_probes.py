"""Next-token probes as Layer-Probing trains them: a head per layer from the residual stream (no final
norm, no unembedding) to the next token's distribution, linear or a small MLP (flax), every layer in one
step.

Classes: the whole vocabulary, or -- for memory, since a vocabulary head costs ``L x V x D`` parameters
(3.4 GB for SmolLM2) -- the ``K`` most frequent next tokens of the training texts plus one "other"
class. Objectives: ``"kl"``, KL(final || probe) to the model's own distribution (Layer-Probing's loss;
over K + 1 classes the final distribution is collapsed: each top-K token keeps its probability and
"other" gets the rest), or ``"ce"``, cross-entropy to the true next token (mapped to its class). Layer-
Probing's optimizer is the default: AdamW, learning rate 5e-4, weight decay 0.01.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from ._engine import Lens, LensMetrics, lens_metrics, log_normaliser, online_softmax_stats
from ._head import Head, linear_head
from ._logit_lens import final_distribution
from ._loss import chunked_ce, chunked_kl
from ._readout import Readout, final_norm, readout_head
from ._training import Training, check_budget, minibatches, train_layers

OBJECTIVES = ("kl", "ce")


class NextTokenHead(nn.Module):
    """One layer's probe: ``Dense(n_classes)`` on the stream, or on ``gelu(Dense(hidden))`` of it."""

    n_classes: int
    hidden: int = 0

    def setup(self):
        self.hidden_layer = nn.Dense(self.hidden) if self.hidden else None
        self.out = nn.Dense(self.n_classes)

    def __call__(self, h: Array) -> Array:
        return self.out(nn.gelu(self.hidden_layer(h)) if self.hidden else h)


def probe_features_one(params: dict, h: Array) -> Array:
    """One layer's probe features: the stream itself (linear) or the MLP's hidden activations -- what
    :class:`NextTokenHead` feeds its output layer, computed from its parameters."""
    if "hidden_layer" not in params:
        return h
    layer = params["hidden_layer"]
    return nn.gelu(h @ layer["kernel"] + layer["bias"])


def probe_features(params: dict, h: Array) -> Array:
    """Every layer's probe features ``(L, t, F)`` for streams ``(L, t, D)`` (params lead with ``L``)."""
    return jax.vmap(probe_features_one)(params, jnp.asarray(h, jnp.float32))


def probe_head(params: dict) -> Head:
    """The per-layer output layer as a :class:`Head` (weight ``(L, C, F)``)."""
    return linear_head(jnp.swapaxes(params["out"]["kernel"], 1, 2), params["out"]["bias"])


class Classes(NamedTuple):
    """The probe's classes.

    Attributes:
      tokens: ``(K,)`` int64 the top-K token ids (class k is ``tokens[k]``, class K is "other"), or None
        for the whole vocabulary.
      vocab_size: V.
    """

    tokens: np.ndarray | None
    vocab_size: int

    @property
    def n_classes(self) -> int:
        return self.vocab_size if self.tokens is None else len(self.tokens) + 1

    def of(self, token_ids: np.ndarray) -> np.ndarray:
        """Class of each token id (negative ids stay -1)."""
        token_ids = np.asarray(token_ids, np.int64)
        if self.tokens is None:
            return token_ids
        table = np.full(self.vocab_size, len(self.tokens), np.int64)
        table[self.tokens] = np.arange(len(self.tokens))
        return np.where(token_ids >= 0, table[np.clip(token_ids, 0, None)], -1)


def top_k_classes(next_ids: np.ndarray, vocab_size: int, k: int | None) -> Classes:
    """The ``k`` most frequent next tokens of ``next_ids`` (ties: lower id first), or the whole vocabulary
    when ``k`` is None."""
    if k is None:
        return Classes(None, vocab_size)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < vocab_size:
        raise ValueError(
            f"top_k must be an integer in 1..{vocab_size - 1} (or None for the vocabulary), not {k!r}."
        )
    counts = np.bincount(next_ids[next_ids >= 0], minlength=vocab_size)
    return Classes(np.sort(np.argsort(-counts, kind="stable")[:k]), vocab_size)


@partial(jax.jit, static_argnames=("vocab_chunk",))
def _collapse(readout: Readout, h_final: Array, tokens: Array, *, vocab_chunk: int) -> Array:
    """Final log-probabilities ``(t, K + 1)`` of the top-K tokens and "other" (streamed over the vocabulary:
    logsumexp of all logits and of the logits outside the top-K)."""
    features = final_norm(readout, h_final)[None]
    head = readout_head(readout)
    acc, _ = online_softmax_stats(head, features, None, None, head.n_classes, k=1, vocab_chunk=vocab_chunk)
    lse = log_normaliser(acc)[0]
    top = head.transform(features[0] @ head.weight[tokens].T + head.bias[tokens]) - lse[:, None]
    # log P(other) = log(1 - sum_k p_k), computed as log1p(-sum) (exact enough: sum < 1 by construction)
    rest = jnp.log1p(-jnp.clip(jnp.sum(jnp.exp(top), axis=-1), 0.0, 1.0 - 1e-7))
    return jnp.concatenate([top, rest[:, None]], axis=-1)


def collapsed_final_log_probs(
    readout: Readout,
    final_stream: np.ndarray,
    tokens: np.ndarray,
    *,
    token_chunk: int = 512,
    vocab_chunk: int = 2048,
) -> np.ndarray:
    """``(T, K + 1)`` float32: the model's final distribution over ``tokens`` and "other", per position."""
    parts = []
    for start in range(0, len(final_stream), token_chunk):
        h = np.asarray(final_stream[start : start + token_chunk], np.float32)
        parts.append(np.asarray(_collapse(readout, h, jnp.asarray(tokens), vocab_chunk=vocab_chunk)))
    return np.concatenate(parts)


def identity_features(params: Any, h: Array) -> Array:
    """Features that are the input itself (a reference given as log-probabilities)."""
    del params
    return jnp.asarray(h, jnp.float32)


class Probes(NamedTuple):
    """Fitted next-token probes, one per layer.

    Attributes:
      params: flax parameters, every leaf with a leading ``L`` axis (``out`` kernel ``(L, F, C)``).
      classes: the :class:`Classes` they predict.
      objective: ``"kl"`` or ``"ce"``.
      hidden: the MLP's width (0: linear).
    """

    params: dict
    classes: Classes
    objective: str
    hidden: int

    def lens(self) -> Lens:
        """The probes as a :class:`Lens` (features + per-layer head)."""
        return Lens(probe_features, self.params, probe_head(self.params))


def _probe_loss(params, h, target, *, objective: str, collapsed: bool, vocab_chunk: int):
    features, head = probe_features(params, h), probe_head(params)
    if objective == "ce":
        loss = chunked_ce(vocab_chunk, True, features, head, target)
    elif collapsed:  # target: dense final log-probabilities over the K + 1 classes
        loss = chunked_kl(vocab_chunk, True, features, head, target, None)
    else:  # target: (readout, last block's stream)
        readout, h_final = target
        loss = chunked_kl(
            vocab_chunk, True, features, head, final_norm(readout, h_final), readout_head(readout)
        )
    if objective == "ce":  # a mean over the positions that have a next token
        per_layer = jnp.sum(loss, axis=-1) / jnp.maximum(jnp.sum(target >= 0), 1)
    else:
        per_layer = jnp.mean(loss, axis=-1)
    return jnp.sum(per_layer), per_layer


_LOSSES: dict[tuple, Callable] = {}


def fit_next_token_probes(
    streams: Sequence[np.ndarray] | np.ndarray,
    final_stream: np.ndarray,
    next_ids: np.ndarray,
    readout: Readout,
    *,
    hidden: int = 0,
    top_k: int | None = None,
    objective: str = "kl",
    max_steps: int = 500,
    batch_tokens: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    vocab_chunk: int = 2048,
    seed: int = 0,
    time_budget: float | None = None,
    callback: Callable[[int, np.ndarray], bool] | None = None,
    progress: bool = False,
) -> tuple[Probes, Training]:
    """Train a next-token probe on every layer of ``streams`` at once.

    Args:
      streams: ``(L, T, D)`` or L arrays ``(T, D)``, the training tokens' streams.
      final_stream: ``(T, D)`` the last block's stream (the ``"kl"`` target, and the top-K's collapse).
      next_ids: ``(T,)`` next-token ids, ``-1`` where none (``"ce"`` skips those positions).
      readout: the model's :class:`Readout` (for the final distribution only; the probes do not use it).
      hidden: width of the MLP's hidden layer; 0 for a linear probe.
      top_k: predict the ``top_k`` most frequent next tokens + "other" (None: the whole vocabulary).
      objective: ``"kl"`` (to the final distribution) or ``"ce"`` (to the true next token).
      max_steps, batch_tokens, optimizer, vocab_chunk, seed, time_budget, callback, progress: as
        :func:`~lmprobe_jax.lens.fit_tuned_lens`; the default optimizer is AdamW(5e-4, weight decay 0.01).

    Returns:
      ``(probes, training)``: the :class:`Probes` and the :class:`~lmprobe_jax.lens._training.Training`
      record (per-layer loss curve and gradient norms).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}.")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
        raise ValueError(f"hidden must be a non-negative integer (0: linear probe), not {hidden!r}.")
    n_layers, n_tokens = len(streams), len(next_ids)
    check_budget(max_steps, batch_tokens, n_tokens)
    classes = top_k_classes(np.asarray(next_ids), readout.unembed.shape[0], top_k)
    labels = classes.of(next_ids)
    collapsed = classes.tokens is not None
    if objective == "kl" and collapsed:
        final_logp = collapsed_final_log_probs(readout, final_stream, classes.tokens, vocab_chunk=vocab_chunk)

    def target(rows):
        if objective == "ce":
            return labels[rows]
        if collapsed:
            return final_logp[rows]
        return readout, np.asarray(final_stream[rows], np.float32)

    module = NextTokenHead(classes.n_classes, hidden)
    keys = jax.random.split(jax.random.key(seed), n_layers)
    dim = streams[0].shape[-1]
    params = jax.vmap(lambda key: module.init(key, jnp.zeros((1, dim)))["params"])(keys)
    batches = (
        (np.stack([np.asarray(s[rows], np.float32) for s in streams]), target(rows))
        for rows in minibatches(n_tokens, batch_tokens, seed)
    )
    key = (objective, collapsed, vocab_chunk)
    loss = _LOSSES.setdefault(
        key, partial(_probe_loss, objective=objective, collapsed=collapsed, vocab_chunk=vocab_chunk)
    )
    optimizer = optax.adamw(5e-4, weight_decay=0.01) if optimizer is None else optimizer
    training = train_layers(
        loss,
        params,
        optimizer,
        batches,
        max_steps=max_steps,
        time_budget=time_budget,
        callback=callback,
        progress=progress,
        desc="probes",
    )
    return Probes(training.params, classes, objective, hidden), training


def probe_metrics(
    probes: Probes, streams, final_stream: np.ndarray, next_ids: np.ndarray, readout: Readout, **options: Any
) -> LensMetrics:
    """Per-layer metrics of next-token probes against the final distribution (over the probes' classes:
    the collapsed final distribution and the next token's class when they predict top-K + "other")."""
    if probes.classes.tokens is None:
        return lens_metrics(
            probes.lens(), final_distribution(readout), streams, final_stream, next_ids, **options
        )
    final_logp = collapsed_final_log_probs(readout, final_stream, probes.classes.tokens)
    reference = Lens(identity_features, None, None)
    return lens_metrics(probes.lens(), reference, streams, final_logp, probes.classes.of(next_ids), **options)


def save_probes(path, probes: Probes, *, layers: Sequence, model: dict | None = None) -> None:
    """Save probes to ``path`` (``arrays.safetensors`` with flattened parameter names + ``config.json``)."""
    from flax.traverse_util import flatten_dict

    from ._io import save_lens

    arrays = {"/".join(k): np.asarray(v) for k, v in flatten_dict(probes.params).items()}
    if probes.classes.tokens is not None:
        arrays["classes.tokens"] = np.asarray(probes.classes.tokens, np.int64)
    config = {
        "layers": [str(layer) for layer in layers],
        "objective": probes.objective,
        "hidden": probes.hidden,
        "vocab_size": probes.classes.vocab_size,
        "model": model,
    }
    save_lens(path, "next_token_probes", arrays, config)


def load_probes(path) -> tuple[Probes, dict]:
    """``(probes, config)`` saved by :func:`save_probes`."""
    from flax.traverse_util import unflatten_dict

    from ._io import load_lens

    arrays, config = load_lens(path, "next_token_probes")
    tokens = arrays.pop("classes.tokens", None)
    params = unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in arrays.items()})
    classes = Classes(tokens, int(config["vocab_size"]))
    return Probes(params, classes, config["objective"], int(config["hidden"])), config
