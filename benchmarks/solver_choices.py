"""The solver's internal choices, each measured against its alternative in one process on one core.

Each study switches one choice inside lmprobe-jax (the alternative is still in the code, behind the
switch named below), compiles both variants as separate programs, and times them interleaved on the
same data (medians of --repeats warm runs), so the machine's drift hits both alike:

  products    X @ V^T for 2-16 rows: the fused elementwise sum over D (default on the CPU) against
              XLA's dot (switch: _products._FUSED_MAX_ROWS = 0). Workloads: CV folds (V = 5 or 3 fold
              directions) and a 5-class softmax fit (V = the K class rows).
  woodbury    wide layers: CG preconditioned with the exact inverse Newton matrix through the N x N
              kernel, against the Nystrom / lagged-inverse path (switch: the `woodbury` option of
              solve_layers, which solver_options picks by shape: N^2 <= 16 D and 2 N <= D).
  gap-test    the C grid's stopping rule: the gradient test and the Newton decrement's objective-gap
              bound (default) against the gradient test alone (switch: gap_tol=inf), with the worst
              objective gap of each to a float64 scikit-learn reference on three layers.
  numpy-input a numpy X entering decision_function: through check_activations' path (device_put's copy)
              against jnp.asarray (what it used before).
  build-halves  the lagged inverse's build on the CPU: its weighted Gram as three products of column
              halves and the inverse's L^-T L^-1 without the zero block (default), against the full
              products (switch: _hessian_inverse._HALVE_PRODUCTS = False). Workloads: the 8-C grid and
              the CV folds (5 weight sets, cv_tol 1e-4) on 12 x 3000 x 768.
  ridge-method  fit_ridge's factorisation without leave-one-out: a Cholesky factorisation per alpha
              against one eigendecomposition per layer (switch: ridge_solve's `method`, which ridge_method
              picks: Cholesky on the CPU for up to 8 alphas). 1, 8 and 12 alphas on three layer shapes.
  auroc       roc_auc on a CV's held-out folds (480 problems of 600 scores from real fits): ours (one integer
              sort, a binary search for each score's tie run) against an argsort with running maxima and
              minima of tie runs (what it replaced; written out here), warm time and compile time.
  label-vmap  a caller's jax.vmap of the C path over several label sets, against a loop of single fits
              (not an alternative in the code: it shows the vmap costs what the loop does, which the
              lagged inverse's unbatched build decision, _batching.any_across_batch, is there for).

Every row also reports the CG steps of both variants (the work they did) and whether all converged.

Usage: python benchmarks/solver_choices.py [products] [woodbury] [gap-test] [numpy-input] [label-vmap] [build-halves]
       [ridge-method] [auroc]
       [--repeats 5] [--record]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time

os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from measure import in_rounds, logistic_objective  # noqa: E402
from recording import record  # noqa: E402
from synthetic import make_layers  # noqa: E402

import lmprobe_jax.functional as F  # noqa: E402
from lmprobe_jax.functional import _hessian_inverse, _newton_cg, _products, _ridge  # noqa: E402
from lmprobe_jax.functional._logistic import BINARY_LOGISTIC  # noqa: E402
from lmprobe_jax.functional._multinomial import SOFTMAX  # noqa: E402

_STATIC = ("loss", "n_outputs", "fit_intercept", "tol", "gap_tol", "max_iter", "max_cg_iter", "precondition_rank",
           "layer_batch_size", "woodbury", "hessian_refresh")


def fresh_solver():
    """solve_layers as a new jitted function: it traces (and so reads module switches) on its first call."""
    def solve(loss, *args, **kwargs):
        return _newton_cg.solve_layers.__wrapped__(loss, *args, **kwargs)
    return jax.jit(solve, static_argnames=_STATIC)


def run_of(*args, solve, **kwargs):
    """A zero-argument run of ``solve`` (a :func:`fresh_solver`) on these arguments."""
    return functools.partial(solve, *args, **kwargs)


def switched(module, name, variants, make_run):
    """``(runs, results)`` keyed by label: for each ``(label, value)`` of ``variants``, ``module.name`` is set to
    ``value`` while a fresh solver compiles and runs once (``make_run(solve=...)`` gives the run), then the
    module's own value is restored."""
    saved = getattr(module, name)
    runs, results = {}, {}
    try:
        for label, value in variants:
            setattr(module, name, value)
            runs[label] = make_run(solve=fresh_solver())
            results[label] = jax.block_until_ready(runs[label]())  # compiles with this switch
    finally:
        setattr(module, name, saved)
    return runs, results


def interleaved(runs: dict, repeats: int) -> dict:
    """Median warm seconds of each zero-argument callable, timed in turns."""
    return {name: median for name, (_, median) in in_rounds(runs, repeats).items()}


