"""Passes over X per layer in each regime of the panel: the solver's own counts, which do not depend on
the machine's load (the panel's timings on a shared machine swing by tens of percent; these do not move).

For each regime (benchmarks/regime_data.py), at the library's default ``tol``: ``fit_logistic`` at C = 1
and along the 8-C path (``logspace(-3, 2, 8)``), or ``fit_multinomial`` at C = 1 for ``softmax-K``; with
the worst relative objective gap to a float64 optimum (binary: Newton steps in numpy from a tol-1e-9
solve; softmax: the lower of this solve's and a tol-1e-10 solve's float64 objectives).

Usage: python benchmarks/regime_passes.py [--regimes clear raw softmax-300 ...] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import regimes as R
from regime_data import BINARY, SOFTMAX, regime

import lmprobe_jax.functional as F


def binary(name: str, scale: float) -> str:
    reg = R.Binary(name, scale)
    tol = R.default_tol_of(F.fit_logistic)
    parts = []
    for label, Cs, layers in (("C=1", [1.0], range(reg.L)), ("8-C path", R.GRID, sorted({0, reg.L // 2, reg.L - 1}))):
        fit = F.fit_logistic(reg.X, reg.y, Cs)
        reg.set_reference(F.fit_logistic(reg.X, reg.y, Cs, tol=1e-9, max_iter=300), Cs)
        gap = max(reg.gap(l, C, fit.coef[l, g], fit.intercept[l, g]) for l in layers for g, C in enumerate(Cs))
        passes = R.ours_counts(reg.X, reg.y, Cs, tol)[0] / reg.L
        parts.append(f"{label}: {passes:.1f} passes a layer, worst gap {gap:.1e}, "
                     f"converged {bool(np.asarray(fit.converged).all())}")
    return f"{name}: " + "; ".join(parts)


def softmax(name: str, scale: float) -> str:
    X, y, _ = regime(name, scale)
    codes = np.unique(y, return_inverse=True)[1]
    x64 = X[0].astype(np.float64)
    fit = F.fit_multinomial(X[0], codes, 1.0)
    tight = F.fit_multinomial(X[0], codes, 1.0, tol=1e-10, max_iter=1000)
    value = [R.softmax_objective(x64, codes, np.asarray(f.coef, np.float64), np.asarray(f.intercept, np.float64))
             for f in (fit, tight)]
    passes = R.ours_counts(X, codes, 1.0, R.default_tol_of(F.fit_multinomial), softmax=True)[0]
    return (f"{name} ({X.shape[1]} x {X.shape[2]}, {int(codes.max()) + 1} classes): C=1: {passes} passes, "
            f"gap {(value[0] - min(value)) / min(value):.1e}, converged {bool(fit.converged)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regimes", nargs="*", default=[r for r in BINARY if not r.startswith("smollm2")] + ["softmax-300"])
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the synthetic sizes")
    args = ap.parse_args()
    for name in args.regimes:
        print(softmax(name, args.scale) if name in SOFTMAX else binary(name, args.scale), flush=True)


if __name__ == "__main__":
    main()
