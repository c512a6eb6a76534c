"""Layers sharded over a :class:`jax.sharding.Mesh`: every device solves its own layers.

The layers of a probe sweep are independent problems, so the layer axis is split over the mesh's
``"layers"`` axis (or its first axis) with ``jax.shard_map``: each device runs the unchanged solver on
its block of layers -- the same program, one layer after another on the CPU -- and no data moves
between devices while they solve. Results are the single-device results, layer for layer. (Letting
XLA partition the solvers' batched loops itself, by ``jit`` sharding propagation, was tried: their
``while_loop`` over layers gathers every layer onto every device, and the vmapped form deadlocked on 4
CPU host devices in jax 0.10.2; see RESULTS.md.)

A mesh with a second axis named ``"rows"`` also splits each layer's rows over it: ``shard_map`` is
manual over the layer axis only, and inside each block XLA partitions the solver's products with ``X``
over the rows by sharding propagation (partial sums and an all-reduce per product; no gathers of
``X``), so each device holds ``1 / (layers x rows)`` of the activations. ``N`` must divide evenly.

Several processes (``jax.distributed.initialize``) form one mesh over all their devices; each process
reads only the layers its own devices hold (``jax.make_array_from_callback``) and receives every
layer's result (``multihost_utils.process_allgather``, over gloo on the CPU).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _checks

#: The mesh axis name the layer axis is sharded over when the mesh has one.
LAYER_AXIS = "layers"
#: The mesh axis name the row axis is sharded over, when the mesh has one (for very large ``N``).
ROW_AXIS = "rows"

# Compiled sharded solvers, keyed by the solver, the mesh, the block's shape and the (concrete) other
# arguments, which enter the program as constants: a second call with the same labels and settings
# reuses the program instead of compiling it again.
_COMPILED: collections.OrderedDict = collections.OrderedDict()
_MAX_COMPILED = 8


def layer_axis(mesh: Mesh) -> str:
    """The axis the layers are split over: ``"layers"`` if the mesh has it, else its first axis."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    return LAYER_AXIS if LAYER_AXIS in mesh.axis_names else mesh.axis_names[0]


def layer_mesh(devices: Any = None) -> Mesh:
    """A one-axis ``Mesh(devices, ("layers",))`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (LAYER_AXIS,))


def n_shards(mesh: Mesh) -> int:
    """How many blocks the layer axis is cut into."""
    return mesh.shape[layer_axis(mesh)]


def local_shards(mesh: Mesh) -> int:
    """How many of those blocks this process's devices hold (all of them in a single process)."""
    axis = mesh.axis_names.index(layer_axis(mesh))
    mine = {d.id for d in jax.local_devices()}
    held = np.vectorize(lambda d: d.id in mine)(mesh.devices)
    return int(np.any(np.moveaxis(held, axis, 0).reshape(held.shape[axis], -1), axis=1).sum())


def activation_spec(mesh: Mesh) -> PartitionSpec:
    """How ``(L, N, D)`` is split: layers over the layer axis, rows over ``"rows"`` when the mesh has it."""
    return PartitionSpec(layer_axis(mesh), ROW_AXIS if ROW_AXIS in mesh.axis_names else None)


def place_layers(read: Callable[[range, slice], np.ndarray], n_layers: int, shape: tuple[int, int], dtype: Any,
                 mesh: Mesh) -> jax.Array:
    """An ``(n_layers, N, D)`` array split over the mesh (:func:`activation_spec`), each process reading
    only its own blocks: ``read(layers, rows)`` returns that block as numpy (read-only, aligned memory is
    used in place on the CPU).

    Raises:
      ValueError: when ``n_layers`` is not a multiple of the layer axis's size (the streaming driver
        pads the last chunk instead; see :func:`padded_layers`), or ``N`` not one of the rows axis's.
    """
    m = n_shards(mesh)
    rows = mesh.shape.get(ROW_AXIS, 1)
    if shape[0] % rows:
        raise ValueError(
            f"{shape[0]} rows cannot be split evenly over the mesh's {rows}-device {ROW_AXIS!r} axis; use a rows "
            f"axis whose size divides N, or a mesh without one."
        )
    if n_layers % m:
        raise ValueError(
            f"{n_layers} layers cannot be split evenly over the mesh's {m}-device {layer_axis(mesh)!r} axis. "
            f"Pass the activations as numpy or a store with mesh=... (the last chunk is then padded by "
            f"repeating its last layer, whose results are dropped), or use a mesh whose axis divides {n_layers}."
        )
    sharding = NamedSharding(mesh, activation_spec(mesh))

    def block(index: tuple[slice, ...]) -> np.ndarray:
        return read(range(*index[0].indices(n_layers)), index[1])

    return jax.make_array_from_callback((n_layers, *shape), sharding, block)


