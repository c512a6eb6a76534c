"""The regime panel: lmprobe-jax against scikit-learn on the kinds of data users bring, worst regime first.

Regimes (benchmarks/regime_data.py): clear, weak, correlated, raw, wide, tall, wide-4096, raw-4096 (synthetic layers),
smollm2-raw, smollm2-std (the demo's real activations) and softmax-10/100/300/2000 (one layer, Zipf
classes). Workloads (``--workloads``):

  c1     C = 1 on every layer. Library defaults against scikit-learn's defaults (LogisticRegression per
         layer); then the same at equal objective gap: scikit-learn's tol tightened (1e-5, 1e-6, ... 1e-10)
         until its worst relative gap is at most ours, for our default tol and for tol 1e-7 (softmax: the
         time its one run at tol 1e-10 took to first reach our gap, from its own loss evaluations, a
         lower bound on the cost of any tol that stops there).
  same-tol  C = 1 on every layer, both at scikit-learn's default tol (1e-4): what a user who asks for
         scikit-learn's accuracy gets, and whether our gap test still ends no worse than its fit.
  path   8 C (logspace(-3, 2, 8)): fit_logistic's grid against scikit-learn's warm-started loop.
  cv     5 stratified folds (grouped by city on SmolLM2) x the 8 C, and the refit: cross_validate_logistic
         against LogisticRegressionCV on the same folds, each at its defaults.

Every contender runs in this process on one pinned core (os.sched_setaffinity; BLAS at one thread). Timings
are CPU seconds (the process's time), medians over --rounds rounds, in each of which every contender of a
row runs once, in turn (the range is given too); compile time is excluded (each JAX program runs once
first). Exactness: relative objective
gaps ``(F - F*) / F*`` against a float64 optimum (binary: Newton steps in numpy from our tol-1e-7 solution;
softmax: the lowest objective any run reached, ours at tol 1e-9 included, evaluated in float64). Work:
passes over X per problem (ours counted by the solver; scikit-learn's two per loss-and-gradient call, each
a product with X and one with X^T; for softmax a pass is a product with all K rows).

Usage: python benchmarks/regimes.py [--regimes clear raw ...] [--workloads c1 path cv] [--rounds 3]
       [--scale 1.0] [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import os
import platform
import sys
import time
import warnings

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure
from measure import first_call, float64_optimum, logistic_objective
from recording import record
from regime_data import BINARY, SOFTMAX, regime

# CPU time: every contender runs on this one pinned core, so other users' load (the machine is shared)
# stretches the wall clock but not the work counted.
timed_rounds = functools.partial(measure.timed_rounds, clock=time.process_time)

import lmprobe_jax.functional as F
from lmprobe_jax.functional._logistic import BINARY_LOGISTIC
from lmprobe_jax.functional._multinomial import SOFTMAX as SOFTMAX_LOSS
from lmprobe_jax.functional._path import solve_layers, solver_options

GRID = np.logspace(-3, 2, 8)
TIGHTER = (1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)


def default_tol_of(solver) -> float:
    """The solver's default ``tol`` (through the streaming wrapper, which keeps the signature)."""
    return inspect.signature(solver).parameters["tol"].default


@contextlib.contextmanager
def counted_sklearn_passes():
    """Count scikit-learn's loss-and-gradient evaluations (two passes over X each) and record, for each,
    the CPU time since the count started (the clock of every other figure here) and the objective value it
    returned (scaled, as scikit-learn's)."""
    from sklearn.linear_model._linear_loss import LinearModelLoss

    original = LinearModelLoss.loss_gradient
    log = {"calls": 0, "trace": [], "start": time.process_time()}

    def loss_gradient(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        log["calls"] += 1
        log["trace"].append((time.process_time() - log["start"], float(out[0])))
        return out

    LinearModelLoss.loss_gradient = loss_gradient
    try:
        yield log
    finally:
        LinearModelLoss.loss_gradient = original


def ours_counts(X, y, Cs, tol, softmax=False, policy=None):
    """The solver's own counts for fit_logistic / fit_multinomial at these settings (and ``policy``, default
    the library's): ``(passes, n_iter)`` summed over problems (the same program the public function runs)."""
    codes = np.unique(y, return_inverse=True)[1]
    n_outputs = int(codes.max()) + 1 if softmax else None
    options = solver_options(X.shape, n_outputs, fit_intercept=True, max_iter=100, max_cg_iter=None,
                             precondition_rank=None, layer_batch_size=None, policy=policy)
    labels = jnp.asarray(codes) if softmax else jnp.asarray(codes, jnp.float32)
    res = solve_layers(SOFTMAX_LOSS if softmax else BINARY_LOGISTIC, jnp.asarray(X), labels,
                       jnp.ones((1, X.shape[1])), jnp.asarray(np.atleast_1d(Cs)), tol=tol, **options)
    return int(res.n_passes.sum()), int(res.n_iter.sum())


def softmax_objective(x, codes, W, b, C=1.0):
    z = x @ W.T + b
    z = z - z.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1))
    return C * np.sum(lse - z[np.arange(len(codes)), codes]) + 0.5 * np.sum(W * W)


