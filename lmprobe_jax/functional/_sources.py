"""Where the layers of a streamed fit come from, and how a chunk of them is read.

A :class:`LayerSource` is an ``(L, N, D)`` stack of activations that is read a chunk at a time: the
layers of an :class:`lmprobe_jax_store.ActivationStore` (one memory-mapped shard per layer), or a numpy
array (possibly memory-mapped). :func:`read_chunk` copies a block of it into a fresh buffer in the
compute dtype: half-precision storage is upcast during that one copy, chunk by chunk, never for the
whole input. The buffer is page-aligned and handed to JAX read-only, so JAX uses it in place on the CPU
(no second copy), and it is an anonymous mapping, so its memory returns to the operating system as soon
as the chunk is dropped. :func:`prefetched` runs the reads on a thread, one chunk ahead of the solver.
"""

from __future__ import annotations

import functools
import gc
import math
import mmap
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class LayerSource:
    """``(L, N, D)`` activations read a block at a time (layers ``a:b``, rows ``r:s``).

    Build one with :func:`layer_source` (or pass an :class:`~lmprobe_jax_store.ActivationStore`, a
    numpy array or a memory map straight to a solver). Attributes: ``shape`` ``(L, N, D)``, ``dtype``
    (the storage dtype), ``layers`` (the name of each layer: store layer names, or ``0..L-1``).
    """

    def __init__(self, shape: tuple[int, int, int], dtype: Any, layers: Sequence[Any],
                 read_layer: Callable[[int], np.ndarray]):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.layers = list(layers)
        self._read_layer = read_layer

    def __repr__(self) -> str:
        return f"LayerSource(shape={self.shape}, dtype={self.dtype}, layers={self.layers})"

    def layer(self, index: int) -> np.ndarray:
        """Layer ``index`` as an ``(N, D)`` array that may be memory-mapped (read it in slices)."""
        return self._read_layer(index)


def layer_source(X: Any, *, pooling: str | None = None, layers: Iterable[Any] | None = None) -> LayerSource:
    """A :class:`LayerSource` over an activation store or an ``(L, N, D)`` numpy array.

    Args:
      X: an :class:`~lmprobe_jax_store.ActivationStore`, a :class:`LayerSource`, or a numpy array
        (``np.memmap`` included) of shape ``(L, N, D)``.
      pooling: the store's pooling to read (required when the store holds more than one).
      layers: the store's layers to read, in this order (default: every decoder layer it holds, in
        order; ``"embeddings"`` only when asked for).

    Raises:
      ValueError: for a store whose shards disagree with its manifest (shape or dtype), an unknown
        pooling or layer, or an array that is not 3-D.
    """
    if isinstance(X, LayerSource):
        return X
    if hasattr(X, "manifest") and hasattr(X, "load"):  # an ActivationStore (duck-typed: no import cycle)
        return _store_source(X, pooling, layers)
    if pooling is not None or layers is not None:
        raise ValueError("pooling and layers select from an activation store; index an array yourself.")
    if not isinstance(X, np.ndarray) or X.ndim != 3:
        shape = getattr(X, "shape", None)
        raise ValueError(
            f"A layer source needs an activation store or a 3-D (L, N, D) numpy array; got {type(X).__name__}"
            f"{'' if shape is None else f' of shape {tuple(shape)}'}."
        )
    return LayerSource(X.shape, X.dtype, range(X.shape[0]), X.__getitem__)


