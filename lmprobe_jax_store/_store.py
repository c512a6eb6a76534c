"""The activation store: safetensors shards plus a JSON manifest that says exactly what they hold.

Layout of a store directory::

    manifest.json                       its presence means the store is complete (see _manifest.py)
    <pooling>/layer_007.safetensors     one (N, D) tensor "activations" per pooling and layer,
    <pooling>/embeddings.safetensors    rows in prompt order (for "all": every real token, (T, D))
    all/offsets.safetensors             (N + 1,) int64: prompt i owns rows offsets[i]:offsets[i+1]
    labels/<digest>.safetensors         label sets, content-addressed (several may be listed)
    metadata/<digest>.json              metadata sets, content-addressed
    prompts.json                        the prompts, in order

One file per (pooling, layer) serves the reads probes do -- "all N rows of layer l" is one contiguous,
memory-mapped tensor whose data starts on a page boundary, "layers a..b" is b - a + 1 of them. The
manifest records the request that produced the store and each file's size and SHA-256; a file whose
size, header, store id or hash disagrees is refused, never served. Stores are written by
:class:`~lmprobe_jax_store.StoreWriter` into a staging directory and renamed into place whole, so a
reader sees a complete store or none; a store replaced while open is detected (each shard carries the
store id), and a label set attached later never changes what an open store returns.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ._layers import LayerName, normalise_layer
from ._manifest import (
    MANIFEST,
    OFFSETS,
    PROMPTS,
    check_manifest,
    layer_names,
    shard_path,
)
from ._paths import atomic_write as _atomic_write
from ._paths import confined, open_nofollow, read_bytes, staging_path
from ._safetensors import memmap, read_header

_MAX_MANIFEST = 1 << 31  # 2 GiB: far above any real manifest, below what would exhaust memory to parse


def sha256_file(path: Path, fd: int | None = None) -> str:
    """SHA-256 of a file, read in 16 MiB blocks (memory O(1) in the file size)."""
    own = fd is None
    fd = open_nofollow(path) if own else fd
    digest = hashlib.sha256()
    try:
        position = 0
        while block := os.pread(fd, 1 << 24, position):
            digest.update(block)
            position += len(block)
    finally:
        if own:
            os.close(fd)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write one file so that readers see the old one or the whole new one (temporary file in the same
    directory, fsync, rename); the probe's save uses it too."""
    path = Path(path)
    _atomic_write(path.parent, path.name, data)


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(root: Path) -> dict:
    """The checked manifest of the store at ``root`` (ValueError when absent, unreadable or malformed)."""
    path = root / MANIFEST
    try:
        fd = open_nofollow(path)
    except FileNotFoundError:
        raise ValueError(f"{root} is not a complete activation store (no {MANIFEST}).") from None
    try:
        if os.fstat(fd).st_size > _MAX_MANIFEST:
            raise ValueError(f"Corrupted store: {path} is too large to be a manifest.")
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw = handle.read()
    finally:
        os.close(fd)
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"Corrupted store: {path} is not valid JSON ({err}).") from None
    return check_manifest(manifest, path)


