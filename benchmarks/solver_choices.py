"""The solver's parts, each measured against its alternative in one process on one core.

Each study runs the same workload under two solver policies (``lmprobe_jax.functional.SolverPolicy``,
a static argument: each policy compiles its own program) and times them interleaved on the same data
(medians of --repeats warm runs), so the machine's drift hits both alike:

  products    X @ V^T for 2-16 rows: the fused elementwise sum over D (the CPU policy's fused_max_rows=16)
              against XLA's dot (fused_max_rows=0). Workloads: CV folds (V = 5 or 3 fold directions) and a
              5-class softmax fit (V = the K class rows).
  woodbury    wide layers: CG preconditioned with the exact inverse Newton matrix through the N x N kernel
              (woodbury=True; solver_options takes it where N^2 <= 16 D and 2 N <= D) against the
              quasi-Newton / Nystrom / lagged-inverse path (woodbury=False).
  gap-test    the C grid's stopping rule: the gradient test and the Newton decrement's objective-gap
              bound (default) against the gradient test alone (gap_tol=inf, an argument, not a part), with
              the worst objective gap of each to a float64 scikit-learn reference on three layers.
  quasi-newton  every solve starting with L-BFGS and handing over to Newton-CG by progress per pass
              (default) against Newton-CG from the first step (quasi_newton_memory=0): C=1 at tol 1e-4 and
              1e-7, and the 8-C grid, on 12 x 3000 x 768.
  nystrom-probe the Nystrom preconditioner built only where a rank-8 sketch finds the spectrum far from flat
              (default) against always built (nystrom_decay=0), on independent and on correlated features.
  layer-warm-start  each layer starting from the best multiple of the previous layer's solution (default)
              against a cold start (layer_warm_start=False), on the demo's SmolLM2 activations and on
              synthetic layers (which share nothing).
  numpy-input a numpy X entering decision_function: through check_activations' path (device_put's copy)
              against jnp.asarray (what it used before).
  build-halves  the lagged inverse's build on the CPU: its weighted Gram as three products of column
              halves and the inverse's L^-T L^-1 without the zero block (halve_builds=True), against the
              full products (halve_builds=False). Workloads: the 8-C grid and the CV folds on 12 x 3000 x 768.
  ridge-method  fit_ridge's factorisation without leave-one-out: a Cholesky factorisation per alpha
              against one eigendecomposition per layer (ridge_solve's `method`, which ridge_method picks:
              Cholesky on the CPU for up to 8 alphas). 1, 8 and 12 alphas on three layer shapes.
  auroc       roc_auc on a CV's held-out folds (480 problems of 600 scores from real fits): ours (one integer
              sort, a binary search for each score's tie run) against an argsort with running maxima and
              minima of tie runs (what it replaced; written out here), warm time and compile time.
  label-vmap  a caller's jax.vmap of the C path over several label sets, against a loop of single fits
              (not an alternative in the code: it shows the vmap costs what the loop does, which the
              lagged inverse's unbatched build decision, _batching.any_across_batch, is there for).
  hessian-blocks  CG's Hessian product X^T (S X v) as two whole products (each a read of X from memory)
              against a scan over blocks of rows that does both on a block while it is in cache
              (GLM.hessian_block_rows, which solver_options sets for layers of hessian_blocks_from bytes
              and more), on layers of 4 to 80 MB; then whole fits (C=1; a 5-fold CV's 8-C paths) with
              blocks and without.

Every solver row also reports the work of both variants (passes over X, CG steps) and whether all converged.

Usage: python benchmarks/solver_choices.py [products] [woodbury] [gap-test] [quasi-newton] [nystrom-probe]
       [layer-warm-start] [numpy-input] [label-vmap] [build-halves] [ridge-method] [auroc] [hessian-blocks]
       [--repeats 5] [--record]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import sys
import time

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from measure import in_rounds, logistic_objective
from recording import record
from regime_data import independent, raw_llm
from synthetic import make_layers

import lmprobe_jax.functional as F
from lmprobe_jax.functional import _ridge, default_policy
from lmprobe_jax.functional._glm import GLM, Params
from lmprobe_jax.functional._logistic import BINARY_LOGISTIC
from lmprobe_jax.functional._multinomial import SOFTMAX
from lmprobe_jax.functional._path import (
    hessian_block_rows,
    layer_preconditioners,
    solve_layers,
    solver_options,
)
from lmprobe_jax.functional._products import products
from lmprobe_jax.functional._woodbury import use_woodbury


def policy_runs(variants, make_run):
    """``(runs, results)`` keyed by label: for each ``(label, overrides)`` of ``variants``, a zero-argument
    run under the default policy with ``overrides`` (``make_run(policy)``), run once (it compiles)."""
    runs, results = {}, {}
    for label, overrides in variants:
        runs[label] = make_run(dataclasses.replace(default_policy(), **overrides))
        results[label] = jax.block_until_ready(runs[label]())
    return runs, results


def solve_run(loss, X, y, weights, Cs, *, policy, n_outputs=None, **kwargs):
    """A zero-argument solve_layers run with fit_logistic's options under ``policy``."""
    options = solver_options(X.shape, n_outputs, fit_intercept=True, max_iter=100, max_cg_iter=None,
                             precondition_rank=None, layer_batch_size=None, policy=policy)
    return functools.partial(solve_layers, loss, X, y, weights, Cs, **options, **kwargs)


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


