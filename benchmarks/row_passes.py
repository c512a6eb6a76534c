"""Passes over the rows of the out-of-core solver (:mod:`lmprobe_jax.functional._row_streaming`) per regime.

Each pass of a streamed solve reads the whole layer from the store (or the page cache), so its count, not a
CPU time, is what a user with a layer larger than memory pays. For each regime of benchmarks/regime_data.py
(its first ``--layers`` layers, as an in-memory source read in ``--row-block``-row blocks): ``fit_logistic``'s
streamed solver at C = 1 and on the 8-C grid, and the streamed 5-fold ``cross_validate_logistic`` on the
first layer; the passes (gradients, CG's Hessian products, predictors), the fits' worst scaled gradient and
whether every solve (the CV's folds and refit included) converged. Compare two versions of the library by running it under each (``PYTHONPATH``).

Usage: python benchmarks/row_passes.py [--regimes clear raw ...] [--layers 3] [--row-block 1000] [--scale 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
from regime_data import BINARY, regime
from regimes import GRID  # importing it pins this process to one core: no matter for counts

from lmprobe_jax.functional import _row_streaming
from lmprobe_jax.functional._sources import layer_source


class _Counted:
    """Sums ``_LayerRows.passes`` over every batch of rows made while it is open."""

    def __enter__(self):
        self.rows, self._init = [], _row_streaming._LayerRows.__init__

        def init(rows, *args, **kwargs):
            self._init(rows, *args, **kwargs)
            self.rows.append(rows)

        _row_streaming._LayerRows.__init__ = init
        return self

    def __exit__(self, *exc):
        _row_streaming._LayerRows.__init__ = self._init

    @property
    def passes(self) -> int:
        return sum(rows.passes for rows in self.rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regimes", nargs="*", default=["clear", "raw", "imbalanced", "correlated", "smollm2-std",
                                                     "smollm2-raw"], choices=BINARY)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--row-block", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=0.5, help="the synthetic regimes' size (SmolLM2's is fixed)")
    args = ap.parse_args()
    print("| regime | C = 1: passes | 8-C path: passes | 5-fold CV (layer 0): passes | worst scaled gradient | "
          "converged |")
    print("|---|---:|---:|---:|---:|---|")
    for name in args.regimes:
        X, y, _ = regime(name, args.scale)
        source, layers = layer_source(X), range(min(args.layers, X.shape[0]))
        counts, worst, converged = [], 0.0, True
        for Cs in (1.0, GRID):
            with _Counted() as counted:
                for layer in layers:
                    fit = _row_streaming.logistic_rows(source, layer, args.row_block, y, Cs)
                    worst = max(worst, float(np.max(fit.optimality)))
                    converged &= bool(np.all(fit.converged))
            counts.append(counted.passes)
        with _Counted() as counted:
            cv = _row_streaming.logistic_cv_rows(source, 0, args.row_block, y, C=GRID, folds=5)
        converged &= bool(np.all(cv.converged))
        counts.append(counted.passes)
        print(f"| {name} | {' | '.join(map(str, counts))} | {worst:.1e} | {converged} |", flush=True)


if __name__ == "__main__":
    main()
