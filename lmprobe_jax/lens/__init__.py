"""Every layer's view of the next token: logit lens, tuned lens and next-token probes, measured for all
layers in one compiled program, streamed over tokens and vocabulary.

* :func:`analyze` -- the whole job for a model and texts, as one :class:`LensReport` (what
  ``lmprobe-jax lens`` writes).
* :class:`Readout`, :func:`load_readout`, :func:`final_norm`, :func:`readout_logits` -- the model's final
  norm + unembedding as JAX arrays, read from a token-level store.
* :func:`lens_metrics` / :func:`lens_token_stats` -- the streaming metric engine: KL(final || lens),
  KL(lens || final), cross-entropy to the next token, entropy, top-1 agreement, top-k overlap, for any
  :class:`Lens` (features + :class:`Head`), never holding layers x tokens x vocabulary.
* :func:`logit_lens`, :func:`logit_lens_metrics` -- the logit lens.
* :func:`fit_tuned_lens`, :func:`tuned_lens_metrics`, :func:`save_tuned_lens` / :func:`load_tuned_lens` --
  the tuned lens, every layer's translator in one vmapped optax step.
* :func:`fit_next_token_probes`, :func:`probe_metrics`, :func:`save_probes` / :func:`load_probes` --
  Layer-Probing's next-token probes (linear or MLP, flax), to the vocabulary or top-K + "other".
* :func:`stream_statistics` -- per-layer residual-stream statistics: covariance spectrum entropy and
  Layer-Probing's log Frobenius norm of the token covariance.
* :func:`token_data` -- what a lens reads from a token-level store.
"""

from ._analyze import LensReport, analyze
from ._data import TokenData, token_data
from ._engine import Lens, LensMetrics, TokenStats, chunk_token_stats, lens_metrics, lens_token_stats
from ._head import Head, linear_head
from ._logit_lens import final_distribution, logit_lens, logit_lens_metrics
from ._readout import Readout, final_norm, load_readout, readout_from_arrays, readout_head, readout_logits
from ._stats import StreamStats, spectrum_entropy, stream_statistics, token_covariance_log_frobenius
from ._training import Training
from ._tuned import (
    Translator,
    fit_tuned_lens,
    identity_translator,
    load_tuned_lens,
    save_tuned_lens,
    tuned_lens,
    tuned_lens_metrics,
    tuned_lens_optimizer,
)

__all__ = [
    "Head",
    "Lens",
    "LensMetrics",
    "LensReport",
    "Probes",
    "Readout",
    "StreamStats",
    "TokenData",
    "TokenStats",
    "Training",
    "Translator",
    "analyze",
    "chunk_token_stats",
    "final_distribution",
    "final_norm",
    "fit_next_token_probes",
    "fit_tuned_lens",
    "identity_translator",
    "lens_metrics",
    "lens_token_stats",
    "linear_head",
    "load_probes",
    "load_readout",
    "load_tuned_lens",
    "logit_lens",
    "logit_lens_metrics",
    "probe_metrics",
    "readout_from_arrays",
    "readout_head",
    "readout_logits",
    "save_probes",
    "save_tuned_lens",
    "spectrum_entropy",
    "stream_statistics",
    "token_covariance_log_frobenius",
    "token_data",
    "tuned_lens",
    "tuned_lens_metrics",
    "tuned_lens_optimizer",
]

_PROBES = ("Probes", "fit_next_token_probes", "load_probes", "probe_metrics", "save_probes")


def __getattr__(name: str):
    # The probes' heads are flax modules: import flax (the `lens` extra) only when they are used.
    if name in _PROBES:
        from . import _probes

        return getattr(_probes, name)
    raise AttributeError(f"module 'lmprobe_jax.lens' has no attribute {name!r}")
