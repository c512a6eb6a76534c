"""Group-lasso layer selection: lmprobe-jax against skglm (what lmprobe's layers="auto" runs), one core.

Same data (synthetic layers, benchmarks/synthetic.py), same objective — (1/n) sum logloss +
alpha * sum_layers ||w_layer||, with an intercept for both — same process, pinned to one core
(os.sched_setaffinity) with BLAS limited to one thread (threadpoolctl; skglm's numba kernels are
single-threaded). Prints warm time, compile time, the largest KKT violation relative to alpha of each
solution (recomputed here in float64 from the returned coefficients), and the layers kept.

Usage: python benchmarks/group_lasso.py [--layers 12 --features 768 --rows 1600] [--skglm-path] [--record]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import jax  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import lmprobe_jax.functional as F  # noqa: E402
from recording import record  # noqa: E402
from synthetic import make_layers  # noqa: E402


def kkt(X, y, coef, intercept, alpha):
    """Largest relative KKT violation of (coef (L, D), intercept) in float64."""
    z = np.einsum("lnd,ld->n", X, coef) + intercept
    r = (1 / (1 + np.exp(-z)) - y) / len(y)
    g = np.einsum("lnd,n->ld", X, r)
    worst = abs(r.sum())
    for gl, wl in zip(g, coef):
        nw = np.linalg.norm(wl)
        worst = max(worst, np.linalg.norm(gl + alpha * wl / nw) if nw > 0 else max(0.0, np.linalg.norm(gl) - alpha))
    return worst / alpha


def skglm_fit(X, y, alpha, tol, w_init=None):
    from skglm.datafits import LogisticGroup
    from skglm.penalties import WeightedGroupL2
    from skglm.solvers import GroupProxNewton

    L, N, D = X.shape
    flat = np.ascontiguousarray(np.transpose(X, (1, 0, 2)).reshape(N, L * D))
    grp_ptr = (np.arange(L + 1) * D).astype(np.int32)
    grp_indices = np.arange(L * D, dtype=np.int32)
    datafit = LogisticGroup(grp_ptr, grp_indices)
    penalty = WeightedGroupL2(alpha, np.ones(L), grp_ptr, grp_indices)
    solver = GroupProxNewton(fit_intercept=True, tol=tol, max_iter=50)
    w = solver.solve(flat, 2.0 * y - 1.0, datafit, penalty, w_init=w_init)[0]
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--features", type=int, default=768)
    ap.add_argument("--rows", type=int, default=1600)
    ap.add_argument("--n-alphas", type=int, default=20)
    ap.add_argument("--skglm-path", action="store_true", help="also time skglm over the whole path (slow)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    L, D, N = args.layers, args.features, args.rows
    X, y = make_layers(L, N, D)
    X64 = X.astype(np.float64)
    amax = F.group_lasso_alpha_max(X, y)
    path_alphas = amax * np.logspace(0, -2, args.n_alphas)
    rows = []
    print(f"data: {L} layers x {D} features x {N} rows; alpha_max {amax:.4g}; one core; jax {jax.__version__}")
    try:
        import skglm  # noqa: F401
        have_skglm = True
    except ImportError:
        have_skglm = False
        print("skglm not installed: anchor rows skipped (pip install skglm)")

    with threadpool_limits(1):
        for label, alpha in (("alpha = 0.2 alpha_max", 0.2 * amax), ("alpha = 0.01 (lmprobe's auto_alpha)", 0.01)):
            t0 = time.perf_counter()
            fit = jax.block_until_ready(F.fit_group_lasso(X, y, alpha))
            first = time.perf_counter() - t0
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fit = jax.block_until_ready(F.fit_group_lasso(X, y, alpha))
                times.append(time.perf_counter() - t0)
            t_ours = float(np.median(times))
            ours_kkt = kkt(X64, y, np.asarray(fit.coef, np.float64), float(fit.intercept), alpha)
            kept = np.flatnonzero(np.asarray(F.layers_kept(fit))).tolist()
            note = f"ours: KKT {ours_kkt:.1e}, {int(fit.n_iter)} iterations, layers {kept}"
            t_sk = float("nan")
            if have_skglm:
                skglm_fit(X64[:, :50, :8], y[:50], 0.1, 1e-4)  # numba compilation, not timed
                t0 = time.perf_counter()
                w = skglm_fit(X64, y, alpha, 1e-4)
                t_sk = time.perf_counter() - t0
                sk_coef, sk_b = w[:-1].reshape(L, D), w[-1]
                sk_kept = np.flatnonzero(np.abs(sk_coef).sum(1) > 0).tolist()
                note += f"; skglm: KKT {kkt(X64, y, sk_coef, sk_b, alpha):.1e}, layers {sk_kept}"
            rows.append((f"one {label}", t_ours, first - t_ours, t_sk, note))

        t0 = time.perf_counter()
        path = jax.block_until_ready(F.fit_group_lasso(X, y, path_alphas))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = jax.block_until_ready(F.fit_group_lasso(X, y, path_alphas))
        t_ours = time.perf_counter() - t0
        worst = max(kkt(X64, y, np.asarray(path.coef[i], np.float64), float(path.intercept[i]), a)
                    for i, a in enumerate(path_alphas))
        counts = np.asarray(F.layers_kept(path)).sum(1).tolist()
        t_sk = float("nan")
        if have_skglm and args.skglm_path:
            t0 = time.perf_counter()
            w = None
            for a in path_alphas:
                w = skglm_fit(X64, y, a, 1e-4, w_init=w)
            t_sk = time.perf_counter() - t0
        rows.append((f"{args.n_alphas}-alpha path (alpha_max .. alpha_max/100)", t_ours, first - t_ours, t_sk,
                     f"ours: max KKT {worst:.1e}; layers kept along the path {counts}"))

    lines = ["| workload | lmprobe-jax (s) | compile (s) | skglm GroupProxNewton (s) | speed-up | notes |",
             "|---|---|---|---|---|---|"]
    for name, t, comp, t_sk, note in rows:
        ratio = f"{t_sk / t:.0f}x" if np.isfinite(t_sk) else "n/a"
        sk = f"{t_sk:.2f}" if np.isfinite(t_sk) else "not run"
        lines.append(f"| {name} | {t:.3f} | {comp:.2f} | {sk} | {ratio} | {note} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        machine = f"{platform.machine()}, 1 core pinned; jax {jax.__version__}"
        record(f"group lasso, CPU, {L} layers x {D} x {N}", machine, table)

if __name__ == "__main__":
    main()
