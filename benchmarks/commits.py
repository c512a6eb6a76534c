"""Two source trees of the library against each other on the regime panel, in alternating fresh processes.

A change to the solver that is not a policy field (benchmarks/regime_policies.py compares those in one
process) is measured by running the same fits from two checkouts, e.g. ``git worktree add /tmp/before REV``
and this one. Each round starts one process per tree, in turn (``--rounds`` of them a tree), each importing
the library from its tree with a compilation cache of its own (one per tree, kept over the rounds: the
first round's first call compiles, later rounds' load the kept executables). In each process, for every
regime (benchmarks/regime_data.py) and workload (``c1``: ``fit_logistic`` at C = 1 on every layer;
``path``: the 8-C grid ``logspace(-3, 2, 8)``): the first call's wall time (compile or load included), then
the median CPU time of ``--repeats`` warm calls, on one pinned core with BLAS at one thread. Printed: per
row, each tree's median over its processes, the ratio second / first, and the solver's iterations (equal
where the change leaves the arithmetic alone).

Usage: python benchmarks/commits.py --trees /tmp/before . [--regimes wide-4096 clear ...]
       [--workloads c1 path] [--rounds 3] [--repeats 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GRIDS = {"c1": [1.0], "path": list(np.logspace(-3, 2, 8))}


def child(regimes: list[str], workloads: list[str], repeats: int, scale: float) -> None:
    """Run in a tree's root: time its library's fits and print them as one JSON line."""
    sys.path.insert(0, os.getcwd())
    sys.path.insert(1, str(HERE))
    import measure
    import regimes as R  # noqa: F401 -- importing it pins this process to one core
    from regime_data import regime
    from threadpoolctl import threadpool_limits

    import lmprobe_jax.functional as F

    if not Path(F.__file__).resolve().is_relative_to(Path.cwd().resolve()):
        raise SystemExit(f"lmprobe_jax came from {F.__file__}, not from the tree {os.getcwd()}")
    out = {}
    with threadpool_limits(1):
        for name in regimes:
            X, y, _ = regime(name, scale)
            X = X.astype(np.float32)
            for workload in workloads:
                Cs = GRIDS[workload] if workload == "path" else 1.0

                def fit(X=X, y=y, Cs=Cs):
                    return F.fit_logistic(X, y, Cs)

                result, first = measure.first_call(fit)
                warm = measure.timed_rounds({"fit": fit}, repeats, clock=time.process_time)["fit"][1]
                out[f"{name} {workload}"] = {"first": first, "warm": float(np.median(warm)),
                                             "iterations": int(np.asarray(result.n_iter).sum())}
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", nargs=2, required=True, help="two checkouts' roots, the reference first")
    ap.add_argument("--regimes", nargs="*",
                    default=["wide-4096", "wide", "clear", "tall", "duplicated", "imbalanced"])
    ap.add_argument("--workloads", nargs="*", default=["c1", "path"], choices=sorted(GRIDS))
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes a tree, alternating")
    ap.add_argument("--repeats", type=int, default=3, help="warm calls timed in each process")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the synthetic sizes (a smoke test)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.regimes, args.workloads, args.repeats, args.scale)
    trees = [Path(t).resolve() for t in args.trees]
    for tree in trees:
        if not (tree / "lmprobe_jax" / "functional").is_dir():
            raise SystemExit(f"{tree} is not a checkout of lmprobe-jax (no lmprobe_jax/functional in it)")
    runs: list[list[dict]] = [[], []]
    with tempfile.TemporaryDirectory() as caches:
        for _ in range(args.rounds):
            for i, tree in enumerate(trees):
                env = dict(os.environ, LMPROBE_JAX_CACHE=str(Path(caches) / f"tree{i}"), PYTHONUNBUFFERED="1")
                done = subprocess.run(
                    [sys.executable, str(HERE / "commits.py"), "--child", "--trees", *args.trees, "--regimes",
                     *args.regimes, "--workloads", *args.workloads, "--repeats", str(args.repeats), "--scale",
                     str(args.scale)], cwd=tree, env=env, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(f"the process in {tree} failed:\n{done.stderr[-4000:]}")
                runs[i].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"first: {trees[0]}\nsecond: {trees[1]}\n")
    print("| regime | workload | first s | second s | second / first | first call s (first / second) "
          "| iterations (first / second) |")
    print("|---|---|---:|---:|---:|---|---|")
    for key in runs[0][0]:
        warm = [float(np.median([r[key]["warm"] for r in tree_runs])) for tree_runs in runs]
        first = [float(np.median([r[key]["first"] for r in tree_runs])) for tree_runs in runs]
        iterations = [tree_runs[-1][key]["iterations"] for tree_runs in runs]
        name, workload = key.split(" ")
        print(f"| {name} | {workload} | {warm[0]:.4f} | {warm[1]:.4f} | {warm[1] / warm[0]:.2f}x "
              f"| {first[0]:.2f} / {first[1]:.2f} | {iterations[0]} / {iterations[1]} |")


if __name__ == "__main__":
    main()
