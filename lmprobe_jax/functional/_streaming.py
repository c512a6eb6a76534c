"""Out-of-core fitting: the layer-batched solvers applied a chunk of layers (or rows) at a time.

Every solver of :mod:`lmprobe_jax.functional` that takes ``(L, N, D)`` and solves each layer on its own
is wrapped by :func:`streams_layers`, which lets it also take

* an :class:`lmprobe_jax_store.ActivationStore` (its one pooling, or ``layer_source(store, pooling=...,
  layers=...)``) or a numpy array / ``np.memmap`` larger than ``memory_budget``: the layers are read
  from disk a chunk at a time, as many layers per chunk as the budget allows, while a reader thread
  prepares the next chunk (:func:`._sources.prefetched`);
* an iterator of ``(k, N, D)`` layer chunks, solved as they come (the next one is pulled on the reader
  thread while the current one is solved; the solver pads each to its compile bucket, a copy);
* for the solvers that can (``fit_logistic``, ``fit_ridge``, the binary ``cross_validate_logistic``), a
  single layer whose rows do not fit: its rows are streamed (:mod:`._row_streaming`), a block of rows at
  a time, used in place in the memory map; peak memory is then a block (as stored, and widened to
  float32 inside the solver) plus ``O(N + D^2)``, whatever ``N`` (see that module).

Chunks are read with their rows already padded to the solver's compile bucket
(:func:`._checks.bucket_rows`) for the solvers whose result has no per-row field (``fit_logistic``,
``fit_ridge``): ``y`` is padded with its first label and ``sample_weight`` with zeros, so the padding
weighs nothing (the solvers' own padding rule) and the solver makes no padded copy of the chunk; the
others pad each chunk themselves, a copy the budget counts. Each chunk is the same program the in-memory
call runs, so on the CPU (layers solved one at a time) the
streamed fit gives the in-memory result layer for layer; on an accelerator a chunk's layers share the
solver's lock-step decisions, so results agree to the solver's tolerance. Peak host memory: two chunks
in float32 (the one being solved and the one being read), the copy of the layer being solved that the
solver's loop over a chunk of two or more layers takes, the solver's copies of that layer, and its work
space -- bounded by ``memory_budget`` (:mod:`._budget`) whatever the input's size.
Memory-mapped input counts only while a chunk is copied out of it.

With ``mesh=`` (a :class:`jax.sharding.Mesh`), or for a JAX array already sharded over one, the layers
of each chunk are split over the mesh's layer axis and every device solves its own (:mod:`._mesh`);
chunks hold a multiple of that axis's size, the last one padded by repeating its last layer (whose
results are dropped). Other JAX arrays and traced arguments go straight to the in-memory solver.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _budget, _mesh
from ._budget import default_workspace
from ._checks import bucket_rows
from ._sources import LayerSource, aligned_empty, layer_source, prefetched, read_chunk

#: Result fields that describe the whole input rather than a layer: taken from the first chunk.
_SHARED_FIELDS = frozenset({"grid", "fold_ids", "targets"})

_STREAMING_DOC = """

    Out of core (added by :func:`lmprobe_jax.functional.streams_layers`): ``X`` may also be an activation
    store, a :class:`~lmprobe_jax.functional.LayerSource`, an iterator of ``(k, N, D)`` layer chunks, or a
    numpy array (memory map included) larger than ``memory_budget`` (bytes, or a string such as
    ``"4GB"``; default half the memory available when the call starts). Layers are then read and solved a
    chunk at a time{rows}. With ``mesh`` (a ``jax.sharding.Mesh``; or for ``X`` already sharded over
    one), each chunk's layers are split over the mesh's ``"layers"`` (else first) axis and each device
    solves its own, with the single-device result.

    Peak memory, streamed: two chunks in float32 (the one being solved, the one being read: ``2 k N D 4``
    bytes for ``k`` layers a chunk), one more layer (``N D 4`` bytes) for chunks of ``k >= 2`` (the loop
    over the chunk's layers copies out the one it solves; a one-layer chunk is used in place), plus about
    {copies} float32 copies of one layer (the solver's temporaries, measured, rounded up) plus
    ``O((min(N, D) + 1)^2)`` work space (softmax: also ``4 (12 N K + 96 K D)`` bytes for ``K`` classes, for
    each problem solved at once: a CV's folds and its refit) -- at most ``memory_budget``, whatever ``L``;
    input memory-mapped from disk counts one 32 MB block at a time. In memory (an array that fits the
    budget): ``X``, a copy of it when it is writeable or not 64-byte aligned (none for a read-only, aligned
    array), and the same per-layer temporaries (the loop's copy of a layer included; half-precision input
    is converted to float32 a layer at a time, as it is solved).
"""


class _Streaming(NamedTuple):
    """What the driver needs to know about one solver (see :func:`streams_layers`)."""

    copies: float
    workspace: Callable[..., int]
    rows: Callable[..., Any] | None
    padded_reads: Callable[[int, int], bool] | None
    keeps_layer_axis: bool


def streams_layers(
    *, copies: float = 0.0, workspace: Callable[..., int] = default_workspace,
    rows: Callable[..., Any] | None = None, padded_reads: Callable[[int, int], bool] | None = None,
    keeps_layer_axis: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a per-layer solver ``fn(X, *args, **kwargs)`` take stores, iterators and oversized arrays.

    Args:
      copies: how many extra float32 copies of the layer it is solving the solver makes (ridge's centred
        copy: 1); sizes the chunks.
      workspace: ``(N, D, *args, **kwargs) -> bytes`` the solver needs besides ``X`` and those copies, given
        the call's own arguments after ``X`` (a softmax solve's grows with the classes in ``y``).
      rows: ``rows(source, layer, row_block, *args, **kwargs)`` solving one layer by streaming its rows in
        blocks of ``row_block``, returning the solver's result for one layer (no layer axis); None when
        the solver cannot stream rows.
      padded_reads: ``(N, D) -> bool``, whether the solver gives the same result for ``X`` with zero rows
        appended, ``y`` padded with its first label and ``sample_weight`` with zeros (its result has no
        per-row field and no setting depends on ``N``); chunks are then read padded to
        :func:`._checks.bucket_rows` rows. None: the solver pads each chunk itself.
      keeps_layer_axis: whether the solver's result for one ``(N, D)`` layer keeps a layer axis of 1 (the
        CVs); else a streamed single layer's result drops it too.

    The wrapped function gains the keywords ``memory_budget`` and ``mesh``; its docstring gains a
    paragraph saying so.
    """
    spec = _Streaming(float(copies), workspace, rows, padded_reads, bool(keeps_layer_axis))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(X: Any, *args: Any, memory_budget: Any = None, mesh: Any = None, **kwargs: Any) -> Any:
            return _dispatch(fn, spec, X, args, kwargs, memory_budget, mesh)

        rows_note = ("; for a layer whose rows alone do not fit, its rows are streamed (a block of rows at a "
                     "time, every pass over the layer read from disk)") if rows else ""
        wrapper.__doc__ = (fn.__doc__ or "").rstrip() + _STREAMING_DOC.format(rows=rows_note, copies=f"{copies:g}")
        wrapper.streamed_copies = spec.copies  # for callers that plan their own chunks (the sweep)
        wrapper.streamed_workspace = spec.workspace
        wrapper.streams_rows = spec.rows is not None
        return wrapper

    return decorate


def _dispatch(fn: Callable[..., Any], spec: _Streaming, X: Any, args: tuple, kwargs: dict, budget: Any,
              mesh: Any) -> Any:
    if isinstance(X, jax.core.Tracer):
        return fn(X, *args, **kwargs)  # under the caller's jit / vmap: the in-memory solver
    if mesh is None and isinstance(X, jax.Array) and _sharded_over_layers(X):
        mesh = X.sharding.mesh
    if mesh is not None and isinstance(X, jax.Array) and _sharded_over_layers(X, mesh):
        return _mesh.solve_sharded(fn, X, args, kwargs, mesh)
    if mesh is not None and isinstance(X, jax.Array):
        X = np.asarray(X)  # placed afresh, a chunk at a time, on the mesh
    if isinstance(X, Iterator):
        return _over_iterator(fn, spec, X, args, kwargs, _budget.memory_budget(budget), mesh)
    is_array = isinstance(X, np.ndarray)
    if not (isinstance(X, LayerSource) or (is_array and X.ndim in (2, 3)) or _is_store(X)):
        return fn(X, *args, **kwargs)  # JAX arrays, lists: the in-memory solver as it is
    if is_array and X.size == 0:
        return fn(X, *args, **kwargs)  # nothing to stream: the solver's own checks say what is wrong
    one_layer = is_array and X.ndim == 2
    source = layer_source(X[None] if one_layer else X)
    single = one_layer and not spec.keeps_layer_axis  # a result without the layer axis
    n_layers, n_rows, n_features = source.shape
    limit = _budget.memory_budget(budget)
    plan = _budget.plan_chunks(
        n_layers, n_rows, n_features, budget=limit, extra_copies=spec.copies,
        workspace=spec.workspace(n_rows, n_features, *args, **kwargs),
        row_streaming=spec.rows is not None and mesh is None,
        padded_reads=_pads(spec, n_rows, n_features, mesh),
    )
    if mesh is None and is_array and plan.layers == n_layers and plan.rows == n_rows:
        return fn(X, *args, **kwargs)  # it fits: the in-memory call, unchanged
    if plan.rows < n_rows:
        per_layer = [spec.rows(source, layer, plan.rows, *args, **kwargs) for layer in range(n_layers)]
        return per_layer[0] if single else _concatenate([_with_layer_axis(r) for r in per_layer])
    result = _over_source(fn, source, plan.layers, args, kwargs, mesh, _pads(spec, n_rows, n_features, mesh))
    return _take_layers(result, 1, squeeze=True) if single else result


def _pads(spec: _Streaming, n_rows: int, n_features: int, mesh: Any) -> bool:
    """Whether chunks are read with zero-weight padding rows (not on a mesh: each device pads its own)."""
    return mesh is None and spec.padded_reads is not None and spec.padded_reads(n_rows, n_features)


def _zero_weight_rows(args: tuple, kwargs: dict, n_rows: int, padded: int) -> tuple[tuple, dict]:
    """The solver's arguments for chunks whose ``n_rows`` rows were padded with zeros to ``padded``: ``y``
    (the first argument) padded with its first label, ``sample_weight`` (default ones) with zeros.
    Arguments of another length are left as they are, for the solver to refuse with its own message."""
    kwargs = dict(kwargs)
    y = np.asarray(args[0] if args else kwargs.get("y"))
    weight = kwargs.get("sample_weight")
    weight = np.ones(n_rows, np.float32) if weight is None else np.asarray(weight)
    if padded == n_rows or y.ndim == 0 or len(y) != n_rows or weight.shape != (n_rows,):
        return args, kwargs
    y = np.concatenate([y, np.repeat(y[:1], padded - n_rows, axis=0)])
    kwargs["sample_weight"] = np.concatenate([weight, np.zeros(padded - n_rows, weight.dtype)])
    if args:
        return (y, *args[1:]), kwargs
    return args, {**kwargs, "y": y}


def _sharded_over_layers(X: jax.Array, mesh: Any = None) -> bool:
    """Whether ``X``'s leading axis is split over a mesh axis (``mesh``'s layer axis when given)."""
    sharding = X.sharding
    if not isinstance(sharding, jax.sharding.NamedSharding) or not sharding.spec or sharding.spec[0] is None:
        return False
    if mesh is None:
        return sharding.mesh.shape[sharding.spec[0]] > 1
    return sharding.mesh == mesh and sharding.spec[0] == _mesh.layer_axis(mesh)


def _is_store(X: Any) -> bool:
    return hasattr(X, "manifest") and hasattr(X, "load")


def _over_source(fn: Callable[..., Any], source: LayerSource, layers_per_chunk: int, args: tuple,
                 kwargs: dict, mesh: Any, pad: bool = False) -> Any:
    dtype = _compute_dtype(source.dtype)
    n_layers, n_rows = source.shape[:2]
    if mesh is None:
        padded = bucket_rows(n_rows) if pad else n_rows
        args, kwargs = _zero_weight_rows(args, kwargs, n_rows, padded)
        jobs = (
            functools.partial(read_chunk, source, range(a, min(a + layers_per_chunk, n_layers)), slice(None), dtype,
                              pad_to=padded)
            for a in range(0, n_layers, layers_per_chunk)
        )
        return _solve_chunks(fn, prefetched(jobs), args, kwargs)
    # Each of this process's devices holds `per_device` layers of a chunk; the chunk has one block per
    # device along the layer axis, the last one padded by repeating its last layer.
    per_device = max(1, layers_per_chunk // _mesh.local_shards(mesh))
    chunk = per_device * _mesh.n_shards(mesh)
    starts = range(0, n_layers, chunk)

    def place(a: int) -> tuple[jax.Array, int]:
        real = list(range(a, min(a + chunk, n_layers)))
        order = [real[i] for i in _mesh.padded_layers(len(real), mesh)]

        def read(block: range, rows: slice) -> np.ndarray:
            return read_chunk(source, [order[i] for i in block], rows, dtype)

        return _mesh.place_layers(read, len(order), source.shape[1:], dtype, mesh), len(real)

    results = []
    for placed, n_real in prefetched(functools.partial(place, a) for a in starts):
        result = _mesh.solve_sharded(fn, placed, args, kwargs, mesh)
        results.append(jax.block_until_ready(_take_layers(result, n_real)))
        del placed
    return _concatenate(results)


def _over_iterator(fn: Callable[..., Any], spec: _Streaming, chunks: Iterator, args: tuple, kwargs: dict,
                   budget: int, mesh: Any) -> Any:
    def next_chunk(index: int) -> np.ndarray | None:
        chunk = next(chunks, None)
        if chunk is None:
            return None
        chunk = np.asarray(chunk)  # a view for numpy input; the one copy into aligned memory follows
        if chunk.ndim == 2:
            chunk = chunk[None]
        if chunk.ndim != 3:
            raise ValueError(
                f"Chunk {index} of the layer iterator has shape {chunk.shape}; expected (k, N, D) layers (or "
                f"(N, D) for one layer)."
            )
        k, n, d = chunk.shape
        workspace = spec.workspace(n, d, *args, **kwargs)
        need = _budget.chunk_bytes(k, n, d, extra_copies=spec.copies, workspace=workspace)
        if need > budget:
            raise ValueError(
                f"Chunk {index} of the layer iterator ({k} layers x {n} x {d}) needs about "
                f"{_budget.format_bytes(need)} to solve, more than memory_budget={_budget.format_bytes(budget)}. "
                f"Yield fewer layers per chunk, or raise memory_budget."
            )
        out = aligned_empty(chunk.shape, _compute_dtype(chunk.dtype))
        np.copyto(out, chunk, casting="unsafe")
        out.flags.writeable = False
        return out

    def jobs() -> Iterator[Callable[[], np.ndarray | None]]:
        index = 0
        while True:
            yield functools.partial(next_chunk, index)
            index += 1

    def until_exhausted(results: Iterator[np.ndarray | None]) -> Iterator[np.ndarray]:
        for chunk in results:
            if chunk is None:
                return
            yield chunk
            del chunk

    arrived = until_exhausted(prefetched(jobs()))
    if mesh is None:
        return _solve_chunks(fn, arrived, args, kwargs)
    results = [_over_source(fn, layer_source(chunk), chunk.shape[0], args, kwargs, mesh) for chunk in arrived]
    if not results:
        raise ValueError("The layer iterator yielded no chunks; give it at least one (k, N, D) chunk.")
    return _concatenate(results)


def _solve_chunks(fn: Callable[..., Any], chunks: Iterator[np.ndarray], args: tuple, kwargs: dict) -> Any:
    results = []
    for chunk in chunks:
        # Wait for the solve before dropping the chunk: its memory is then really free for the next one.
        results.append(jax.block_until_ready(fn(chunk, *args, **kwargs)))
        del chunk
    if not results:
        raise ValueError("The layer iterator yielded no chunks; give it at least one (k, N, D) chunk.")
    return _concatenate(results)


def _take_layers(result: Any, n: int, *, squeeze: bool = False) -> Any:
    """The first ``n`` layers of every per-layer field (a padded chunk's real layers); with ``squeeze``,
    layer 0 without its axis (a single ``(N, D)`` layer's result)."""

    def take(value: Any, name: str | None = None) -> Any:
        if name in _SHARED_FIELDS or value is None:
            return value
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(take(v, f) for f, v in zip(value._fields, value)))
        return value[0] if squeeze else value[:n]

    return take(result)


def _compute_dtype(storage: np.dtype) -> np.dtype:
    """What a chunk is read as: float64 stays float64 (the solvers compute in it under ``jax_enable_x64``),
    everything else becomes float32 (the solvers' compute dtype), cast during the one copy."""
    return np.dtype(np.float64 if np.dtype(storage) == np.float64 else np.float32)


def _with_layer_axis(result: Any) -> Any:
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        return type(result)(*(
            value if name in _SHARED_FIELDS else _with_layer_axis(value)
            for name, value in zip(result._fields, result)
        ))
    if result is None:
        return None
    return result[None] if isinstance(result, (np.ndarray, jax.Array)) else np.asarray(result)[None]


def _concatenate(results: list[Any]) -> Any:
    """Per-chunk results joined along their leading (layer) axis; :data:`_SHARED_FIELDS` from the first."""
    first = results[0]
    if len(results) == 1:
        return first
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(
            getattr(first, name) if name in _SHARED_FIELDS else _concatenate([getattr(r, name) for r in results])
            for name in first._fields
        ))
    if first is None:
        return None
    if isinstance(first, np.ndarray):
        return np.concatenate(results, axis=0)
    return jnp.concatenate(results, axis=0)