def ab_row(name, workload, runs, results, repeats, labels):
    t = interleaved(runs, repeats)
    a, b = labels
    cg = " / ".join(f"{int(results[k].n_passes.sum())} passes, {int(results[k].n_cg.sum())} CG" for k in labels)
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
    for workload, shape, n_classes, n_c, n_folds in workloads:
        X, y = problem(*shape, n_classes=n_classes)
        n_outputs = n_classes if n_classes > 2 else None
        loss = SOFTMAX if n_outputs else BINARY_LOGISTIC
        weights = fold_weights(shape[1], n_folds) if n_folds else jnp.ones((1, shape[1]))
        Cs = jnp.asarray(np.logspace(-3, 2, n_c) if n_c > 1 else [1.0])
        tol, gap_tol = (1e-4, float("inf")) if n_folds else (1e-7, None)

        def make_run(policy, X=X, y=y, loss=loss, weights=weights, Cs=Cs, tol=tol, gap_tol=gap_tol,
                     n_outputs=n_outputs):
            precond = layer_preconditioners(X, weights, fit_intercept=True, layer_batch_size=1, policy=policy)
            return solve_run(loss, X, y, weights, Cs, policy=policy, n_outputs=n_outputs, tol=tol, gap_tol=gap_tol,
                             precond=precond)

        runs, results = policy_runs((("fused", {}), ("dot", {"fused_max_rows": 0})), make_run)
        rows.append(ab_row("products: fused vs dot", workload, runs, results, repeats, ("fused", "dot")))
    return rows


def study_build_halves(repeats):
    rows = []
    X, y = problem(12, 3000, 768)
    Cs = jnp.asarray(np.logspace(-3, 2, 8))
    for workload, weights, tol, gap_tol in (
        ("8-C grid, 12 x 3000 x 768, tol 1e-7", jnp.ones((1, 3000)), 1e-7, None),
        ("CV folds, 12 x 3000 x 768, 8 C, 5 folds, cv_tol 1e-4", fold_weights(3000, 5), 1e-4, float("inf")),
    ):
        runs, results = policy_runs((("halves", {}), ("full", {"halve_builds": False})), functools.partial(
            lambda policy, weights, tol, gap_tol: solve_run(BINARY_LOGISTIC, X, y, weights, Cs, policy=policy,
                                                            tol=tol, gap_tol=gap_tol),
            weights=weights, tol=tol, gap_tol=gap_tol))
        rows.append(ab_row("build products: halves vs full", workload, runs, results, repeats, ("halves", "full")))
    return rows


def study_woodbury(repeats):
    rows = []
    Cs = jnp.asarray(np.logspace(-3, 2, 8))
    for n_samples, n_features in ((200, 4096), (400, 4096), (800, 4096), (200, 768)):
        X, y = problem(4, n_samples, n_features)
        chosen = use_woodbury(n_samples, n_features)
        for workload, cs in (("8-C grid", Cs), ("C=1", jnp.ones(1))):
            def make_run(policy, X=X, y=y, cs=cs, n=n_samples):
                return solve_run(BINARY_LOGISTIC, X, y, jnp.ones((1, n)), cs, policy=policy, tol=1e-7)

            # The shape rule's ratio, set past this shape (woodbury) or to 0 (the CG path).
            runs, results = policy_runs((("woodbury", {"woodbury_ratio": 1e9}), ("cg", {"woodbury_ratio": 0.0})),
                                        make_run)
            rows.append(ab_row(f"woodbury vs quasi-Newton/Nystrom/lagged CG (rule {'takes' if chosen else 'skips'} it)",
                               f"{workload}, 4 x {n_samples} x {n_features}, tol 1e-7", runs, results, repeats,
                               ("woodbury", "cg")))
    return rows


