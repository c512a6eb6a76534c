"""Softmax solver policies on raw and standardised data: iterations, convergence and warm time.

Compares, for fit_multinomial at C=1, the default (the Nystrom probe's ratio picks the quasi-Newton phase
with no preconditioner, or Newton-CG with the layer's Nystrom preconditioner from the first step) against
each side forced, and against Newton-CG with no preconditioner, on:
  outlier-3    3 layers of test_scale's synthetic store (700 x 40, rank 8, two outlier features of scale
               ~400), 3 classes from the argmax of three features
  softmax-K    regime_data's Zipf-class layer (8000 x 576 at --scale 1)
  raw-4class   two layers of regime_data's raw regime (low rank + outlier features), 4 quantile classes

Usage: python benchmarks/softmax_policies.py [--scale 0.25] [--data outlier-3 raw-4class ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(__file__))
from regime_data import regime
from synthetic_store import write_synthetic_store

import lmprobe_jax.functional as F
from lmprobe_jax.functional._glm import DEFAULT_TOL
from lmprobe_jax.functional._multinomial import SOFTMAX
from lmprobe_jax.functional._path import solve_layers, solver_options
from lmprobe_jax.functional._policy import SolverPolicy, default_policy


def cases(scale: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = write_synthetic_store(Path(tmp) / "store", n_layers=3, n_rows=700, n_features=40, rank=8,
                                      n_outliers=2, pool_rows=512)
        X = store.stack(None, dtype=np.float32)
    out["outlier-3"] = (X, np.argmax(X[1, :, :3], axis=1))
    for name in ("softmax-10", "softmax-100", "softmax-300"):
        X, y = regime(name, scale=scale)[:2]
        out[name] = (X, y)
    raw = regime("raw", scale=scale)[0][:2]
    score = raw[0] @ np.random.default_rng(0).normal(size=raw.shape[-1])
    out["raw-4class"] = (raw, np.digitize(score, np.quantile(score, [0.25, 0.5, 0.75])))
    return out


def passes(X: np.ndarray, y: np.ndarray, policy: SolverPolicy, rank: int) -> list[int]:
    """Passes over ``X`` per layer, counted by the solver fit_multinomial runs (the same program)."""
    codes = np.unique(y, return_inverse=True)[1]
    X3 = X if X.ndim == 3 else X[None]
    options = solver_options(X3.shape, int(codes.max()) + 1, fit_intercept=True, max_iter=100, max_cg_iter=None,
                             precondition_rank=rank, layer_batch_size=None, policy=policy)
    res = solve_layers(SOFTMAX, jnp.asarray(X3), jnp.asarray(codes), jnp.ones((1, X3.shape[1])), jnp.ones(1),
                       tol=DEFAULT_TOL, **options)
    return np.asarray(res.n_passes).ravel().tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--data", nargs="*", help="only these cases (default: all)")
    args = ap.parse_args()
    cpu = default_policy("cpu")  # the policies differ from the CPU's default in the fields named only
    policies = {
        "by the probe's ratio (default)": (cpu, None),
        "Newton-CG, Nystrom (the old default)": (
            dataclasses.replace(cpu, softmax_quasi_newton_memory=0, softmax_nystrom_decay=4.0), None),
        "quasi-Newton, no preconditioner": (cpu, 0),
        "Newton-CG, no preconditioner": (dataclasses.replace(cpu, softmax_quasi_newton_memory=0), 0),
    }
    print("| data | policy | warm CPU s (best of 2) | iterations per layer | passes per layer | converged |")
    print("|---|---|---:|---|---|---|")
    with threadpool_limits(1):
        table({name: xy for name, xy in cases(args.scale).items() if not args.data or name in args.data}, policies)


def table(data: dict, policies: dict) -> None:
    for name, (X, y) in data.items():
        for label, (policy, rank) in policies.items():
            rank = min(policy.nystrom_rank, X.shape[-1]) if rank is None else rank
            fit = functools.partial(F.fit_multinomial, X, y, 1.0, policy=policy, precondition_rank=rank)
            run = lambda fit=fit: jax.block_until_ready(fit())
            run()
            times = []
            for _ in range(2):
                t0 = time.process_time()
                fit = run()
                times.append(time.process_time() - t0)
            print(f"| {name} | {label} | {min(times):.3f} | {np.asarray(fit.n_iter).ravel().tolist()} | "
                  f"{passes(X, y, policy, rank)} | {np.asarray(fit.converged).ravel().tolist()} |", flush=True)


if __name__ == "__main__":
    main()
