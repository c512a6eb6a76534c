"""Validation at the public boundary of :mod:`lmprobe_jax.functional`.

The jitted solvers trust their inputs; these host-side checks run once per public call. Every message
says what was given, what was expected, and how to fix it.

Called under ``jax.jit`` / ``jax.vmap`` (arguments are tracers), only shapes and dtypes can be checked:
value checks are skipped and labels are taken as already coded ``0`` / ``1``, since sorting the
distinct labels needs their values.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ..compilation import default_compilation_cache
from . import _aot
from ._programs import limit_compiled_programs
from ._sources import aligned_empty

_FLOAT_STORAGE = (np.float16, np.float32, np.float64, jnp.bfloat16)


def is_concrete(*arrays: Any) -> bool:
    """False when any argument is a tracer (called under ``jit``/``vmap``): value checks must be skipped."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def compute_dtype(dtype: Any) -> Any:
    """The dtype a solver computes in: float64 stays float64 (under ``jax_enable_x64``), all else float32."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 and jax.config.jax_enable_x64 else jnp.float32


def as_compute(x: Array, dtype: Any) -> Array:
    """``x`` in the compute ``dtype``, a ``uint16`` ``x`` read as bfloat16's bits (:func:`solver_view`): the
    top 16 bits of a float32, so the conversion is exact."""
    if x.dtype == jnp.uint16:
        x = jax.lax.bitcast_convert_type(x.astype(jnp.uint32) << 16, jnp.float32)
    return x.astype(dtype)


def solver_view(X: Array) -> Array:
    """``X`` as the solvers' programs take it: a bfloat16 ``X`` on one CPU device as its bits, ``uint16``
    (the same buffer, no copy), which they read back a layer at a time with :func:`as_compute`. XLA's CPU
    backend widens a bfloat16 operand that a loop slices to a float32 copy of all of it (twice ``X``'s
    size). Any other ``X`` (and a traced one) is returned as it is."""
    if X.dtype != jnp.bfloat16 or not is_concrete(X):
        return X
    (device, *others) = X.sharding.device_set
    if others or device.platform != "cpu":
        return X
    return jax.device_put(np.asarray(X).view(np.uint16), device)


def bucket_rows(n: int) -> int:
    """The row count a solver is compiled for: the smallest ``m * 2**k >= n`` with ``16 <= m < 32``
    (at least 16).

    Rows are padded to it with zero sample weight (:func:`check_activations` with ``bucket=True``), so
    ``N = 1000`` and ``N = 1001`` share one compiled program (both 1024): 16 sizes per octave, each at
    most 1/16 (6.25%) larger than ``n``. Every objective here is a weighted sum over samples, so a row of
    weight zero changes no solution, score or leave-one-out prediction of the other rows.
    """
    step = 1 << max(0, int(n).bit_length() - 5)
    return max(16, -(-int(n) // step) * step)


def pad_rows(a: Any, size: int, axis: int = -1) -> Any:
    """``a`` with zeros appended along ``axis`` up to ``size`` entries (numpy stays numpy, on the host)."""
    extra = size - a.shape[axis]
    if extra == 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return np.pad(a, widths) if isinstance(a, np.ndarray) else jnp.pad(a, widths)


def check_activations(X: Any, *, name: str = "X", check_values: bool = True) -> tuple[Array, bool]:
    """Return ``(X as a 3-D array (L, N, D), was_2d)``.

    Accepts ``(N, D)`` (one layer) or ``(L, N, D)``, in float16, bfloat16, float32 or float64 storage.
    The storage dtype is kept (solvers upcast inside ``jit``, so half-precision caches are not copied
    on the host).
    """
    X3, was_2d, _ = _activations(X, name, check_values, bucket=False)
    return X3, was_2d


def check_bucketed_activations(X: Any, *, name: str = "X") -> tuple[Array, bool, int]:
    """:func:`check_activations` with the row axis padded with zero rows to :func:`bucket_rows` of ``N``
    (on the host, in the one copy a numpy ``X`` needs anyway). Returns ``(X3 (L, bucket, D), was_2d, N)``;
    the caller pads its per-row arrays alike (:func:`pad_rows`) and gives the padding zero weight."""
    return _activations(X, name, True, bucket=True)


def layered(X: Any, name: str = "X") -> tuple[Any, bool]:
    """``(X as (L, N, D), was_2d)``, refused with a message where its dtype or shape cannot be activations.
    Only the layout is checked: numpy stays numpy (no copy to the device, no program per input shape), and
    values are left for the solver's own check (:func:`check_activations`)."""
    if not hasattr(X, "dtype"):
        X = np.asarray(X)
    if X.dtype not in _FLOAT_STORAGE:
        if np.issubdtype(X.dtype, np.integer) or X.dtype == np.bool_:
            X = np.asarray(X, dtype=np.float32)
        else:
            raise ValueError(
                f"{name} has dtype {X.dtype}; expected a floating array (float16, bfloat16, float32 or "
                f"float64). Convert it with np.asarray({name}, dtype=np.float32)."
            )
    if X.ndim not in (2, 3):
        raise ValueError(
            f"{name} has shape {tuple(X.shape)} ({X.ndim}-D); expected (N, D) for one layer or (L, N, D) "
            f"for L layers. Reshape a single sample with {name}.reshape(1, -1), or stack layers with "
            f"np.stack(layers)."
        )
    if min(X.shape) == 0:
        raise ValueError(f"{name} has shape {tuple(X.shape)}; every axis needs at least one entry.")
    was_2d = X.ndim == 2
    return (X[None] if was_2d else X), was_2d


