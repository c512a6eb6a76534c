"""The activation store: safetensors shards plus a JSON manifest that says exactly what they hold.

Layout of a store directory::

    manifest.json                       written last: its presence means the store is complete
    <pooling>/layer_007.safetensors     one (N, D) tensor "activations" per pooling and layer,
    <pooling>/embeddings.safetensors    rows in prompt order (for "all": every real token, (T, D))
    all/offsets.safetensors             (N + 1,) int64: prompt i owns rows offsets[i]:offsets[i+1]
    labels.safetensors, metadata.json   optional, beside the activations
    prompts.json                        the prompts, in order

One file per (pooling, layer) serves the reads probes do -- "all N rows of layer l" is one contiguous,
memory-mapped tensor, "layers a..b" is b - a + 1 of them. The manifest records the request that produced
the store (model fingerprint, dtypes, layers, poolings, tokenizer, prompt hashes, library version) and
each shard's size and SHA-256; a shard whose size, header or hash disagrees is refused, never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ._layers import EMBEDDINGS, LayerName, layer_key, normalise_layer

MANIFEST = "manifest.json"
FORMAT = "lmprobe-jax-activations"
FORMAT_VERSION = 1

# The fields of a request that must match for a store to be served (layers and poolings may be a subset).
MATCH_FIELDS = (
    "format_version",
    "library_version",
    "model",
    "tokenizer",
    "compute_dtype",
    "storage_dtype",
    "n_prompts",
    "prompts_sha256",
)

_NUMPY_DTYPES = {"F32": "float32", "F16": "float16", "F64": "float64", "I64": "int64", "I32": "int32"}


def _numpy_dtype(code: str) -> np.dtype:
    if code == "BF16":
        import ml_dtypes  # numpy has no bfloat16; ml_dtypes (a jax dependency) provides it

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(_NUMPY_DTYPES[code])
    except KeyError:
        raise ValueError(f"Unsupported safetensors dtype {code!r} in an activation shard.") from None


def shard_path(pooling: str, layer: LayerName) -> str:
    """Relative path of the shard holding ``layer`` under ``pooling``."""
    return f"{pooling}/{layer_key(layer)}.safetensors"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part:
    write a temporary file in the same directory, fsync it, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def read_header(path: Path) -> tuple[dict, int]:
    """Parse a safetensors header: ``(header, offset of the data section)``. Raises ValueError when the
    file is too short or the header is not valid JSON."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path} is truncated: it is shorter than a safetensors header.")
        (length,) = struct.unpack("<Q", prefix)
        raw = handle.read(length)
    if len(raw) < length:
        raise ValueError(f"{path} is truncated inside its safetensors header.")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} has a corrupted safetensors header ({err}).") from None
    return header, 8 + length


def memmap_tensor(path: Path, name: str) -> np.ndarray:
    """Memory-map tensor ``name`` of a safetensors file read-only (no copy; pages load on access)."""
    header, start = read_header(path)
    try:
        info = header[name]
    except KeyError:
        raise ValueError(f"{path} has no tensor {name!r}.") from None
    begin, end = info["data_offsets"]
    dtype = _numpy_dtype(info["dtype"])
    shape = tuple(info["shape"])
    if end - begin != int(np.prod(shape)) * dtype.itemsize or start + end > path.stat().st_size:
        raise ValueError(f"{path} is truncated or corrupted: tensor {name!r} does not fit the file.")
    if not shape or 0 in shape:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)


def request_mismatches(stored: dict, request: dict) -> list[str]:
    """Names of the fields in which a stored manifest cannot serve ``request`` (empty: it can)."""
    wrong = [field for field in MATCH_FIELDS if stored.get(field) != request.get(field)]
    if stored.get("prompt_hashes") != request.get("prompt_hashes") and "prompts_sha256" not in wrong:
        wrong.append("prompt_hashes")
    if not set(map(str, request["layers"])) <= set(map(str, stored.get("layers", []))):
        wrong.append("layers")
    if not set(request["poolings"]) <= set(stored.get("poolings", [])):
        wrong.append("poolings")
    if stored.get("max_length") != request.get("max_length"):
        wrong.append("max_length")
    return wrong


