"""Out-of-core fits on a store larger than the machine's memory: peak RSS and time against in-memory fits.

Workloads, on a store written by synthetic_store.py (e.g. 32 layers x 80000 x 4096 float16, 21 GB):
  subset   fit_logistic (C=1) on --subset layers held in memory as float16 (what store.stack gives), the
           in-memory call, against the same layers streamed from the store within the budget; peak RSS
           growth of each; coefficient gap between them.
  cvfit    cross_validate_logistic (--folds folds over the --C grid, + refit) on the first --cv-layers of
           those layers, in memory against streamed; gaps of the fold accuracies and the refit's coefficients.
  full     fit_logistic (C=1) on every layer of the store, streamed within --budget: time, peak RSS.
  cv       sweep_activations (5-fold CV at C=1 + refit, standardised layers) on --cv-layers layers, in
           memory (float16 stack) and streamed from the store.

The budget of a streamed call is --budget, or with --chunk-layers K the plan of that solver for K layers a
chunk (``F._budget.chunk_bytes``), so the store is read one (or K) layers at a time however small it is.
In-memory and streamed calls alternate within each of --rounds rounds (the first contender alternates
too); with --cold each call is timed twice, first after ``jax.clear_caches()`` (compile included; the
persistent compilation cache is off for the whole run, so nothing comes from disk), then warm.

Peak RSS is the kernel's high-water mark (VmHWM, file-backed pages included), reset before each run
(/proc/self/clear_refs); "growth" is that peak minus the RSS just before the run. --pin puts the whole
process on one core (both contenders alike; the streamed fit's reader thread then shares the core).

Usage: python benchmarks/out_of_core.py STORE [--budget 3GB | --chunk-layers 1] [--subset 2] [--rounds 2]
       [--only subset cvfit full cv] [--C 0.1 1 10] [--folds 5] [--cold] [--cv-layers 2] [--full-layers K]
       [--pin] [--record]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time

if "--pin" in sys.argv:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
if "--cold" in sys.argv:
    os.environ["LMPROBE_JAX_COMPILATION_CACHE"] = "0"  # a cold call compiles; nothing is loaded from disk

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
    """``(result, seconds, peak RSS bytes, peak growth bytes, CPU seconds)`` of ``fn()`` (blocks on its
    result). CPU seconds are the process's, all threads: on a shared machine, what the call cost whatever
    share of the core it got."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the high-water mark restarts from the current RSS
    before = proc_status_bytes("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = proc_status_bytes("VmHWM")
    return out, seconds, peak, peak - before, cpu


def contest(calls: dict, rounds: int, cold: bool) -> dict:
    """``{(name, "cold" | "warm"): [measured runs]}`` of each call, alternating which goes first by round;
    a cold run follows ``jax.clear_caches()``, its warm run follows it."""
    runs = {}
    for r in range(rounds):
        for name in list(calls)[:: 1 if r % 2 == 0 else -1]:
            if cold:
                jax.clear_caches()
                runs.setdefault((name, "cold"), []).append(measured(calls[name]))
            runs.setdefault((name, "warm"), []).append(measured(calls[name]))
    if not cold:  # without a compile before it, the first run is not warm
        for name in calls:
            runs[(name, "warm")] = runs[(name, "warm")][1:] or runs[(name, "warm")]
    return runs


def median_seconds(runs: list, cpu: bool = False) -> float:
    return float(np.median([r[4 if cpu else 1] for r in runs]))


def gap(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def rows_of(name: str, runs: list, note: str = "") -> str:
    seconds = [r[1] for r in runs]
    peak = max(r[2] for r in runs)
    grown = max(r[3] for r in runs)
    return (f"| {name} | {np.median(seconds):.1f} s ({', '.join(f'{s:.1f}' for s in seconds)}) | "
            f"{median_seconds(runs, cpu=True):.1f} s | {peak / GB:.2f} GB | {grown / GB:.2f} GB | {note} |")


def contest_rows(what: str, runs: dict, agreement: str) -> list[str]:
    """Table rows of a two-contender :func:`contest` (``"in memory"``, ``"streamed"``), each phase."""
    rows = []
    for phase in ("cold", "warm"):
        if ("streamed", phase) not in runs:
            continue
        wall, cpu = (median_seconds(runs[("streamed", phase)], c) / median_seconds(runs[("in memory", phase)], c)
                     for c in (False, True))
        rows.append(rows_of(f"{what}, in memory, {phase}", runs[("in memory", phase)], "float16 array"))
        rows.append(rows_of(f"{what}, streamed from the store, {phase}", runs[("streamed", phase)],
                            f"**{wall:.2f}x** the in-memory time (CPU time {cpu:.2f}x); {agreement}"))
    return rows


def streamed_budget(solver, n_rows: int, n_features: int, layers: int | None, budget: str):
    """``budget``, or with ``layers`` the plan of ``solver`` for that many layers a chunk."""
    if layers is None:
        return budget
    padded = solver is F.fit_logistic and F._logistic.same_settings_padded(n_rows, n_features)
    return F._budget.chunk_bytes(layers, n_rows, n_features, extra_copies=solver.streamed_copies,
                                 workspace=F._streaming.default_workspace(n_rows, n_features), padded_reads=padded) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("--budget", default="3GB")
    parser.add_argument("--chunk-layers", type=int, default=None, help="budget: the plan for K layers a chunk")
    parser.add_argument("--subset", type=int, default=2)
    parser.add_argument("--cv-layers", type=int, default=2)
    parser.add_argument("--C", type=float, nargs="*", default=[0.1, 1.0, 10.0], help="cvfit's grid")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--full-layers", type=int, default=None, help="stream only the first K layers in 'full'")
    parser.add_argument("--only", nargs="*", default=["subset", "cvfit", "full", "cv"])
    parser.add_argument("--cold", action="store_true", help="also time each call after jax.clear_caches()")
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    store = ActivationStore(args.store)
    y = store.labels
    L, N, D = len(store.layers), store.n_prompts, store.hidden_size
    size = sum(f["bytes"] for f in store.manifest["files"].values())
    print(f"{store!r}: {size / GB:.1f} GB on disk; budget {args.budget}; chunk layers {args.chunk_layers}; "
          f"cores {sorted(os.sched_getaffinity(0))}; load {os.getloadavg()}", flush=True)
    table = ["| workload | wall time (median; runs) | CPU time (median) | peak RSS | peak growth | note |",
             "|---|---|---|---|---|---|"]
    layers = list(range(max(0, L // 2 - args.subset // 2), max(0, L // 2 - args.subset // 2) + args.subset))

    if "subset" in args.only or "cvfit" in args.only:
        held = store.stack(layers)  # float16 in memory, as a user holds it
    for solver, name, kwargs, k in [(F.fit_logistic, "subset", {}, args.subset),
                                    (F.cross_validate_logistic, "cvfit", {"C": args.C, "folds": args.folds},
                                     min(args.cv_layers, args.subset))]:
        if name not in args.only:
            continue
        budget = streamed_budget(solver, N, D, args.chunk_layers, args.budget)
        plan = F._budget.memory_budget(budget)
        part = F.layer_source(store, layers=layers[:k])
        runs = contest({"in memory": functools.partial(solver, held[:k], y, memory_budget="1TB", **kwargs),
                        "streamed": functools.partial(solver, part, y, memory_budget=budget, **kwargs)},
                       args.rounds, args.cold)
        mem, streamed = runs[("in memory", "warm")][-1][0], runs[("streamed", "warm")][-1][0]
        if name == "subset":
            what = f"fit_logistic C=1, {k} layers ({held[:k].nbytes / GB:.2f} GB f16)"
            agreement = f"coef gap {gap(streamed.coef, mem.coef):.1e}; Newton steps {np.asarray(streamed.n_iter).tolist()}"
        else:
            what = (f"cross_validate_logistic {args.folds}-fold, C={args.C}, + refit, {k} layers "
                    f"({held[:k].nbytes / GB:.2f} GB f16)")
            accuracy = float(np.max(np.abs(np.asarray(streamed.accuracy) - np.asarray(mem.accuracy))))
            agreement = (f"fold accuracy gap {accuracy:.1e}; refit coef gap {gap(streamed.fit.coef, mem.fit.coef):.1e}; "
                         f"best C equal: {bool(np.all(streamed.best_value == mem.best_value))}")
        rows = [f"| (budget of the streamed call: {F._budget.format_bytes(plan)}) | | | | | |",
                *contest_rows(what, runs, agreement)]
        table.extend(rows)
        print("\n".join(rows), flush=True)
    if "subset" in args.only or "cvfit" in args.only:
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
        runs = contest({"in memory": lambda: sweep_activations(
                            held, y, classifier="logistic_regression", folds=5, layers=layers, memory_budget="1TB"),
                        "streamed": lambda: sweep_activations(
                            store, classifier="logistic_regression", folds=5, layers=layers, memory_budget=args.budget)},
                       args.rounds, args.cold)
        accuracy = float(np.max(np.abs(runs[("streamed", "warm")][-1][0].accuracy
                                       - runs[("in memory", "warm")][-1][0].accuracy)))
        rows = contest_rows(f"sweep (5-fold CV, C=1, + refit), {args.cv_layers} layers", runs,
                            f"fold accuracy gap {accuracy:.1e}")
        table.extend(rows)
        print("\n".join(rows), flush=True)

    text = "\n".join(table)
    print(text)
    if args.record:
        machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   f"({'pinned to one' if args.pin else 'unpinned'}), load {os.getloadavg()[0]:.1f}; "
                   f"store {L} x {N} x {D} float16, budget {args.budget}, chunk layers {args.chunk_layers}")
        record("out-of-core fits (benchmarks/out_of_core.py)", machine, text)


if __name__ == "__main__":
    main()
