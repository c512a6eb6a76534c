"""Layer-sharded fits on CPU host devices: 1 device against 4 (XLA_FLAGS), same data, same cores.

Each device count runs in its own process (XLA fixes the device count when JAX starts), on the same
synthetic layers (synthetic.make_layers, 12 x 3000 x 768 by default): fit_logistic (C=1) and
sweep_activations (5-fold CV at C=1 + refit) through ``mesh=layer_mesh()``, plus the plain in-memory
fit_logistic without a mesh in the 1-device process. Host devices are threads sharing the machine's
cores: 4 of them on 2 cores can at best use both cores (XLA's CPU client also runs one device's ops on
several threads), so this measures the mesh's overhead and any gain from running layers concurrently,
not a 4x speed-up. First call (compile included) and the warm median of --repeats are reported apart.

Usage: python benchmarks/mesh_cpu.py [--layers 12 --train 3000 --features 768] [--repeats 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = """
import json, sys, time
import numpy as np, jax
sys.path.insert(0, {bench!r})
from synthetic import make_layers
import lmprobe_jax.functional as F
from lmprobe_jax import sweep_activations
X, y = make_layers({layers}, {train}, {features})
mesh = F.layer_mesh()
def timed(fn):
    t0 = time.perf_counter(); out = jax.block_until_ready(fn()); first = time.perf_counter() - t0
    warm = []
    for _ in range({repeats}):
        t0 = time.perf_counter(); out = jax.block_until_ready(fn()); warm.append(time.perf_counter() - t0)
    return out, first, float(np.median(warm))
res = {{"devices": len(jax.devices())}}
fit, res["logistic_first"], res["logistic_warm"] = timed(lambda: F.fit_logistic(X, y, mesh=mesh))
res["coef"] = np.asarray(fit.coef).tolist()
sweep, res["sweep_first"], res["sweep_warm"] = timed(
    lambda: sweep_activations(X, y, classifier="logistic_regression", folds=5, mesh=mesh).accuracy)
res["accuracy"] = np.asarray(sweep).tolist()
if len(jax.devices()) == 1:
    plain, res["plain_first"], res["plain_warm"] = timed(lambda: F.fit_logistic(X, y))
    res["plain_coef"] = np.asarray(plain.coef).tolist()
print("RESULT", json.dumps(res))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--features", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    code = CHILD.format(bench=here, layers=args.layers, train=args.train, features=args.features,
                        repeats=args.repeats)
    results = {}
    for devices in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(done.stderr[-4000:])
        results[devices] = json.loads(done.stdout.split("RESULT", 1)[1])
    import numpy as np

    one, four = results[1], results[4]
    coef1, coef4 = np.asarray(one["coef"]), np.asarray(four["coef"])
    gap = float(np.max(np.abs(coef4 - coef1)) / np.max(np.abs(coef1)))
    plain_gap = float(np.max(np.abs(coef1 - np.asarray(one["plain_coef"]))) / np.max(np.abs(coef1)))
    acc_gap = float(np.max(np.abs(np.asarray(four["accuracy"]) - np.asarray(one["accuracy"]))))
    shape = f"{args.layers} x {args.train} x {args.features}"
    table = "\n".join([
        "| workload | 1 device: first / warm | 4 host devices: first / warm | 4 vs 1 (warm) | note |",
        "|---|---|---|---|---|",
        (f"| fit_logistic C=1, mesh, {shape} | {one['logistic_first']:.2f} / {one['logistic_warm']:.2f} s | "
         f"{four['logistic_first']:.2f} / {four['logistic_warm']:.2f} s | "
         f"{four['logistic_warm'] / one['logistic_warm']:.2f}x | coef gap 4 vs 1 device {gap:.1e} |"),
        (f"| sweep (5-fold CV, C=1, refit), mesh | {one['sweep_first']:.2f} / {one['sweep_warm']:.2f} s | "
         f"{four['sweep_first']:.2f} / {four['sweep_warm']:.2f} s | {four['sweep_warm'] / one['sweep_warm']:.2f}x | "
         f"fold accuracy gap {acc_gap:.1e} |"),
        (f"| fit_logistic C=1, no mesh (in memory) | {one['plain_first']:.2f} / {one['plain_warm']:.2f} s | | | "
         f"coef gap to the 1-device mesh {plain_gap:.1e} |"),
    ])
    print(table)
    if args.record:
        from recording import record

        load = os.getloadavg()[0]
        record("layer-sharded mesh on CPU host devices (benchmarks/mesh_cpu.py)",
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared, load {load:.1f}", table)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