class ActivationStore:
    """Pooled activations of N prompts at several layers, on disk (memory-mapped) or in memory.

    Open a finished store with ``ActivationStore(path)``; :func:`lmprobe_jax_extract.extract_activations` returns
    one. ``load(layer, pooling)`` gives the ``(N, D)`` array of one layer; ``stack(layers, pooling)``
    gives ``(L, N, D)``. With ``verify=True`` (the default) each shard's size, header and SHA-256 are
    checked against the manifest the first time it is read; a mismatch raises ``ValueError``.

    Attributes: ``path`` (None in memory), ``manifest`` (dict), ``layers``, ``poolings``, ``n_prompts``,
    ``hidden_size``, ``labels`` and ``metadata`` (None when not stored), ``prompts``.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = True):
        self.path = Path(path)
        manifest_file = self.path / MANIFEST
        if not manifest_file.is_file():
            partial = (self.path / ".partial").is_dir()
            raise ValueError(
                f"{self.path} is not a complete activation store (no {MANIFEST})"
                + (
                    "; an interrupted extraction left a .partial/ directory: rerun extract_activations "
                    "with the same arguments to resume it."
                    if partial
                    else "."
                )
            )
        try:
            self.manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_file} is corrupted ({err}).") from None
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_file} is not an lmprobe-jax activation manifest.")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.path} uses store format {self.manifest.get('format_version')}; this version reads "
                f"format {FORMAT_VERSION}. Re-extract the activations."
            )
        self.verify = verify
        self._arrays: dict[str, np.ndarray] | None = None
        self._checked: set[str] = set()
        self._check_sizes()

    @classmethod
    def from_arrays(cls, manifest: dict, arrays: dict[str, np.ndarray]) -> ActivationStore:
        """An in-memory store: ``arrays`` maps shard paths (:func:`shard_path`) to arrays."""
        store = cls.__new__(cls)
        store.path, store.manifest, store.verify = None, manifest, False
        store._arrays, store._checked = arrays, set()
        return store

    # -- what the store holds -------------------------------------------------------------------------
    @property
    def layers(self) -> list[LayerName]:
        return [EMBEDDINGS if name == EMBEDDINGS else int(name) for name in self.manifest["layers"]]

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

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else str(self.path)
        return (
            f"ActivationStore({where}: {self.n_prompts} prompts, layers {self.manifest['layers']}, "
            f"poolings {self.poolings}, D={self.hidden_size}, {self.manifest['storage_dtype']})"
        )

    # -- reading --------------------------------------------------------------------------------------
    def _read(self, relative: str, name: str) -> np.ndarray:
        if self._arrays is not None:
            return self._arrays[relative]
        self._ensure_checked(relative)
        return memmap_tensor(self.path / relative, name)

    def _check_file(self, relative: str, expected: dict, *, full: bool) -> None:
        path = self.path / relative
        if not path.is_file():
            raise ValueError(f"{path} is missing from the activation store; re-extract it.")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise ValueError(
                f"{path} is truncated or corrupted ({size} bytes, the manifest says {expected['bytes']}); "
                "re-extract the activations."
            )
        if full and sha256(path.read_bytes()) != expected["sha256"]:
            raise ValueError(
                f"{path} is corrupted (its SHA-256 does not match the manifest); re-extract the activations."
            )

    def _check_sizes(self) -> None:
        for relative, expected in self.manifest.get("files", {}).items():
            self._check_file(relative, expected, full=False)

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

    def load(self, layer: LayerName, pooling: str | None = None) -> np.ndarray:
        """``(N, D)`` activations of one layer (``(n_tokens, D)`` for ``"all"``), memory-mapped."""
        pooling = self._pooling(pooling)
        return self._read(shard_path(pooling, self._layer(layer)), "activations")

    def stack(
        self, layers: Iterable[LayerName] | None = None, pooling: str | None = None, dtype=None
    ) -> np.ndarray:
        """``(L, N, D)`` activations of ``layers`` (default: every stored layer), in the given order."""
        layers = self.layers if layers is None else list(layers)
        if not layers:
            raise ValueError("layers is empty.")
        arrays = [self.load(layer, pooling) for layer in layers]
        return np.stack([np.asarray(a, dtype=dtype) for a in arrays]) if dtype else np.stack(arrays)

    def offsets(self) -> np.ndarray:
        """``(N + 1,)`` row offsets of each prompt in the ``"all"`` pooling."""
        self._pooling("all")
        return np.asarray(self._read("all/offsets.safetensors", "offsets"))

    @property
    def labels(self) -> np.ndarray | None:
        if "labels.safetensors" not in self.manifest.get("files", {}) and not (
            self._arrays is not None and "labels.safetensors" in self._arrays
        ):
            return None
        return np.asarray(self._read("labels.safetensors", "labels"))

    @property
    def metadata(self) -> list | None:
        return self._json("metadata.json")

    @property
    def prompts(self) -> list[str] | None:
        return self._json("prompts.json")

    def _json(self, relative: str):
        if self._arrays is not None:
            return self._arrays.get(relative)
        if relative not in self.manifest.get("files", {}):
            return None
        self._ensure_checked(relative)
        return json.loads((self.path / relative).read_text())

    def _ensure_checked(self, relative: str) -> None:
        """Check a file against the manifest the first time it is read (SHA-256 when ``verify``)."""
        expected = self.manifest["files"].get(relative)
        if expected is None:
            raise ValueError(f"{relative} is not part of the store at {self.path}.")
        if relative not in self._checked:
            self._check_file(relative, expected, full=self.verify)
            self._checked.add(relative)

    def verify_all(self) -> None:
        """Check every file's size and SHA-256 against the manifest now (raises ValueError)."""
        if self.path is None:
            return
        for relative, expected in self.manifest["files"].items():
            self._check_file(relative, expected, full=True)
            self._checked.add(relative)


def write_file(root: Path, relative: str, data: bytes) -> dict:
    """Atomically write ``root / relative`` and return its manifest entry (size and SHA-256)."""
    atomic_write(root / relative, data)
    return {"bytes": len(data), "sha256": sha256(data)}
