"""How much host memory a streamed fit may hold, and how many layers (or rows) a chunk of it may have.

A streamed fit (:mod:`._streaming`) holds, at its peak, the chunk being solved and the chunk the reader
thread is preparing, both in the compute dtype (float32), the solver's copy of the chunk with its rows
padded to a compile bucket (:func:`._checks.bucket_rows`; none when ``N`` is a bucket size), the copy of
the layer being solved that the solver's loop over a chunk of two or more layers takes (XLA gives a
loop's slice of its operand a buffer of its own; a one-layer chunk is used in place), plus the
solver's own work space. The budget
is a number of bytes; by default half of the memory the operating system reports as available when the
fit starts (``psutil.virtual_memory().available``, else ``os.sysconf``), so that a fit on a shared
machine leaves room for the others.
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

from ._checks import bucket_rows

#: Share of the available memory a streamed fit takes when no ``memory_budget`` is given.
DEFAULT_SHARE = 0.5
#: Fewest rows a row-streamed block may have (below, per-block overheads dominate the pass).
_MIN_ROW_BLOCK = 256

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def available_memory() -> int:
    """Bytes of memory the operating system reports as available now."""
    try:
        import psutil
    except ImportError:  # psutil is optional: the POSIX count of free pages is a lower bound
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.virtual_memory().available)


def memory_budget(value: Any = None) -> int:
    """A budget in bytes from ``value``: an int (bytes), a string such as ``"4GB"`` / ``"512MiB"``, or
    None for :data:`DEFAULT_SHARE` of :func:`available_memory`."""
    if value is None:
        return int(DEFAULT_SHARE * available_memory())
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", value)
        unit = match and match.group(2).upper()
        if not match or unit not in _UNITS:
            raise ValueError(
                f"memory_budget={value!r} is not a size; give bytes as an int or a string such as '4GB' or "
                f"'512MiB'."
            )
        value = float(match.group(1)) * _UNITS[unit]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"memory_budget must be a positive number of bytes; got {value!r}.")
    return int(value)


def format_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class ChunkPlan(NamedTuple):
    """How a streamed fit cuts its input.

    Attributes:
      layers: layers per chunk (``>= 1``).
      rows: rows per chunk; equal to ``N`` unless one layer's rows do not fit (row streaming).
      peak_bytes: the planned peak (see :func:`plan_chunks`).
    """

    layers: int
    rows: int
    peak_bytes: int


def default_workspace(n_rows: int, n_features: int, *args: Any, **kwargs: Any) -> int:
    """Bytes of solver work space that do not grow with the chunk: a few ``(m + 1)^2`` float32 matrices
    (``m = min(N, D)``: a Gram or kernel matrix, an inverse Hessian, their factorisations) and a few
    dozen per-row and per-feature vectors. The solver's arguments (``args``, ``kwargs``) do not change it."""
    m = min(n_rows, n_features) + 1
    return 4 * (4 * m * m + 64 * (n_rows + n_features))


def chunk_bytes(
    n_layers: int, n_rows: int, n_features: int, *, extra_copies: float, workspace: int, itemsize: int = 4,
    padded_reads: bool = False,
) -> int:
    """Peak bytes of a streamed solve whose chunks hold ``n_layers`` layers (see :func:`plan_chunks`)."""
    padded = bucket_rows(n_rows)
    per_layer = 2 * padded if padded_reads else 2 * n_rows + (padded if padded != n_rows else 0)
    sliced = padded if n_layers >= 2 else 0  # the loop over the chunk's layers copies out the one it solves
    return int((n_layers * per_layer + sliced + extra_copies * padded) * n_features * itemsize + workspace)


def plan_chunks(
    n_layers: int, n_rows: int, n_features: int, *, budget: int, extra_copies: float, workspace: int,
    itemsize: int = 4, row_streaming: bool = False, padded_reads: bool = False,
) -> ChunkPlan:
    """The largest chunk whose peak fits ``budget`` bytes.

    A chunk of ``k`` layers of ``N`` rows peaks at ``(k (2 N + P) + [k >= 2] B + extra_copies B) * D *
    itemsize + workspace`` bytes: the chunk being solved and the chunk the reader prepares meanwhile, the
    solver's copy of the chunk padded to ``B = bucket_rows(N)`` rows (``P = B``; ``P = 0`` when ``B = N``:
    no copy), the copy of the layer being solved that the solver's loop over layers slices out of a chunk
    of two or more, the ``extra_copies`` the solver makes of the (padded) layer it is solving (ridge's
    centred copy: 1; layers are solved one at a time on the CPU), and ``workspace`` bytes that do not
    grow with the chunk. A block of streamed rows is not padded: ``(2 + extra_copies) * rows * D *
    itemsize``.

    With ``padded_reads`` the chunks are read already padded (``2 B`` rows a layer, no copy).

    Args:
      row_streaming: whether the caller can also cut the row axis when one layer does not fit.
      padded_reads: whether chunks are read with their padding rows (the solver then copies nothing).

    Raises:
      ValueError: when not even one layer (or, with ``row_streaming``, one block of :data:`_MIN_ROW_BLOCK` rows) fits.
    """
    row_bytes = n_features * itemsize
    sizes = {"extra_copies": extra_copies, "workspace": workspace, "itemsize": itemsize, "padded_reads": padded_reads}
    fixed = chunk_bytes(0, n_rows, n_features, **sizes)
    layer_bytes = chunk_bytes(1, n_rows, n_features, **sizes) - fixed
    sliced = chunk_bytes(2, n_rows, n_features, **sizes) - fixed - 2 * layer_bytes  # from two layers on
    free = budget - fixed
    if free >= layer_bytes:
        k = int(min(n_layers, max(1, (free - sliced) // layer_bytes)))
        return ChunkPlan(k, n_rows, chunk_bytes(k, n_rows, n_features, **sizes))
    min_rows = min(n_rows, _MIN_ROW_BLOCK)
    per_row = (2 + extra_copies) * row_bytes
    if row_streaming and budget - workspace >= per_row * min_rows:
        rows = int(min(n_rows - 1, (budget - workspace) // per_row))
        return ChunkPlan(1, rows, int(workspace + per_row * rows))
    need = workspace + per_row * min_rows if row_streaming else fixed + layer_bytes
    what = f"one block of {min_rows} rows" if row_streaming else f"one layer ({n_rows} x {n_features})"
    raise ValueError(
        f"memory_budget={format_bytes(budget)} is too small for {what}: it needs about {format_bytes(need)} "
        f"(about {(need - workspace) / (row_bytes * (min_rows if row_streaming else n_rows)):.3g} float32 copies "
        f"of it, padded rows included, and "
        f"{format_bytes(workspace)} of solver work space). "
        f"Raise memory_budget to at least {format_bytes(need)}"
        + ("." if row_streaming else " (of the solvers, only fit_logistic, fit_ridge and the binary "
                                      "cross_validate_logistic stream the rows of a layer).")
    )
