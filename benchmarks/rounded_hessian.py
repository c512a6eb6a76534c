"""A softmax Hessian product's two products with ``X`` in float32 against bfloat16-rounded operands.

CG's Hessian product on a softmax layer is ``U = V X^T`` then ``U' X`` (``V`` ``(K, D)``, ``X`` ``(N, D)``):
``4 N D K`` flops, compute-bound on the CPU. :func:`lmprobe_jax.functional._precision.rounded_matmul` rounds
the operands to bfloat16 and sums in float32; how fast XLA runs it depends on the layout of the rounded
``X``: as it lies for both products, or with a second copy laid out as ``X^T`` for the first (what the
solver keeps, :func:`lmprobe_jax.functional._glm.rounded_operands`). Each form is compiled once and timed in
turns (medians of ``--repeats``); prints milliseconds and GFLOP/s per Hessian product, one pinned core.

Usage: taskset -c 1 python benchmarks/rounded_hessian.py [--classes 300 2000] [--rows 8000] [--features 576]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from measure import in_rounds

from lmprobe_jax.functional._glm import rounded_operands
from lmprobe_jax.functional._precision import matmul, rounded_matmul


def forms(X: jax.Array, V: jax.Array) -> dict:
    """Zero-argument compiled callables, one per form of the Hessian product's two products."""
    xt_r, x_r = rounded_operands(X)
    x_cast = X.astype(jnp.bfloat16)
    exact = jax.jit(lambda x, v: matmul(matmul(v, x.T), x))
    one_copy = jax.jit(lambda x, v: rounded_matmul(rounded_matmul(v, x.T), x))
    two_copies = jax.jit(lambda xt, x, v: rounded_matmul(rounded_matmul(v, xt), x))
    return {
        "float32": lambda: exact(X, V),
        "bfloat16, X as it lies": lambda: one_copy(x_cast, V),
        "bfloat16, X^T and X (the solver's)": lambda: two_copies(xt_r, x_r, V),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="*", default=[300, 2000])
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--features", type=int, default=576)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(args.rows, args.features)), jnp.float32)
    print("| K | form | ms | GFLOP/s | float32 / this |\n|---|---|---:|---:|---:|")
    for k in args.classes:
        V = jnp.asarray(rng.normal(size=(k, args.features)), jnp.float32)
        runs = forms(X, V)
        for run in runs.values():
            jax.block_until_ready(run())  # compiled before the rounds
        timings = in_rounds(runs, args.repeats)
        base = timings["float32"][1]
        flops = 4 * args.rows * args.features * k
        for name, (_, seconds) in timings.items():
            rate = flops / seconds / 1e9
            print(f"| {k} | {name} | {seconds * 1e3:.1f} | {rate:.0f} | {base / seconds:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