def spread(times):
    return f"{np.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"


class Binary:
    """One binary regime's data, float64 copies and optima, shared by its workloads."""

    def __init__(self, name, scale):
        self.name = name
        self.X, self.y, self.groups = regime(name, scale)
        self.X64 = self.X.astype(np.float64)
        self.L = self.X.shape[0]
        self._optima, self._start = {}, {}

    def optimum(self, layer, C, start):
        """The float64 optimum's objective at (layer, C), from ``start`` = (w, b) near it."""
        if (layer, C) not in self._optima:
            theta, _ = float64_optimum(self.X64[layer], self.y, np.append(*start), C, steps=4)
            self._optima[layer, C] = logistic_objective(self.X64[layer], self.y, theta[:-1], theta[-1], C)
        return self._optima[layer, C]

    def gap(self, layer, C, w, b):
        best = self.optimum(layer, C, self._start[layer, C])
        return (logistic_objective(self.X64[layer], self.y, np.asarray(w, np.float64), float(b), C) - best) / best

    def set_reference(self, fit, Cs):
        """Our tight fit (coef (L, G, D)) as the start of every float64 optimum."""
        self._start.update({(l, C): (np.asarray(fit.coef[l, g], np.float64), float(fit.intercept[l, g]))
                            for l in range(self.L) for g, C in enumerate(Cs)})


def sklearn_c1(reg, tol):
    from sklearn.linear_model import LogisticRegression

    return [LogisticRegression(C=1.0, tol=tol, max_iter=100 if tol >= 1e-4 else 10000).fit(reg.X64[l], reg.y)
            for l in range(reg.L)]


def against_sklearn_default(reg, rounds, ours, tol, workload, note):
    """One C = 1 row: ``ours`` (fit_logistic at ``tol``, every layer) against ``LogisticRegression()`` at its
    default tol (1e-4). ``reg``'s reference must be set."""
    first_call(ours)
    with counted_sklearn_passes() as log:
        sklearn_c1(reg, 1e-4)
    timing = timed_rounds({"ours": ours, "sk": lambda: sklearn_c1(reg, 1e-4)}, rounds)
    (fit, t_ours), (sk, t_sk) = timing["ours"], timing["sk"]
    gaps = [reg.gap(l, 1.0, fit.coef[l], fit.intercept[l]) for l in range(reg.L)]
    sk_gaps = [reg.gap(l, 1.0, sk[l].coef_[0], sk[l].intercept_[0]) for l in range(reg.L)]
    return (reg.name, workload, t_ours, t_sk, max(gaps), max(sk_gaps),
            ours_counts(reg.X, reg.y, 1.0, tol)[0] / reg.L, 2 * log["calls"] / reg.L, note)


def binary_c1(reg, rounds):
    rows = []
    reg.set_reference(F.fit_logistic(reg.X, reg.y, [1.0], tol=1e-7), [1.0])
    default_tol = default_tol_of(F.fit_logistic)
    ours = {tol: functools.partial(F.fit_logistic, reg.X, reg.y, 1.0, tol=tol) for tol in (default_tol, 1e-7)}
    rows.append(against_sklearn_default(reg, rounds, ours[default_tol], default_tol, "C=1, defaults",
                                        f"ours tol {default_tol:g}; sklearn tol 1e-4"))
    # Equal gap: scikit-learn tightened until its worst gap is at most ours.
    for tol in sorted(ours, reverse=True):
        fit = jax.block_until_ready(ours[tol]())
        target = max(reg.gap(l, 1.0, fit.coef[l], fit.intercept[l]) for l in range(reg.L))
        for sk_tol in TIGHTER:
            with counted_sklearn_passes() as log:
                sk = sklearn_c1(reg, sk_tol)
            sk_gap = max(reg.gap(l, 1.0, sk[l].coef_[0], sk[l].intercept_[0]) for l in range(reg.L))
            if sk_gap <= target:
                break
        timing = timed_rounds({"ours": ours[tol], "sk": functools.partial(sklearn_c1, reg, sk_tol)}, rounds)
        reached = "" if sk_gap <= target else " (never reached: its tightest)"
        rows.append((reg.name, f"C=1, equal gap, ours tol {tol:g}", timing["ours"][1], timing["sk"][1], target,
                     sk_gap, ours_counts(reg.X, reg.y, 1.0, tol)[0] / reg.L, 2 * log["calls"] / reg.L,
                     f"sklearn tol {sk_tol:g}{reached}"))
    return rows


