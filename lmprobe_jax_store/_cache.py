"""The project's cache root: models converted once, activation stores, compiled programs."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LMPROBE_JAX_CACHE"
"""Environment variable that moves the cache root (default ``~/.cache/lmprobe-jax``)."""


def cache_root() -> Path:
    """``$LMPROBE_JAX_CACHE`` or ``~/.cache/lmprobe-jax``, read when called (so a test or a script can
    move it after import)."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/lmprobe-jax")).expanduser()