def padded_layers(n_layers: int, mesh: Mesh) -> list[int]:
    """Indices ``0..n_layers-1`` padded to a multiple of the layer axis by repeating the last one."""
    m = n_shards(mesh)
    return list(range(n_layers)) + [n_layers - 1] * (-n_layers % m)


def check_finite(X: jax.Array) -> None:
    """The in-memory solvers' NaN/infinity check, for a sharded ``X`` (inside ``shard_map`` a solver
    sees a traced ``X`` and cannot check values)."""
    if not bool(_checks._all_finite(X)):
        raise ValueError(
            "X contains NaN or infinity. Drop or impute those rows; in float16 caches, overflow (|x| > 65504) "
            "also shows up as infinity."
        )


def solve_sharded(fn: Callable[..., Any], X: jax.Array, args: tuple, kwargs: dict, mesh: Mesh) -> Any:
    """``fn(X, *args, **kwargs)`` with ``X``'s layers split over the mesh: ``fn`` runs once per device
    on that device's layers (``shard_map``), and the per-layer results are joined along the layer axis.

    Fields ``fn`` computes from its other arguments alone (a grid, fold ids) are taken from the trace;
    the rest must have a leading layer axis (every per-layer solver's results do). With several
    processes, every result is gathered onto every process as numpy.
    """
    check_finite(X)
    key = (fn, mesh, X.shape, X.dtype, _fingerprint((args, kwargs)))
    entry = _COMPILED.get(key)
    if entry is None:
        entry = _compile(fn, args, kwargs, mesh)
        _COMPILED[key] = entry
        while len(_COMPILED) > _MAX_COMPILED:
            _COMPILED.popitem(last=False)
    else:
        _COMPILED.move_to_end(key)
    run, trace = entry
    traced = run(X)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        traced = [multihost_utils.process_allgather(a, tiled=True) for a in traced]
    leaves = iter(traced)
    result = jax.tree.unflatten(trace["treedef"], [
        next(leaves) if c is None else c for c in trace["constants"]])
    if hasattr(result, "best_value") and hasattr(result, "grid"):
        # Traced, the grid's values came back in float32; the float64 grid value is the contract.
        result = result._replace(best_value=np.asarray(result.grid)[np.asarray(result.best_index)])
    return result


def _compile(fn: Callable[..., Any], args: tuple, kwargs: dict, mesh: Mesh) -> tuple[Callable, dict]:
    trace: dict = {}

    def body(x: jax.Array) -> list:
        leaves, treedef = jax.tree.flatten(fn(x, *args, **kwargs))
        traced = [isinstance(leaf, jax.core.Tracer) for leaf in leaves]
        trace["treedef"] = treedef
        trace["constants"] = [None if t else leaf for leaf, t in zip(leaves, traced)]
        return [leaf for leaf, t in zip(leaves, traced) if t]

    spec = PartitionSpec(layer_axis(mesh))
    # Manual over the layer axis only: any other axis (rows) is left to XLA's sharding propagation.
    # check_vma=False: the solvers' loop carries start as constants and become per-device values; the
    # blocks are independent, so no value is ever assumed equal across devices.
    run = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec, axis_names={layer_axis(mesh)},
                                check_vma=False))
    return run, trace


def _fingerprint(obj: Any) -> Any:
    """A hashable summary of concrete arguments (arrays by content)."""
    if isinstance(obj, (np.ndarray, jax.Array)):
        arr = np.asarray(obj)
        return ("array", arr.shape, str(arr.dtype), hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest())
    if isinstance(obj, dict):
        return tuple(sorted((k, _fingerprint(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(_fingerprint(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, complex, np.generic)):
        return (type(obj).__name__, obj)
    return ("object", id(obj))