def _activations(X: Any, name: str, check_values: bool, *, bucket: bool) -> tuple[Array, bool, int]:
    default_compilation_cache()
    limit_compiled_programs()
    X, was_2d = layered(X, name)
    n = X.shape[1]
    if bucket and bucket_rows(n) != n:
        host = X if isinstance(X, np.ndarray) else _default_cpu_buffer(X)
        if host is None:
            X = pad_rows(X, bucket_rows(n), axis=1)
        else:
            # Our own padded copy, page-aligned and read-only: device_put uses it in place (no second copy).
            padded = aligned_empty((X.shape[0], bucket_rows(n), X.shape[2]), X.dtype)  # zero-filled
            padded[:, :n] = host
            padded.flags.writeable = False
            X = padded
    X = as_jax_array(X)
    if check_values and is_concrete(X) and not _all_finite(X):
        _refuse_non_finite(X, name, was_2d)
    return X, was_2d, n


def _default_cpu_buffer(X: Any) -> np.ndarray | None:
    """A JAX array held whole on the default device, a CPU, as a numpy view of its buffer (no copy), else
    None. Padded through it, such an ``X`` takes the host's padded copy, which lands back on that device in
    place: XLA's pad wrote into fresh memory page by page (110 MB: 47 ms against 16 ms)."""
    if not isinstance(X, jax.Array) or isinstance(X, jax.core.Tracer) or X.is_deleted():
        return None
    default = jax.config.jax_default_device or jax.devices()[0]  # where device_put puts the copy
    if isinstance(default, str) or default.platform != "cpu" or X.devices() != {default}:
        return None
    return np.asarray(X)


def host_activations(X: Any, *, name: str = "X") -> tuple[np.ndarray, bool]:
    """``(X as a numpy (L, N, D) array, was_2d)``, layout and values checked on the host: for predictions
    computed with numpy, which need neither a device copy nor a program compiled for the input's shape."""
    X, was_2d = layered(X, name)
    X = np.asarray(X)
    accumulate = np.promote_types(X.dtype, np.float32)
    # As _all_finite: a finite sum proves every entry finite; only a non-finite one pays the entrywise test.
    if not (np.isfinite(np.sum(X, dtype=accumulate)) or np.isfinite(X).all()):
        _refuse_non_finite(X, name, was_2d)
    return X, was_2d


def _refuse_non_finite(X: Any, name: str, was_2d: bool) -> None:
    bad = np.argwhere(~np.isfinite(np.asarray(X, dtype=np.float32)))[0].tolist()
    where = f"at index {tuple(bad[1:])}" if was_2d else f"at (layer, row, col) {tuple(bad)}"
    raise ValueError(
        f"{name} contains NaN or infinity (first {where}). Drop or impute those rows; in float16 "
        f"caches, overflow (|x| > 65504) also shows up as infinity."
    )


