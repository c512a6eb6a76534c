"""Pooling strategies with lmprobe's names: parsing a strategy, pooling a batch of token activations,
reducing per-token scores.

A strategy is a pooling name (:data:`lmprobe_jax_store.POOLINGS`), optionally prefixed:
``"activation:<p>"`` pools the activations before the probe, ``"score:<p>"`` classifies every token and
reduces the scores after it. Bare ``"max"`` / ``"min"`` are score-level, the others activation-level,
as in lmprobe. Training pooling is always activation-level (or ``"all"``: every token a row).

The pooling functions take lmprobe's torch layout -- activations ``(B, T, D)``, an optional ``(B, T)``
mask of ones on real tokens -- and run lmprobe-jax's own pooling (:func:`lmprobe_jax_extract.pool`,
what extraction uses on the device); score reduction runs the Probe's (:func:`reduce_token_scores`).
Both read the mask for every strategy: ``first_token`` is the first *real* token under left padding
(lmprobe takes position 0, a pad there).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from lmprobe_jax_store import POOLINGS

BASE_STRATEGIES = ("last_token", "first_token", "mean", "max", "min")
"""Strategies that may follow ``"score:"`` or ``"activation:"``."""

TRAIN_POOLING_STRATEGIES = frozenset(POOLINGS)
"""Training poolings (no prefix): every pooling name, ``"all"`` making every token a row (lmprobe's
set omits ``"max"`` / ``"min"``; ours trains on max- or min-pooled activations too)."""

INFERENCE_POOLING_STRATEGIES = frozenset(POOLINGS)
"""Bare inference poolings; each ``BASE_STRATEGIES`` name may also take a ``"score:"`` /
``"activation:"`` prefix."""

SCORE_POOLING_STRATEGIES = frozenset({"max", "min"})
"""Bare names that pool scores (after the probe) rather than activations."""


class ParsedPooling(NamedTuple):
    """A parsed strategy: ``base_strategy`` (a pooling name), ``is_score_pooling`` (reduce per-token
    scores after the probe, else pool activations before it), ``raw`` (the string given)."""

    base_strategy: str
    is_score_pooling: bool
    raw: str

    @property
    def extraction(self) -> str:
        """The pooling to extract activations with: every token for score-level pooling."""
        return "all" if self.is_score_pooling else self.base_strategy


def parse_pooling_strategy(strategy: str) -> ParsedPooling:
    """``"mean"``, ``"max"`` (score-level), ``"all"``, ``"score:mean"``, ``"activation:max"``, ...
    (module doc). Raises ValueError naming what is unknown."""
    if not isinstance(strategy, str):
        raise TypeError(f"A pooling strategy is a string, not {type(strategy).__name__} ({strategy!r}).")
    if ":" in strategy:
        prefix, base = strategy.split(":", 1)
        if prefix not in ("score", "activation"):
            raise ValueError(
                f"Unknown pooling prefix {prefix!r} in {strategy!r}: use 'score:' or 'activation:' "
                "(e.g. 'score:mean', 'activation:max')."
            )
        if base not in BASE_STRATEGIES:
            raise ValueError(
                f"Unknown base pooling strategy {base!r} in {strategy!r}: after '{prefix}:' use one of "
                f"{BASE_STRATEGIES}."
            )
        return ParsedPooling(base, prefix == "score", strategy)
    if strategy not in POOLINGS:
        raise ValueError(
            f"Unknown pooling strategy {strategy!r}: choose from {POOLINGS}, or a 'score:' / 'activation:' "
            "prefixed form."
        )
    return ParsedPooling(strategy, strategy in SCORE_POOLING_STRATEGIES, strategy)


def is_valid_inference_strategy(strategy: Any) -> bool:
    """True when ``strategy`` parses as an inference pooling (a bare name or a prefixed form)."""
    try:
        parse_pooling_strategy(strategy)
    except (TypeError, ValueError):
        return False
    return True


_is_valid_inference_strategy = is_valid_inference_strategy  # lmprobe's name


def check_train_pooling(value: Any, name: str = "train_pooling") -> str:
    """A training pooling: an activation-level pooling name (no prefix; ``"all"`` makes every token a
    row). Returns it, or raises ValueError."""
    if value not in POOLINGS:
        raise ValueError(
            f"Invalid {name}: {value!r} is not a training pooling strategy; choose from {POOLINGS} (prefixed "
            "'score:' forms are for inference_pooling)."
        )
    return value


def resolve_pooling(
    pooling: str | None, train_pooling: str | None, inference_pooling: str | None
) -> tuple[str, str]:
    """``(train, inference)`` strategies: each its own argument if given, else ``pooling``, else
    ``"last_token"``; both validated (training takes no prefix)."""
    train = train_pooling if train_pooling is not None else pooling or "last_token"
    inference = inference_pooling if inference_pooling is not None else pooling or "last_token"
    check_train_pooling(train, "train_pooling" if train_pooling is not None else "pooling")
    try:
        parse_pooling_strategy(inference)
    except ValueError as err:
        raise ValueError(f"Invalid inference_pooling: {err}") from None
    return train, inference


def _mask(activations: Any, attention_mask: Any) -> Any:
    import torch

    if attention_mask is None:
        return torch.ones(activations.shape[:2], dtype=torch.long, device=activations.device)
    return attention_mask


def _pooling_fn(name: str) -> Callable[[Any, Any], Any]:
    def fn(activations: Any, attention_mask: Any = None) -> Any:
        from lmprobe_jax_extract import pool

        return pool(activations, _mask(activations, attention_mask), name)

    fn.__name__ = fn.__qualname__ = f"pool_{name}"
    fn.__doc__ = (
        f"``{name}`` pooling of ``activations`` ``(B, T, D)`` over the real tokens of ``attention_mask``"
        " ``(B, T)`` (None: every position is real); returns ``(B, D)``."
    )
    return fn


pool_last_token = _pooling_fn("last_token")
pool_first_token = _pooling_fn("first_token")
pool_mean = _pooling_fn("mean")
pool_max = _pooling_fn("max")
pool_min = _pooling_fn("min")


def pool_all(activations: Any, attention_mask: Any = None) -> Any:
    """Every position's activations, unchanged ``(B, T, D)`` (lmprobe's layout; the mask is not read:
    ``lmprobe_jax_extract.pool(h, mask, "all")`` keeps the real tokens only)."""
    del attention_mask  # the padded layout keeps every position
    return activations


_POOLING_FNS = {
    "last_token": pool_last_token,
    "first_token": pool_first_token,
    "mean": pool_mean,
    "max": pool_max,
    "min": pool_min,
    "all": pool_all,
}


def get_pooling_fn(strategy: str) -> Callable[[Any, Any], Any]:
    """The activation pooling function a strategy needs: :func:`pool_all` for score-level strategies
    (every token is classified first), else the base strategy's."""
    parsed = parse_pooling_strategy(strategy)
    return pool_all if parsed.is_score_pooling else _POOLING_FNS[parsed.base_strategy]


