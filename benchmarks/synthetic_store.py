"""Write a synthetic activation store in the store format, a layer at a time, for out-of-core benchmarks.

Each layer ``l`` of ``N`` prompts x ``D`` features is built the way residual streams look:

* a low-rank part ``Z_l B_l`` (rank ``rank``: a few directions carry most of the variance) whose
  factors drift slowly with depth (``Z_l`` mixes a shared ``Z`` with fresh noise);
* isotropic noise (the full-rank floor): rows of a pool of ``pool_rows`` Gaussian rows, drawn once,
  gathered in a fresh random order and with fresh random column signs for every layer (drawing
  ``N x D`` normals per layer took 60-270 s on this project's loaded 2-core machine; the gather, ~1 s);
* ``outliers`` "massive activation" features, 30-100x the typical scale (as LLMs' few huge dimensions);
* a label signal along one direction, strongest in the middle layers (as probing finds).

The store is written through the store package's writer (``lmprobe_jax_store.StoreWriter``: batches of
rows straight into preallocated shards, each batch checksummed, the finished store renamed into place
whole), so an interrupted write leaves no store. Memory: one batch of rows of every layer (about 256 MB)
plus the per-layer factors.

Usage: python benchmarks/synthetic_store.py OUT_DIR [--layers 32 --rows 80000 --features 4096 --dtype float16]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

from lmprobe_jax_store import (
    FORMAT,
    FORMAT_VERSION,
    ActivationStore,
    StoreContent,
    StoreWriter,
    library_version,
    prompt_hash,
    store_lock,
)

POOLING = "last_token"


def layer_rows(noise: np.ndarray, z: np.ndarray, basis: np.ndarray, labels: np.ndarray, direction: np.ndarray,
               strength: float, outliers: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` ``(r, D)`` with one block of rows from its noise rows ``(r, D)`` (float32 work, cast on
    assignment)."""
    block = noise
    block += z @ basis
    block += np.outer(2.0 * labels - 1.0, strength * direction).astype(np.float32)
    block[:, outliers[:, 0].astype(int)] *= outliers[:, 1]
    out[...] = block


def write_synthetic_store(path: str | Path, *, n_layers: int = 32, n_rows: int = 80_000, n_features: int = 4096,
                          dtype: str = "float16", rank: int = 64, n_outliers: int = 4, seed: int = 0,
                          block_rows: int | None = None, pool_rows: int = 16384,
                          verbose: bool = False) -> ActivationStore:
    """Write the store and return it opened. Labels (balanced 0/1) go in the store's label set."""
    root = Path(path)
    rng = np.random.default_rng(seed)
    labels = (rng.permutation(n_rows) % 2).astype(np.int64)
    shared = rng.standard_normal((n_rows, rank), dtype=np.float32)
    spectrum = (3.0 / np.sqrt(1.0 + np.arange(rank))).astype(np.float32)  # a few dominant directions
    basis = rng.standard_normal((rank, n_features), dtype=np.float32) * spectrum[:, None]
    direction = rng.standard_normal(n_features).astype(np.float32)
    direction /= np.linalg.norm(direction)
    outliers = np.stack([rng.choice(n_features, n_outliers, replace=False), rng.uniform(30, 100, n_outliers)], axis=1)
    pool = rng.standard_normal((min(pool_rows, n_rows), n_features), dtype=np.float32)
    storage = np.dtype(dtype)
    # Per layer: its factors and its generator, drawn in layer order; rows are then written batch by batch.
    layers = []
    for layer in range(n_layers):
        depth = layer / max(1, n_layers - 1)
        strength = 0.05 + 0.25 * np.exp(-((depth - 0.5) ** 2) / 0.05)  # strongest mid-depth
        basis = 0.95 * basis + 0.05 * rng.standard_normal(basis.shape, dtype=np.float32) * spectrum[:, None]
        layer_rng = np.random.default_rng([seed, layer])
        order = layer_rng.integers(0, pool.shape[0], n_rows)
        signs = layer_rng.choice(np.array([-1.0, 1.0], np.float32), n_features)
        layers.append((basis, strength, layer_rng, order, signs))
    if block_rows is None:
        block_rows = max(1, 2**28 // (n_layers * n_features * storage.itemsize))
    batches = [list(range(a, min(a + block_rows, n_rows))) for a in range(0, n_rows, block_rows)]
    prompts = [f"synthetic prompt {i}" for i in range(n_rows)]
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library_version": library_version(),
        "model": {"id": "synthetic", "kind": "synthetic", "revision": None, "fingerprint": f"synthetic-{seed}",
                  "class": "synthetic", "n_layers": n_layers},
        "tokenizer": {"name": None, "fingerprint": None, "add_special_tokens": True},
        "tokens_sha256": "0" * 64, "max_length": None, "compute_dtype": dtype, "storage_dtype": dtype,
        "layers": list(range(n_layers)), "poolings": [POOLING], "n_prompts": n_rows,
        "prompt_hashes": [prompt_hash(p) for p in prompts], "hidden_size": n_features,
    }
    manifest["prompts_sha256"] = hashlib.sha256("".join(manifest["prompt_hashes"]).encode()).hexdigest()
    content = StoreContent(manifest, batches, [1] * n_rows, prompts, labels)
    with store_lock(root):
        writer = StoreWriter(root, content)
        for k, batch in enumerate(batches):
            started = time.perf_counter()
            rows = slice(batch[0], batch[-1] + 1)
            arrays = {}
            for layer, (basis, strength, layer_rng, order, signs) in enumerate(layers):
                out = np.empty((len(batch), n_features), storage)
                z = 0.8 * shared[rows] + 0.6 * layer_rng.standard_normal(shared[rows].shape, dtype=np.float32)
                layer_rows(pool[order[rows]] * signs, z, basis, labels[rows], direction, strength, outliers, out)
                arrays[(layer, POOLING)] = out
            writer.write(k, arrays)
            if verbose:
                print(f"rows {batch[0]}-{batch[-1]}: {time.perf_counter() - started:.1f} s", flush=True)
        return writer.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rows", type=int, default=80_000)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    store = write_synthetic_store(args.out, n_layers=args.layers, n_rows=args.rows, n_features=args.features,
                                  dtype=args.dtype, seed=args.seed, verbose=True)
    size = sum(f["bytes"] for f in store.manifest["files"].values())
    print(f"wrote {store!r}: {size / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