def _store_source(store: Any, pooling: str | None, layers: Iterable[Any] | None) -> LayerSource:
    names = [layer for layer in store.layers if layer != "embeddings"] if layers is None else list(layers)
    if not names:
        raise ValueError(f"No layers to read from {store!r}; name them with layers=[...].")
    pooling = store._pooling(pooling)
    if pooling == "all":
        raise ValueError("pooling 'all' holds one row per token, not per prompt; a probe reads a pooled layer.")
    names = [store._layer(name) for name in names]
    # Each shard is checked against the manifest (listed, size, store id, shape, dtype; its SHA-256 when
    # the store verifies) by ``load`` as the fit reaches its layer.
    shape = (len(names), store.n_prompts, store.hidden_size)
    return LayerSource(shape, np.dtype(store.manifest["storage_dtype"]), names, lambda i: store.load(names[i], pooling))


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A fresh, writeable, page-aligned, zero-filled array in an anonymous memory mapping.

    Page alignment lets ``jax.device_put`` share the buffer instead of copying it on the CPU (it needs
    64 bytes; numpy's large allocations come from malloc at 16 bytes past a page). The mapping is
    unmapped when the last reference to the array goes, returning the memory at once. It is private and
    asks for transparent huge pages where the kernel offers them: the copy that fills it then faults in
    one page per 2 MB (63 MB: 5 ms filled, against 20 ms of 4 kB pages faulted in ahead by ``MAP_POPULATE``;
    RESULTS.md, issue 23 session 8). Elsewhere it is faulted in whole when made (``MAP_POPULATE``): page by
    page, 4 kB faults cost twice the copy that fills it (session 7).

    Such buffers handed to JAX earlier are let go only at a garbage pass (JAX hooks :data:`gc.callbacks`),
    so a young-generation pass (~10 us) comes first: a finished call's padded copy is then no longer
    resident while the next call's is filled.
    """
    gc.collect(0)
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    huge = _huge_pages()
    flags = {"flags": mmap.MAP_PRIVATE | (0 if huge else getattr(mmap, "MAP_POPULATE", 0))} if hasattr(
        mmap, "MAP_PRIVATE") else {}
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1), **flags)
    if huge:
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buffer, dtype, count=count).reshape(shape)


@functools.cache
def _huge_pages() -> bool:
    """Whether ``madvise(MADV_HUGEPAGE)`` gets transparent huge pages here (Linux, THP not ``never``)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as mode:
            return hasattr(mmap, "MADV_HUGEPAGE") and "[never]" not in mode.read()
    except OSError:
        return False


# Bytes of a memory-mapped layer copied at a time before its pages are let go (see _copy_mapped).
_COPY_BLOCK_BYTES = 32 * 2**20


def advise_pages(view: np.ndarray, advice: int) -> None:
    """``madvise(advice)`` on the whole pages inside ``view``, a contiguous slice of a memory map (nothing
    for an array in memory): ``MADV_DONTNEED`` lets the pages go from this process's resident memory (they
    stay in the page cache; a later read maps them again), ``MADV_WILLNEED`` starts reading them ahead."""
    mapping = getattr(view, "_mmap", None)
    if mapping is None or not view.flags.c_contiguous or view.size == 0:
        return
    page = mmap.PAGESIZE
    start = view.ctypes.data - np.frombuffer(mapping, np.uint8).ctypes.data
    first = start - start % page
    last = (start + view.nbytes) // page * page  # only whole pages inside the view
    if last > first:
        mapping.madvise(advice, first, last - first)


def _copy_mapped(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` (cast to ``dst``'s dtype), a block of rows at a time; when ``src`` is memory-mapped,
    each block's pages are released from this process once copied (:func:`advise_pages`), so copying a
    layer out of a store never holds more than a block of the file resident beside the result."""
    step = max(1, _COPY_BLOCK_BYTES // max(1, src[:1].nbytes))
    for a in range(0, src.shape[0], step):
        block = src[a:a + step]
        np.copyto(dst[a:a + step], block, casting="unsafe")
        advise_pages(block, mmap.MADV_DONTNEED)


def read_chunk(source: LayerSource, layers: Sequence[int], rows: slice, dtype: Any,
               transform: Callable[[np.ndarray], None] | None = None, pad_to: int | None = None) -> np.ndarray:
    """Layers ``layers`` and rows ``rows`` of ``source`` as one read-only ``(k, r, D)`` array of ``dtype``.

    Each layer is copied (and cast) from its memory map into the aligned buffer a block at a time, so
    the only memory this takes beyond the result is one block of mapped pages (:func:`_copy_mapped`).
    ``transform`` edits the chunk in place before it is made read-only (the sweep's standardisation).
    ``pad_to`` (``>= r``) appends zero rows up to that many (the buffer is zero-filled: no extra pass).
    """
    n_rows = len(range(*rows.indices(source.shape[1])))
    out = aligned_empty((len(layers), max(n_rows, pad_to or 0), source.shape[2]), dtype)
    for i, layer in enumerate(layers):
        _copy_mapped(out[i, :n_rows], source.layer(layer)[rows])
    if transform is not None:
        transform(out[:, :n_rows])
    out.flags.writeable = False
    return out


def prefetched(jobs: Iterable[Callable[[], T]]) -> Iterator[T]:
    """Results of ``jobs`` in order, each computed on a reader thread while the previous one is in use.

    At most two results exist at a time: the one the caller holds and the next, being read. The caller
    must drop its reference before asking for the next result (the streaming driver does), else a
    third is read meanwhile. An array handed to JAX in place (``device_put`` of an aligned read-only
    array) is let go by JAX only at a garbage pass (``jax`` hooks :data:`gc.callbacks`), sometimes only
    a full one, so the previous result is collected before the next read starts: without it, it
    outlived its solve until the solver's next call, and a reader thread that ran first held three
    chunks (up to a chunk over the plan; seen in 1 of 9 runs of a 4 x 8000 x 512 fit).
    """
    jobs = iter(jobs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmprobe-reader") as pool:
        job = next(jobs, None)
        pending: Future | None = None if job is None else pool.submit(job)
        while pending is not None:
            result = pending.result()
            job = next(jobs, None)
            pending = None if job is None else pool.submit(job)
            yield result
            held = _array_ref(result)
            del result
            _collect(held)


def _array_ref(result: Any) -> weakref.ref | None:
    """A weak reference to ``result``'s array (or its tuple's first array), to see whether it was freed."""
    array = next((a for a in result if isinstance(a, np.ndarray)), None) if isinstance(result, tuple) else result
    return weakref.ref(array) if isinstance(array, np.ndarray) else None


def _collect(held: weakref.ref | None) -> None:
    """Free ``held``'s array if only garbage holds it: the youngest generation first (a few ms; JAX's gc
    callback then drops its references), a full pass (0.1-0.5 s) only if that was not enough."""
    gc.collect(0)
    if held is not None and held() is not None:
        gc.collect()