def problem(n_layers, n_samples, n_features, n_classes=2, seed=0):
    X, y = make_layers(n_layers, n_samples, n_features, seed=seed)
    if n_classes > 2:  # relabel half the samples at random into the extra classes
        rng = np.random.default_rng(seed + 1)
        y = (y + rng.integers(0, n_classes - 1, n_samples) * (rng.random(n_samples) < 0.5)) % n_classes
        return jax.device_put(X), jnp.asarray(y.astype(np.int32))
    return jax.device_put(X), jnp.asarray(y.astype(np.float32))


def fold_weights(n_samples, n_folds):
    fold = np.arange(n_samples) % n_folds
    return jnp.asarray((fold[None] != np.arange(n_folds)[:, None]).astype(np.float32))


def solve_args(X, n_outputs, woodbury=None):
    options = _newton_cg.solver_options(X.shape, n_outputs, fit_intercept=True, max_iter=100, max_cg_iter=None,
                                        precondition_rank=None, layer_batch_size=None)
    if woodbury is not None:
        options.update(woodbury=woodbury, precondition_rank=0 if woodbury else _newton_cg.default_precondition_rank(
            X.shape[-1], None))
    return options


def ab_row(name, workload, runs, results, repeats, labels):
    t = interleaved(runs, repeats)
    a, b = labels
    cg = " / ".join(str(int(results[k].n_cg.sum())) for k in labels)
    conv = all(bool(results[k].converged.all()) for k in labels)
    return (f"| {name} | {workload} | {t[a]:.3f} | {t[b]:.3f} | {t[b] / t[a]:.2f}x | {cg} | {conv} |")


def study_products(repeats):
    rows = []
    workloads = [
        ("CV folds, 12 x 3000 x 768, 8 C, 5 folds, cv_tol 1e-4", (12, 3000, 768), 2, 8, 5),
        ("CV folds, 30 x 600 x 576, 4 C, 5 folds, cv_tol 1e-4", (30, 600, 576), 2, 4, 5),
        ("CV folds, 12 x 3000 x 768, 8 C, 3 folds, cv_tol 1e-4", (12, 3000, 768), 2, 8, 3),
        ("softmax K=5 fit, 4 x 3000 x 768, C=1, tol 1e-7", (4, 3000, 768), 5, 1, 0),
    ]  # (workload, shape, classes, number of C, folds: 0 for one fit on all samples)
    saved = _products._FUSED_MAX_ROWS
    for workload, shape, n_classes, n_c, n_folds in workloads:
        X, y = problem(*shape, n_classes=n_classes)
        n_outputs = n_classes if n_classes > 2 else None
        loss = SOFTMAX if n_outputs else BINARY_LOGISTIC
        weights = fold_weights(shape[1], n_folds) if n_folds else jnp.ones((1, shape[1]))
        Cs = jnp.asarray(np.logspace(-3, 2, n_c) if n_c > 1 else [1.0])
        tol, gap_tol = (1e-4, float("inf")) if n_folds else (1e-7, None)
        options = solve_args(X, n_outputs)
        precond = _newton_cg.layer_preconditioners(X, rank=options["precondition_rank"], fit_intercept=True,
                                                   layer_batch_size=options["layer_batch_size"])
        runs, results = switched(_products, "_FUSED_MAX_ROWS", (("fused", saved), ("dot", 0)), functools.partial(
            run_of, loss, X, y, weights, Cs, tol=tol, gap_tol=gap_tol, precond=precond, **options))
        rows.append(ab_row("products: fused vs dot", workload, runs, results, repeats, ("fused", "dot")))
    return rows


def study_build_halves(repeats):
    rows = []
    X, y = problem(12, 3000, 768)
    Cs = jnp.asarray(np.logspace(-3, 2, 8))
    options = solve_args(X, None)
    for workload, weights, tol, gap_tol in (
        ("8-C grid, 12 x 3000 x 768, tol 1e-7", jnp.ones((1, 3000)), 1e-7, None),
        ("CV folds, 12 x 3000 x 768, 8 C, 5 folds, cv_tol 1e-4", fold_weights(3000, 5), 1e-4, float("inf")),
    ):
        runs, results = switched(_hessian_inverse, "_HALVE_PRODUCTS", (("halves", True), ("full", False)),
                                 functools.partial(run_of, BINARY_LOGISTIC, X, y, weights, Cs, tol=tol, gap_tol=gap_tol,
                                                   **options))
        rows.append(ab_row("build products: halves vs full", workload, runs, results, repeats, ("halves", "full")))
    return rows