def study_gap_test(repeats):
    from sklearn.linear_model import LogisticRegression

    X, y = problem(12, 3000, 768)
    Cs = np.logspace(-3, 2, 8)
    runs, results = {}, {}
    for label, gap_tol in (("gap bound", None), ("gradient only", float("inf"))):
        runs[label] = solve_run(BINARY_LOGISTIC, X, y, jnp.ones((1, 3000)), jnp.asarray(Cs), policy=default_policy(),
                                tol=1e-7, gap_tol=gap_tol)
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


def study_quasi_newton(repeats):
    rows = []
    X, y = problem(12, 3000, 768)
    for workload, Cs, tol in (("C=1, 12 x 3000 x 768, tol 1e-4", [1.0], 1e-4), ("C=1, tol 1e-7", [1.0], 1e-7),
                              ("8-C grid, tol 1e-4", np.logspace(-3, 2, 8), 1e-4)):
        runs, results = policy_runs((("quasi-Newton first", {}), ("Newton only", {"quasi_newton_memory": 0})),
                                    lambda policy, Cs=Cs, tol=tol: solve_run(
                                        BINARY_LOGISTIC, X, y, jnp.ones((1, 3000)), jnp.asarray(Cs), policy=policy,
                                        tol=tol))
        rows.append(ab_row("L-BFGS phase, then Newton-CG, vs Newton-CG from the first step", workload, runs, results,
                           repeats, ("quasi-Newton first", "Newton only")))
    return rows


def study_nystrom_probe(repeats):
    from regime_data import independent

    rows = []
    for workload, (X, y) in (("independent features, 12 x 3000 x 768, C=1, tol 1e-4",
                              independent(12, 3000, 768, separation=(2.0, 5.0))),
                             ("correlated features (make_layers), 12 x 3000 x 768, C=1, tol 1e-4",
                              make_layers(12, 3000, 768))):
        X, y = jax.device_put(X), jnp.asarray(y, jnp.float32)
        runs, results = policy_runs((("probe first", {}), ("always build", {"nystrom_decay": 0.0})),
                                    lambda policy, X=X, y=y: solve_run(BINARY_LOGISTIC, X, y, jnp.ones((1, 3000)),
                                                                       jnp.ones(1), policy=policy, tol=1e-4))
        rows.append(ab_row("Nystrom preconditioner: built where the spectrum decays vs always", workload, runs, results,
                           repeats, ("probe first", "always build")))
    return rows


def study_layer_warm_start(repeats):
    from regime_data import smollm2_cities

    rows = []
    X_real, y_real, _ = smollm2_cities(standardise=True)
    X_syn, y_syn = make_layers(12, 3000, 768)
    for workload, X, y, Cs in (("SmolLM2 cities, standardised, 30 x 600 x 576, C=1, tol 1e-4", X_real, y_real, [1.0]),
                               ("the same, 8-C grid", X_real, y_real, np.logspace(-3, 2, 8)),
                               ("synthetic layers (nothing shared), 12 x 3000 x 768, C=1", X_syn, y_syn, [1.0])):
        X, y = jax.device_put(X), jnp.asarray(y, jnp.float32)
        runs, results = policy_runs((("warm", {}), ("cold", {"layer_warm_start": False})),
                                    lambda policy, X=X, y=y, Cs=Cs: solve_run(
                                        BINARY_LOGISTIC, X, y, jnp.ones((1, X.shape[1])), jnp.asarray(Cs),
                                        policy=policy, tol=1e-4))
        rows.append(ab_row("each layer from the previous layer's solution vs cold", workload, runs, results, repeats,
                           ("warm", "cold")))
    return rows


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
    options = solver_options(Xl.shape, None, fit_intercept=True, max_iter=100, max_cg_iter=None,
                             precondition_rank=None, layer_batch_size=None)

    def fit(X, y):  # X an argument: closed over, XLA would constant-fold products with it at compile time
        return solve_layers(BINARY_LOGISTIC, X, y, jnp.ones((1, 3000)), Cs, tol=1e-7, **options)

    one, batched = jax.jit(fit), jax.jit(jax.vmap(fit, in_axes=(None, 0)))
    runs = {"vmap": lambda: batched(Xl, labels), "loop": lambda: [one(Xl, y) for y in labels]}
    results = {"vmap": jax.block_until_ready(runs["vmap"]())}
    looped = jax.block_until_ready(runs["loop"]())
    results["loop"] = jax.tree.map(lambda *a: jnp.stack(a), *looped)
    return [ab_row("caller's vmap over 3 label sets vs a loop of 3 fits", "layer 6 of 12 x 3000 x 768, 8-C grid, tol 1e-7",
                   runs, results, repeats, ("vmap", "loop"))]


