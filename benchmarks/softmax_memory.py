"""What a softmax solve holds against what the streaming planner counts for it.

For each case ``NxDxK`` (rows, features, classes), a fresh process fits one in-memory float32 layer with
``F.fit_multinomial`` (C = 1) or, with ``--folds F``, ``F.cross_validate_logistic`` (F folds over a
``--grid``-value C grid; balanced labels, so every fold holds every class): once to compile and warm up,
then, after ``malloc_trim`` and a reset of the high-water mark (``/proc/self/clear_refs``), once more;
the growth of peak RSS over that call is what the solve held beyond ``X``. glibc serves every allocation
above 128 kB with its own mapping (``MALLOC_MMAP_THRESHOLD_``), so freed buffers leave the RSS and the
high-water mark counts what was live at once. The plan's share for the same call is the solver's
``streamed_copies`` of a padded layer plus its ``streamed_workspace`` (functional/__init__.py); the
``held / planned`` column must stay below 1.

Usage: python benchmarks/softmax_memory.py [--cases 4000x256x500 ...] [--folds 5] [--grid 2]
       (pin with taskset for the timings; the figures are bytes, not times)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import ctypes, gc, json, sys, time
import numpy as np
import lmprobe_jax.functional as F
n, d, k, folds, grid = (int(a) for a in sys.argv[1:6])
rng = np.random.default_rng(0)
X = rng.standard_normal((1, n, d), dtype=np.float32)
X.setflags(write=False)
y = rng.permutation(np.arange(n) % k)
if folds:
    fn, kwargs = F.cross_validate_logistic, {"C": list(np.logspace(-1, 1, grid)), "folds": folds}
else:
    fn, kwargs = F.fit_multinomial, {"C": 1.0}
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
fit = fn(X, y, **kwargs)  # compile and warm up
del fit
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark restarts from the current RSS
before = status("VmRSS")
started = time.perf_counter()
fit = fn(X, y, **kwargs)
seconds = time.perf_counter() - started
held = status("VmHWM") - before
layer = F._checks.bucket_rows(n) * d * 4
planned = fn.streamed_copies * layer + fn.streamed_workspace(n, d, y, **kwargs)
print("RESULT", json.dumps({"held": held, "planned": planned, "layer": layer, "seconds": seconds}))
"""


def measure(case: str, folds: int, grid: int) -> dict:
    """The child's figures for one ``NxDxK`` case, in a fresh process."""
    n, d, k = (int(s) for s in case.split("x"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_MMAP_THRESHOLD_="131072")
    command = [sys.executable, "-c", CHILD, str(n), str(d), str(k), str(folds), str(grid)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{case}: the child failed")
    return json.loads(done.stdout.split("RESULT", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["600x1024x200", "600x2048x200", "4000x256x200",
                                                     "4000x128x500", "4000x256x500", "2000x256x500",
                                                     "4000x256x1000"])
    ap.add_argument("--folds", type=int, default=0,
                    help="cross_validate_logistic with this many folds (0: fit_multinomial)")
    ap.add_argument("--grid", type=int, default=2, help="C values of the CV's grid")
    args = ap.parse_args()
    what = (f"cross_validate_logistic, {args.folds} folds, {args.grid} C" if args.folds
            else "fit_multinomial, C = 1")
    print(f"{what}; held: peak RSS growth of a warm call; planned: copies of a layer + work space\n")
    print("| N x D x K | layer | held | planned | held / planned | warm solve |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in args.cases:
        r = measure(case, args.folds, args.grid)
        held = f"{r['held'] / 1e6:.4g} MB ({r['held'] / r['layer']:.1f} layers)"
        print(f"| {case} | {r['layer'] / 1e6:.3g} MB | {held} | {r['planned'] / 1e6:.4g} MB "
              f"| {r['held'] / r['planned']:.2f} | {r['seconds']:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
