"""Where a softmax solve's passes go: the engine's phases and preconditioners, each forced, on one Zipf layer.

Runs the solver core (``_newton_cg.minimise``) on regime_data's ``softmax-K`` layer at C=1 with: Newton-CG
from the first step with the class-scaled Nystrom preconditioner (the old softmax default), with none, or
with a class-diagonal one (the Nystrom scaling with no Gram part); L-BFGS (5, 10, 20, 30 pairs) with and
without the phase switch to Newton-CG, with no preconditioner, the Nystrom one or the class-diagonal one as
its initial matrix. Prints passes over X, iterations, CG steps, warm CPU time and the relative objective
gap (float64) to the best any variant reached. One pinned core.

Usage: python benchmarks/softmax_phases.py SCALE K [name filters ...]
  e.g. python benchmarks/softmax_phases.py 0.5 300 plain nys
"""

from __future__ import annotations

import os
import sys
import time

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np
from regime_data import regime
from threadpoolctl import threadpool_limits

from lmprobe_jax.functional._glm import GLM, Params
from lmprobe_jax.functional._multinomial import SOFTMAX
from lmprobe_jax.functional._newton_cg import Settings, minimise, warm_start
from lmprobe_jax.functional._nystrom import NystromApprox, nystrom_gram
from lmprobe_jax.functional._preconditioners import identity, nystrom
from lmprobe_jax.functional._products import products

# name: (L-BFGS pairs (0: Newton-CG from the first step), preconditioner, phase switch after this many
# quasi-Newton iterations (10 000: never))
VARIANTS = {
    "Newton-CG, Nystrom (the old default)": (0, "nystrom", 10),
    "Newton-CG, none": (0, "none", 10),
    "Newton-CG, class-diagonal": (0, "diagonal", 10),
    "L-BFGS 10 + switch, none (the new default on flat layers)": (10, "none", 10),
    "L-BFGS 10 + switch, Nystrom": (10, "nystrom", 10),
    "L-BFGS 10 + switch, class-diagonal": (10, "diagonal", 10),
    "L-BFGS 10, none": (10, "none", 10_000),
    "L-BFGS 10, Nystrom": (10, "nystrom", 10_000),
    "L-BFGS 5 + switch, none": (5, "none", 10),
    "L-BFGS 20 + switch, none": (20, "none", 10),
    "L-BFGS 30 + switch, none": (30, "none", 10),
}


def main() -> None:
    scale, k_name, filters = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
    X, y, _ = regime(f"softmax-{k_name}", scale)
    codes = np.unique(y, return_inverse=True)[1]
    k = int(codes.max()) + 1
    x = jnp.asarray(X[0])
    glm = GLM(SOFTMAX, True, products(16))
    data = glm.data(x, jnp.asarray(codes), jnp.ones(x.shape[0]), 1.0)
    approx = nystrom_gram(x, min(64, x.shape[1]), fit_intercept=True)
    probe = nystrom_gram(x, 8, fit_intercept=True, seed=1)
    print(f"probe ratio {float(probe.eig[0] / probe.eig[-1]):.1f}")
    mean_eig = (jnp.sum(x * x) + x.shape[0]) / (x.shape[1] + 1)  # the Gram's mean eigenvalue
    preconditioners = {
        "none": identity(),
        "nystrom": nystrom(glm, approx),
        # Zero basis, one eigenvalue: the Nystrom preconditioner's per-class scaling and nothing else.
        "diagonal": nystrom(glm, NystromApprox(jnp.zeros((1, x.shape[1])), jnp.zeros(1), jnp.full(1, mean_eig))),
    }

    def run(memory: int, which: str, switch_after: int) -> dict:
        settings = Settings(1e-7, 1e-7, 500, 250, memory, 8, 0.5, switch_after, 0)

        @jax.jit
        def solve():
            begin, z0 = warm_start(glm, data, glm.null_point(data, k),
                                   Params(jnp.zeros((k, x.shape[1])), jnp.zeros(k)))
            return minimise(glm, data, begin, z0, jnp.int32(1), precond=preconditioners[which], settings=settings,
                            newton_first=memory == 0)

        jax.block_until_ready(solve())
        t0 = time.process_time()
        r = jax.block_until_ready(solve())
        t = time.process_time() - t0
        W, b = np.asarray(r.coef, np.float64), np.asarray(r.intercept, np.float64)
        z = np.asarray(x, np.float64) @ W.T + b
        z -= z.max(1, keepdims=True)
        F = np.sum(np.log(np.exp(z).sum(1)) - z[np.arange(len(codes)), codes]) + 0.5 * np.sum(W**2)
        return {"cpu s": round(t, 2), "passes": int(r.n_passes), "iterations": int(r.n_iter), "CG": int(r.n_cg),
                "converged": bool(r.converged), "F": F}

    results = {}
    with threadpool_limits(1):
        for name, variant in VARIANTS.items():
            if filters and not any(f in name for f in filters):
                continue
            results[name] = run(*variant)
            print(name, results[name], flush=True)
    best = min(r["F"] for r in results.values())
    print("| variant | passes | iterations | CG steps | warm CPU s | gap | converged |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['passes']} | {r['iterations']} | {r['CG']} | {r['cpu s']} | {(r['F'] - best) / best:.1e} | "
              f"{r['converged']} |")


if __name__ == "__main__":
    main()
