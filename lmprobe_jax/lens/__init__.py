"""Every layer's view of the next token: logit lens, tuned lens and next-token probes, measured for all
layers in one compiled program, streamed over tokens and vocabulary.

* :class:`Readout`, :func:`load_readout`, :func:`final_norm`, :func:`readout_logits` -- the model's final
  norm + unembedding as JAX arrays, read from a token-level store.
* :func:`lens_metrics` / :func:`lens_token_stats` -- the streaming metric engine: KL(final || lens),
  KL(lens || final), cross-entropy to the next token, entropy, top-1 agreement, top-k overlap, for any
  :class:`Lens` (features + :class:`Head`), never holding layers x tokens x vocabulary.
* :func:`logit_lens`, :func:`logit_lens_metrics` -- the logit lens.
* :func:`stream_statistics` -- per-layer residual-stream statistics: covariance spectrum entropy and
  Layer-Probing's log Frobenius norm of the token covariance.
* :func:`token_data` -- what a lens reads from a token-level store.
"""

from ._data import TokenData, token_data
from ._engine import Lens, LensMetrics, TokenStats, chunk_token_stats, lens_metrics, lens_token_stats
from ._head import Head, linear_head
from ._logit_lens import final_distribution, logit_lens, logit_lens_metrics
from ._readout import Readout, final_norm, load_readout, readout_from_arrays, readout_head, readout_logits
from ._stats import StreamStats, spectrum_entropy, stream_statistics, token_covariance_log_frobenius

__all__ = [
    "Head",
    "Lens",
    "LensMetrics",
    "Readout",
    "StreamStats",
    "TokenData",
    "TokenStats",
    "chunk_token_stats",
    "final_distribution",
    "final_norm",
    "lens_metrics",
    "lens_token_stats",
    "linear_head",
    "load_readout",
    "logit_lens",
    "logit_lens_metrics",
    "readout_from_arrays",
    "readout_head",
    "readout_logits",
    "spectrum_entropy",
    "stream_statistics",
    "token_covariance_log_frobenius",
    "token_data",
]
