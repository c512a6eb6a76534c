"""The logit lens: each layer's stream read out through the model's own final norm and unembedding."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._engine import Lens, LensMetrics, lens_metrics
from ._readout import Readout, final_norm, readout_head


def logit_lens(readout: Readout) -> Lens:
    """The logit lens as a :class:`Lens`: features ``final_norm(h)``, the unembedding as head."""
    return Lens(final_norm, readout, readout_head(readout))


def final_distribution(readout: Readout) -> Lens:
    """The reference every lens is compared with: the model's own output distribution, i.e. the logit
    lens applied to the last block's stream."""
    return logit_lens(readout)


def logit_lens_metrics(
    streams, final_stream: np.ndarray, next_ids: np.ndarray, readout: Readout, **options: Any
) -> LensMetrics:
    """Per-layer logit-lens metrics against the model's final distribution (see
    :func:`~lmprobe_jax.lens.lens_metrics` for the metrics, options and memory).

    Args:
      streams: ``(L, T, D)`` or L arrays ``(T, D)``: the layers' residual streams (before the final norm).
      final_stream: ``(T, D)`` the last block's stream (its readout is the model's output).
      next_ids: ``(T,)`` next-token ids, ``-1`` where a text ends.
      readout: the model's :class:`Readout`.
    """
    reference = final_distribution(readout)
    return lens_metrics(logit_lens(readout), reference, streams, final_stream, next_ids, **options)
