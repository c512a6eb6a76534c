"""Sums of products over samples: XLA:CPU's fused reduction against the matrix-vector product the solvers use.

XLA fuses the elementwise products that make an array into a reduction of it; on the CPU (jaxlib 0.10) YNNPACK
runs such a fusion 10-40x slower than the same sum written as a product with a vector
(:func:`lmprobe_jax.functional._precision.row_sums`). Each form is timed as a call of its own (medians of 50,
dispatch included) and 200 times inside one ``fori_loop`` (medians of 5; no dispatch, but XLA fuses the loop's
own arithmetic differently, which hid the largest case), on the shapes the solvers meet once an iteration: a
softmax curvature's row sums (the Nystrom scales), a binary line search's curvature and the intercept parts of
a gradient and a Hessian product, each under the solvers' vmap over problems. Prints microseconds a sum.

Usage: taskset -c 1 python benchmarks/fused_reductions.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from measure import first_call, in_rounds

from lmprobe_jax.functional._precision import row_sums, vdot

REPEATS = 200


def looped_us(form, *arrays) -> float:
    """Microseconds per evaluation of ``form(*arrays)`` inside a ``fori_loop`` that changes its first array
    each time (no dispatch counted, nothing hoisted out of the loop)."""

    def loop(*arrays):
        def body(_, carry):
            total, first = carry
            out = form(first, *arrays[1:])
            return total + jnp.sum(out), first * (1 + 1e-9 * jnp.sum(out))

        return jax.lax.fori_loop(0, REPEATS, body, (jnp.zeros((), arrays[0].dtype), arrays[0]))[0]

    return _median_s(jax.jit(loop), arrays, 5) / REPEATS * 1e6


def called_us(form, *arrays) -> float:
    """Microseconds per call of ``jit(form)`` (dispatch included)."""
    return _median_s(jax.jit(form), arrays, 50) * 1e6


def _median_s(run, arrays, rounds: int) -> float:
    """Median seconds of ``run(*arrays)`` over ``rounds`` calls after a first (its compile)."""
    call = lambda: run(*arrays)
    first_call(call)
    return in_rounds({"run": call}, rounds)["run"][1]


def main() -> None:
    rng = np.random.default_rng(0)

    def arrays(*shape, n=2):
        return [jnp.asarray(rng.random(shape, dtype=np.float32)) for _ in range(n)]

    cases = [
        ("softmax curvature's row sums, vmapped (1, 300, 8192)", arrays(1, 300, 8192),
         jax.vmap(lambda p, w: jnp.sum(w * p * (1 - p), axis=-1)),
         jax.vmap(lambda p, w: row_sums(w * p * (1 - p)))),
        ("binary line-search curvature, vmapped (1, 20480)", arrays(1, 20480, n=3),
         jax.vmap(lambda a, c, w: jnp.sum(w * c * a * a)), jax.vmap(lambda a, c, w: vdot(w * c * a, a))),
        ("a Hessian product's intercept part, vmapped (1, 20480)", arrays(1, 20480, n=3),
         jax.vmap(lambda a, c, w: jnp.sum(w * c * a, axis=-1)),
         jax.vmap(lambda a, c, w: row_sums(w * c * a))),
        ("softmax gradient's intercept part, vmapped (1, 300, 8192)", arrays(1, 300, 8192),
         jax.vmap(lambda p, w: jnp.sum(w * (p - 0.5), axis=-1)),
         jax.vmap(lambda p, w: row_sums(w * (p - 0.5)))),
    ]
    print(f"{'sum':58s} {'called: reduction / product us':>31s} {'in a loop: reduction / product us':>34s}")
    for name, data, fused, product in cases:
        called = called_us(fused, *data), called_us(product, *data)
        looped = looped_us(fused, *data), looped_us(product, *data)
        print(f"{name:58s} {called[0]:10.1f} / {called[1]:8.1f} {called[0] / called[1]:5.1f}x "
              f"{looped[0]:13.1f} / {looped[1]:8.1f} {looped[0] / looped[1]:5.1f}x", flush=True)


if __name__ == "__main__":
    main()