def study_woodbury(repeats):
    rows = []
    Cs = jnp.asarray(np.logspace(-3, 2, 8))
    for n_samples, n_features in ((200, 4096), (400, 4096), (800, 4096), (200, 768)):
        X, y = problem(4, n_samples, n_features)
        chosen = _newton_cg.use_woodbury(n_samples, n_features)
        for workload, cs in (("8-C grid", Cs), ("C=1", jnp.ones(1))):
            runs, results = {}, {}
            for label, on in (("woodbury", True), ("cg", False)):
                options = solve_args(X, None, woodbury=on)
                runs[label] = functools.partial(_newton_cg.solve_layers, BINARY_LOGISTIC, X, y,
                                                jnp.ones((1, n_samples)), cs, tol=1e-7, **options)
                results[label] = jax.block_until_ready(runs[label]())
            rows.append(ab_row(f"woodbury vs Nystrom/lagged CG (rule {'takes' if chosen else 'skips'} it)",
                               f"{workload}, 4 x {n_samples} x {n_features}, tol 1e-7", runs, results, repeats,
                               ("woodbury", "cg")))
    return rows


def study_gap_test(repeats):
    from sklearn.linear_model import LogisticRegression

    X, y = problem(12, 3000, 768)
    Cs = np.logspace(-3, 2, 8)
    options = solve_args(X, None)
    runs, results = {}, {}
    for label, gap_tol in (("gap bound", None), ("gradient only", float("inf"))):
        runs[label] = functools.partial(_newton_cg.solve_layers, BINARY_LOGISTIC, X, y, jnp.ones((1, 3000)),
                                        jnp.asarray(Cs), tol=1e-7, gap_tol=gap_tol, **options)
        results[label] = jax.block_until_ready(runs[label]())
    X64, y64 = np.asarray(X, np.float64), np.asarray(y, np.float64)

    gaps = {label: 0.0 for label in results}
    for l in (0, 6, 11):
        for g, C in enumerate(Cs):
            ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X64[l], y64)
            best = logistic_objective(X64[l], y64, ref.coef_[0], ref.intercept_[0], C)
            for label, r in results.items():
                w, b = np.asarray(r.coef[l, 0, g], np.float64), float(r.intercept[l, 0, g])
                gaps[label] = max(gaps[label], (logistic_objective(X64[l], y64, w, b, C) - best) / best)
    gap_note = ", ".join(f"{label} {gap:.1e}" for label, gap in gaps.items())
    row = ab_row("stopping rule: gap bound vs gradient test alone", f"8-C grid, 12 x 3000 x 768, tol 1e-7 "
                 f"(worst objective gap, layers 0/6/11: {gap_note})", runs, results, repeats,
                 ("gap bound", "gradient only"))
    return [row]


def study_numpy_input(repeats):
    X, y = make_layers(12, 4000, 768)
    X = X[:, :3000]  # a view, as a benchmark's train split is
    fit = F.fit_logistic(X[:, :500], y[:500], 1.0)
    workload = "12 x 3000 x 768 float32 numpy (110 MB)"
    runs = {"ours": lambda: F.decision_function(fit, X), "before": lambda: F.decision_function(fit, jnp.asarray(X))}
    for run in runs.values():
        jax.block_until_ready(run())
    t = interleaved(runs, repeats)
    row = (f"| numpy X into decision_function: device_put vs jnp.asarray | {workload} | {t['ours']:.4f} | "
           f"{t['before']:.4f} | {t['before'] / t['ours']:.2f}x | n/a | n/a |")
    return [row]


def study_ridge_method(repeats):
    rows = []
    for shape in ((12, 3000, 768), (12, 600, 2048), (12, 3000, 256)):
        X, y = problem(*shape)
        targets = (2 * y - 1)[None]
        for n_alphas in (1, 8, 12):
            alphas = jnp.asarray(np.logspace(-2, 4, n_alphas))
            runs = {method: functools.partial(_ridge.ridge_solve, X, targets, jnp.ones(shape[1]), alphas,
                                              fit_intercept=True, loo=False, layer_batch_size=1, method=method)
                    for method in ("cholesky", "eigh")}
            for run in runs.values():
                jax.block_until_ready(run())
            t = interleaved(runs, repeats)
            chosen = _ridge.ridge_method(n_alphas, loo=False)
            rows.append(f"| ridge: a Cholesky per alpha vs one eigh (fit_ridge takes {chosen}) | {n_alphas} alpha(s), "
                        f"{' x '.join(map(str, shape))} | {t['cholesky']:.3f} | {t['eigh']:.3f} | "
                        f"{t['eigh'] / t['cholesky']:.2f}x | n/a | n/a |")
    return rows


