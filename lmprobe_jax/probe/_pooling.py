"""Pooling names a Probe takes, and score-level pooling (classify every token, then reduce).

Training pooling is activation-level: one pooled vector per prompt (:data:`lmprobe_jax_store.POOLINGS`).
Inference pooling also takes lmprobe's prefixed forms: ``"activation:<p>"`` pools the activations (the
same as a bare ``<p>``), ``"score:<p>"`` classifies every real token and reduces the positive-class
probability (``max``, ``min``, ``mean``, ``first_token``, ``last_token``) over each prompt's tokens. Bare
``"max"`` / ``"min"`` at inference are score-level, as in lmprobe.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from lmprobe_jax_store import POOLINGS

SCORE_REDUCTIONS = ("max", "min", "mean", "first_token", "last_token")


class InferencePooling(NamedTuple):
    """``base``: a pooling name; ``score``: reduce per-token scores (else pool activations)."""

    base: str
    score: bool

    @property
    def extraction(self) -> str:
        """The pooling to extract with: every token for score-level pooling."""
        return "all" if self.score else self.base


def check_train_pooling(value: str, name: str = "train_pooling") -> str:
    if value not in POOLINGS:
        raise ValueError(f"Invalid {name}: {value!r} is not a pooling strategy; choose from {POOLINGS}.")
    return value


def parse_inference_pooling(value: str) -> InferencePooling:
    """``"mean"``, ``"max"`` (score-level), ``"score:mean"``, ``"activation:max"``, ... (module doc)."""
    if not isinstance(value, str):
        raise TypeError(f"Invalid inference_pooling: {value!r} is not a string.")
    if ":" in value:
        prefix, base = value.split(":", 1)
        if prefix not in ("score", "activation"):
            raise ValueError(
                f"Unknown pooling prefix {prefix!r} in inference_pooling={value!r}: use 'score:' or "
                "'activation:' (e.g. 'score:mean', 'activation:max')."
            )
        allowed = SCORE_REDUCTIONS if prefix == "score" else tuple(p for p in POOLINGS if p != "all")
        if base not in allowed:
            raise ValueError(
                f"Unknown base pooling strategy {base!r} in inference_pooling={value!r}: after "
                f"'{prefix}:' use one of {allowed}."
            )
        return InferencePooling(base, prefix == "score")
    if value not in POOLINGS:
        raise ValueError(
            f"Invalid inference_pooling: {value!r}; choose from {POOLINGS} or a 'score:' / 'activation:' "
            "prefixed form."
        )
    return InferencePooling(value, value in ("max", "min"))


def reduce_scores(per_token: np.ndarray, offsets: np.ndarray, how: str) -> np.ndarray:
    """Reduce per-token values ``(T, ...)`` to per-prompt ``(N, ...)``; prompt ``i`` owns rows
    ``offsets[i]:offsets[i + 1]``."""
    starts = offsets[:-1]
    if how == "max":
        return np.maximum.reduceat(per_token, starts)
    if how == "min":
        return np.minimum.reduceat(per_token, starts)
    if how == "mean":
        counts = np.diff(offsets).reshape((-1,) + (1,) * (per_token.ndim - 1))
        return np.add.reduceat(per_token, starts) / counts
    if how == "first_token":
        return per_token[starts]
    return per_token[offsets[1:] - 1]  # last_token


def pad_tokens(per_token: np.ndarray, offsets: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Per-token values ``(T, ...)`` as a padded ``(N, max_tokens, ...)`` array (``fill`` after each
    prompt's last token)."""
    counts = np.diff(offsets)
    out = np.full(
        (len(counts), int(counts.max()), *per_token.shape[1:]), fill, dtype=np.result_type(per_token, fill)
    )
    for i, (a, b) in enumerate(itertools.pairwise(offsets)):
        out[i, : b - a] = per_token[a:b]
    return out
