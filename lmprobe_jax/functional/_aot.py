"""Ahead-of-time solver programs: traced and lowered once, kept on disk with ``jax.export``.

JAX's persistent compilation cache skips XLA's compile in a new process, but not the Python trace of a
solver nor its lowering to StableHLO, which come first (the cache is keyed by the lowered module): for
the demo's cross-validated sweep, most of a new process's first call once the cache was warm. Here each
solver program is also exported (``jax.export``: the lowered module and its argument and result
structure, serialised as flatbuffers, not pickle) under ``$LMPROBE_JAX_CACHE/jax-exported``; a new process
deserialises it and calls it, and the call's compile comes from the persistent cache.

A program is found again only for the same library source (a hash of :mod:`lmprobe_jax.functional`'s
files), JAX version, backend, x64 setting, static settings and argument shapes and dtypes; anything else
exports anew. Used only where the persistent cache is on (see :mod:`lmprobe_jax.compilation`) and the
arguments are concrete (a caller's ``jit`` / ``vmap`` traces the solver as usual).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

_LOADED: OrderedDict[str, Any] = OrderedDict()
_MAX_LOADED = 32
_source_hash: str | None = None


def _library_version() -> str:
    global _source_hash
    if _source_hash is None:
        digest = hashlib.sha256()
        for path in sorted(Path(__file__).parent.glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
        _source_hash = digest.hexdigest()
    return _source_hash


def _stable(value: Any) -> str:
    """A text form of a static argument that is the same in every process (functions by name)."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, tuple):
        return f"{type(value).__name__}({', '.join(_stable(v) for v in value)})"
    return repr(value)


def _directory() -> Path | None:
    from importlib.util import find_spec

    from ..compilation import CACHE_ENV, _private_directory

    if find_spec("flatbuffers") is None:  # jax.export cannot serialise without it
        return None

    if not jax.config.jax_compilation_cache_dir or os.environ.get(CACHE_ENV, "").strip().lower() in ("0", "off",
                                                                                                     "false", "no"):
        return None
    from lmprobe_jax_store import cache_root

    path = cache_root() / "jax-exported"
    return path if _private_directory(path) else None


def _key(name: str, static: dict, args: tuple, kwargs: dict) -> str:
    leaves, tree = jax.tree.flatten((args, kwargs))
    avals = [jax.api_util.shaped_abstractify(leaf) for leaf in leaves]
    text = "\n".join([
        name, _library_version(), jax.__version__, jax.default_backend(), str(jax.devices()[0].device_kind),
        str(jax.config.jax_enable_x64), os.environ.get("XLA_FLAGS", ""), str(tree),
        ";".join(f"{a.shape}{a.dtype}{a.weak_type}" for a in avals),
        ";".join(f"{k}={_stable(v)}" for k, v in sorted(static.items())),
    ])
    return hashlib.sha256(text.encode()).hexdigest()


def call(jitted: Callable, **kwargs: Any) -> Any:
    """``jitted(**kwargs)`` (every argument by keyword), through its exported program when the persistent
    cache is on and the arguments are concrete."""
    directory = _directory()
    info = getattr(jitted, "_jit_info", None)  # its static argument names (a jax.jit function's)
    if directory is None or info is None or any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(kwargs)
    ):
        return jitted(**kwargs)
    static = {k: v for k, v in kwargs.items() if k in info.static_argnames}
    dynamic = {k: v for k, v in kwargs.items() if k not in static}
    key = _key(f"{jitted.__module__}.{jitted.__qualname__}", static, (), dynamic)
    program = _LOADED.pop(key, None)
    if program is None:
        exported = None
        path = directory / key
        if path.exists():
            try:
                exported = jax.export.deserialize(bytearray(path.read_bytes()))
            except Exception:  # noqa: BLE001 -- a damaged file fails in flatbuffers or MLIR parsing: export anew
                exported = None
        if exported is None:
            exported = jax.export.export(jitted)(**kwargs)
            with tempfile.NamedTemporaryFile(dir=directory, delete=False) as handle:
                handle.write(exported.serialize())
            os.replace(handle.name, path)
        # Called under jit: later calls take its compiled fast path; called as it is, every call traced the
        # exported program's wrapper again (0.7-1 ms of Python, a third of a small fit's call).
        program = jax.jit(exported.call)
    _LOADED[key] = program
    while len(_LOADED) > _MAX_LOADED:  # each holds a compiled program once called: keep the recent ones
        _LOADED.popitem(last=False)
    return program(**dynamic)


def register_types(*types: type) -> None:
    """Let NamedTuple arguments and results of exported programs be serialised."""
    for kind in types:
        try:
            jax.export.register_namedtuple_serialization(kind, serialized_name=f"lmprobe_jax.{kind.__name__}")
        except ValueError:  # already registered (a reloaded module)
            pass