def as_jax_array(X: Any) -> Array:
    """``X`` as a JAX array: a numpy array through :func:`_to_device` (``device_put``'s copy, or none for
    a read-only one), anything else (JAX arrays, tracers, lists) through ``jnp.asarray``."""
    return _to_device(X) if isinstance(X, np.ndarray) else jnp.asarray(X)


def _to_device(X: np.ndarray) -> Array:
    """``X`` as a JAX array that later writes to ``X`` cannot change.

    ``jax.device_put`` copies a host array in about two thirds of the time ``jnp.asarray`` takes (110 MB
    on one core: 48-54 vs 81-104 ms). But on the CPU it shares the buffer of a 64-byte aligned array
    instead of copying it (jax 0.10, even with ``may_alias=False``: jax-ml/jax#37830), and the solvers run
    asynchronously, after this call has returned. A read-only array is used in place (no copy at all); a
    writeable one that was shared is copied. Inside a caller's ``jit`` (a numpy ``X`` closed over),
    ``device_put`` returns a tracer, which has no buffer: the traced program holds its own constant.

    Copying with numpy into an aligned buffer for ``device_put`` to share measured 13 ms instead of 48 in
    a loop that frees each copy, but 300-400 ms per copy while earlier ones stay alive (numpy asks for
    transparent huge pages on large buffers, and faulting them in fresh was that slow on this project's
    machines; an anonymous ``mmap`` without them, 69 ms), where ``device_put``'s own copy stays at 46 ms.
    """
    out = jax.device_put(X)
    if isinstance(out, jax.core.Tracer):
        return out
    if X.flags.writeable and out.unsafe_buffer_pointer() == X.ctypes.data:
        return jnp.array(out, copy=True)
    return out


# Elements of a float16 X summed at a time by _sum_is_finite: 4 MB in float32, cache-resident.
_FLOAT16_CHUNK = 1 << 20


@jax.jit
def _sum_is_finite(X: Array) -> Array:
    accumulate = jnp.promote_types(X.dtype, jnp.float32)
    if X.dtype != jnp.float16:
        return jnp.isfinite(jnp.sum(X, dtype=accumulate))
    # XLA's CPU backend widens a float16 operand of a reduction to a float32 copy of all of it (twice X's
    # size, and slow); summed in chunks of the flattened X, only one chunk is widened at a time.
    flat = X.reshape(-1)
    size = min(flat.size, _FLOAT16_CHUNK)
    whole = flat.size // size

    def add(i: Array, total: Array) -> Array:
        return total + jnp.sum(jax.lax.dynamic_slice_in_dim(flat, i * size, size), dtype=accumulate)

    total = jax.lax.fori_loop(0, whole, add, jnp.zeros((), accumulate))
    return jnp.isfinite(total + jnp.sum(flat[whole * size:], dtype=accumulate))


def _all_finite(X: Array) -> bool:
    """Whether every entry of ``X`` is finite.

    A NaN or an infinity makes the sum non-finite, so a finite sum proves all entries finite: one fused
    reduction, 2.5 ms on a 110 MB ``X`` on one core, where ``jnp.all(jnp.isfinite(X))`` took 20 ms (XLA's
    CPU reduction over booleans is slow). Only a non-finite sum (or one that overflowed from finite
    entries) pays for the entrywise test.
    """
    return bool(_aot.call(_sum_is_finite, X=X)) or bool(jnp.all(jnp.isfinite(X)))


def check_n_samples(n: int, arr: Any, name: str) -> Any:
    """``arr`` as a 1-D array with ``n`` entries (numpy, or the tracer itself under a transformation)."""
    arr = arr if not is_concrete(arr) else np.asarray(arr)
    if arr.ndim != 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected a 1-D array with one entry per sample.")
    if arr.shape[0] != n:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but X has {n} samples (rows); give one {name} entry per row "
            f"of X."
        )
    return arr