def binary_same_tol(reg, rounds):
    reg.set_reference(F.fit_logistic(reg.X, reg.y, [1.0], tol=1e-7), [1.0])
    ours = functools.partial(F.fit_logistic, reg.X, reg.y, 1.0, tol=1e-4)
    return [against_sklearn_default(reg, rounds, ours, 1e-4, "C=1, both tol 1e-4", "")]


def binary_path(reg, rounds):
    from sklearn.linear_model import LogisticRegression

    reg.set_reference(F.fit_logistic(reg.X, reg.y, GRID, tol=1e-7), GRID)

    def sk_loop():
        out = []
        for l in range(reg.L):
            model = LogisticRegression(warm_start=True)
            for C in GRID:
                model.set_params(C=C).fit(reg.X64[l], reg.y)
                out.append((model.coef_[0].copy(), model.intercept_[0]))
        return out

    ours = functools.partial(F.fit_logistic, reg.X, reg.y, GRID)
    first_call(ours)
    with counted_sklearn_passes() as log:
        sk_loop()
    timing = timed_rounds({"ours": ours, "sk": sk_loop}, rounds)
    (fit, t_ours), (sk, t_sk) = timing["ours"], timing["sk"]
    checked = sorted({0, reg.L // 2, reg.L - 1})
    gaps = [reg.gap(l, C, fit.coef[l, g], fit.intercept[l, g]) for l in checked for g, C in enumerate(GRID)]
    sk_gaps = [reg.gap(l, C, *sk[l * len(GRID) + g]) for l in checked for g, C in enumerate(GRID)]
    passes = ours_counts(reg.X, reg.y, GRID, default_tol_of(F.fit_logistic))[0] / reg.L
    return [(reg.name, "8-C path, defaults", t_ours, t_sk, max(gaps), max(sk_gaps), passes, 2 * log["calls"] / reg.L,
             f"gaps on layers {checked} x 8 C; all converged {bool(np.asarray(fit.converged).all())}")]


def binary_cv(reg, rounds):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    ours = functools.partial(F.cross_validate_logistic, reg.X, reg.y, GRID, folds=5, groups=reg.groups)
    cv, _ = first_call(ours)
    split = PredefinedSplit(cv.fold_ids)

    def sk_cv():
        return [LogisticRegressionCV(Cs=GRID, cv=split, scoring="accuracy").fit(reg.X64[l], reg.y) for l in range(reg.L)]

    timing = timed_rounds({"ours": ours, "sk": sk_cv}, rounds)
    (cv, t_ours), (sk, t_sk) = timing["ours"], timing["sk"]
    same = np.mean([sk[l].C_[0] == cv.best_value[l] for l in range(reg.L)])
    acc = np.asarray(cv.accuracy.mean(-1).max(-1))
    sk_acc = np.array([sk[l].scores_[1].mean(0).max() for l in range(reg.L)])
    # The refits' gaps at each one's chosen C, on three layers (float64 optima from our tight fit there).
    checked = sorted({0, reg.L // 2, reg.L - 1})
    def refit_gap(l, C, w, b):
        tight = F.fit_logistic(reg.X[l], reg.y, C, tol=1e-7)
        start = np.append(np.asarray(tight.coef, np.float64), float(tight.intercept))
        theta, _ = float64_optimum(reg.X64[l], reg.y, start, C, steps=4)
        best = logistic_objective(reg.X64[l], reg.y, theta[:-1], theta[-1], C)
        return (logistic_objective(reg.X64[l], reg.y, np.asarray(w, np.float64), float(b), C) - best) / best

    gaps = [refit_gap(l, float(cv.best_value[l]), cv.fit.coef[l], cv.fit.intercept[l]) for l in checked]
    sk_gaps = [refit_gap(l, float(sk[l].C_[0]), sk[l].coef_[0], sk[l].intercept_[0]) for l in checked]
    note = (f"same best C on {same:.0%} of layers; best CV accuracy per layer differs by <= "
            f"{np.abs(acc - sk_acc).max():.3f}; refit gaps on layers {checked}")
    return [(reg.name, "CV 5 folds x 8 C + refit", t_ours, t_sk, max(gaps), max(sk_gaps), float("nan"), float("nan"),
             note)]


def softmax_c1(name, scale, rounds):
    from sklearn.linear_model import LogisticRegression

    X, y, _ = regime(name, scale)
    codes = np.unique(y, return_inverse=True)[1]
    x64 = X[0].astype(np.float64)
    total = 1.0 * len(codes)
    default_tol = default_tol_of(F.fit_multinomial)
    ours = {tol: functools.partial(F.fit_multinomial, X[0], codes, 1.0, tol=tol) for tol in (default_tol, 1e-7)}
    for run in ours.values():
        first_call(run)
    # One scikit-learn run at tol 1e-10 gives its whole trajectory: the time it first reached each gap.
    with counted_sklearn_passes() as log:
        tight = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(x64, codes)
    trace = [(t, value * total) for t, value in log["trace"]]  # scikit-learn's scaled objective -> F
    very = F.fit_multinomial(X[0], codes, 1.0, tol=1e-9, max_iter=500)
    best = min(softmax_objective(x64, codes, tight.coef_, tight.intercept_), min(v for _, v in trace),
               softmax_objective(x64, codes, np.asarray(very.coef, np.float64), np.asarray(very.intercept, np.float64)))
    timing = timed_rounds({"ours": ours[default_tol], "sk": lambda: LogisticRegression(C=1.0).fit(x64, codes)}, rounds)
    (fit, t_ours), (sk, t_sk) = timing["ours"], timing["sk"]

    def gap_of(W, b):
        return (softmax_objective(x64, codes, np.asarray(W, np.float64), np.asarray(b, np.float64)) - best) / best

    with counted_sklearn_passes() as log_default:
        LogisticRegression(C=1.0).fit(x64, codes)
    rows = [(name, "C=1, defaults", t_ours, t_sk, gap_of(fit.coef, fit.intercept), gap_of(sk.coef_, sk.intercept_),
             ours_counts(X, codes, 1.0, default_tol, softmax=True)[0], 2 * log_default["calls"],
             f"{int(codes.max()) + 1} classes; ours tol {default_tol:g}; sklearn tol 1e-4")]
    for tol in sorted(ours, reverse=True):
        fit, t_ours = timed_rounds({"ours": ours[tol]}, rounds)["ours"]
        target = gap_of(fit.coef, fit.intercept)
        hits = [i for i, (_, value) in enumerate(trace) if (value - best) / best <= target]
        if hits:
            t_sk, calls, note = trace[hits[0]][0], hits[0] + 1, "sklearn's tol-1e-10 run, first reaching our gap"
        else:
            t_sk, calls, note = trace[-1][0], len(trace), "sklearn's tol-1e-10 run never reached our gap: its whole run"
        rows.append((name, f"C=1, equal gap, ours tol {tol:g}", t_ours, [t_sk], target,
                     (trace[hits[0]][1] - best) / best if hits else (trace[-1][1] - best) / best,
                     ours_counts(X, codes, 1.0, tol, softmax=True)[0], 2 * calls, note))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regimes", nargs="*", default=list(BINARY + SOFTMAX))
    ap.add_argument("--workloads", nargs="*", default=["c1", "path", "cv"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the synthetic sizes (a smoke test)")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)  # LogisticRegressionCV's 1.10 notices
    load = os.getloadavg()
    rows = []
    with threadpool_limits(1):
        for name in args.regimes:
            started, done = time.perf_counter(), len(rows)
            if name in SOFTMAX:
                if "c1" in args.workloads:
                    rows += softmax_c1(name, args.scale, args.rounds)
            else:
                reg = Binary(name, args.scale)
                for workload, run in (("c1", binary_c1), ("same-tol", binary_same_tol), ("path", binary_path),
                                      ("cv", binary_cv)):
                    if workload in args.workloads:
                        rows += run(reg, args.rounds)
            # Every row as it is measured: a long panel stopped part way keeps what it measured.
            print(f"# {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            for row in rows[done:]:
                print(row, file=sys.stderr, flush=True)

    def ratio(row):
        return float(np.median(row[3]) / np.median(row[2]))

    header = ("| regime | workload | lmprobe-jax s | scikit-learn s | speed-up | gap ours | gap sklearn | "
              "passes ours | passes sklearn | notes |")
    lines = [header, "|" + "---|" * 10]
    for row in sorted(rows, key=ratio):  # worst regime first
        name, workload, t_ours, t_sk, gap, sk_gap, passes, sk_passes, note = row
        lines.append(f"| {name} | {workload} | {spread(t_ours)} | {spread(t_sk)} | {ratio(row):.2f}x | {gap:.1e} | "
                     f"{sk_gap:.1e} | {passes:.0f} | {sk_passes:.0f} | {note} |")
    table = "\n".join(lines)
    print(table)
    print(f"load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}")
    if args.record:
        machine = (f"{platform.processor() or platform.machine()}, 1 core pinned, {os.cpu_count()} visible; "
                   f"load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; jax {jax.__version__}")
        record("regime panel (C=1, 8-C path, 5-fold CV; softmax C=1)", machine, table)


if __name__ == "__main__":
    main()
