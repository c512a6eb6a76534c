"""Residual-stream statistics per layer, streamed over tokens: two different things that have both been
called the stream's "entropy".

* **Covariance spectrum entropy** (``spectrum_entropy``): the Shannon entropy, in nats, of the normalised
  eigenvalues of the layer's feature covariance over all tokens,
  ``H = -sum_i p_i log p_i`` with ``p_i = lambda_i / sum_j lambda_j`` and ``Sigma = cov(h)`` ``(D, D)``
  (tokens are the observations); ``exp(H)`` is the effective rank (Roy & Vetterli, 2007): how many
  directions the layer spreads its variance over, from 1 to D. A real entropy: invariant to the scale
  of the stream.
* **Layer-Probing's statistic** (``log_frobenius``): per text, ``log ||C||_F`` with ``C`` the
  *token* covariance ``(T_text, T_text)`` -- each token a variable, its D features the observations
  (``torch.cov`` of a ``(T, D)`` matrix, as Layer-Probing's ``residual_stream_viz.py`` computes it) --
  averaged over texts. It is not an entropy: ``||C||_F`` grows with the squared norm of the tokens and
  is dominated by the largest one. Where a model writes a massive activation into one token (SmolLM2
  does into each text's first token from layer ~11 on), it tracks that token's norm; hence
  ``log_frobenius_no_first``, the same statistic with each text's first token left out.

Memory: per chunk of ``t`` tokens, ``(L, t, D)`` streams and ``(L, D, D)`` moments (float32 in the
compiled chunk, merged in float64 on the host by Chan et al.'s pairwise update); per text, its
``(L, T_text, D)`` rows for the token covariance.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._engine import gather_rows, token_chunks


class StreamStats(NamedTuple):
    """Per-layer residual-stream statistics (see the module docstring).

    Attributes:
      spectrum_entropy: ``(L,)`` entropy (nats) of the normalised covariance eigenvalues.
      effective_rank: ``(L,)`` ``exp(spectrum_entropy)``.
      log_frobenius: ``(L,)`` Layer-Probing's mean over texts of ``log ||token covariance||_F``.
      log_frobenius_no_first: ``(L,)`` the same without each text's first token (texts of one token,
        with none left, are left out of this mean; NaN if all are).
      n_tokens, n_texts: what was averaged over.
    """

    spectrum_entropy: np.ndarray
    effective_rank: np.ndarray
    log_frobenius: np.ndarray
    log_frobenius_no_first: np.ndarray
    n_tokens: int
    n_texts: int


@jax.jit
def _chunk_moments(h: Array, valid: Array) -> tuple[Array, Array, Array]:
    """Count, mean ``(L, D)`` and centred scatter ``(L, D, D)`` of the valid rows of ``h`` ``(L, t, D)``."""
    w = valid.astype(jnp.float32)
    n = jnp.sum(w)
    mean = jnp.einsum("t,ltd->ld", w, h) / n
    centred = (h - mean[:, None, :]) * w[None, :, None]
    return n, mean, jnp.einsum("ltd,lte->lde", centred, centred)


def _merge(a: tuple, b: tuple) -> tuple:
    """Chan, Golub & LeVeque's pairwise update of (count, mean, scatter), in float64."""
    n_a, mean_a, m_a = a
    n_b, mean_b, m_b = (np.float64(b[0]), np.asarray(b[1], np.float64), np.asarray(b[2], np.float64))
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m_a + m_b + np.einsum("ld,le->lde", delta, delta) * (n_a * n_b / n)


def spectrum_entropy(covariance: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the normalised eigenvalues of symmetric PSD matrices ``(..., D, D)``."""
    eig = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)
    p = eig / eig.sum(-1, keepdims=True)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def token_covariance_log_frobenius(h: np.ndarray) -> np.ndarray:
    """``log ||cov||_F`` of the token covariance of each layer's text ``h`` ``(L, T, D)`` (rows are the
    variables, as ``torch.cov``): ``C = X X^T / (D - 1)`` with each row centred over its features. Uses
    ``||X X^T||_F = ||X^T X||_F``, whichever Gram matrix is smaller."""
    x = np.asarray(h, np.float64)
    x = x - x.mean(-1, keepdims=True)
    gram = x @ np.swapaxes(x, -1, -2) if x.shape[-2] <= x.shape[-1] else np.swapaxes(x, -1, -2) @ x
    return np.log(np.linalg.norm(gram, axis=(-2, -1)) / (x.shape[-1] - 1))


def stream_statistics(
    streams: Sequence[np.ndarray] | np.ndarray, offsets: np.ndarray, *, token_chunk: int = 1024
) -> StreamStats:
    """Both statistics for every layer of ``streams`` (``(L, T, D)`` or L arrays ``(T, D)``, e.g.
    memory-mapped store shards), texts delimited by ``offsets`` ``(N + 1,)``."""
    offsets = np.asarray(offsets, np.int64)
    n_tokens = int(offsets[-1])
    if n_tokens < 2 or {len(s) for s in streams} != {n_tokens}:
        raise ValueError(
            f"streams have {sorted({len(s) for s in streams})} rows and offsets say {n_tokens}: pass one row "
            "per token, at least 2 tokens."
        )
    n_layers, hidden = len(streams), streams[0].shape[-1]
    moments = (0.0, np.zeros((n_layers, hidden)), np.zeros((n_layers, hidden, hidden)))
    for start, stop in token_chunks(n_tokens, token_chunk):
        rows = gather_rows(streams, start, stop, token_chunk)
        moments = _merge(moments, _chunk_moments(rows, np.arange(token_chunk) < stop - start))
    entropy = spectrum_entropy(moments[2] / (moments[0] - 1))
    log_fro, log_fro_rest = [], []
    for start, stop in itertools.pairwise(offsets):
        text = gather_rows(streams, int(start), int(stop), int(stop - start))
        log_fro.append(token_covariance_log_frobenius(text))
        if stop - start > 1:
            log_fro_rest.append(token_covariance_log_frobenius(text[:, 1:]))
    return StreamStats(
        spectrum_entropy=entropy,
        effective_rank=np.exp(entropy),
        log_frobenius=np.mean(log_fro, axis=0),
        log_frobenius_no_first=np.mean(log_fro_rest, axis=0) if log_fro_rest else np.full(n_layers, np.nan),
        n_tokens=n_tokens,
        n_texts=len(offsets) - 1,
    )