def check_binary_labels(y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Map two distinct labels to ``{0, 1}`` (sorted: the larger label is the positive class).

    Returns:
      ``(y01 int32 (n,), classes (2,))``; under a transformation ``(y as int32, None)``.
    """
    y = check_n_samples(n, y, "y")
    if not is_concrete(y):
        return y.astype(jnp.int32), None
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or infinity; labels must be finite class labels.")
        if not np.all(y == np.round(y)):
            raise ValueError(
                "y holds non-integer floats; a classifier needs class labels. For a continuous target "
                "use fit_ridge (regression)."
            )
    classes = np.unique(y)
    if classes.size != 2:
        if classes.size < 2:
            raise ValueError(
                f"y has a single class ({classes.tolist()}); a binary probe needs examples of both classes."
            )
        raise ValueError(
            f"y has {classes.size} classes ({classes[:10].tolist()}{'...' if classes.size > 10 else ''}); "
            f"a binary fit needs exactly two. Use fit_multinomial for more than two classes."
        )
    return (y == classes[1]).astype(np.int32), classes


def check_class_labels(y: Any, n: int, *, n_classes: int | None = None) -> tuple[Any, np.ndarray]:
    """Map K >= 2 distinct labels to ``0..K-1`` in sorted order. Returns ``(codes int32 (n,), classes (K,))``.

    Labels traced by a transformation (``vmap`` over label sets) have no values to sort: they must be
    codes ``0..n_classes-1``, and ``n_classes`` says how many (``classes`` is then ``arange(n_classes)``).
    """
    y = check_n_samples(n, y, "y")
    if not is_concrete(y):
        if n_classes is None or check_positive_int(n_classes, "n_classes") < 2:
            raise ValueError(
                "y is traced (under jit/vmap), so its classes cannot be counted; give n_classes (>= 2) and "
                "labels coded 0 .. n_classes - 1."
            )
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(f"traced y has dtype {y.dtype}; give integer codes 0 .. n_classes - 1.")
        return y.astype(jnp.int32), np.arange(n_classes)
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise ValueError(
            "y holds non-integer floats; a classifier needs class labels. For a continuous target use "
            "fit_ridge (regression)."
        )
    classes, codes = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"y has a single class ({classes.tolist()}); a classifier needs at least two.")
    if n_classes is not None and classes.size > n_classes:
        raise ValueError(f"y has {classes.size} classes but n_classes={n_classes}.")
    return codes.astype(np.int32), classes


def check_sample_weight(sample_weight: Any, n: int) -> np.ndarray:
    """``(n,)`` float weights: ones when None; finite, non-negative, not all zero. float32, or float64
    under ``jax_enable_x64`` (so float64 solves see the weights unrounded)."""
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    if sample_weight is None:
        return np.ones(n, dtype=dtype)
    if not is_concrete(sample_weight):
        return check_n_samples(n, sample_weight, "sample_weight").astype(dtype)
    sw = check_n_samples(n, sample_weight, "sample_weight").astype(np.float64)
    if not np.all(np.isfinite(sw)) or np.any(sw < 0):
        bad = np.flatnonzero(~np.isfinite(sw) | (sw < 0))
        raise ValueError(
            f"sample_weight must be finite and non-negative; entry {int(bad[0])} is {sw[bad[0]]!r} "
            f"({bad.size} such entries). Drop those rows or give them weight 0."
        )
    if not np.any(sw > 0):
        raise ValueError("sample_weight is zero everywhere; at least one sample needs a positive weight.")
    return sw.astype(dtype)


def check_grid(value: Any, name: str) -> tuple[np.ndarray, bool]:
    """A positive regularisation value or 1-D grid. Returns ``(grid (G,), is_grid)``."""
    if not is_concrete(value):
        if value.ndim > 1:
            raise ValueError(f"{name} has shape {value.shape}; give a scalar or a 1-D grid of values.")
        return value.reshape(-1), value.ndim == 1
    if isinstance(value, (str, bytes)) or np.asarray(value).dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a number or a 1-D grid of numbers; got {value!r} ({type(value).__name__}).")
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"{name} has shape {arr.shape}; give a scalar or a 1-D grid of values.")
    if arr.size == 0:
        raise ValueError(f"{name} is an empty grid; give at least one value.")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0; got {arr.tolist()}.")
    return arr.reshape(-1), arr.ndim == 1


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def check_tol(value: Any) -> float:
    if not isinstance(value, (int, float, np.floating)) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"tol must be a finite float > 0; got {value!r}.")
    return float(value)
