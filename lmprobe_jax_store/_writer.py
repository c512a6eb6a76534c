"""Writing a store: staged beside its final place, filled batch by batch at the final rows, renamed whole.

The protocol (:func:`lmprobe_jax_extract.extract_activations` follows it; any producer can)::

    with store_lock(root):                         # one writer per store, across processes
        writer = StoreWriter(root, StoreContent(manifest, batches, token_counts, prompts, labels))
        for k in writer.pending:                   # batches of this shard not yet on disk (verified)
            writer.write(k, {(layer, pooling): rows})   # (rows of batch k, D), any order of k
        store = writer.finish()                    # hash, manifest, fsync, rename into place

Beside ``root`` (never inside it, so the store can be swapped whole) live:

* ``.<name>.lock`` -- the inter-process lock (:mod:`filelock`: ``flock`` on POSIX, released by the
  kernel when its holder dies, so a killed writer never leaves it held);
* ``.<name>.partial/`` -- the staging directory: every final shard, preallocated at full size with its
  header written, ``plan.json`` (what is being written; a different plan starts over) and
  ``progress-<i>-of-<n>.log`` (one line per finished batch: its index and the SHA-256 of its rows);
* ``.<name>.old-<pid>/`` -- the previous store during the instant it is replaced.

A batch's rows go straight to their final place in each shard (``os.pwrite``), so a writer holds one
batch in memory, never the store, and the staged shards *are* the final ones: nothing is assembled or
copied at the end. A resumed writer trusts a batch only if its rows, read back, hash to what the log says
(a flipped bit or a torn write is recomputed, never published); a staging directory it cannot use
(another plan, a damaged header, a missing file) is rebuilt. Whoever takes the lock first removes what
dead writers left: temporary files, a previous version, a staged store that was finished but not yet
renamed (it is published).

Several processes can write one store: ``shard=(i, n)`` takes batches ``k`` with ``k % n == i``. They
hold the lock only to set up and to finish; the last to finish publishes the store (or :func:`merge` does,
once every batch is on disk). Disk use while writing: the store's size, once (sparse until written).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from filelock import FileLock, Timeout

from ._annotations import check_metadata, encode_json, encode_labels, encode_metadata, label_set
from ._layers import LayerName
from ._manifest import FORMAT, MANIFEST, OFFSETS, PROMPTS, prompt_hash, shard_path
from ._paths import (
    atomic_write,
    confined,
    fsync_directory,
    open_nofollow,
    sibling,
    staging_path,
)
from ._poolings import check_poolings
from ._safetensors import code_of, dtype_of, encode, encode_header
from ._store import ActivationStore, read_manifest, sha256_file

PLAN = "plan.json"
ANNOTATIONS = "annotations.json"
_LOG = re.compile(r"progress-(\d+)-of-(\d+)\.log")
_ACTIVE = re.compile(r"\.active-(\d+)-of-(\d+)\.lock")


def lock_path(root: Path) -> Path:
    return sibling(root, "lock")


def store_root(path: str | os.PathLike) -> Path:
    """The canonical location of a store: absolute, with symbolic links resolved, so two names for one
    directory share one lock."""
    return Path(os.path.realpath(Path(path).expanduser()))


@contextmanager
def store_lock(root: str | os.PathLike, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the inter-process lock of the store at ``root`` (re-entrant within a process). ``on_wait``
    is called once if another process holds it (the call then waits for it). The first holder also
    tidies what dead writers left (see the module docstring)."""
    root = store_root(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(root), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        if lock.lock_counter == 1:
            _tidy(root)
        yield
    finally:
        lock.release()


def _holding(root: Path) -> bool:
    return FileLock(lock_path(root), is_singleton=True).is_locked


def _require_lock(root: Path) -> None:
    if not _holding(root):
        raise RuntimeError(f"Hold store_lock({str(root)!r}) while writing the store.")


def _tidy(root: Path) -> None:
    """Under the lock: finish a dead writer's rename, drop its previous version and temporary files."""
    staging = staging_path(root)
    if (staging / MANIFEST).is_file() and not (staging / PLAN).exists():
        try:
            read_manifest(staging)
        except ValueError:
            pass  # a damaged staged store: the next writer rebuilds it
        else:
            _publish(staging, root)
    for leftover in root.parent.glob(f".{glob_escape(root.name)}.old-*"):
        _remove(leftover)
    for tree in (staging, root):
        if not tree.is_dir() or tree.is_symlink():
            continue
        for directory, _, names in os.walk(tree):
            for name in names:
                if ".tmp-" in name:
                    Path(directory, name).unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _remove(path: Path) -> None:
    """Delete a file, link or directory tree without following links."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _is_store(root: Path) -> bool:
    """Whether ``root`` holds a store's manifest (of any format version)."""
    try:
        return json.loads((root / MANIFEST).read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _publish(staging: Path, root: Path) -> None:
    """Rename a finished staging directory to ``root``, replacing what is there."""
    fsync_directory(staging)
    old = None
    if os.path.lexists(root):
        old = sibling(root, f"old-{os.getpid()}")
        _remove(old)
        os.rename(root, old)
    os.rename(staging, root)
    fsync_directory(root.parent)
    if old is not None:
        _remove(old)


def finished_store(root: str | os.PathLike, *, verify: bool = True) -> ActivationStore | None:
    """The finished store at ``root``, or None when there is none (nothing, or an empty directory).
    Raises ValueError for a directory that holds something else, or a store this version cannot read."""
    root = store_root(root)
    if not os.path.lexists(root):
        return None
    if (root / MANIFEST).exists() or os.path.lexists(root / MANIFEST):
        return ActivationStore(root, verify=verify)
    _check_replaceable(root)
    return None


def _check_replaceable(root: Path) -> None:
    """ValueError unless ``root`` is absent, an empty directory, or what an older version left there."""
    if not os.path.lexists(root):
        return
    if root.is_symlink() or not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory; choose another out_dir.")
    if _is_store(root):
        return
    foreign = sorted(name for name in os.listdir(root) if name != ".partial")  # .partial: format 1's staging
    if foreign:
        raise ValueError(
            f"{root} exists and is not an activation store (it holds {', '.join(foreign[:4])}"
            f"{', ...' if len(foreign) > 4 else ''}); nothing is written over it. Choose a new or empty "
            "directory."
        )


class _Layout:
    """Where each batch's rows go: prompt ``i`` is row ``i`` of a pooled shard, and rows
    ``offsets[i]:offsets[i+1]`` of an ``"all"`` shard."""

    def __init__(self, manifest: dict, batches: Sequence[Sequence[int]], token_counts: Sequence[int]):
        self.n_prompts = int(manifest["n_prompts"])
        self.layers: list[LayerName] = list(manifest["layers"])
        self.poolings = check_poolings(manifest["poolings"])
        self.hidden_size = int(manifest["hidden_size"])
        self.dtype = dtype_of(code_of(manifest["storage_dtype"]))
        self.batches = [np.asarray(b, dtype=np.int64) for b in batches]
        counts = np.asarray(token_counts, dtype=np.int64)
        if counts.shape != (self.n_prompts,) or np.any(counts < 1):
            raise ValueError(f"token_counts must give n_prompts={self.n_prompts} positive counts.")
        order = np.sort(np.concatenate(self.batches)) if self.batches else np.empty(0, np.int64)
        if not np.array_equal(order, np.arange(self.n_prompts)):
            raise ValueError("batches must hold every prompt index exactly once.")
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.n_tokens = int(self.offsets[-1])
        self.keys = {shard_path(p, layer): (layer, p) for p in self.poolings for layer in self.layers}

    def rows(self, pooling: str) -> int:
        return self.n_tokens if pooling == "all" else self.n_prompts

    def dest(self, k: int, pooling: str) -> np.ndarray:
        """Final rows of batch ``k``'s rows, in the batch's order."""
        prompts = self.batches[k]
        if pooling != "all":
            return prompts
        return np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in prompts])

    def check(self, k: int, arrays: Mapping[tuple[LayerName, str], Any]) -> dict[str, np.ndarray]:
        """``arrays`` of batch ``k`` keyed by shard path, checked for keys, shape and dtype."""
        if not isinstance(k, (int, np.integer)) or not 0 <= k < len(self.batches):
            raise ValueError(f"batch {k!r} is not one of the {len(self.batches)} batches.")
        given = {shard_path(pooling, layer): value for (layer, pooling), value in arrays.items()}
        if set(given) != set(self.keys):
            raise ValueError(f"batch {k} must give exactly {sorted(self.keys)}; got {sorted(given)}.")
        checked = {}
        for relative in sorted(given):
            array = np.ascontiguousarray(given[relative])
            shape = (len(self.dest(k, self.keys[relative][1])), self.hidden_size)
            if array.shape != shape or array.dtype != self.dtype:
                raise ValueError(
                    f"batch {k}'s {relative} is {array.shape} {array.dtype}; the store expects {shape} "
                    f"{self.dtype}."
                )
            checked[relative] = array
        return checked


