"""Solver policies against the default on the regime panel, interleaved in one process.

Each variant is a set of ``SolverPolicy`` fields (``'switch_progress=0.1'``, ``'quasi_newton_memory=30,
switch_window=4'``); every variant and the default fit the same data in turn, each round (a new policy is a
static argument: its own program, compiled before the first timed round), so the machine's drift hits all of
them alike. For each regime (benchmarks/regime_data.py) and workload (``c1``: C = 1; ``path``: the 8-C grid),
at the library's default ``tol``: the median CPU time of ``--rounds`` warm fits of every layer and its ratio
to the default's, the solver's passes over X per layer (which do not depend on the load) and whether every
solve converged. The softmax regimes (``softmax-10`` ...) fit ``fit_multinomial`` at C = 1 on their one layer
(their ``path`` is skipped). One pinned core, BLAS at one thread (as benchmarks/regimes.py).

Usage: python benchmarks/regime_policies.py 'switch_progress=0.1' [...] [--regimes imbalanced clear ...]
       [--workloads c1 path] [--rounds 7] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

# Every variant keeps its programs: the library's bound (8 a function) would evict and recompile them.
os.environ.setdefault("LMPROBE_JAX_MAX_PROGRAMS", "64")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax
import numpy as np
import regimes as R  # importing it pins this process to one core
from regime_data import BINARY, SOFTMAX, regime
from threadpoolctl import threadpool_limits

import lmprobe_jax.functional as F
from lmprobe_jax.functional import _aot


def variant(spec: str) -> F.SolverPolicy:
    """The default policy with the fields ``spec`` (``'name=value,...'``) set, each cast to its field's type."""
    fields = {f.name: f.type for f in dataclasses.fields(F.SolverPolicy)}
    values = {}
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"{name!r} is not a SolverPolicy field; fields: {', '.join(fields)}")
        values[name] = value.strip().lower() == "true" if fields[name] == "bool" else {"int": int}.get(
            fields[name], float)(value)
    return dataclasses.replace(F.default_policy(), **values)


def release_programs() -> None:
    """Free every compiled program: each variant keeps its own (the bound is raised above), so a panel of
    regimes would otherwise hold all of them and run out of memory maps (``vm.max_map_count``)."""
    jax.clear_caches()
    _aot._LOADED.clear()
    _aot._LOADING.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", metavar="variant")
    ap.add_argument("--regimes", nargs="*", default=list(BINARY), choices=BINARY + SOFTMAX)
    ap.add_argument("--workloads", nargs="*", default=["c1", "path"], choices=["c1", "path"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the synthetic sizes (a smoke test)")
    args = ap.parse_args()
    policies = {"default": F.default_policy(), **{spec: variant(spec) for spec in args.variants}}
    tol = {False: R.default_tol_of(F.fit_logistic), True: R.default_tol_of(F.fit_multinomial)}
    print("| regime | workload | policy | CPU ms (median) | / default | passes a layer | converged |")
    print("|---|---|---|---:|---:|---:|---|")
    with threadpool_limits(1):
        for name in args.regimes:
            X, y, _ = regime(name, args.scale)
            softmax = name in SOFTMAX
            if softmax:
                y = np.unique(y, return_inverse=True)[1]
            for workload in args.workloads:
                if softmax and workload != "c1":
                    continue
                Cs = 1.0 if workload == "c1" else R.GRID
                fit = (functools.partial(F.fit_multinomial, X[0], y, Cs) if softmax
                       else functools.partial(F.fit_logistic, X, y, Cs))
                times = {label: [] for label in policies}
                fits = {}
                for r in range(args.rounds + 1):  # round 0 compiles
                    for label, policy in policies.items():
                        start = time.process_time()
                        fits[label] = fit(policy=policy)
                        fits[label].coef.block_until_ready()
                        if r:
                            times[label].append(time.process_time() - start)
                base = np.median(times["default"])
                for label, policy in policies.items():
                    passes = R.ours_counts(X, y, Cs, tol[softmax], softmax, policy)[0] / X.shape[0]
                    print(f"| {name} | {workload} | {label} | {np.median(times[label]) * 1e3:.1f} | "
                          f"{np.median(times[label]) / base:.3f} | {passes:.1f} | "
                          f"{bool(np.asarray(fits[label].converged).all())} |", flush=True)
            release_programs()


if __name__ == "__main__":
    main()
