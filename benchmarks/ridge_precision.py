"""Ridge in float32 against scikit-learn's float64 solution on an ill-conditioned panel.

Five 2000 x 256 layers (well-conditioned; feature scales 1e-2..1e2; near low rank plus 1e-3 noise;
a large common offset; a few x300 outlier dimensions), one alpha each, targets a noisy linear function.
Prints each layer's condition number of the centred Gram plus alpha, and the relative coefficient error
of ``fit_ridge`` on float32 input (the default) and on float64 input under ``jax_enable_x64``, against
``sklearn.linear_model.Ridge(solver="cholesky")`` in float64 on the same (float64) data.

Usage: python benchmarks/ridge_precision.py
"""

from __future__ import annotations

import os

import jax
import numpy as np
from sklearn.linear_model import Ridge
from threadpoolctl import threadpool_limits

import lmprobe_jax.functional as F


def panel(rng):
    n, d = 2000, 256
    base = rng.normal(size=(n, d))
    yield "well-conditioned", base, 1.0
    yield "scales 1e-2..1e2", base * np.logspace(-2, 2, d), 1e-3
    yield "low rank + 1e-3 noise", rng.normal(size=(n, 16)) @ rng.normal(size=(16, d)) + 1e-3 * base, 1e-4
    yield "offset 100", base + 100.0, 1e-2
    raw = base * np.logspace(-1, 1, d)
    raw[:, :4] *= 300
    yield "outlier dims x300", raw, 1e-3


def main() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rng = np.random.default_rng(0)
    print("| layer | cond(Gram + alpha I) | float32 error | float64 error |\n|---|---:|---:|---:|")
    with threadpool_limits(1):
        for name, X, alpha in panel(rng):
            w = rng.normal(size=X.shape[1])
            y = X @ w / np.sqrt(X.shape[1]) + 0.1 * rng.normal(size=X.shape[0])
            ref = Ridge(alpha=alpha, solver="cholesky").fit(X, y).coef_
            ours = np.asarray(F.fit_ridge(X.astype(np.float32), y, alpha).coef)
            with jax.enable_x64(True):
                ours64 = np.asarray(F.fit_ridge(X, y, alpha).coef)
            centred = X - X.mean(0)
            eig = np.linalg.eigvalsh(centred.T @ centred)
            cond = (eig[-1] + alpha) / (max(eig[0], 0) + alpha)
            errors = [np.linalg.norm(coef - ref) / np.linalg.norm(ref) for coef in (ours, ours64)]
            print(f"| {name} | {cond:.1e} | {errors[0]:.1e} | {errors[1]:.1e} |")


if __name__ == "__main__":
    main()
