"""CPU time and passes over X of one in-memory ``fit_logistic`` (C = 1, tol 1e-7) per Nystrom preconditioner rank.

The first --rows rows of one layer of an activation store (e.g. from synthetic_store.py), as float32 in
memory, fitted once to compile and once timed per rank (0: the library's default for this width), on one
pinned core. Passes are the solver's own count (the same program ``fit_logistic`` runs). With
--sklearn-tol, scikit-learn's ``LogisticRegression`` (float64, one BLAS thread, max_iter 100 at tol 1e-4,
its default, else 10000) on the same layer, each objective's relative gap to the default rank's fit (both
evaluated in float64).

Usage: python benchmarks/nystrom_rank.py STORE [--layer 3] [--rows 8000] [--ranks 0 64 128 256]
       [--sklearn-tol 1e-4 1e-6 1e-8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax.numpy as jnp
import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

import lmprobe_jax.functional as F
from lmprobe_jax.functional._logistic import BINARY_LOGISTIC
from lmprobe_jax.functional._path import solve_layers, solver_options
from lmprobe_jax_store import ActivationStore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import logistic_objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--ranks", type=int, nargs="*", default=[0, 64, 128, 256])
    parser.add_argument("--sklearn-tol", type=float, nargs="*", default=[])
    args = parser.parse_args()
    store = ActivationStore(args.store)
    layer = store.layers[min(args.layer, len(store.layers) - 1)]
    X = np.asarray(store.load(layer, store.poolings[0])[:args.rows], np.float32)[None]
    y = np.asarray(store.labels[:X.shape[1]])
    print(f"layer {layer}: {X.shape[1]} x {X.shape[2]}", flush=True)
    print("| rank | CPU s | passes | iterations | converged |\n|---|---|---|---|---|")
    x64 = X[0].astype(np.float64)
    default = F.fit_logistic(X, y, C=1.0)
    reference = logistic_objective(x64, y, np.asarray(default.coef[0], np.float64), float(default.intercept[0]), 1.0)
    for r in args.ranks:
        rank = None if r == 0 else r
        F.fit_logistic(X, y, C=1.0, precondition_rank=rank)
        started = time.process_time()
        fit = F.fit_logistic(X, y, C=1.0, precondition_rank=rank)
        seconds = time.process_time() - started
        options = solver_options(X.shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                                 precondition_rank=rank, layer_batch_size=None)
        res = solve_layers(BINARY_LOGISTIC, jnp.asarray(X), jnp.asarray(y, jnp.float32), jnp.ones((1, X.shape[1])),
                           jnp.asarray([1.0]), tol=1e-7, **options)
        label = f"{options['policy'].nystrom_rank} (default)" if rank is None else str(rank)
        print(f"| {label} | {seconds:.2f} | {int(res.n_passes.sum())} | {int(res.n_iter.sum())} | "
              f"{bool(np.all(fit.converged))} |", flush=True)
    if args.sklearn_tol:
        print(f"\nours at the default rank: objective {reference:.6f}\n"
              "| scikit-learn tol | CPU s | iterations | objective | relative gap to ours |\n|---|---|---|---|---|")
    for tol in args.sklearn_tol:
        model = LogisticRegression(C=1.0, tol=tol, max_iter=100 if tol == 1e-4 else 10000)
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: the iteration count is in the table
            started = time.process_time()
            model.fit(x64, y)
            seconds = time.process_time() - started
        objective = logistic_objective(x64, y, model.coef_[0], model.intercept_[0], 1.0)
        print(f"| {tol:g} | {seconds:.2f} | {int(model.n_iter_[0])} | {objective:.6f} | "
              f"{(objective - reference) / reference:.2e} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
