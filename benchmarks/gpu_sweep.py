"""lmprobe-jax on an accelerator: a 7B-model-sized layer sweep, every layer at once, against the anchors.

Workloads (defaults: 32 layers x 4096 features x 6144 train rows, 2048 test rows, drawn on the device
by synthetic.make_layers_on_device; the training set is 3.2 GB of float32):
  logistic   C=1 on every layer, at tol 1e-7 and 1e-4 (the default, scikit-learn's value), against
             - optax L-BFGS (zoom line search) under vmap over the layers, 50 iterations, same card;
             - scikit-learn's LogisticRegression (lbfgs) per layer on the host's cores (float64).
  ridge      fit_ridge with an 8-alpha path (and, as a study, the same path by the factorisation fit_ridge
             does not choose on this backend: one eigh per layer or a Cholesky per alpha), and
             cross_validate_ridge (exact LOO, the same 8 alphas), against an eigendecomposition per
             layer of the Gram matrix on the same card (jnp.linalg.eigh).
  grid       8-value C grid (fit_logistic), no anchor (sklearn's loop would take minutes).
  cv         8 C x 5 folds (cross_validate_logistic), no anchor.

Floors: one pass over the training set is timed (a jitted reduction over X, medians); the logistic
row reports the solve's counts (iterations, CG steps, passes over X: each quasi-Newton iteration reads X
twice, each CG step twice, each Newton step's gradient once), the time those passes alone would take at
the measured read rate (the memory floor of the solve) and the solve's time over that floor. Exactness, on --checked layers: the float64 optimum is found by
Newton steps in numpy from our solution (independent arithmetic; the last step's decrement is printed),
and every contender's relative objective gap and coefficient error are taken against it; ridge against
the float64 closed form.

Threading: JAX runs on the default device (the GPU); scikit-learn gets every host core (threadpoolctl).
JAX times are medians of --repeats warm runs; the first call (trace + compile) is reported apart.
--matmul-precision sets jax.default_matmul_precision around every JAX call (default: JAX's own, which
computes float32 products in TF32 on recent NVIDIA GPUs); it reaches the anchors' products and the data
draw, not lmprobe-jax's, which are full float32 whatever it says (functional/_precision.py).

Usage: python benchmarks/gpu_sweep.py [--layers 32 --features 4096 --train 6144] [--only logistic ridge]
       [--studies refresh] [--sklearn-layers 4] [--matmul-precision highest] [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(__file__))
from measure import float64_optimum, logistic_objective, timed
from recording import record
from synthetic import make_layers_on_device

import lmprobe_jax.functional as F
from lmprobe_jax.functional import default_policy
from lmprobe_jax.functional._batching import default_layer_batch_size
from lmprobe_jax.functional._logistic import BINARY_LOGISTIC
from lmprobe_jax.functional._path import solve_layers, solver_options
from lmprobe_jax.functional._ridge import ridge_method, ridge_solve


def pass_seconds(X, repeats=20):
    """Median seconds of one read of ``X`` (a jitted reduction over it)."""
    read = jax.jit(lambda x: jnp.sum(x, axis=(1, 2)))
    return timed(lambda: read(X), repeats)[2]


def optax_lbfgs(X, y, C, n_steps):
    """optax L-BFGS (its default zoom line search) under vmap over layers, ``n_steps`` iterations from
    zero, on the mean-scaled objective (same optimum; better scaled for L-BFGS's first step)."""
    y = y.astype(jnp.float32)

    def one(x):
        def f(theta):
            m = (2 * y - 1) * (x @ theta[:-1] + theta[-1])
            return jnp.mean(jax.nn.softplus(-m)) + theta[:-1] @ theta[:-1] / (2 * C * x.shape[0])

        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(f)

        def step(carry, _):
            theta, state = carry
            value, grad = value_and_grad(theta, state=state)
            updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(theta, updates), state), None

        theta0 = jnp.zeros(x.shape[1] + 1, jnp.float32)
        (theta, _), _ = jax.lax.scan(step, (theta0, opt.init(theta0)), None, length=n_steps)
        return theta

    return jax.vmap(one)(X)


def solution_of(fit, layer):
    """``(coef, intercept)`` of one layer of a C=1 fit (a :class:`LogisticFit`, or solve_direct's result
    with its weight-set and grid axes), in float64 on the host."""
    coef, intercept = fit.coef[layer], fit.intercept[layer]
    return np.asarray(coef.reshape(-1), np.float64), float(intercept.reshape(()))