def reduce_token_scores(per_token: np.ndarray, offsets: np.ndarray, how: str) -> np.ndarray:
    """Reduce per-token values ``(T, ...)`` to per-prompt ``(N, ...)`` (``how``: a base strategy);
    prompt ``i`` owns rows ``offsets[i]:offsets[i + 1]`` (at least one)."""
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
    if how == "last_token":
        return per_token[offsets[1:] - 1]
    raise ValueError(f"Score reduction does not support strategy {how!r}: use one of {BASE_STRATEGIES}.")


def reduce_scores(scores: Any, strategy: str, attention_mask: Any = None) -> Any:
    """Per-token scores ``(B, T)`` or ``(B, T, K)`` (a torch tensor) reduced over each row's real tokens
    (``attention_mask`` ``(B, T)``; None: all) by ``strategy``'s base (``"max"``, ``"score:mean"``, ...):
    ``(B,)`` or ``(B, K)``, in ``scores``' dtype."""
    import torch

    how = parse_pooling_strategy(strategy).base_strategy
    real = _mask(scores, attention_mask).bool().cpu().numpy()
    per_token = scores.detach().cpu().numpy()[real]
    offsets = np.concatenate([[0], np.cumsum(real.sum(1))])
    out = reduce_token_scores(per_token, offsets, how)
    return torch.from_numpy(np.ascontiguousarray(out)).to(device=scores.device, dtype=scores.dtype)


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


__all__ = [
    "BASE_STRATEGIES",
    "INFERENCE_POOLING_STRATEGIES",
    "SCORE_POOLING_STRATEGIES",
    "TRAIN_POOLING_STRATEGIES",
    "ParsedPooling",
    "get_pooling_fn",
    "is_valid_inference_strategy",
    "pad_tokens",
    "parse_pooling_strategy",
    "pool_all",
    "pool_first_token",
    "pool_last_token",
    "pool_max",
    "pool_mean",
    "pool_min",
    "reduce_scores",
    "reduce_token_scores",
    "resolve_pooling",
]
