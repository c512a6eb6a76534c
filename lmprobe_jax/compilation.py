"""Keep compiled solvers on disk between Python processes (JAX's persistent compilation cache).

XLA compiles each solver once per input shape and static setting; on a CPU that is seconds per
program (a cross-validated sweep compiles two solves and its scoring). Within one process JAX reuses
the programs already; the persistent cache makes a *new* process (a script run again, a notebook
restarted) load them from disk instead.

Beside it, :mod:`lmprobe_jax.functional._aot` keeps the solvers' compiled executables, so that a new
process skips tracing and lowering them too.

**On by default, where that is safe.** The first solver call of a process (any public function of
:mod:`lmprobe_jax.functional`, hence every estimator and ``Probe``) turns the cache on in
``$LMPROBE_JAX_CACHE/jax`` (``~/.cache/lmprobe-jax/jax``) unless:

* ``LMPROBE_JAX_COMPILATION_CACHE`` is ``0`` / ``off`` / ``false`` / ``no`` (opt out), or names another
  directory (used instead);
* you already chose a cache: ``jax_compilation_cache_dir`` is set (by ``jax.config.update`` or the
  ``JAX_COMPILATION_CACHE_DIR`` variable), or you switched it off (``jax_enable_compilation_cache``
  False) — JAX's settings are the process's, and yours win;
* the directory cannot be made private to you: JAX's cache is trusted code (whoever can write to it
  can make this process run code), so a directory that others can write to, or that another user
  owns, is refused (with a warning) and nothing is cached.

JAX's cache is global to the process: once on, it also keeps your own programs (every one, however
quick to compile: a solver's first call compiles many small programs besides the solve). Set your own directory before the first compile if you
want another one (JAX reads it when it first compiles). :func:`enable_compilation_cache` turns it on
explicitly, e.g. in a different directory.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import jax

from lmprobe_jax_store import cache_root

CACHE_ENV = "LMPROBE_JAX_COMPILATION_CACHE"
"""Environment variable: ``0``/``off``/``false``/``no`` opts out of the default cache; a path moves it."""

_OFF = ("0", "off", "false", "no")
_default_done = False


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


def _private_directory(path: Path) -> bool:
    """Create ``path`` (mode 0700) if needed; whether it is a directory owned by this user that no one
    else can write to."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def default_compilation_cache() -> Path | None:
    """Turn on the default persistent cache once per process, where safe (see the module docstring).

    Returns the directory in use, or None when the cache was left alone. Called at every public solver
    boundary; after the first call it only returns.
    """
    global _default_done
    if _default_done:
        return None
    _default_done = True
    choice = os.environ.get(CACHE_ENV, "").strip()
    if choice.lower() in _OFF:
        return None
    if jax.config.jax_compilation_cache_dir or not jax.config.jax_enable_compilation_cache:
        return None
    path = Path(choice).expanduser() if choice else cache_root() / "jax"
    if not _private_directory(path):
        warnings.warn(
            f"lmprobe-jax left JAX's persistent compilation cache off: {path} is not a directory that only "
            f"you can write to (JAX's cache is trusted code). Point {CACHE_ENV} at a private directory, or set "
            f"{CACHE_ENV}=0 to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    # Every program, however quick to compile: a first call's many small ones (scoring, folds' helpers)
    # otherwise compile anew in each process (the demo sweep: 9 of 20 programs, ~1.8 s under load).
    return enable_compilation_cache(path, min_compile_seconds=0.0)
