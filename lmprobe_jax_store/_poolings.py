"""Pooling names: how a prompt's ``(T, D)`` hidden states become what a store holds.

=============== ===========================================================================
``last_token``  the last real token of each prompt
``first_token`` the first real token (mask-aware: under left padding it is not position 0)
``mean``        the average over real tokens
``max`` / ``min`` the element-wise max / min over real tokens
``all``         every real token, concatenated in prompt order: ``(n_tokens, D)`` with no pad rows;
                the store's ``offsets()`` maps prompt ``i`` to rows ``offsets[i]:offsets[i+1]``
=============== ===========================================================================

The computation itself is the torch side's (:func:`lmprobe_jax_extract.pool`); this module only names
them, so that readers of a store need no torch.
"""

from __future__ import annotations

POOLINGS = ("last_token", "first_token", "mean", "max", "min", "all")
"""Every pooling a store can hold."""


def check_poolings(pooling: str | list[str] | tuple[str, ...]) -> list[str]:
    """Normalise ``pooling`` (one name or several) to a unique list in a stable order, or raise."""
    names = [pooling] if isinstance(pooling, str) else list(pooling)
    if not names:
        raise ValueError(f"pooling is empty: pass one of {POOLINGS} or a list of them.")
    unknown = [name for name in names if name not in POOLINGS]
    if unknown:
        raise ValueError(f"Unknown pooling {unknown[0]!r}: choose from {POOLINGS}.")
    return sorted(set(names), key=POOLINGS.index)
