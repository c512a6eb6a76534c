"""The 32-layer accelerator sweep split over every visible device (jax.sharding.Mesh), and streamed from host.

Workload (defaults, as gpu_sweep.py): 32 layers x 6144 rows x 4096 features float32 (3.2 GB), drawn on
the device by synthetic.make_layers_on_device; binary logistic, C=1, tol 1e-7.

  one device   fit_logistic(X) with X on the first device: every layer at once (the accelerator default).
  mesh         fit_logistic(X_mesh, mesh=mesh): X split over a ("layers",) mesh of every visible device; each
               device solves its layers (shard_map); on one device, the same solve through the mesh path.
  streamed     fit_logistic(X_host, mesh=..., memory_budget=...): X as host numpy, read in chunks of
               --chunk layers (per device) and placed on the mesh chunk by chunk: the out-of-core path.

For each: first call (trace + compile + run), warm median of --repeats, and the device's peak memory
after it (memory_stats()["peak_bytes_in_use"], cumulative over the process: each row's peak includes the
earlier rows'). Sanity checks (printed, and the exit status is 1 if one fails): every layer converged, and
the mesh and streamed coefficients equal the one-device ones to 1e-4 relative (layers solved in other
groups take other lock-step preconditioner decisions, within the solver's tol).

Not yet run on a GPU. Expected wall time on one H200: 1-3 minutes, most of it compiling three programs (on
the H100 the process's first solver compile took 25-91 s, later ones 2.5-4.6 s: RESULTS.md). On a CPU,
--host-devices 4 simulates four devices (XLA_FLAGS), and toy sizes run in under a minute.

Usage: python benchmarks/gpu_scale.py [--layers 32 --train 6144 --features 4096] [--repeats 2] [--chunk 4]
       [--host-devices 4]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--layers", type=int, default=32)
parser.add_argument("--train", type=int, default=6144)
parser.add_argument("--features", type=int, default=4096)
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--chunk", type=int, default=4, help="layers per device per streamed chunk")
parser.add_argument("--host-devices", type=int, default=None, help="CPU only: simulate this many devices")
args = parser.parse_args()
if args.host_devices:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.host_devices}"

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, os.path.dirname(__file__))
from synthetic import make_layers_on_device

import lmprobe_jax.functional as F


def peak_bytes() -> float:
    """The largest peak of device memory in use over this process's devices (NaN where not reported)."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    return max((p for p in peaks if p is not None), default=float("nan"))


def run(fn, repeats: int):
    """(result, first-call seconds, warm median seconds)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        warm.append(time.perf_counter() - t0)
    return out, first, float(np.median(warm))


def rel_gap(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main() -> int:
    started = time.perf_counter()
    devices = jax.devices()
    L, N, D = args.layers, args.train, args.features
    print(f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"{L} layers x {N} x {D} float32 ({L * N * D * 4 / 1e9:.1f} GB)", flush=True)
    X, y = jax.block_until_ready(make_layers_on_device(L, N, D))
    y = np.asarray(y)
    mesh = F.layer_mesh()
    rows, checks = [], []

    one, first, warm = run(functools.partial(F.fit_logistic, X, y), args.repeats)
    rows.append(("one device, in memory", first, warm, peak_bytes(), ""))
    checks.append(("one device: every layer converged", bool(np.all(one.converged))))

    X_mesh = jax.device_put(X, NamedSharding(mesh, PartitionSpec("layers")))
    del X
    sharded, first, warm = run(functools.partial(F.fit_logistic, X_mesh, y, mesh=mesh), args.repeats)
    gap = rel_gap(sharded.coef, one.coef)
    rows.append((f"mesh over {len(devices)} device(s)", first, warm, peak_bytes(), f"coef gap {gap:.1e}"))
    checks.append(("mesh: converged, coef within 1e-4 of one device", bool(np.all(sharded.converged)) and gap <= 1e-4))

    X_host = np.asarray(X_mesh)
    del X_mesh
    per_chunk = args.chunk * len(devices)
    budget = F._budget.chunk_bytes(per_chunk, N, D, extra_copies=F.fit_logistic.streamed_copies,
                                   workspace=F._streaming.default_workspace(N, D))  # chunks of per_chunk layers
    streamed, first, warm = run(lambda: F.fit_logistic(X_host, y, mesh=mesh, memory_budget=budget), args.repeats)
    gap = rel_gap(streamed.coef, one.coef)
    rows.append((f"streamed from host, {per_chunk} layers a chunk", first, warm, peak_bytes(), f"coef gap {gap:.1e}"))
    checks.append(("streamed: converged, coef within 1e-4 of one device",
                   bool(np.all(streamed.converged)) and gap <= 1e-4))

    print("\n| workload | first call | warm (median) | device peak | note |\n|---|---|---|---|---|")
    for name, first, warm, peak, note in rows:
        print(f"| {name} | {first:.2f} s | {warm:.2f} s | {peak / 1e9:.2f} GB | {note} |")
    print()
    for name, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
