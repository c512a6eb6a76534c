"""Ahead-of-time solver programs: compiled once, kept on disk as executables, loaded by later processes.

JAX's persistent compilation cache skips XLA's compile in a new process, but not the Python trace of a
solver nor its lowering to StableHLO, which come first (the cache is keyed by the lowered module): for
the demo's cross-validated sweep, most of a new process's first call once the cache was warm. Here each
solver program is compiled ahead of time (``jitted.lower(...).compile()``) and its executable kept under
``$LMPROBE_JAX_CACHE/jax-executables`` (``jax.experimental.serialize_executable``, zlib-compressed); a new
process loads it and calls it: no trace, no lowering, no lookup in JAX's cache. A caller that knows the
shapes of a later call (the CV's refit, while its folds are solved) can start that load on a background
thread (:func:`prefetch`), which a machine with a core to spare runs beside the work.

The file is XLA's executable with its argument and result structure, pickled by that API. Loading it is
loading machine code, as JAX's own cache does: it is trusted exactly as far as that cache is, and lives
only where that cache would (a directory private to this user, see :mod:`lmprobe_jax.compilation`).

A program is found again only for the same library source (a hash of :mod:`lmprobe_jax.functional`'s
files), JAX and jaxlib versions, backend and device topology, x64 setting, ``XLA_FLAGS``, static
settings and argument shapes and dtypes; anything else compiles anew. Used only where the persistent
cache is on and the arguments are concrete (a caller's ``jit`` / ``vmap`` traces the solver as usual).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
from jax.experimental import serialize_executable

from lmprobe_jax_store._store import atomic_write

from ._programs import MAX_PROGRAMS

_LOADED: OrderedDict[str, tuple[Callable, jax.stages.Compiled]] = OrderedDict()
_LOADING: OrderedDict[str, Future] = OrderedDict()  # loads started by prefetch, awaiting their call


@functools.cache
def _library_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _stable(value: Any) -> str:
    """A text form of a static argument that is the same in every process (functions by name)."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, tuple):
        return f"{type(value).__name__}({', '.join(_stable(v) for v in value)})"
    return repr(value)


def _directory() -> Path | None:
    from ..compilation import CACHE_ENV, _private_directory

    if not jax.config.jax_compilation_cache_dir or os.environ.get(CACHE_ENV, "").strip().lower() in ("0", "off",
                                                                                                     "false", "no"):
        return None
    from lmprobe_jax_store import cache_root

    path = cache_root() / "jax-executables"
    return path if _private_directory(path) else None


@functools.cache
def _topology() -> str:
    """The devices' topology fingerprint, as JAX's own cache key hashes it (device kinds where a backend
    has none). Fixed for the process: computed once, not at every solver call."""
    devices = jax.devices()
    try:
        from jax._src.lib import xla_client

        return str(xla_client.get_topology_for_devices(devices).fingerprint())
    except Exception:  # noqa: BLE001 -- backends without a serialisable topology, as in jax._src.cache_key
        return ",".join(d.device_kind for d in devices)


def _key(name: str, static: dict, args: tuple, kwargs: dict) -> str:
    leaves, tree = jax.tree.flatten((args, kwargs))
    avals = [jax.api_util.shaped_abstractify(leaf) for leaf in leaves]
    text = "\n".join([
        name, _library_version(), jax.__version__, jaxlib.__version__, jax.default_backend(), _topology(),
        str(jax.config.jax_enable_x64), os.environ.get("XLA_FLAGS", ""), str(tree),
        ";".join(f"{a.shape}{a.dtype}{a.weak_type}" for a in avals),
        ";".join(f"{k}={_stable(v)}" for k, v in sorted(static.items())),
    ])
    return hashlib.sha256(text.encode()).hexdigest()


def _located(jitted: Callable, kwargs: dict) -> tuple[str, Path, dict] | None:
    """``(key, path of its executable, dynamic arguments)`` of a call through ``_aot``, or None where the
    call runs as usual (cache off, not a ``jax.jit`` function, traced arguments)."""
    directory = _directory()
    info = getattr(jitted, "_jit_info", None)  # its static argument names (a jax.jit function's)
    if directory is None or info is None or any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(kwargs)
    ):
        return None
    static = {k: v for k, v in kwargs.items() if k in info.static_argnames}
    dynamic = {k: v for k, v in kwargs.items() if k not in static}
    key = _key(f"{jitted.__module__}.{jitted.__qualname__}", static, (), dynamic)
    return key, directory / key, dynamic


def prefetch(jitted: Callable, **kwargs: Any) -> None:
    """Start loading the executable that :func:`call` will want for arguments of these shapes (arrays,
    possibly still being computed, or ``jax.ShapeDtypeStruct``) on a background thread, where one is kept
    on disk: a later call's load then overlaps the work before it on a machine with a core to spare.
    At most ``MAX_PROGRAMS`` loads await their call (one whose call never came, after an exception, is let
    go once newer ones arrive)."""
    located = _located(jitted, kwargs)
    if located is None or located[0] in _LOADED or located[0] in _LOADING or not located[1].exists():
        return
    _LOADING[located[0]] = _loader().submit(_load, located[1])
    while len(_LOADING) > MAX_PROGRAMS:
        _LOADING.popitem(last=False)


