"""Peak memory and time of scoring and projecting every layer: ``decision_function`` and ``pca_project``.

For each call, storage dtype of ``X`` (float32, bfloat16, float16) and input kind (a numpy array, or a JAX
array already on the device), a fresh process builds ``X`` (``LxNxD`` random normal, in that dtype) and a fit
made on a small sample of the same layers (``fit_logistic`` with C = 1, or ``fit_pca`` with --components),
then times the call on ``X``:

* ``first``: the first call (trace, and compile or a load from the persistent cache, included) and the peak
  of the process's resident set while it ran, over its size before it (``X`` and the fit built);
* ``warm``: the median of --repeats later calls and their peak over that same size (the high-water mark
  reset before them through ``/proc/self/clear_refs``), memory the allocator kept from the first call
  included: what a sweep that scores many layers holds;
* ``temp``: the compiled program's temporaries (XLA's ``memory_analysis``) for that input.

A numpy ``X`` is copied to the device by each call (a writeable array must not be read by an asynchronous
computation its owner may still write), so its peaks hold one more ``X`` than a JAX array's. Both programs
convert half precision a layer at a time; ``decision_function`` takes a float32 ``X`` in one batched product.
Pin the parent with taskset for the times.

Usage: python benchmarks/prediction_memory.py [--shape 8x20480x1024] [--dtypes float32 bfloat16 float16]
       [--inputs numpy jax] [--calls decision_function pca_project] [--components 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALLS = ("decision_function", "pca_project")


def child(call: str, dtype: str, kind: str, shape: tuple[int, int, int], components: int,
          repeats: int) -> dict:
    """One measurement in this (fresh) process; see the module doc."""
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp
    import numpy as np
    from measure import proc_status_bytes

    import lmprobe_jax.functional as F
    from lmprobe_jax.functional import _checks, _pca, _predict

    L, N, D = shape
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((L, 512, D), dtype=np.float32)
    if call == "decision_function":
        fit = F.fit_logistic(sample, rng.integers(0, 2, 512), C=1.0, max_iter=5)
        run = lambda X: F.decision_function(fit, X)
        program = lambda X: _predict._layer_scores.lower(fit.coef, _checks.solver_view(X))
    else:
        fit = F.fit_pca(sample, components)
        run = lambda X: F.pca_project(X, fit)
        program = lambda X: _pca._project.lower(_checks.solver_view(X), fit)
    X = np.empty(shape, jnp.dtype(dtype))
    for layer in range(L):  # a layer at a time: no float32 copy of the whole X before the call
        X[layer] = rng.standard_normal((N, D), dtype=np.float32)
    if kind == "jax":
        X = jax.block_until_ready(jnp.asarray(X))
    gc.collect()
    time.sleep(0.5)  # the host buffer a conversion released is returned on another thread
    base = proc_status_bytes("VmRSS")

    def calls(n):
        """(seconds of each of ``n`` calls, peak resident set over ``base`` while they ran)."""
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # the high-water mark restarts from the current resident set
        seconds = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(run(X))
            seconds.append(time.perf_counter() - t0)
        return seconds, proc_status_bytes("VmHWM") - base

    (first,), first_peak = calls(1)
    warm, warm_peak = calls(repeats)
    temp = program(_checks.as_jax_array(X)).compile().memory_analysis().temp_size_in_bytes
    return {"call": call, "dtype": dtype, "input": kind, "x_bytes": X.nbytes, "temp": temp,
            "first_s": first, "first_peak": first_peak,
            "warm_s": float(np.median(warm)), "warm_peak": warm_peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="8x20480x1024", help="L x N x D of the scored X")
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16", "float16"])
    ap.add_argument("--inputs", nargs="*", default=["numpy", "jax"], choices=["numpy", "jax"])
    ap.add_argument("--calls", nargs="*", default=list(CALLS), choices=CALLS)
    ap.add_argument("--components", type=int, default=16, help="k of the PCA fit pca_project uses")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.lower().split("x"))
    if len(shape) != 3:
        ap.error(f"--shape takes L x N x D, e.g. 8x20480x1024; got {args.shape!r}")
    if args.child:
        call, dtype, kind = args.child.split(",")
        print("RESULT", json.dumps(child(call, dtype, kind, shape, args.components, args.repeats)))
        return
    mb = 1 / 2**20
    print(f"X {args.shape}; peaks and temporaries in MB over the process before the call; times in s")
    print("| call | X dtype | input | X MB | temporaries | first call s | first peak | warm s | warm peak |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for call in args.calls:
        for dtype in args.dtypes:
            for kind in args.inputs:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", f"{call},{dtype},{kind}", "--shape", args.shape,
                     "--components", str(args.components), "--repeats", str(args.repeats)],
                    capture_output=True, text=True, check=False)
                line = next((s for s in out.stdout.splitlines() if s.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"{call} {dtype} {kind} failed:\n{out.stderr[-3000:]}")
                r = json.loads(line[len("RESULT "):])
                print(f"| {call} | {dtype} | {kind} | {r['x_bytes'] * mb:.0f} | {r['temp'] * mb:.0f} | "
                      f"{r['first_s']:.3f} | +{r['first_peak'] * mb:.0f} | {r['warm_s']:.3f} | "
                      f"+{r['warm_peak'] * mb:.0f} |", flush=True)


if __name__ == "__main__":
    main()
