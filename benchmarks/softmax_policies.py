"""Softmax solver policies on raw and standardised data: iterations, convergence and warm time.

Compares, for fit_multinomial at C=1, the quasi-Newton phase against Newton-CG from the first step, each
without and with the layer's Nystrom preconditioner (the policy's rank), on:
  outlier-3    3 layers of test_scale's synthetic store (700 x 40, rank 8, two outlier features of scale
               ~400), 3 classes from the argmax of three features
  softmax-K    regime_data's Zipf-class layer (8000 x 576 at --scale 1)
  raw-4class   two layers of regime_data's raw regime (low rank + outlier features), 4 quantile classes

Usage: python benchmarks/softmax_policies.py [--scale 0.25]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from regime_data import regime
from synthetic_store import write_synthetic_store

import lmprobe_jax.functional as F
from lmprobe_jax.functional._policy import SolverPolicy


def cases(scale: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = write_synthetic_store(Path(tmp) / "store", n_layers=3, n_rows=700, n_features=40, rank=8,
                                      n_outliers=2, pool_rows=512)
        X = store.stack(None, dtype=np.float32)
    out["outlier-3"] = (X, np.argmax(X[1, :, :3], axis=1))
    for name in ("softmax-10", "softmax-100"):
        X, y = regime(name, scale=scale)[:2]
        out[name] = (X, y)
    raw = regime("raw", scale=scale)[0][:2]
    score = raw[0] @ np.random.default_rng(0).normal(size=raw.shape[-1])
    out["raw-4class"] = (raw, np.digitize(score, np.quantile(score, [0.25, 0.5, 0.75])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.25)
    args = ap.parse_args()
    policies = {
        "quasi-Newton, no preconditioner": (SolverPolicy(softmax_quasi_newton_memory=10), 0),
        "Newton-CG, Nystrom (default)": (SolverPolicy(), None),
        "quasi-Newton, Nystrom": (SolverPolicy(softmax_quasi_newton_memory=10), None),
        "Newton-CG, no preconditioner": (SolverPolicy(), 0),
    }
    print("| data | policy | warm s (best of 2) | iterations per layer | converged |")
    print("|---|---|---:|---|---|")
    for name, (X, y) in cases(args.scale).items():
        for label, (policy, rank) in policies.items():
            rank = min(policy.nystrom_rank, X.shape[-1]) if rank is None else rank
            run = lambda: jax.block_until_ready(F.fit_multinomial(X, y, 1.0, policy=policy, precondition_rank=rank))
            run()
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                fit = run()
                times.append(time.perf_counter() - t0)
            print(f"| {name} | {label} | {min(times):.3f} | {np.asarray(fit.n_iter).ravel().tolist()} | "
                  f"{np.asarray(fit.converged).ravel().tolist()} |", flush=True)


if __name__ == "__main__":
    main()