def _runs(dest: np.ndarray) -> list[tuple[int, int, int]]:
    """``(source row, destination row, count)`` for each run of consecutive destination rows."""
    if dest.size == 0:
        return []
    starts = np.concatenate([[0], np.flatnonzero(np.diff(dest) != 1) + 1])
    ends = np.concatenate([starts[1:], [dest.size]])
    return [(int(a), int(dest[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)]


def _as_bytes(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(array.shape[0], -1).view(np.uint8)).cast("B")


class StoreContent(NamedTuple):
    """What a store will hold, as both writers take it.

    Attributes:
      manifest: the request fields of the manifest (see :mod:`lmprobe_jax_store._manifest`); must hold
        ``layers``, ``poolings``, ``n_prompts``, ``hidden_size`` and ``storage_dtype``.
      batches: prompt indices of each batch, together every prompt once. Batch ``k``'s rows arrive in
        this order.
      token_counts: ``(N,)`` real tokens per prompt (the rows of the ``"all"`` pooling).
      prompts, labels, metadata: the N prompts; optional labels (numbers or class names: see
        :func:`~lmprobe_jax_store._annotations.label_set`) and N JSON-serialisable records.
    """

    manifest: dict
    batches: Sequence[Sequence[int]]
    token_counts: Sequence[int]
    prompts: Sequence[str]
    labels: Any = None
    metadata: Sequence | None = None


class StoreWriter:
    """Writes one activation store (see the module docstring for the protocol and the files).

    Args:
      root: the store's final directory (absent, empty, or a store being replaced with ``replace``).
      content: what it will hold (:class:`StoreContent`).
      resume_key: anything JSON-serialisable that must also match for a staged store to be resumed
        (e.g. the batch size and padding that produced its rows).
      shard: ``(i, n)``: this writer computes batches ``k % n == i``; ``None`` computes none (merging).
      replace: allow replacing a finished store at ``root``.

    Memory: one batch (``write`` holds only what it is given); the plan is ``O(N)`` integers.
    Must be created, and finished, while holding :func:`store_lock` of ``root``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        content: StoreContent,
        *,
        resume_key: Any = None,
        shard: tuple[int, int] | None = (0, 1),
        replace: bool = False,
    ):
        self.root = store_root(root)
        _require_lock(self.root)
        self.staging = staging_path(self.root)
        manifest = json.loads(json.dumps(content.manifest))
        self.layout = _Layout(manifest, content.batches, content.token_counts)
        plan = {
            "manifest": manifest,
            "batches": [b.tolist() for b in self.layout.batches],
            "token_counts": np.diff(self.layout.offsets).tolist(),
            "resume_key": json.loads(json.dumps(resume_key)),
        }
        self.store_id = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:32]
        self.manifest = {**manifest, "store_id": self.store_id, "n_tokens": self.layout.n_tokens}
        self.shard = check_shard(shard)
        if not replace and _is_store(self.root):
            raise ValueError(
                f"{self.root} holds a finished activation store; it is not replaced unless asked "
                "(overwrite=True)."
            )
        _check_replaceable(self.root)

        self._fds: dict[str, int] = {}
        self._active: FileLock | None = None
        self._sharded = self.shard is not None and self.shard[1] > 1
        if not self._open_staging(plan):
            if self._others_active():
                raise ValueError(
                    f"Another extraction with a different request is writing {self.root} right now "
                    f"(its shards hold {self.staging}); wait for it, or choose another out_dir."
                )
            self._create_staging(plan)
        elif not self._sharded and self._others_active():
            self._close()
            raise ValueError(
                f"Shards of this extraction are writing {self.root} right now: wait for them (the last one "
                "publishes the store), or run the missing shards."
            )
        try:
            self._write_side_files(content)
            if self._sharded:
                self._claim_shard()
        except BaseException:
            self._close()
            raise
        self._claims = self._read_claims()
        self._verified: set[int] = set()
        own = [] if self.shard is None else range(self.shard[0], len(self.layout.batches), self.shard[1])
        self.pending: list[int] = [k for k in own if not self._verify(k)]
        """Batches of this shard whose rows are not yet on disk, in plan order."""

    # -- staging ----------------------------------------------------------------------------------------
    def _open_staging(self, plan: dict) -> bool:
        """Open a staged store of this plan; False (nothing opened) when there is none or it is unusable."""
        if not os.path.lexists(self.staging):
            return False
        if self.staging.is_symlink() or not self.staging.is_dir():
            _remove(self.staging)
            return False
        try:
            if json.loads((self.staging / PLAN).read_bytes()) != plan:
                return False
            for relative, (_, pooling) in self.layout.keys.items():
                fd = open_nofollow(confined(self.staging, relative), os.O_RDWR)
                self._fds[relative] = fd
                self._check_shard_file(fd, relative, pooling)
        except (OSError, ValueError):
            self._close()
            return False
        return True

    def _shard_header(self, pooling: str) -> bytes:
        shape = (self.layout.rows(pooling), self.layout.hidden_size)
        header, _ = encode_header({"activations": (code_of(self.layout.dtype), shape)}, {"store": self.store_id})
        return header

    def _shard_size(self, pooling: str) -> int:
        rows = self.layout.rows(pooling) * self.layout.hidden_size * self.layout.dtype.itemsize
        return len(self._shard_header(pooling)) + rows

    def _check_shard_file(self, fd: int, relative: str, pooling: str) -> None:
        expected = self._shard_header(pooling)
        if os.pread(fd, len(expected), 0) != expected or os.fstat(fd).st_size != self._shard_size(pooling):
            raise ValueError(f"staged {relative} does not match the plan")

    def _create_staging(self, plan: dict) -> None:
        _remove(self.staging)
        need = sum(self._shard_size(p) for _, p in self.layout.keys.values())
        free = shutil.disk_usage(self.root.parent).free
        if need > free:
            raise ValueError(
                f"The store needs {need / 1e9:.2f} GB and {self.root.parent} has {free / 1e9:.2f} GB free; "
                "free some space or choose another out_dir."
            )
        os.mkdir(self.staging)
        for relative, (_, pooling) in self.layout.keys.items():
            path = confined(self.staging, relative, make_dirs=True)
            fd = open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            self._fds[relative] = fd
            os.pwrite(fd, self._shard_header(pooling), 0)
            os.ftruncate(fd, self._shard_size(pooling))
        atomic_write(self.staging, PLAN, json.dumps(plan, sort_keys=True).encode())  # last: staging is usable

    def _side_files(self, content: StoreContent) -> tuple[dict[str, bytes], dict]:
        """The small files beside the shards, as bytes (prompts, offsets, the label and metadata sets),
        and which label and metadata sets are the store's."""
        n = self.layout.n_prompts
        if len(content.prompts) != n:
            raise ValueError(f"{len(content.prompts)} prompts were given for a store of {n}.")
        files = {PROMPTS: encode_json(list(content.prompts))}
        if "all" in self.layout.poolings:
            files[OFFSETS] = encode({"offsets": self.layout.offsets}, {"store": self.store_id})
        annotations = {"labels": None, "metadata": None}
        if content.labels is not None:
            annotations["labels"], files_labels = encode_labels(*label_set(content.labels, n), self.store_id)
            files[annotations["labels"]] = files_labels
        if content.metadata is not None:
            annotations["metadata"], files_metadata = encode_metadata(check_metadata(content.metadata, n))
            files[annotations["metadata"]] = files_metadata
        return files, annotations

    def _write_side_files(self, content: StoreContent) -> None:
        """Write the side files (again: a staged copy is never trusted) and record the annotations; shards
        of one extraction must agree on them, and merging takes what the shards recorded."""
        self._files, annotations = self._side_files(content)
        path = self.staging / ANNOTATIONS
        recorded = json.loads(path.read_bytes()) if path.is_file() else None
        if self._sharded and recorded is not None and recorded != annotations:
            raise ValueError(
                f"This shard was given other labels or metadata than another shard of {self.root}: give "
                f"every shard the same, or delete {self.staging} to start over."
            )
        if self.shard is None and recorded is not None:  # merging: the shards' sets, checked by their names
            annotations = recorded
            for relative in filter(None, annotations.values()):
                data = (self.staging / relative).read_bytes()
                if hashlib.sha256(data).hexdigest()[:32] != Path(relative).stem:
                    raise ValueError(f"{self.staging / relative} is damaged; rerun one shard to rewrite it.")
                self._files[relative] = data
        for relative, data in self._files.items():
            atomic_write(self.staging, relative, data)
        atomic_write(self.staging, ANNOTATIONS, json.dumps(annotations).encode())
        self.annotations = annotations

    def _claim_shard(self) -> None:
        i, n = self.shard
        self._active = FileLock(self.staging / f".active-{i}-of-{n}.lock", is_singleton=True)
        try:
            self._active.acquire(timeout=0)
        except Timeout:
            self._active = None
            raise ValueError(f"Shard {i}/{n} of {self.root} is being extracted by another process.") from None

    def _others_active(self) -> bool:
        if not self.staging.is_dir() or self.staging.is_symlink():
            return False
        for name in os.listdir(self.staging):
            if _ACTIVE.fullmatch(name):
                probe = FileLock(self.staging / name)
                try:
                    probe.acquire(timeout=0)
                except Timeout:
                    return True
                probe.release()
        return False

    # -- progress ---------------------------------------------------------------------------------------
    def _read_claims(self) -> dict[int, set[str]]:
        claims: dict[int, set[str]] = {}
        for name in os.listdir(self.staging):
            if not _LOG.fullmatch(name):
                continue
            fd = open_nofollow(self.staging / name)
            with os.fdopen(fd, "rb") as handle:
                lines = handle.read().splitlines()
            for line in lines:
                try:
                    entry = json.loads(line)
                    k, digest = entry["batch"], entry["sha256"]
                except (ValueError, TypeError, KeyError):
                    continue  # a torn last line, or damage: that batch is simply recomputed
                if type(k) is int and 0 <= k < len(self.layout.batches) and isinstance(digest, str):
                    claims.setdefault(k, set()).add(digest)
        return claims

    def _digest(self, k: int, arrays: Mapping[str, np.ndarray] | None) -> str:
        """SHA-256 of batch ``k``'s rows: given (``arrays``), or read back from the staged shards."""
        digest = hashlib.sha256()
        row_bytes = self.layout.hidden_size * self.layout.dtype.itemsize
        for relative in sorted(self.layout.keys):
            if arrays is not None:
                digest.update(_as_bytes(arrays[relative]))
                continue
            fd, start = self._fds[relative], len(self._shard_header(self.layout.keys[relative][1]))
            for _, row, count in _runs(self.layout.dest(k, self.layout.keys[relative][1])):
                data = os.pread(fd, count * row_bytes, start + row * row_bytes)
                if len(data) != count * row_bytes:
                    return ""
                digest.update(data)
        return digest.hexdigest()

    def _verify(self, k: int) -> bool:
        if k not in self._verified and self._claims.get(k) and self._digest(k, None) in self._claims[k]:
            self._verified.add(k)
        return k in self._verified

    def write(self, k: int, arrays: Mapping[tuple[LayerName, str], np.ndarray]) -> None:
        """Write batch ``k``: ``{(layer, pooling): (rows, D) array}`` in the batch's prompt order (for
        ``"all"``, the prompts' real tokens concatenated), in the storage dtype."""
        if self.shard is None or k % self.shard[1] != self.shard[0]:
            raise ValueError(f"batch {k} does not belong to shard {self.shard} of this writer.")
        checked = self.layout.check(k, arrays)
        row_bytes = self.layout.hidden_size * self.layout.dtype.itemsize
        for relative, array in checked.items():
            fd, start = self._fds[relative], len(self._shard_header(self.layout.keys[relative][1]))
            data = _as_bytes(array)
            for source, row, count in _runs(self.layout.dest(k, self.layout.keys[relative][1])):
                _pwrite_all(fd, data[source * row_bytes : (source + count) * row_bytes], start + row * row_bytes)
        line = json.dumps({"batch": int(k), "sha256": self._digest(k, checked)}) + "\n"
        i, n = self.shard
        fd = open_nofollow(self.staging / f"progress-{i}-of-{n}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        self._verified.add(k)
        if k in self.pending:
            self.pending.remove(k)

    def missing(self) -> list[int]:
        """Batches of the whole store (every shard) not on disk yet, or whose rows fail their checksum."""
        self._claims = self._read_claims()
        return [k for k in range(len(self.layout.batches)) if not self._verify(k)]

    # -- finishing --------------------------------------------------------------------------------------
    def finish(self, *, verify: bool = True) -> ActivationStore | None:
        """Publish the store once every batch is on disk: fsync, hash each file, write the manifest
        into the staging directory, rename it to ``root`` (replacing what was there). Returns the store,
        or None when batches of other shards are still missing (their writers, or :func:`merge`, will
        publish it). Hold :func:`store_lock` of ``root``."""
        _require_lock(self.root)
        if not self.staging.is_dir():  # another shard of this extraction published it meanwhile
            self._close()
            store = finished_store(self.root, verify=verify)
            if store is None or store.manifest["store_id"] != self.store_id:
                raise ValueError(f"The extraction staged for {self.root} was replaced by another one.")
            return store
        missing = self.missing()
        if missing:
            own = [k for k in missing if self.shard is not None and k % self.shard[1] == self.shard[0]]
            if own:
                raise RuntimeError(f"batches {own} of this writer's shard were never written.")
            self._close()
            return None
        for fd in self._fds.values():
            os.fsync(fd)
        self._close()
        for relative, data in self._files.items():
            atomic_write(self.staging, relative, data)  # exactly what this writer was given
        files = sorted(set(self.layout.keys) | set(self._files))
        table = {}
        for relative in files:
            path = confined(self.staging, relative)
            table[relative] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        manifest = {**self.manifest, "files": table, **self.annotations}
        atomic_write(self.staging, MANIFEST, _manifest_bytes(manifest))
        for name in os.listdir(self.staging):
            if name in (PLAN, ANNOTATIONS) or _LOG.fullmatch(name) or _ACTIVE.fullmatch(name):
                (self.staging / name).unlink()
        _publish(self.staging, self.root)
        store = ActivationStore(self.root, verify=verify)
        store._checked.update(table)  # hashed a moment ago, from these very bytes
        return store

    def _close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._active is not None:
            self._active.release()
            self._active = None

    def __del__(self) -> None:
        if getattr(self, "_fds", None):
            self._close()

    @classmethod
    def resume(cls, root: str | os.PathLike) -> StoreWriter:
        """The writer of the staged store of ``root`` (computing no batches): :func:`merge` uses it."""
        root = store_root(root)
        staging = staging_path(root)
        try:
            plan = json.loads((staging / PLAN).read_bytes())
            prompts = json.loads((staging / PROMPTS).read_bytes())
            manifest = plan["manifest"]
            batches, counts = plan["batches"], plan["token_counts"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"{root} has no staged extraction to merge (no usable {staging.name}/).") from None
        if not isinstance(prompts, list) or [prompt_hash(str(p)) for p in prompts] != manifest.get("prompt_hashes"):
            raise ValueError(f"{staging / PROMPTS} is damaged (its prompts do not match the plan); rerun one shard.")
        content = StoreContent(manifest, batches, counts, prompts)
        return cls(root, content, resume_key=plan.get("resume_key"), shard=None, replace=True)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def check_shard(shard: Any) -> tuple[int, int] | None:
    """``(i, n)`` with ``0 <= i < n``, or None; ValueError otherwise."""
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in shard)
        if isinstance(shard, str) or any(isinstance(v, bool) for v in shard) or not 0 <= i < n:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, e.g. (0, 4); got {shard!r}.") from None
    return i, n


def merge(root: str | os.PathLike, *, verify: bool = True) -> ActivationStore:
    """Publish the store that sharded writers staged at ``root`` once every batch is on disk (checked
    against its checksum), or return the store if it is published already. ValueError naming the missing
    batches otherwise. Needs no model and no torch."""
    root = store_root(root)
    with store_lock(root):
        store = finished_store(root, verify=verify)
        if store is not None:
            return store
        writer = StoreWriter.resume(root)
        missing = writer.missing()
        if missing:
            writer._close()
            raise ValueError(
                f"{len(missing)} of {len(writer.layout.batches)} batches of {root} are not on disk yet "
                f"(batches {missing[:10]}{' ...' if len(missing) > 10 else ''}; with shard=(i, n), batch k "
                "belongs to shard k % n): run or rerun those shards, then merge again."
            )
        return writer.finish(verify=verify)


def attach_files(
    store: ActivationStore,
    files: Mapping[str, bytes],
    fields: Mapping[str, Any] | None = None,
    *,
    unlist: Callable[[str], bool] | None = None,
) -> ActivationStore:
    """Add ``files`` (relative path -> bytes) to the finished store ``store`` and set manifest ``fields``,
    under its lock: each file is written atomically, then the manifest that lists them replaces the old
    one, so a crash leaves the store as it was. ``unlist(relative)`` drops older entries from the
    manifest (their files stay for stores already open). Safetensors files must carry the store's id
    (``encode(arrays, {"store": store.manifest["store_id"]})``). Returns the store opened again.

    ValueError when the store on disk is no longer the one ``store`` was opened from."""
    if store.path is None:
        raise ValueError("attach_files writes to a store on disk; this one is in memory.")
    with store_lock(store.path):
        manifest = read_manifest(store.path)
        if manifest["store_id"] != store.manifest["store_id"]:
            raise ValueError(f"The store at {store.path} was replaced since it was opened; open it again.")
        table = {k: v for k, v in manifest["files"].items() if unlist is None or not unlist(k) or k in files}
        for relative, data in files.items():
            atomic_write(store.path, relative, data)  # same name, same bytes: harmless to a reader of it
            table[relative] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {**manifest, **(fields or {}), "files": table}
        atomic_write(store.path, MANIFEST, _manifest_bytes(manifest))
        return ActivationStore(store.path, verify=store.verify)


def attach(
    root: str | os.PathLike, *, labels: Any = None, metadata: Sequence | None = None, verify: bool = True
) -> ActivationStore:
    """Attach a label set and/or metadata to the finished store at ``root`` and make them its current
    ones; returns the store opened with them. Earlier sets stay (content-addressed), so stores opened
    before keep theirs. Takes :func:`store_lock` of ``root``."""
    root = store_root(root)
    with store_lock(root):
        store = ActivationStore(root, verify=verify)
        files, fields = {}, {}
        if labels is not None:
            relative, files_labels = encode_labels(*label_set(labels, store.n_prompts), store.manifest["store_id"])
            files[relative], fields["labels"] = files_labels, relative
        if metadata is not None:
            relative, files_metadata = encode_metadata(check_metadata(metadata, store.n_prompts))
            files[relative], fields["metadata"] = files_metadata, relative
        return attach_files(store, files, fields) if files else store


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


class MemoryWriter:
    """:class:`StoreWriter`'s in-memory counterpart: the same content (no root, shard or resume), the same
    ``pending`` / ``write`` / ``finish``. Each array is allocated at its final shape and filled in place:
    memory is the store once plus one batch."""

    def __init__(self, content: StoreContent):
        manifest, _, _, prompts, labels, metadata = content
        self.layout = _Layout(manifest, content.batches, content.token_counts)
        n = self.layout.n_prompts
        self.manifest = {**manifest, "n_tokens": self.layout.n_tokens, "labels": None, "metadata": None}
        self.arrays: dict[str, Any] = {
            relative: np.empty((self.layout.rows(p), self.layout.hidden_size), self.layout.dtype)
            for relative, (_, p) in self.layout.keys.items()
        }
        self.arrays[PROMPTS] = list(prompts)
        if "all" in self.layout.poolings:
            self.arrays[OFFSETS] = self.layout.offsets
        if labels is not None:
            self.arrays["labels"], self.manifest["label_names"] = label_set(labels, n)
            self.manifest["labels"] = "labels"
        if metadata is not None:
            self.arrays["metadata"], self.manifest["metadata"] = check_metadata(metadata, n), "metadata"
        self.pending = list(range(len(self.layout.batches)))

    def write(self, k: int, arrays: Mapping[tuple[LayerName, str], np.ndarray]) -> None:
        for relative, array in self.layout.check(k, arrays).items():
            self.arrays[relative][self.layout.dest(k, self.layout.keys[relative][1])] = array
        if k in self.pending:
            self.pending.remove(k)

    def finish(self) -> ActivationStore:
        if self.pending:
            raise RuntimeError(f"batches {self.pending} were never written.")
        return ActivationStore.from_arrays({**self.manifest, "files": sorted(self.arrays)}, self.arrays)
