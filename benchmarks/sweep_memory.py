"""Peak memory of a sweep of fits, each on new layers: whether a finished call's padded copy of ``X`` is still
resident while the next call makes its own.

One process (pinned to one core) runs ``fit_logistic`` on ``--fits`` new ``L x N x D`` float32 layers in a row
(random normal; ``N`` is not a compile bucket, so each call makes a padded copy; ``max_iter=2``, the solve is not
what is measured), reading each result before the next call, and prints the resident set after each call and the
process's peak. A warm-up fit of the same shape first, so the peak holds no compile.

Usage: python benchmarks/sweep_memory.py [--shape 4x12000x2048] [--fits 4]
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="4x12000x2048", help="L x N x D of each fit's X")
    ap.add_argument("--fits", type=int, default=4)
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import jax
    from measure import proc_status_bytes

    import lmprobe_jax.functional as F

    def mb(field: str) -> int:
        return proc_status_bytes(field) // 2**20

    L, N, D = (int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)

    def fit(i: int) -> None:
        X = rng.standard_normal((L, N + i, D), dtype=np.float32)
        jax.block_until_ready(F.fit_logistic(X, (X[0, :, 0] > 0).astype(int), max_iter=2).coef)

    fit(0)
    with open("/proc/self/clear_refs", "w") as refs:  # reset the peak: the warm-up compiled
        refs.write("5")
    for i in range(args.fits):
        fit(i)
        print(f"fit {i + 1}: resident {mb('VmRSS')} MB")
    print(f"peak {mb('VmHWM')} MB ({args.fits} fits of {L} x {N} x {D} float32, {L * N * D * 4 / 2**20:.0f} MB each)")


if __name__ == "__main__":
    main()
