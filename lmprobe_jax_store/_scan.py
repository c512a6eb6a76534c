"""The on-disk format of a sample scan (:class:`lmprobe_jax.SampleScan`): numpy, JSON and safetensors only.

A scan directory holds::

    metadata.json          format, model, shapes, signals, creation date, library version
    samples.json           the corpus prompts and their labels
    samples.safetensors    token_ids (n_tokens,) int64 and offsets (n_samples + 1,) int64: sample i owns
                           tokens offsets[i]:offsets[i + 1]
    basis.safetensors      per signal s: "s.components" (L, D, k), "s.mean" (L, D),
                           "s.explained_variance" (L, k), float32
    projections.npy        (S, L, n_tokens, k) float32, every token's coordinates, signals in metadata
                           order; memory-mapped on read, so (sample, layer, signal) is one slice

A scan is written into ``.<dir>.partial`` beside it, under the inter-process lock ``.<dir>.lock``, and
renamed into place whole: a directory that reads as a scan is complete, and two processes writing one
scan take turns.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from filelock import FileLock
from safetensors.numpy import load_file, save_file

from ._paths import sibling
from ._version import library_version
from ._writer import store_root

SCAN_FORMAT = "lmprobe-jax-scan"
SCAN_VERSION = 1
_FILES = ("metadata.json", "samples.json", "samples.safetensors", "basis.safetensors", "projections.npy")


class ScanBasis(NamedTuple):
    """One signal's per-layer PCA: ``components`` (L, D, k), ``mean`` (L, D), ``explained_variance`` (L, k)."""

    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray


class ScanFiles(NamedTuple):
    """What a scan directory holds (see module doc); ``projections`` is a read-only memory map."""

    metadata: dict[str, Any]
    prompts: list[str]
    labels: list[Any]
    token_ids: np.ndarray
    offsets: np.ndarray
    bases: dict[str, ScanBasis]
    projections: np.ndarray


@contextmanager
def writing_scan(scan_dir: str | Path) -> Iterator[Path]:
    """Hold ``scan_dir``'s inter-process lock and give a fresh, empty partial directory to write the scan
    into (a dead writer's leftover removed); the partial directory is removed if the block raises.
    FileExistsError, before anything is created, for a non-empty directory that is not a scan."""
    root = store_root(scan_dir)
    if root.exists() and not (root / "metadata.json").exists() and any(root.iterdir()):
        raise FileExistsError(f"{scan_dir} exists and is not a scan: choose an empty or new directory for scan_dir.")
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(sibling(root, "lock")):
        partial = sibling(root, "partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            yield partial
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise


def open_projections(partial: Path, shape: tuple[int, int, int, int]) -> np.ndarray:
    """A writable ``(S, L, n_tokens, k)`` float32 memory map for a scan's projections."""
    return np.lib.format.open_memmap(partial / "projections.npy", mode="w+", dtype=np.float32, shape=shape)


def finish_scan(
    partial: Path,
    scan_dir: str | Path,
    *,
    model_id: str,
    hidden_dim: int,
    n_components: int,
    signals: list[str],
    prompts: list[str],
    labels: list[Any],
    token_ids: list[list[int]],
    bases: dict[str, ScanBasis],
) -> None:
    """Write the small files next to ``partial``'s projections and rename ``partial`` to ``scan_dir``
    (replacing a previous scan there); inside :func:`writing_scan`."""
    n_layers = int(next(iter(bases.values())).components.shape[0])
    metadata = {
        "format": SCAN_FORMAT,
        "format_version": SCAN_VERSION,
        "model_id": model_id,
        "hidden_dim": int(hidden_dim),
        "n_layers": n_layers,
        "n_components": int(n_components),
        "n_samples": len(prompts),
        "creation_date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "signals": list(signals),
        "library_version": library_version(),
    }
    (partial / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (partial / "samples.json").write_text(json.dumps({"prompts": list(prompts), "labels": list(labels)}))
    lengths = [len(ids) for ids in token_ids]
    save_file(
        {
            "token_ids": np.asarray([t for ids in token_ids for t in ids], np.int64),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        },
        str(partial / "samples.safetensors"),
    )
    tensors = {}
    for name, basis in bases.items():
        for field, value in basis._asdict().items():
            tensors[f"{name}.{field}"] = np.ascontiguousarray(value, np.float32)
    save_file(tensors, str(partial / "basis.safetensors"))
    scan_dir = store_root(scan_dir)
    if scan_dir.exists():
        shutil.rmtree(scan_dir)
    os.replace(partial, scan_dir)


def read_scan(scan_dir: str | Path) -> ScanFiles:
    """The scan in ``scan_dir``, its files checked against each other; ValueError / FileNotFoundError say
    what is wrong."""
    scan_dir = Path(scan_dir)
    missing = [name for name in _FILES if not (scan_dir / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{scan_dir} is not a complete scan (missing {missing}): create one with SampleScan.run(...)."
        )
    metadata = json.loads((scan_dir / "metadata.json").read_text())
    if metadata.get("format") != SCAN_FORMAT or metadata.get("format_version") != SCAN_VERSION:
        raise ValueError(
            f"{scan_dir} holds format {metadata.get('format')!r} version {metadata.get('format_version')!r}; "
            f"this library reads {SCAN_FORMAT!r} version {SCAN_VERSION}. Re-run SampleScan.run to rebuild it."
        )
    samples = json.loads((scan_dir / "samples.json").read_text())
    ids = load_file(str(scan_dir / "samples.safetensors"))
    tensors = load_file(str(scan_dir / "basis.safetensors"))
    signals = metadata["signals"]
    bases = {s: ScanBasis(*(tensors[f"{s}.{f}"] for f in ScanBasis._fields)) for s in signals}
    projections = np.load(scan_dir / "projections.npy", mmap_mode="r")
    offsets = ids["offsets"]
    n_layers, n_samples = metadata["n_layers"], metadata["n_samples"]
    k = next(iter(bases.values())).components.shape[-1]
    expected = (len(signals), n_layers, int(offsets[-1]), k)
    if projections.shape != expected or len(offsets) != n_samples + 1 or len(samples["prompts"]) != n_samples:
        raise ValueError(
            f"{scan_dir}'s files disagree (projections {projections.shape}, expected {expected}; "
            f"{len(offsets) - 1} token ranges and {len(samples['prompts'])} prompts for {n_samples} samples): "
            "the scan is damaged; re-run SampleScan.run."
        )
    return ScanFiles(metadata, samples["prompts"], samples["labels"], ids["token_ids"], offsets, bases, projections)