@functools.cache
def _loader() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="lmprobe-jax-load")


def call(jitted: Callable, **kwargs: Any) -> Any:
    """``jitted(**kwargs)`` (every argument by keyword), through its executable kept on disk when the
    persistent cache is on and the arguments are concrete."""
    located = _located(jitted, kwargs)
    if located is None:
        return jitted(**kwargs)
    key, path, dynamic = located
    program = _LOADED.pop(key, (None, None))[1]
    if program is None and key in _LOADING:
        program = _LOADING.pop(key).result()
    if program is None:
        program = _load(path) if path.exists() else None
        if program is None:
            program, fresh = _compiled(jitted, kwargs)
            if fresh:
                _store(program, path)
    _LOADED[key] = (jitted, program)
    _keep_recent(jitted)
    return program(**dynamic)


def _compiled(jitted: Callable, kwargs: dict) -> tuple[jax.stages.Compiled, bool]:
    """``(jitted compiled for kwargs, whether XLA compiled it here)``.

    An executable that JAX's persistent cache returned was loaded, not compiled, and on XLA:CPU it serialises
    without its kernels (jaxlib 0.10: a process that loads that file fails at its first run with ``NOT_FOUND:
    Function ... not found``): only a fresh compile may be kept. So these programs are not written to JAX's
    cache either (which would hand them back here once our key changes, say after an upgrade). Instructions
    are located by the innermost frame of ours, not the whole Python traceback: a new process parses every
    location when it loads the executable (~6% fewer lines in a solver's program, ~5% less time to load)."""
    hits = _jax_cache_hits()
    before = hits[0]
    try:
        from jax._src import config
    except ImportError:  # JAX moved its settings: compile as it is, keep the result only if it was compiled
        program = jitted.lower(**kwargs).compile()
    else:
        with config.include_full_tracebacks_in_locations(False), \
                config.persistent_cache_min_compile_time_secs(float("inf")):
            program = jitted.lower(**kwargs).compile()
    return program, hits[0] == before


@functools.cache
def _jax_cache_hits() -> list[int]:
    """A count of JAX's persistent-cache hits in this process (any thread: a hit elsewhere during a compile
    here only costs that compile its file)."""
    hits = [0]

    def count(event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            hits[0] += 1

    jax.monitoring.register_event_listener(count)
    return hits


def _keep_recent(jitted: Callable) -> None:
    """Hold at most ``MAX_PROGRAMS`` of ``jitted``'s executables (the recent ones). JAX's caches of its
    traces keep every program lowered from it alive (~900 memory maps each, see ``_programs``), so they
    are cleared with the ones let go."""
    keys = [key for key, (fn, _) in _LOADED.items() if fn is jitted]
    if len(keys) > MAX_PROGRAMS:
        for key in keys[:-MAX_PROGRAMS]:
            del _LOADED[key]
        jitted.clear_cache()


def _store(program: jax.stages.Compiled, path: Path) -> None:
    """Write ``program``'s executable to ``path`` (atomically). Before its first run: XLA:CPU settles a sort's
    comparator when it first runs it, after which the executable no longer serialises."""
    try:
        blob = zlib.compress(pickle.dumps(serialize_executable.serialize(program)), 1)
    except Exception:  # noqa: BLE001 -- an executable XLA cannot serialise still runs; only the file is lost
        return
    atomic_write(path, blob)


@functools.cache
def _set_up_lapack() -> None:
    """An executable loaded in a process that never lowered a LAPACK call finds LAPACK's kernels unset and
    crashes (jax-ml/jax#29610). JAX's own set-up, which lowering any LAPACK call runs; where that private
    function has moved, lowering one (~35 ms: MLIR's first context and dialects)."""
    try:
        from jax._src.lax.linalg import initialize_lapack
    except ImportError:
        jax.jit(jnp.linalg.cholesky).lower(jax.ShapeDtypeStruct((1, 1), jnp.float32))
    else:
        initialize_lapack()


def _load(path: Path) -> jax.stages.Compiled | None:
    """The executable kept at ``path``, or None where it cannot be read (damaged, or from another JAX)."""
    try:
        serialized, in_tree, out_tree = pickle.loads(zlib.decompress(path.read_bytes()))
    except Exception:  # noqa: BLE001 -- zlib's checksum or the unpickling fails: compile anew
        return None
    _set_up_lapack()
    try:
        return serialize_executable.deserialize_and_load(serialized, in_tree, out_tree)
    except Exception:  # noqa: BLE001 -- XLA refuses the executable: compile anew
        return None
