"""Keep compiled solvers on disk between Python processes (JAX's persistent compilation cache).

XLA compiles each solver once per input shape and static setting; on a CPU that is seconds per
program (a cross-validated sweep compiles two solves and its scoring: ~8 s cold, under 1 s warm on the
demo's data). Within one process JAX reuses the programs already; this makes a *new* process (a script
run again, a notebook restarted) load them from disk instead. JAX's cache is global to the process, so
turning it on is left to the application: the ``lmprobe-jax`` command does, the library does not.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from lmprobe_jax_store import cache_root


def enable_compilation_cache(directory: str | os.PathLike | None = None, *, min_compile_seconds: float = 0.2) -> Path:
    """Store every XLA program that took at least ``min_compile_seconds`` to compile under ``directory``
    (default ``$LMPROBE_JAX_CACHE/jax``, i.e. ``~/.cache/lmprobe-jax/jax``), and load it from there in
    later processes. Returns the directory. Affects all JAX code in this process.
    """
    if min_compile_seconds < 0:
        raise ValueError(f"min_compile_seconds must be >= 0; got {min_compile_seconds!r}.")
    path = cache_root() / "jax" if directory is None else Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path