class ActivationStore:
    """Pooled activations of N prompts at several layers, on disk (memory-mapped) or in memory.

    Open a finished store with ``ActivationStore(path)``; :func:`lmprobe_jax_extract.extract_activations`
    returns one. ``load(layer, pooling)`` gives the ``(N, D)`` array of one layer; ``stack(layers,
    pooling)`` gives ``(L, N, D)``; ``iter_rows`` walks one layer in row chunks without copying. With
    ``verify=True`` (the default) each file's SHA-256 is checked against the manifest the first time it is
    read; sizes, headers and the store id are always checked. A mismatch raises ``ValueError``.

    The labels and metadata a store returns are fixed when it is opened (the manifest's current label
    set); a label set attached to the same store later, by this process or another, is seen only by
    stores opened after it.

    Attributes: ``path`` (None in memory), ``manifest`` (dict), ``layers``, ``poolings``, ``n_prompts``,
    ``hidden_size``, ``labels``, ``label_names`` and ``metadata`` (None when not stored), ``prompts``.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = True):
        self.path = Path(path)
        staging = staging_path(Path(os.path.realpath(self.path)))
        if not os.path.lexists(self.path / MANIFEST) and staging.is_dir():
            raise ValueError(
                f"{self.path} is not a complete activation store: an interrupted extraction left {staging} "
                "beside it. Rerun extract_activations with the same arguments to resume it."
            )
        self.manifest = read_manifest(self.path)
        self.verify = verify
        self._arrays: dict | None = None
        self._checked: set[str] = set()
        for relative, expected in self.manifest["files"].items():
            self._check_file(relative, expected, full=False)

    @classmethod
    def from_arrays(cls, manifest: dict, arrays: dict) -> ActivationStore:
        """An in-memory store: ``arrays`` maps relative paths (:func:`shard_path`, ``labels``,
        ``prompts.json``, ...) to arrays or JSON values."""
        store = cls.__new__(cls)
        store.path, store.manifest, store.verify = None, manifest, False
        store._arrays, store._checked = arrays, set()
        return store

    # -- what the store holds -------------------------------------------------------------------------
    @property
    def layers(self) -> list[LayerName]:
        return layer_names(self.manifest)

    @property
    def poolings(self) -> list[str]:
        return list(self.manifest["poolings"])

    @property
    def n_prompts(self) -> int:
        return int(self.manifest["n_prompts"])

    @property
    def n_layers(self) -> int:
        """Decoder blocks in the model the store was extracted from (not how many it holds)."""
        return int(self.manifest["model"]["n_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def nbytes(self) -> int:
        """Bytes on disk of every file the manifest lists (0 in memory)."""
        return sum(entry["bytes"] for entry in self.manifest["files"].values()) if self.path is not None else 0

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else str(self.path)
        return (
            f"ActivationStore({where}: {self.n_prompts} prompts, layers {self.manifest['layers']}, "
            f"poolings {self.poolings}, D={self.hidden_size}, {self.manifest['storage_dtype']})"
        )

    # -- checks ---------------------------------------------------------------------------------------
    def _check_file(self, relative: str, expected: dict, *, full: bool, fd: int | None = None) -> None:
        path = confined(self.path, relative)
        try:
            own = fd is None
            fd = open_nofollow(path) if own else fd
        except FileNotFoundError:
            raise ValueError(f"{path} is missing from the activation store; re-extract it.") from None
        try:
            size = os.fstat(fd).st_size
            if size != expected["bytes"]:
                raise ValueError(
                    f"{path} is truncated or corrupted ({size} bytes, the manifest says "
                    f"{expected['bytes']}); re-extract the activations."
                )
            if full and sha256_file(path, fd) != expected["sha256"]:
                raise ValueError(
                    f"{path} is corrupted (its SHA-256 does not match the manifest); re-extract the "
                    "activations."
                )
        finally:
            if own:
                os.close(fd)

    def tensor(self, relative: str, name: str) -> np.ndarray:
        """Tensor ``name`` of the listed file ``relative`` (e.g. a file a token-level store adds),
        memory-mapped after the same checks as every shard (listed, confined, store id, size, hash)."""
        if self._arrays is not None:
            return np.asarray(self._arrays[relative])
        return self._open_tensor(relative, name, None, None)

    def _open_tensor(
        self, relative: str, name: str, shape: tuple[int, ...] | None, dtype: str | None
    ) -> np.ndarray:
        """Memory-map tensor ``name`` of a listed file after checking it against the manifest (and its
        shape and dtype, when given)."""
        expected = self.manifest["files"].get(relative)
        if expected is None:
            raise ValueError(f"Corrupted store: {relative} is not listed in the manifest of {self.path}.")
        path = confined(self.path, relative)
        try:
            fd = open_nofollow(path)
        except FileNotFoundError:
            raise ValueError(f"{path} is missing from the activation store; re-extract it.") from None
        try:
            self._check_file(relative, expected, full=self.verify and relative not in self._checked, fd=fd)
            self._checked.add(relative)
            header = read_header(fd, path)
            if header.metadata.get("store") != self.manifest["store_id"]:
                raise ValueError(
                    f"{path} belongs to another store than the manifest this object was opened with: "
                    f"the store at {self.path} was replaced since it was opened. Open it again."
                )
            info = header.tensors.get(name)
            if info is None or (shape is not None and info[1] != shape) or (dtype is not None and info[0].name != dtype):
                raise ValueError(
                    f"Corrupted store: {path} should hold {name!r} of shape {shape}"
                    f"{'' if dtype is None else ' ' + dtype}; it holds "
                    f"{'nothing of that name' if info is None else (info[1], info[0].name)}."
                )
            return memmap(fd, info)
        finally:
            os.close(fd)

    def _pooling(self, pooling: str | None) -> str:
        if pooling is None:
            if len(self.poolings) != 1:
                raise ValueError(f"This store holds poolings {self.poolings}: say which one to load.")
            return self.poolings[0]
        if pooling not in self.poolings:
            raise ValueError(f"This store has no {pooling!r} pooling; it holds {self.poolings}.")
        return pooling

    def _layer(self, layer: LayerName) -> LayerName:
        name = normalise_layer(layer, self.n_layers)
        if name not in self.layers:
            raise ValueError(
                f"Layer {layer} is not in this store; it holds layers {self.manifest['layers']}."
            )
        return name

    # -- reading --------------------------------------------------------------------------------------
    def load(self, layer: LayerName, pooling: str | None = None) -> np.ndarray:
        """``(N, D)`` activations of one layer (``(n_tokens, D)`` for ``"all"``), memory-mapped and
        read-only: no copy is made, and slicing rows (``load(l)[a:b]``) reads only those rows."""
        pooling = self._pooling(pooling)
        relative = shard_path(pooling, self._layer(layer))
        if self._arrays is not None:
            return self._arrays[relative]
        rows = self.manifest["n_tokens"] if pooling == "all" else self.n_prompts
        return self._open_tensor(
            relative, "activations", (rows, self.hidden_size), self.manifest["storage_dtype"]
        )

    def iter_rows(
        self, layer: LayerName, pooling: str | None = None, *, chunk_rows: int
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """``(rows, block)`` pairs covering one layer in order, ``block = load(layer)[rows]`` of at most
        ``chunk_rows`` rows: read-only views of the memory map (no copy). A block's first byte is
        aligned to ``gcd(4096, chunk_rows * D * itemsize)`` bytes in memory."""
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, not {chunk_rows!r}.")
        array = self.load(layer, pooling)
        for start in range(0, array.shape[0], chunk_rows):
            rows = slice(start, min(start + chunk_rows, array.shape[0]))
            yield rows, array[rows]

    def stack(
        self, layers: Iterable[LayerName] | None = None, pooling: str | None = None, dtype=None
    ) -> np.ndarray:
        """``(L, N, D)`` activations of ``layers`` (default: every stored layer), in the given order.
        Memory: one copy, ``L * N * D`` elements of ``dtype`` (default the storage dtype)."""
        layers = self.layers if layers is None else list(layers)
        if not layers:
            raise ValueError("layers is empty.")
        arrays = [self.load(layer, pooling) for layer in layers]
        return np.stack([np.asarray(a, dtype=dtype) for a in arrays]) if dtype else np.stack(arrays)

    def offsets(self) -> np.ndarray:
        """``(N + 1,)`` row offsets of each prompt in the ``"all"`` pooling."""
        self._pooling("all")
        if self._arrays is not None:
            return np.asarray(self._arrays[OFFSETS])
        offsets = np.asarray(self._open_tensor(OFFSETS, "offsets", (self.n_prompts + 1,), "int64"))
        if offsets[0] != 0 or offsets[-1] != self.manifest["n_tokens"] or np.any(np.diff(offsets) < 1):
            raise ValueError(f"Corrupted store: {self.path / OFFSETS} does not partition the token rows.")
        return offsets

    @property
    def labels(self) -> np.ndarray | None:
        """``(N,)`` labels of the label set this store was opened with (None when it has none)."""
        return self._label_set()[0]

    @property
    def label_names(self) -> list[str] | None:
        """Class names of string labels (``labels`` holds their indices), or None."""
        return self._label_set()[1]

    def _label_set(self) -> tuple[np.ndarray | None, list[str] | None]:
        relative = self.manifest.get("labels")
        if relative is None:
            return None, None
        if self._arrays is not None:
            return self._arrays[relative], self.manifest.get("label_names")
        labels = np.asarray(self._open_tensor(relative, "labels", (self.n_prompts,), None))
        fd = open_nofollow(confined(self.path, relative))
        try:
            names = read_header(fd, relative).metadata.get("classes")
        finally:
            os.close(fd)
        if names is None:
            return labels, None
        try:
            names = json.loads(names)
        except json.JSONDecodeError:
            names = None
        if not isinstance(names, list) or labels.dtype.kind not in "iu" or (
            labels.size and not 0 <= labels.min() <= labels.max() < len(names)
        ):
            raise ValueError(f"Corrupted store: the class names in {self.path / relative} do not fit its labels.")
        return labels, [str(name) for name in names]

    @property
    def metadata(self) -> list | None:
        """The N metadata records of the set this store was opened with (None when it has none)."""
        relative = self.manifest.get("metadata")
        return None if relative is None else self._json(relative)

    @property
    def prompts(self) -> list[str] | None:
        return self._json(PROMPTS)

    def _json(self, relative: str):
        if self._arrays is not None:
            return self._arrays.get(relative)
        expected = self.manifest["files"][relative]
        data = read_bytes(self.path, relative)
        # JSON files are small: always hashed, so a file swapped under an open store is never served.
        if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise ValueError(
                f"{self.path / relative} does not match the manifest this store was opened with (corrupted, "
                "or the store was replaced since); open the store again or re-extract it."
            )
        try:
            value = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ValueError(f"Corrupted store: {self.path / relative} is not valid JSON ({err}).") from None
        if not isinstance(value, list) or len(value) != self.n_prompts:
            raise ValueError(f"Corrupted store: {self.path / relative} should list {self.n_prompts} entries.")
        return value

    def verify_all(self) -> None:
        """Check every file's size and SHA-256 against the manifest now (raises ValueError)."""
        if self.path is None:
            return
        for relative, expected in self.manifest["files"].items():
            self._check_file(relative, expected, full=True)
            self._checked.add(relative)