def argsort_roc_auc(y, scores):
    """AUROC (ties one half) from an argsort and the bounds of tie runs by running max / min: the form
    lmprobe-jax used before its integer-sort version, kept here as the alternative."""
    pos = (y > 0).astype(scores.dtype)

    def one(s):
        n = s.shape[0]
        order = jnp.argsort(s)
        ss, wp, wn = s[order], pos[order], (1 - pos)[order]
        below = jnp.concatenate([jnp.zeros(1, s.dtype), jnp.cumsum(wn)])
        position = jnp.arange(n)
        changes = ss[1:] != ss[:-1]
        first = jax.lax.cummax(jnp.where(jnp.concatenate([jnp.ones(1, bool), changes]), position, 0))
        stop = jax.lax.cummin(jnp.where(jnp.concatenate([changes, jnp.ones(1, bool)]), position + 1, n), reverse=True)
        left, right = below[first], below[stop]
        return jnp.sum(wp * (left + 0.5 * (right - left))) / (jnp.sum(wp) * jnp.sum(wn))

    return jax.vmap(one)(scores)


def study_auroc(repeats):
    X, y = problem(12, 3000, 768)
    fit = F.fit_logistic(X, y, np.logspace(-3, 2, 8))
    held_out = np.arange(3000) % 5  # five folds of 600 rows, each scored by 8 C x 12 layers of fits
    z = F.decision_function(fit, X)  # (12, 8, 3000)
    scores = jnp.concatenate([z[..., held_out == f].reshape(-1, 600) for f in range(5)])  # (480, 600)
    labels = y[held_out == 0]
    timed_compile, runs = {}, {}
    for name, auc in (("ours", F.roc_auc), ("argsort", argsort_roc_auc)):
        start = time.perf_counter()
        compiled = jax.jit(auc).lower(labels, scores).compile()
        timed_compile[name] = time.perf_counter() - start
        runs[name] = functools.partial(compiled, labels, scores)
    gap = float(jnp.max(jnp.abs(runs["ours"]() - runs["argsort"]())))
    t = interleaved(runs, repeats)
    row = (f"| roc_auc: integer sort + binary search vs argsort + tie-run scans | 480 x 600 held-out scores; compile "
           f"{timed_compile['ours']:.2f} vs {timed_compile['argsort']:.2f} s; max difference {gap:.1e} | "
           f"{t['ours']:.4f} | {t['argsort']:.4f} | {t['argsort'] / t['ours']:.2f}x | n/a | n/a |")
    return [row]


def study_label_vmap(repeats):
    X, y = problem(12, 3000, 768)
    rng = np.random.default_rng(3)
    flips = [rng.random(3000) < p for p in (0.0, 0.1, 0.2)]  # the true labels, then 10% and 20% flipped
    labels = jnp.stack([jnp.where(jnp.asarray(f), 1 - y, y) for f in flips])
    Xl = X[6:7]
    Cs = jnp.asarray(np.logspace(-3, 2, 8))
    options = solve_args(Xl, None)

    def fit(X, y):  # X an argument: closed over, XLA would constant-fold products with it at compile time
        return _newton_cg.solve_layers(BINARY_LOGISTIC, X, y, jnp.ones((1, 3000)), Cs, tol=1e-7, **options)

    one, batched = jax.jit(fit), jax.jit(jax.vmap(fit, in_axes=(None, 0)))
    runs = {"vmap": lambda: batched(Xl, labels), "loop": lambda: [one(Xl, y) for y in labels]}
    results = {"vmap": jax.block_until_ready(runs["vmap"]())}
    looped = jax.block_until_ready(runs["loop"]())
    results["loop"] = jax.tree.map(lambda *a: jnp.stack(a), *looped)
    return [ab_row("caller's vmap over 3 label sets vs a loop of 3 fits", "layer 6 of 12 x 3000 x 768, 8-C grid, tol 1e-7",
                   runs, results, repeats, ("vmap", "loop"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("studies", nargs="*", metavar="study", help="products, woodbury, gap-test, numpy-input, label-vmap, build-halves, ridge-method, auroc "
                    "(default: all)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    studies = {"products": study_products, "woodbury": study_woodbury, "gap-test": study_gap_test,
               "numpy-input": study_numpy_input, "label-vmap": study_label_vmap, "build-halves": study_build_halves,
               "ridge-method": study_ridge_method, "auroc": study_auroc}
    unknown = set(args.studies) - set(studies)
    if unknown:
        ap.error(f"unknown study {sorted(unknown)}; choose from {sorted(studies)}")
    args.studies = args.studies or list(studies)
    lines = ["| choice | workload | first (s) | second (s) | second / first | CG steps (first / second) | all converged |",
             "|" + "---|" * 7]
    for name in args.studies:
        for row in studies[name](args.repeats):
            print(row, flush=True)
            lines.append(row)
    table = "\n".join(lines)
    print(table)
    if args.record:
        machine = f"{platform.processor() or platform.machine()}, 1 core pinned, {os.cpu_count()} visible"
        record("solver choices, A/B in one process", f"{machine}; jax {jax.__version__}", table)


if __name__ == "__main__":
    main()
