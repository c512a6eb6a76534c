"""The streaming metric engine: how every layer's next-token distribution compares with the model's final
one, over any number of tokens and any vocabulary, without ever holding layers x tokens x vocabulary.

For a token chunk of ``t`` positions, ``L`` layers and ``C`` classes (the vocabulary, or a probe's classes),
write ``y`` for a layer's logits and ``z`` for the reference (final) logits, ``q = softmax(y)``,
``p = softmax(z)``, ``Y = logsumexp(y)``, ``Z = logsumexp(z)``. Every statistic is a softmax-weighted sum::

    KL(p || q) = sum_c p_c (z_c - y_c) - Z + Y          (tuned-lens's and Layer-Probing's direction)
    KL(q || p) = sum_c q_c (y_c - z_c) - Y + Z          (the depth notebook's direction)
    H(q)       = Y - sum_c q_c y_c                       entropy of the layer's prediction
    CE         = Y - y[next token]                       cross-entropy to the true next token
    top-1      = [argmax y == argmax z]                  agreement with the final prediction
    top-k      = |topk(y) & topk(z)| / k                 overlap of the k most likely classes

so the vocabulary is visited in chunks of ``vocab_chunk`` classes with online (flash-attention-style)
accumulators: a running maximum ``m``, ``s = sum exp(y - m)`` and the weighted sums, each rescaled by
``exp(m_old - m_new)`` when the maximum grows (the entropy sum, accumulated about ``m``, also gains
``(m_old - m_new) * s``), and a running top-k merged with each chunk's top-k (which also gives the running
maximum and the argmax). Ties keep the lowest class index, as ``argmax`` does.

What one compiled call holds, for ``L`` layers, a chunk of ``t`` tokens, ``vc`` classes per step and
hidden size ``D``: the streams ``(L, t, D)`` and the lens's features (same size), the layer logits of one
step ``(L, t, vc)`` and a few elementwise temporaries of that size, the reference logits ``(t, vc)``, and
accumulators ``(L, t, 2k + 4)``; plus the head (``C x F``, shared; ``L x C x F`` per layer). With the
defaults (``t = 128``, ``vc = 2048``) and SmolLM2 (L = 30, D = 576, V = 49152): 31 MB per ``(L, t, vc)``
buffer, where the ``(L, t, V)`` logits of one chunk would take 755 MB and those of 20k tokens 118 GB.
A host loop feeds the token chunks (from memory-mapped store shards) and sums the per-token statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from ._head import Head, logits_at, window_logits

FeaturesFn = Callable[[Any, Array], Array]
"""``features(params, h)``: streams ``(..., t, D)`` -> features ``(..., t, F)`` (float32)."""


class TokenStats(NamedTuple):
    """Per-token statistics of ``L`` layers against the reference (nats; booleans as float32).

    Attributes:
      kl_final_lens: ``(L, T)`` KL(final || lens).
      kl_lens_final: ``(L, T)`` KL(lens || final).
      ce_next_token: ``(L, T)`` cross-entropy to the next token (0 where there is none: see ``has_next``).
      entropy: ``(L, T)`` entropy of the layer's distribution.
      top1_agreement: ``(L, T)`` 1.0 where the layer's argmax is the final argmax.
      topk_overlap: ``(L, T)`` fraction of the final top-k among the layer's top-k.
      final_entropy: ``(T,)`` entropy of the final distribution.
      final_ce_next_token: ``(T,)`` the final distribution's cross-entropy to the next token.
      has_next: ``(T,)`` bool, positions with a next token.
    """

    kl_final_lens: Array
    kl_lens_final: Array
    ce_next_token: Array
    entropy: Array
    top1_agreement: Array
    topk_overlap: Array
    final_entropy: Array
    final_ce_next_token: Array
    has_next: Array


class LensMetrics(NamedTuple):
    """Per-layer means over token positions (cross-entropies over the positions with a next token).

    Attributes:
      kl_final_lens, kl_lens_final, ce_next_token, entropy, top1_agreement, topk_overlap: ``(L,)`` float64,
        the means of :class:`TokenStats`' fields.
      final_entropy, final_ce_next_token: ``()`` float64, the final distribution's.
      n_tokens: positions averaged over; n_next: positions with a next token; k: the top-k's k.
    """

    kl_final_lens: np.ndarray
    kl_lens_final: np.ndarray
    ce_next_token: np.ndarray
    entropy: np.ndarray
    top1_agreement: np.ndarray
    topk_overlap: np.ndarray
    final_entropy: float
    final_ce_next_token: float
    n_tokens: int
    n_next: int
    k: int

    def table(self, layers: Sequence | None = None) -> list[dict]:
        """One dict per layer (``layer`` and the six metrics), e.g. for a CSV."""
        layers = range(len(self.kl_final_lens)) if layers is None else layers
        names = ("kl_final_lens", "kl_lens_final", "ce_next_token", "entropy", "top1_agreement")
        return [
            {
                "layer": layer,
                **{name: float(getattr(self, name)[i]) for name in names},
                f"top{self.k}_overlap": float(self.topk_overlap[i]),
            }
            for i, layer in enumerate(layers)
        ]


class _Top(NamedTuple):
    values: Array  # (..., k) the k largest logits so far, descending
    indices: Array  # (..., k) int32 their classes


class _Online(NamedTuple):
    top: _Top
    s: Array  # (...,) sum exp(x - m) over the classes seen, m = top.values[..., 0]
    e: Array  # (...,) sum exp(x - m) (x - m)
    cross: Array  # (L, t) sum exp(x - m) (x - other); for the reference, one per layer


def _merge_top(top: _Top, x: Array, start: Array, k: int) -> _Top:
    values, positions = lax.top_k(x, k)
    values = jnp.concatenate([top.values, values], axis=-1)
    indices = jnp.concatenate([top.indices, positions.astype(jnp.int32) + start], axis=-1)
    best, order = lax.top_k(values, k)  # the running top-k first: ties keep the lower class
    return _Top(best, jnp.take_along_axis(indices, order, axis=-1))


def _update(acc: _Online, x: Array, other: Array, valid: Array, start: Array, k: int) -> _Online:
    """Fold one chunk of logits ``x`` (masked to ``-inf`` outside ``valid``) into ``acc``; ``other`` are the
    logits the cross term subtracts (broadcast against ``x``)."""
    top = _merge_top(acc.top, x, start, k)
    m_old, m = acc.top.values[..., 0], top.values[..., 0]
    seen = jnp.isfinite(m_old)
    alpha = jnp.where(seen, jnp.exp(m_old - m), 0.0)
    shift = jnp.where(seen, m_old - m, 0.0)
    centred = jnp.where(valid, x - m[..., None], 0.0)
    w = jnp.where(valid, jnp.exp(centred), 0.0)
    cross = jnp.sum(w * jnp.where(valid, x - other, 0.0), axis=-1)
    return _Online(
        top=top,
        s=alpha * acc.s + jnp.sum(w, axis=-1),
        e=alpha * (acc.e + shift * acc.s) + jnp.sum(w * centred, axis=-1),
        cross=alpha * acc.cross + cross,
    )


def _init(shape: tuple, cross_shape: tuple, k: int) -> _Online:
    return _Online(
        top=_Top(jnp.full((*shape, k), -jnp.inf, jnp.float32), jnp.zeros((*shape, k), jnp.int32)),
        s=jnp.zeros(shape, jnp.float32),
        e=jnp.zeros(shape, jnp.float32),
        cross=jnp.zeros(cross_shape, jnp.float32),
    )


def vocab_windows(n_classes: int, vocab_chunk: int) -> tuple[int, int]:
    """``(size, count)`` of the class windows: ``count`` windows of ``size`` classes cover ``n_classes``."""
    size = min(vocab_chunk, n_classes)
    return size, math.ceil(n_classes / size)


def window(j: Array, size: int, n_classes: int) -> tuple[Array, Array]:
    """Window ``j``'s first class and its ``(size,)`` mask: the last window is clamped to end at
    ``n_classes`` and masks the classes an earlier window already covered."""
    start = jnp.minimum(j * size, n_classes - size)
    return start, start + jnp.arange(size) >= j * size


def online_softmax_stats(
    lens_head: Head | None,
    lens_features: Array,
    ref_head: Head | None,
    ref_features: Array | None,
    n_classes: int,
    *,
    k: int,
    vocab_chunk: int,
) -> tuple[_Online, _Online | None]:
    """One pass over the classes in windows of ``vocab_chunk``: the online accumulators of the layers
    (``(L, t)``) and of the reference (``(t,)``, its cross term ``(L, t)``; None without a reference,
    when the layers' cross term is meaningless)."""
    size, n_windows = vocab_windows(n_classes, vocab_chunk)
    n_layers, t = lens_features.shape[0], lens_features.shape[-2]

    def step(carry, j):
        lens_acc, ref_acc = carry
        start, valid = window(j, size, n_classes)
        y = jnp.where(valid, window_logits(lens_head, lens_features, start, size), -jnp.inf)
        if ref_features is None:
            return (_update(lens_acc, y, 0.0, valid, start, k), None), None
        z = jnp.where(valid, window_logits(ref_head, ref_features, start, size), -jnp.inf)
        lens_acc = _update(lens_acc, y, z, valid, start, k)
        ref_acc = _update(ref_acc, z[None], y, valid, start, k)  # cross: sum p (z - y), per layer
        return (lens_acc, ref_acc), None

    init_ref = None if ref_features is None else _init((1, t), (n_layers, t), k)
    (lens_acc, ref_acc), _ = lax.scan(
        step, (_init((n_layers, t), (n_layers, t), k), init_ref), jnp.arange(n_windows)
    )
    if ref_acc is None:
        return lens_acc, None
    squeeze = lambda a: a[0]
    ref_acc = ref_acc._replace(
        top=_Top(*map(squeeze, ref_acc.top)), s=squeeze(ref_acc.s), e=squeeze(ref_acc.e)
    )
    return lens_acc, ref_acc


def log_normaliser(acc: _Online) -> Array:
    """``logsumexp`` of the logits an accumulator has seen."""
    return acc.top.values[..., 0] + jnp.log(acc.s)


@partial(jax.jit, static_argnames=("lens_fn", "ref_fn", "k", "vocab_chunk"))
def chunk_token_stats(
    lens_fn: FeaturesFn,
    lens_params: Any,
    lens_head: Head | None,
    ref_fn: FeaturesFn,
    ref_params: Any,
    ref_head: Head | None,
    streams: Array,
    ref_streams: Array,
    next_ids: Array,
    *,
    k: int,
    vocab_chunk: int,
) -> TokenStats:
    """:class:`TokenStats` of one token chunk, every layer in one program.

    Args:
      lens_fn, lens_params, lens_head: the lens: features ``lens_fn(lens_params, streams)`` ``(L, t, F)``
        and their head (``None``: the features are the logits themselves).
      ref_fn, ref_params, ref_head: the reference (final) distribution, likewise from ``ref_streams``.
      streams: ``(L, t, D)``; ref_streams: ``(t, D_ref)``; next_ids: ``(t,)`` int, ``-1`` for none.
      k: the top-k's k; vocab_chunk: classes per step (static).
    """
    features = lens_fn(lens_params, streams)
    ref = ref_fn(ref_params, ref_streams)
    n_classes = features.shape[-1] if lens_head is None else lens_head.n_classes
    lens_acc, ref_acc = online_softmax_stats(
        lens_head, features, ref_head, ref, n_classes, k=k, vocab_chunk=vocab_chunk
    )
    lse_lens, lse_ref = log_normaliser(lens_acc), log_normaliser(ref_acc)
    has_next = next_ids >= 0
    overlap = lens_acc.top.indices[..., :, None] == ref_acc.top.indices[None, :, None, :]
    return TokenStats(
        kl_final_lens=ref_acc.cross / ref_acc.s + lse_lens - lse_ref,
        kl_lens_final=lens_acc.cross / lens_acc.s + lse_ref - lse_lens,
        ce_next_token=jnp.where(has_next, lse_lens - logits_at(lens_head, features, next_ids), 0.0),
        entropy=jnp.log(lens_acc.s) - lens_acc.e / lens_acc.s,
        top1_agreement=(lens_acc.top.indices[..., 0] == ref_acc.top.indices[..., 0]).astype(jnp.float32),
        topk_overlap=jnp.sum(overlap, axis=(-2, -1)).astype(jnp.float32) / k,
        final_entropy=jnp.log(ref_acc.s) - ref_acc.e / ref_acc.s,
        final_ce_next_token=jnp.where(has_next, lse_ref - logits_at(ref_head, ref, next_ids), 0.0),
        has_next=has_next,
    )


def token_chunks(n_tokens: int, token_chunk: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each chunk of ``token_chunk`` positions (the last one may be shorter)."""
    for start in range(0, n_tokens, token_chunk):
        yield start, min(start + token_chunk, n_tokens)


def gather_rows(arrays: Sequence[np.ndarray] | np.ndarray, start: int, stop: int, pad_to: int) -> np.ndarray:
    """Rows ``start:stop`` of each array (``(L, T, D)`` or L arrays ``(T, D)``), float32, zero-padded to
    ``pad_to`` rows: ``(L, pad_to, D)``."""
    rows = np.stack([np.asarray(a[start:stop], np.float32) for a in arrays])
    return np.pad(rows, [(0, 0), (0, pad_to - (stop - start)), (0, 0)])


def pad_rows(array: np.ndarray, start: int, stop: int, pad_to: int, fill) -> np.ndarray:
    """Rows ``start:stop`` of ``array`` padded with ``fill`` to ``pad_to`` rows (the padding positions are
    computed and dropped: every chunk has the same shape, so one compiled program serves them all)."""
    rows = np.asarray(array[start:stop])
    return np.concatenate([rows, np.full((pad_to - len(rows), *rows.shape[1:]), fill, rows.dtype)])


class Lens(NamedTuple):
    """A lens: ``features(params, h)`` maps streams ``(..., t, D)`` to features ``(..., t, F)``, and ``head``
    maps features to logits (``None``: the features are the logits). ``features`` must be a module-level
    function (it is a static argument of the compiled program: a new function object recompiles)."""

    features: FeaturesFn
    params: Any
    head: Head | None


def iter_token_stats(
    lens: Lens,
    reference: Lens,
    streams: Sequence[np.ndarray] | np.ndarray,
    ref_stream: np.ndarray,
    next_ids: np.ndarray,
    *,
    k: int = 5,
    token_chunk: int = 128,
    vocab_chunk: int = 2048,
    progress: bool = False,
) -> Iterator[tuple[int, int, TokenStats]]:
    """:func:`chunk_token_stats` over every token chunk: yields ``(start, stop, stats)`` with the stats of
    positions ``start:stop`` (numpy, padding removed). Every chunk runs the same compiled program.

    Args:
      lens: the lens whose per-layer distributions are measured.
      reference: the final distribution's lens (the readout of the last block's stream, or dense
        log-probabilities with ``head=None``).
      streams: ``(L, T, D)``, or L arrays ``(T, D)`` (memory-mapped store shards are read chunk by chunk).
      ref_stream: ``(T, D_ref)`` what ``reference`` reads. next_ids: ``(T,)`` int, ``-1`` where none.
      k: the top-k's k. token_chunk, vocab_chunk: the working set (see the module docstring).
      progress: show a progress bar over tokens.
    """
    n_tokens = len(next_ids)
    _check_shapes(streams, ref_stream, next_ids, lens.head, k, token_chunk, vocab_chunk)
    from tqdm.auto import tqdm

    bar = tqdm(total=n_tokens, unit="tok", unit_scale=True, desc="lens metrics", disable=not progress)
    with bar:
        for start, stop in token_chunks(n_tokens, token_chunk):
            stats = chunk_token_stats(
                lens.features,
                lens.params,
                lens.head,
                reference.features,
                reference.params,
                reference.head,
                gather_rows(streams, start, stop, token_chunk),
                pad_rows(np.asarray(ref_stream[start:stop], np.float32), 0, stop - start, token_chunk, 0),
                pad_rows(np.asarray(next_ids[start:stop], np.int32), 0, stop - start, token_chunk, -1),
                k=k,
                vocab_chunk=vocab_chunk,
            )
            n = stop - start
            yield start, stop, jax.tree.map(lambda a, n=n: np.asarray(a)[..., :n], stats)
            bar.update(stop - start)


def _check_shapes(streams, ref_stream, next_ids, head, k, token_chunk, vocab_chunk) -> None:
    n_tokens = len(next_ids)
    if n_tokens == 0:
        raise ValueError("No token positions: pass at least one token.")
    lengths = {len(a) for a in streams}
    if lengths != {n_tokens} or len(ref_stream) != n_tokens:
        raise ValueError(
            f"streams have {sorted(lengths)} rows and the reference {len(ref_stream)}, but next_ids has "
            f"{n_tokens}: every array needs one row per token position."
        )
    for name, value in (("k", k), ("token_chunk", token_chunk), ("vocab_chunk", vocab_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}.")
    if head is not None and k > min(head.n_classes, vocab_chunk):
        raise ValueError(
            f"k={k} exceeds the head's {head.n_classes} classes or vocab_chunk={vocab_chunk}; lower k."
        )


def lens_token_stats(
    lens: Lens, reference: Lens, streams, ref_stream, next_ids, **options: Any
) -> TokenStats:
    """Per-token statistics ``(L, T)`` of every position (arguments and options of
    :func:`iter_token_stats`): ``O(L x T)`` memory for the results, on top of the per-chunk working set."""
    parts = [s for _, _, s in iter_token_stats(lens, reference, streams, ref_stream, next_ids, **options)]
    return TokenStats(*(np.concatenate(fields, axis=-1) for fields in zip(*parts, strict=True)))


def lens_metrics(
    lens: Lens, reference: Lens, streams, ref_stream, next_ids, *, k: int = 5, **options: Any
) -> LensMetrics:
    """Per-layer means over every position (arguments and options of :func:`iter_token_stats`), summed
    chunk by chunk in float64: ``O(L)`` memory for the results, on top of the per-chunk working set."""
    sums: dict[str, np.ndarray] = {}
    n_tokens = n_next = 0
    for start, stop, stats in iter_token_stats(
        lens, reference, streams, ref_stream, next_ids, k=k, **options
    ):
        n_tokens += stop - start
        n_next += int(stats.has_next.sum())
        for name, value in stats._asdict().items():
            if name != "has_next":
                sums[name] = sums.get(name, 0.0) + np.asarray(value, np.float64).sum(axis=-1)
    if n_next == 0:
        raise ValueError("No position has a next token: every text needs at least 2 tokens.")
    means = {name: value / (n_next if "ce_" in name else n_tokens) for name, value in sums.items()}
    return LensMetrics(
        **{
            name: means[name]
            for name in (
                "kl_final_lens",
                "kl_lens_final",
                "ce_next_token",
                "entropy",
                "top1_agreement",
                "topk_overlap",
            )
        },
        final_entropy=float(means["final_entropy"]),
        final_ce_next_token=float(means["final_ce_next_token"]),
        n_tokens=n_tokens,
        n_next=n_next,
        k=k,
    )
