"""Out-of-core fits on a store larger than the machine's memory: peak RSS and time against in-memory fits.

Workloads, on a store written by synthetic_store.py (e.g. 32 layers x 80000 x 4096 float16, 21 GB):
  subset   fit_logistic (C=1) on --subset layers held in memory as float16 (what store.stack gives), the
           in-memory call, against the same layers streamed from the store within --budget; interleaved
           rounds, medians; peak RSS growth of each; coefficient gap between them.
  full     fit_logistic (C=1) on every layer of the store, streamed within --budget: time, peak RSS.
  cv       sweep_activations (5-fold CV at C=1 + refit, standardised layers) on --cv-layers layers, in
           memory (float16 stack) and streamed from the store.

Peak RSS is the kernel's high-water mark (VmHWM, file-backed pages included), reset before each run
(/proc/self/clear_refs); "growth" is that peak minus the RSS just before the run. --pin puts the whole
process on one core (both contenders alike; the streamed fit's reader thread then shares the core).

Usage: python benchmarks/out_of_core.py STORE [--budget 3GB] [--subset 2] [--rounds 2] [--only subset full cv]
       [--cv-layers 2] [--full-layers K] [--pin] [--record]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

if "--pin" in sys.argv:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from measure import proc_status_bytes
from recording import record

import lmprobe_jax.functional as F
from lmprobe_jax import sweep_activations
from lmprobe_jax_store import ActivationStore

GB = 1e9


def measured(fn):
    """``(result, seconds, peak RSS bytes, peak growth bytes)`` of ``fn()`` (blocks on its result)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the high-water mark restarts from the current RSS
    before = proc_status_bytes("VmRSS")
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    seconds = time.perf_counter() - t0
    peak = proc_status_bytes("VmHWM")
    return out, seconds, peak, peak - before


def gap(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def rows_of(name: str, runs: dict, note: str = "") -> str:
    seconds = [r[1] for r in runs]
    peak = max(r[2] for r in runs)
    grown = max(r[3] for r in runs)
    return (f"| {name} | {np.median(seconds):.1f} s ({', '.join(f'{s:.1f}' for s in seconds)}) | {peak / GB:.2f} GB | "
            f"{grown / GB:.2f} GB | {note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("--budget", default="3GB")
    parser.add_argument("--subset", type=int, default=2)
    parser.add_argument("--cv-layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--full-layers", type=int, default=None, help="stream only the first K layers in 'full'")
    parser.add_argument("--only", nargs="*", default=["subset", "full", "cv"])
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    store = ActivationStore(args.store)
    y = store.labels
    L, N, D = len(store.layers), store.n_prompts, store.hidden_size
    size = sum(f["bytes"] for f in store.manifest["files"].values())
    print(f"{store!r}: {size / GB:.1f} GB on disk; budget {args.budget}; cores {sorted(os.sched_getaffinity(0))}; "
          f"load {os.getloadavg()}", flush=True)
    table = ["| workload | time (median; runs) | peak RSS | peak growth | note |", "|---|---|---|---|---|"]

    if "subset" in args.only:
        layers = list(range(L // 2, L // 2 + args.subset))
        held = store.stack(layers)  # float16 in memory, as a user holds it
        source = F.layer_source(store, layers=layers)
        # Warm both programs (the same per-layer solve) on the first layer, so rounds time warm calls.
        F.fit_logistic(held[:1], y, memory_budget="1TB").coef.block_until_ready()
        runs = {"in memory": [], "streamed": []}
        for _ in range(args.rounds):
            runs["in memory"].append(measured(lambda: F.fit_logistic(held, y, memory_budget="1TB")))
            runs["streamed"].append(measured(lambda: F.fit_logistic(source, y, memory_budget=args.budget)))
        diff = gap(runs["streamed"][-1][0].coef, runs["in memory"][-1][0].coef)
        ratio = np.median([r[1] for r in runs["streamed"]]) / np.median([r[1] for r in runs["in memory"]])
        iters = np.asarray(runs["streamed"][-1][0].n_iter).tolist()
        table.append(rows_of(f"logistic C=1, {args.subset} layers ({held.nbytes / GB:.1f} GB f16) in memory",
                             runs["in memory"], "fit_logistic(float16 array)"))
        table.append(rows_of(f"the same {args.subset} layers streamed from the store", runs["streamed"],
                             f"{ratio:.2f}x the in-memory time; coef gap {diff:.1e}; Newton steps {iters}"))
        print("\n".join(table[-2:]), flush=True)
        del held

    if "full" in args.only:
        k = args.full_layers or L  # fewer where the machine's load leaves no time for all (peak RSS is per chunk)
        source = F.layer_source(store, layers=list(range(k)))
        run = measured(lambda: F.fit_logistic(source, y, memory_budget=args.budget))
        fit = run[0]
        what = f"all {L} layers ({size / GB:.1f} GB f16)" if k == L else f"{k} of the {L} layers ({size * k / L / GB:.1f} GB f16)"
        table.append(rows_of(f"logistic C=1, {what} streamed, first call", [run],
                             f"{run[1] / k:.1f} s per layer; converged {int(np.sum(fit.converged))}/{k}; "
                             f"Newton steps {int(np.min(fit.n_iter))}-{int(np.max(fit.n_iter))}"))
        print(table[-1], flush=True)

    if "cv" in args.only:
        layers = list(range(L // 2, L // 2 + args.cv_layers))
        held = store.stack(layers)
        runs = {"in memory": [], "streamed": []}
        for _ in range(args.rounds):
            runs["in memory"].append(measured(lambda: sweep_activations(
                held, y, classifier="logistic_regression", folds=5, layers=layers, memory_budget="1TB")))
            runs["streamed"].append(measured(lambda: sweep_activations(
                store, classifier="logistic_regression", folds=5, layers=layers, memory_budget=args.budget)))
        ratio = np.median([r[1] for r in runs["streamed"]]) / np.median([r[1] for r in runs["in memory"]])
        diff = float(np.max(np.abs(runs["streamed"][-1][0].accuracy - runs["in memory"][-1][0].accuracy)))
        table.append(rows_of(f"sweep (5-fold CV, C=1, + refit), {args.cv_layers} layers in memory", runs["in memory"],
                             "sweep_activations(float16 array)"))
        table.append(rows_of("the same sweep streamed from the store", runs["streamed"],
                             f"{ratio:.2f}x the in-memory time; fold accuracy gap {diff:.1e}"))
        print("\n".join(table[-2:]), flush=True)

    text = "\n".join(table)
    print(text)
    if args.record:
        machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   f"({'pinned to one' if args.pin else 'unpinned'}), load {os.getloadavg()[0]:.1f}; "
                   f"store {L} x {N} x {D} float16, budget {args.budget}")
        record("out-of-core fits (benchmarks/out_of_core.py)", machine, text)


if __name__ == "__main__":
    main()