def solve_direct(Xtr, ytr, Cs, tol, **overrides):
    """fit_logistic's solve without its boundary checks, under the default policy with ``overrides`` (the
    studies' alternative parts); fields ``(L, 1, G)``, with the counts fit_logistic drops."""
    policy = dataclasses.replace(default_policy(), **overrides)
    options = solver_options(Xtr.shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                             precondition_rank=None, layer_batch_size=None, policy=policy)
    return solve_layers(BINARY_LOGISTIC, Xtr, ytr.astype(jnp.float32), jnp.ones((1, Xtr.shape[1])),
                        jnp.asarray(Cs, jnp.float32), tol=tol, **options)


def logistic_counts(Xtr, ytr, C, tol):
    """The solve's counts over layers, as the batched loop runs them (every layer takes the same kind of
    step; the slowest layer's counts bound the lock-step work): ``(iterations, CG steps, passes over X)``."""
    res = solve_direct(Xtr, ytr, [C], tol)
    return int(res.n_iter.max()), int(res.n_cg.max()), int(res.n_passes.max())


def refresh_study(Xtr, ytr, optima, gaps_against, repeats, precision):
    """Rows for the parts study: C=1 and the 8-C grid with the in-solve inverse rebuilt after Newton
    steps of 10/20/40 CG steps or never (0: the Nystrom preconditioner alone), and with Newton-CG from the
    first step (no quasi-Newton phase)."""
    rows = []
    grid = np.logspace(-3, 2, 8)
    variants = [("C=1", [1.0], {"hessian_refresh_cg": r}) for r in (0, 10, 20, 40)]
    variants += [("C=1", [1.0], {"quasi_newton_memory": 0})]
    variants += [("8-C grid", grid, {"hessian_refresh_cg": r}) for r in (0, 20)]
    for name, Cs, overrides in variants:
        with precision:
            res, first, t = timed(functools.partial(solve_direct, Xtr, ytr, Cs, 1e-7, **overrides), repeats)
        # Lock-step counts: the slowest layer at each C, summed along the path.
        note = (f"{int(res.n_iter.max(axis=0).sum())} iterations / {int(res.n_cg.max(axis=0).sum())} CG / "
                f"{int(res.n_passes.max(axis=0).sum())} passes (slowest layer); "
                f"all converged {bool(res.converged.all())}")
        if len(Cs) == 1:
            gap, err = gaps_against(optima, functools.partial(solution_of, res))
            note += f"; obj gap {gap:.1e}, coef err {err:.1e}"
        label = ", ".join(f"{k}={v}" for k, v in overrides.items())
        rows.append((f"study: {name}, {label}", t, first - t, note))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--train", type=int, default=6144)
    ap.add_argument("--test", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checked", type=int, default=3, help="layers given a float64 reference (first, middle, last)")
    ap.add_argument("--lbfgs-steps", type=int, default=50)
    ap.add_argument("--sklearn-layers", type=int, default=None,
                    help="run scikit-learn's anchor on this many evenly spaced layers and scale its time to all "
                         "(default: every layer)")
    ap.add_argument("--only", nargs="*", default=["logistic", "ridge", "grid", "cv"])
    ap.add_argument("--matmul-precision", default=None,
                    help="jax.default_matmul_precision for every JAX call (e.g. highest); default JAX's own")
    ap.add_argument("--studies", nargs="*", default=[], choices=["refresh"],
                    help="refresh: the logistic solves with other solver parts (the in-solve inverse's rebuild "
                         "threshold, Newton-CG from the first step; needs logistic)")
    ap.add_argument("--no-anchors", action="store_true", help="skip optax and scikit-learn (for the studies)")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    precision = (jax.default_matmul_precision(args.matmul_precision) if args.matmul_precision
                 else contextlib.nullcontext())
    L, D, n_tr = args.layers, args.features, args.train
    device = jax.devices()[0]
    with precision:
        t0 = time.perf_counter()
        X, y = jax.block_until_ready(make_layers_on_device(L, n_tr + args.test, D))
        Xtr, Xte = jax.block_until_ready((X[:, :n_tr], X[:, n_tr:]))
        ytr, yte = y[:n_tr], y[n_tr:]
        del X
        t_data = time.perf_counter() - t0
        t_pass = pass_seconds(Xtr)
    gbytes = Xtr.size * 4 / 1e9
    checked = sorted({0, L // 2, L - 1})[: args.checked]
    print(f"data: {L} layers x {D} features, {n_tr} train / {args.test} test rows ({gbytes:.2f} GB train) drawn in "
          f"{t_data:.1f} s on {device.device_kind}; one pass over it {t_pass * 1e3:.2f} ms ({gbytes / t_pass:.0f} GB/s "
          f"read); jax {jax.__version__}, default matmul precision {args.matmul_precision or 'JAX default'} (lmprobe-jax's own products: full float32); "
          f"host {os.cpu_count()} cores; checked layers {checked}", flush=True)
    y_host = np.asarray(ytr, np.float64)
    X64 = {l: np.asarray(Xtr[l], np.float64) for l in checked}
    rows = []

    def gaps_against(optima, solution, layers=checked):
        """Worst relative objective gap and coefficient error over ``layers`` (NaN for none)."""
        if not layers:
            return float("nan"), float("nan")
        gap, err = 0.0, 0.0
        for l in layers:
            w, b = solution(l)
            best = optima[l]
            o_best = logistic_objective(X64[l], y_host, best[:-1], best[-1], 1.0)
            gap = max(gap, (logistic_objective(X64[l], y_host, w, b, 1.0) - o_best) / o_best)
            err = max(err, np.linalg.norm(w - best[:-1]) / np.linalg.norm(best[:-1]))
        return gap, err

    if "logistic" in args.only:
        optima, decrements = {}, []
        for tol in (1e-7, 1e-4):
            with precision:
                fit, first, t_jax = timed(functools.partial(F.fit_logistic, Xtr, ytr, 1.0, tol=tol), args.repeats)
                n_steps, n_cg, n_passes = logistic_counts(Xtr, ytr, 1.0, tol)
                acc = np.asarray(F.binary_accuracy(yte, F.decision_function(fit, Xte)))
            ours = functools.partial(solution_of, fit)
            if not optima:
                for l in checked:
                    optima[l], dec = float64_optimum(X64[l], y_host, np.append(*ours(l)), 1.0)
                    decrements.append(dec)
            gap, err = gaps_against(optima, ours)
            floor = n_passes * t_pass
            rows.append((f"logistic C=1, tol={tol:g}", t_jax, first - t_jax,
                         (f"obj gap {gap:.1e}, coef err {err:.1e}; {n_steps} iterations / {n_cg} CG / {n_passes} "
                          f"passes over X (slowest layer): memory floor of those passes {floor:.3f} s, time / floor "
                          f"{t_jax / floor:.1f}x; test acc L0 {acc[0]:.3f} -> best {acc.max():.3f}; "
                          f"all converged {bool(fit.converged.all())}")))
            print(rows[-1], flush=True)
        print(f"float64 reference: last Newton decrements {[f'{d:.1e}' for d in decrements]}", flush=True)

        if "refresh" in args.studies:
            rows += refresh_study(Xtr, ytr, optima, gaps_against, args.repeats, precision)

    if "logistic" in args.only and not args.no_anchors:
        with precision:
            lbfgs = jax.jit(optax_lbfgs, static_argnames="n_steps")
            theta, first, t_lb = timed(lambda: lbfgs(Xtr, ytr, 1.0, n_steps=args.lbfgs_steps), args.repeats)
        gap, err = gaps_against(optima, lambda l: (np.asarray(theta[l, :-1], np.float64), float(theta[l, -1])))
        rows.append((f"optax L-BFGS, {args.lbfgs_steps} iterations (anchor)", t_lb, first - t_lb,
                     f"obj gap {gap:.1e}, coef err {err:.1e}"))
        print(rows[-1], flush=True)

        layers = (list(range(L)) if args.sklearn_layers is None
                  else sorted({int(i) for i in np.linspace(0, L - 1, args.sklearn_layers)}))
        with threadpool_limits(os.cpu_count()):
            t0 = time.perf_counter()
            sk = {l: LogisticRegression(C=1.0).fit(np.asarray(Xtr[l], np.float64), y_host) for l in layers}
            t_sk = (time.perf_counter() - t0) * L / len(layers)
        sk_sol = {l: (sk[l].coef_[0], sk[l].intercept_[0]) for l in layers}
        sk_gap, _ = gaps_against(optima, sk_sol.__getitem__, [l for l in checked if l in sk_sol])
        scaled = "" if len(layers) == L else f", {len(layers)} layers timed, scaled to {L}"
        rows.append((f"sklearn LogisticRegression per layer, {os.cpu_count()} cores (anchor)", t_sk, 0.0,
                     f"obj gap {sk_gap:.1e} (tol 1e-4){scaled}"))
        print(rows[-1], flush=True)

    if "ridge" in args.only:
        alphas = np.logspace(-1, 4, 8)
        y_float = ytr.astype(jnp.float32)
        # fit_ridge's factorisation on this backend, and the other one through the same core (a study of
        # the choice: the CPU takes a Cholesky per alpha for up to 8 alphas, accelerators one eigh).
        method = ridge_method(len(alphas), loo=False)
        other = "eigh" if method == "cholesky" else "cholesky"
        with precision:
            fit, first, t_fit = timed(lambda: F.fit_ridge(Xtr, y_float, alphas), args.repeats)
            alt, first_alt, t_alt = timed(lambda: ridge_solve(
                Xtr, y_float[None], jnp.ones(n_tr, jnp.float32), jnp.asarray(alphas), fit_intercept=True, loo=False,
                layer_batch_size=default_layer_batch_size(L), method=other)[0], args.repeats)
            loo, first_loo, t_loo = timed(lambda: F.cross_validate_ridge(Xtr, y_float, alphas), args.repeats)
            eigh = jax.jit(lambda X: jax.vmap(lambda x: jnp.linalg.eigh(x.T @ x))(X))
            _, first_eigh, t_eigh = timed(lambda: eigh(Xtr), args.repeats)
        err = {method: 0.0, other: 0.0}
        for l in checked:
            xc, yc = X64[l] - X64[l].mean(0), y_host - y_host.mean()
            gram, rhs = xc.T @ xc, xc.T @ yc
            for g, alpha in enumerate(alphas):
                w_ref = np.linalg.solve(gram + alpha * np.eye(D), rhs)
                for name, coef in ((method, fit.coef[l, g]), (other, alt.coef[l, g, 0])):
                    e = np.linalg.norm(np.asarray(coef, np.float64) - w_ref) / np.linalg.norm(w_ref)
                    err[name] = max(err[name], e)
        note = "max coef err vs float64 closed form {:.1e} (layers " + f"{checked}, every alpha)"
        rows.append((f"ridge 8-alpha path (fit_ridge: {method})", t_fit, first - t_fit, note.format(err[method])))
        rows.append((f"ridge 8-alpha path by {other} (a study: ridge_solve)", t_alt, first_alt - t_alt,
                     note.format(err[other])))
        rows.append(("ridge 8 alphas, exact LOO (cross_validate_ridge)", t_loo, first_loo - t_loo,
                     f"best alpha per layer {np.asarray(loo.best_value)[[0, -1]].tolist()} (first, last)"))
        rows.append(("eigh of each layer's Gram (anchor)", t_eigh, first_eigh - t_eigh,
                     "jax.vmap(jnp.linalg.eigh) over X_l^T X_l"))
        for row in rows[-4:]:
            print(row, flush=True)

    Cs = np.logspace(-3, 2, 8)
    if "grid" in args.only:
        with precision:
            fit, first, t_grid = timed(lambda: F.fit_logistic(Xtr, ytr, Cs), args.repeats)
        rows.append(("logistic 8-C grid, tol=1e-07", t_grid, first - t_grid,
                     f"all converged {bool(fit.converged.all())}"))
        print(rows[-1], flush=True)
    if "cv" in args.only:
        with precision:
            cv, first, t_cv = timed(lambda: F.cross_validate_logistic(Xtr, ytr, Cs, folds=5), args.repeats)
        acc = np.asarray(cv.accuracy.mean(-1).max(-1))
        rows.append(("CV 8 C x 5 folds (cv_tol 1e-4) + refit (tol 1e-7)", t_cv, first - t_cv,
                     f"CV acc L0 {acc[0]:.3f} -> best {acc.max():.3f}"))
        print(rows[-1], flush=True)

    header = "| workload | time (s) | compile (s) | notes |"
    lines = [header, "|" + "---|" * 4]
    for name, t, comp, note in rows:
        lines.append(f"| {name} | {t:.3f} | {comp:.2f} | {note} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        machine = (f"{device.device_kind} ({jax.default_backend()}), host {os.cpu_count()} cores; jax {jax.__version__}; "
                   f"default matmul precision {args.matmul_precision or 'JAX default'} (lmprobe-jax's own products: full float32); one pass over X {t_pass * 1e3:.2f} ms")
        record(f"accelerator, {L} layers x {D} x {n_tr} train", machine, table)


if __name__ == "__main__":
    main()
