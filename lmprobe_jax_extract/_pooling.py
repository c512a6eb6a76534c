"""Pooling a batch of hidden states to one vector per prompt (or one per real token), on the device.

Every pooling reads the attention mask, so it gives the same answer under left padding, right padding or
none: a padded position never contributes. Hidden states arrive as ``(B, T, D)`` with a ``(B, T)`` mask of
ones on real tokens. The names and what each means: :mod:`lmprobe_jax_store._poolings`.
"""

from __future__ import annotations

import torch

from lmprobe_jax_store import POOLINGS


def _first_and_last(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    real = mask.bool()
    last = torch.where(real, positions, -1).amax(dim=1)
    first = torch.where(real, positions, mask.shape[1]).amin(dim=1)
    return first, last


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``hidden`` ``(B, T, D)`` over the real tokens marked by ``mask`` ``(B, T)``.

    Returns ``(B, D)``, or ``(n_real_tokens, D)`` for ``"all"``, in ``hidden``'s dtype -- except
    ``mean``, which accumulates and returns float32 at least (a bfloat16 mean over hundreds of tokens
    would lose most of its bits).
    """
    if mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match hidden states {tuple(hidden.shape)}."
        )
    real = mask.bool()
    if pooling in ("last_token", "first_token"):
        first, last = _first_and_last(mask)
        index = last if pooling == "last_token" else first
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    if pooling == "mean":
        accumulate = torch.promote_types(hidden.dtype, torch.float32)
        total = torch.where(real[..., None], hidden.to(accumulate), 0).sum(dim=1)
        return total / real.sum(dim=1, keepdim=True).to(accumulate)
    if pooling in ("max", "min"):
        fill = float("-inf") if pooling == "max" else float("inf")
        masked = torch.where(
            real[..., None], hidden, torch.tensor(fill, dtype=hidden.dtype, device=hidden.device)
        )
        return masked.amax(dim=1) if pooling == "max" else masked.amin(dim=1)
    if pooling == "all":
        return hidden[real]
    raise ValueError(f"Unknown pooling {pooling!r}: choose from {POOLINGS}.")


def token_offsets(lengths: torch.Tensor | list[int]) -> torch.Tensor:
    """``(N + 1,)`` int64 offsets of each prompt's rows in an ``"all"``-pooled array."""
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    return torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