def chained_hessian_products(glm):
    """20 of ``glm``'s Hessian products in one program, each fed the last (as CG's are)."""
    def run(X, y, p, v):
        data = glm.data(X, y, jnp.ones_like(y), jnp.float32(1.0))
        aux = BINARY_LOGISTIC.evaluate(glm.predictor(X, p), y)[2]
        step = lambda _, a: jax.tree.map(lambda h, w: h * 1e-3 + w, glm.hvp(data, aux, a)[0], v)
        return jax.lax.fori_loop(0, 20, step, v)

    return jax.jit(run)


def study_hessian_blocks(repeats):
    rows = []
    whole = GLM(BINARY_LOGISTIC, True, products(default_policy().fused_max_rows))
    forced = dataclasses.replace(default_policy(), hessian_blocks_from=0)  # the block rows of any size
    for n, d in ((2048, 512), (4096, 1024), (2048, 4096), (8192, 1024), (12288, 1024), (3072, 4096),
                 (4096, 4096), (20480, 1024)):
        blocks = dataclasses.replace(whole, hessian_block_rows=hessian_block_rows(n, d, forced))
        X, y = problem(1, n, d)
        X = X[0]
        rng = np.random.default_rng(0)
        p = Params(jnp.asarray(rng.standard_normal(d, dtype=np.float32) / np.sqrt(d)), jnp.float32(0.1))
        v = Params(jnp.asarray(rng.standard_normal(d, dtype=np.float32)), jnp.float32(1.0))
        runs = {name: functools.partial(chained_hessian_products(glm), X, y, p, v)
                for name, glm in (("whole", whole), ("blocks", blocks))}
        two, one = runs["whole"]().coef, runs["blocks"]().coef
        gap = float(jnp.max(jnp.abs(two - one)) / jnp.max(jnp.abs(two)))
        t = interleaved(runs, repeats)
        taken = "taken" if hessian_block_rows(n, d, default_policy()) else "not taken"
        rows.append(f"| Hessian product: two whole products vs {blocks.hessian_block_rows}-row blocks "
                    f"({taken} by default) | {n} x {d} float32 ({n * d * 4 / 2**20:.0f} MB), 20 products; "
                    f"relative difference {gap:.1e} | {t['whole']:.4f} | {t['blocks']:.4f} | "
                    f"{t['blocks'] / t['whole']:.2f}x | n/a | n/a |")
    variants = (("whole", {"hessian_block_bytes": 0}), ("blocks", {}))
    for name, (X, y), folds, Cs in (
            ("raw (regime_data.raw_llm)", raw_llm(2, 20480, 1024), 1, [1.0]),
            ("standardised (regime_data.independent)", independent(2, 4096, 4096, separation=(1.0, 4.0)), 1,
             [1.0]),
            ("raw (regime_data.raw_llm)", raw_llm(1, 20480, 1024), 5, np.logspace(-3, 2, 8))):
        X, y = jax.device_put(X), jnp.asarray(y, jnp.float32)
        weights = fold_weights(X.shape[1], folds) if folds > 1 else jnp.ones((1, X.shape[1]))
        gap_tol = jnp.inf if folds > 1 else None  # folds stop on the gradient test alone, as the CV's do
        runs, results = policy_runs(variants, lambda policy, X=X, y=y, w=weights, Cs=Cs, gap_tol=gap_tol: (
            solve_run(BINARY_LOGISTIC, X, y, w, jnp.asarray(Cs), policy=policy, tol=1e-7, gap_tol=gap_tol)))
        workload = f"{name}, {' x '.join(map(str, X.shape))}, " + (
            "C=1, tol 1e-7" if folds == 1 else f"{folds} folds x {len(Cs)} C (weight sets under a vmap)")
        rows.append(ab_row("fit: two whole Hessian products vs row blocks", workload, runs, results, repeats,
                           ("whole", "blocks")))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("studies", nargs="*", metavar="study", help="products, woodbury, gap-test, quasi-newton, "
                    "nystrom-probe, layer-warm-start, numpy-input, label-vmap, build-halves, ridge-method, "
                    "auroc, hessian-blocks "
                    "(default: all)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    studies = {"products": study_products, "woodbury": study_woodbury, "gap-test": study_gap_test,
               "quasi-newton": study_quasi_newton, "nystrom-probe": study_nystrom_probe,
               "layer-warm-start": study_layer_warm_start,
               "numpy-input": study_numpy_input, "label-vmap": study_label_vmap, "build-halves": study_build_halves,
               "ridge-method": study_ridge_method, "auroc": study_auroc,
               "hessian-blocks": study_hessian_blocks}
    unknown = set(args.studies) - set(studies)
    if unknown:
        ap.error(f"unknown study {sorted(unknown)}; choose from {sorted(studies)}")
    args.studies = args.studies or list(studies)
    lines = ["| choice | workload | first (s) | second (s) | second / first | work (first / second) | all converged |",
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
