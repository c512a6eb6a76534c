"""First-call latency: compile counts, cold and warm times, and memory maps per workload, each in a fresh process.

Every measurement runs in a new Python process pinned to one core (``taskset``-style affinity, one BLAS
thread), so "cold" means what a user's first call costs: tracing, XLA compilation (or loading from the
persistent compilation cache) and the solve. Three cache states are measured for each workload:

* ``off``: the persistent compilation cache disabled (``LMPROBE_JAX_COMPILATION_CACHE=0``);
* ``disk-cold``: the cache on, pointed at an empty directory (the first process after installing);
* ``disk-warm``: the same directory again, now filled by the previous process.

Workloads:

* ``demo``: the demo's cross-validated sweep (``sweep_activations`` on SmolLM2-135M's 30 layers x 600
  statements x 576 features, 5 folds grouped by city x 4 ``C``), from the demo's activation store
  (extracted once with the model, then read from the cache);
* ``sizes``: ``fit_logistic`` on 2-D data of ``N`` = 1000, 1001, ..., and ``cross_validate_logistic`` on a
  few sizes, in one process: compiles and new memory maps per new size (the ``vm.max_map_count`` budget);
* ``many``: ``fit_logistic`` on 32 row counts in new buckets, in one process: whether the maps stay bounded.

Compiles are counted with ``jax.monitoring`` (backend compile events; persistent-cache hits apart).
Prints a table; ``--record`` appends it to RESULTS.md.

Usage: python benchmarks/first_call.py [--only demo sizes many] [--repeats 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _maps() -> int:
    with open("/proc/self/maps") as handle:
        return sum(1 for _ in handle)


class _Counter:
    """Backend compiles and persistent-cache hits, from jax.monitoring events."""

    def __init__(self):
        import jax.monitoring

        self.compiles = 0
        self.compile_s = 0.0
        self.cache_hits = 0
        self.trace_s = 0.0
        self.lower_s = 0.0

        def on_duration(event, duration, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                self.compiles += 1
                self.compile_s += duration
            elif event == "/jax/core/compile/jaxpr_trace_duration":
                self.trace_s += duration
            elif event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
                self.lower_s += duration

        def on_event(event, **kwargs):
            if event == "/jax/compilation_cache/cache_hits":
                self.cache_hits += 1

        jax.monitoring.register_event_duration_secs_listener(on_duration)
        jax.monitoring.register_event_listener(on_event)

    def snapshot(self) -> dict:
        return {"compiles": self.compiles, "compile_s": self.compile_s, "cache_hits": self.cache_hits,
                "trace_s": self.trace_s, "lower_s": self.lower_s}


def demo_activations():
    """The demo's (X (30, 600, 576) float32, labels, groups): SmolLM2 over the cities statements, through
    the same activation cache as ``lmprobe-jax demo``."""
    import lmprobe_jax_extract as extract
    from lmprobe_jax.cli import smollm2_directory
    from lmprobe_jax.datasets import cities
    from lmprobe_jax_store import cache_root

    data = cities(300)
    store = extract.extract_activations(
        smollm2_directory(), data.prompts, layers="all", pooling="last_token",
        cache_dir=cache_root() / "activations", batch_size=32, labels=data.labels,
        metadata=[{"city": c, "country": k} for c, k in zip(data.cities, data.countries, strict=True)],
        progress=False,
    )
    names = [layer for layer in store.layers if layer != "embeddings"]
    return store.stack(names, "last_token"), data.labels, data.groups


def child_demo(repeats: int) -> dict:
    import numpy as np

    path = os.environ["FIRST_CALL_DATA"]
    with np.load(path) as data:
        X, y, groups = data["X"], data["y"], data["groups"]
    counter = _Counter()
    from lmprobe_jax.sweep import sweep_activations

    def run():
        return sweep_activations(X, y, classifier="logistic_regression_cv", C=[0.01, 0.1, 1.0, 10.0], folds=5,
                                 groups=groups, random_state=0)

    maps0 = _maps()
    t0 = time.perf_counter()
    first = run()
    cold = time.perf_counter() - t0
    after_cold = counter.snapshot()
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        again = run()
        warm.append(time.perf_counter() - t0)
    assert np.array_equal(first.accuracy, again.accuracy)
    return {"cold_s": cold, "warm_s": float(np.median(warm)), **after_cold,
            "warm_compiles": counter.compiles - after_cold["compiles"], "maps": _maps() - maps0,
            "best_layer": first.best_layer, "best_acc": float(first.accuracy.mean(1).max())}


def child_sizes(repeats: int) -> dict:
    import numpy as np

    import lmprobe_jax.functional as F

    del repeats
    counter = _Counter()
    rng = np.random.default_rng(0)
    D = 64
    w = rng.normal(size=D)
    out = {"fit": [], "cv": []}
    for kind, sizes in (("fit", (1000, 1001, 1013, 1100, 1500, 2000)), ("cv", (600, 601, 650, 700))):
        for n in sizes:
            X = rng.normal(size=(n, D)).astype(np.float32)
            y = (X @ w + rng.normal(size=n) > 0).astype(int)
            before, maps0 = counter.snapshot(), _maps()
            t0 = time.perf_counter()
            if kind == "fit":
                fit = F.fit_logistic(X, y, 1.0)
                np.asarray(fit.coef)
            else:
                res = F.cross_validate_logistic(X[None].repeat(2, 0), y, (0.1, 1.0, 10.0), folds=5)
                np.asarray(res.fit.coef)
            seconds = time.perf_counter() - t0
            now = counter.snapshot()
            out[kind].append({"n": n, "s": seconds, "compiles": now["compiles"] - before["compiles"],
                              "maps": _maps() - maps0})
    return out


def child_many(repeats: int) -> dict:
    """fit_logistic on 32 row counts from 100 to ~8000 (each in a new bucket): memory maps as they grow."""
    import numpy as np

    import lmprobe_jax.functional as F

    del repeats
    rng = np.random.default_rng(0)
    maps0, out = _maps(), []
    for i, n in enumerate(np.unique(np.geomspace(100, 8000, 32).astype(int))):
        X = rng.normal(size=(n, 32)).astype(np.float32)
        np.asarray(F.fit_logistic(X, (X[:, 0] > 0).astype(int), 1.0).coef)
        out.append({"fits": i + 1, "n": int(n), "maps": _maps() - maps0})
    return {"many": out}


def run_child(workload: str, cache: str, cache_dir: str, data_path: str, repeats: int) -> dict:
    env = dict(os.environ, FIRST_CALL_DATA=data_path, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    # The library's default cache (and its ahead-of-time programs) under a fresh root per run of this
    # script; versions without a default turn JAX's cache on explicitly, as the CLI did.
    env["LMPROBE_JAX_CACHE"] = cache_dir
    env["LMPROBE_JAX_COMPILATION_CACHE"] = "0" if cache == "off" else ""
    explicit = ("import lmprobe_jax.compilation as c; hasattr(c, 'default_compilation_cache') or "
                f"c.enable_compilation_cache({cache_dir!r} + '/jax'); ")
    code = (f"import os, json, sys; os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}}); "
            f"sys.path.insert(0, {HERE!r}); import first_call; "
            + ("" if cache == "off" else explicit)
            +
            f"print('RESULT', json.dumps(first_call.child_{workload}({repeats})))")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child {workload}/{cache} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[0][7:]), "process_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["demo", "sizes"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    import numpy as np

    from lmprobe_jax_store import cache_root

    data_path = str(cache_root() / "bench" / "first_call_demo.npz")
    if "demo" in args.only and not os.path.exists(data_path):
        X, y, groups = demo_activations()
        os.makedirs(os.path.dirname(data_path), exist_ok=True)
        np.savez(data_path, X=np.asarray(X, np.float32), y=np.asarray(y), groups=np.asarray(groups))
    lines = []
    with tempfile.TemporaryDirectory() as cache_dir:
        if "demo" in args.only:
            lines += ["Demo CV sweep (30 layers x 600 x 576, 5 grouped folds x 4 C), a fresh process each, one core:",
                      "", ("| persistent cache | cold first call | warm (median) | cold / warm | compiles (cold) "
                           "| cache hits | compile s | trace s | lower s | compiles (warm calls) | new memory maps |"),
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for cache in ("off", "disk-cold", "disk-warm"):
                r = run_child("demo", cache, os.path.join(cache_dir, "demo"), data_path, args.repeats)
                lines.append(f"| {cache} | {r['cold_s']:.2f} s | {r['warm_s']:.3f} s | {r['cold_s'] / r['warm_s']:.1f}x "
                             f"| {r['compiles']} | {r['cache_hits']} | {r['compile_s']:.2f} | {r['trace_s']:.2f} | {r['lower_s']:.2f} "
                             f"| {r['warm_compiles']} | {r['maps']} |")
                print(lines[-1], flush=True)
            lines.append(f"\nBest layer {r['best_layer']}, mean CV accuracy {r['best_acc']:.3f}.")
        if "sizes" in args.only:
            r = run_child("sizes", "off", "", data_path, args.repeats)
            lines += ["", "New sizes in one process (persistent cache off), 64 features, one core:", "",
                      "| call | N | seconds | compiles | new memory maps |", "|---|---:|---:|---:|---:|"]
            for kind, label in (("fit", "fit_logistic (N, 64), C=1"), ("cv", "cross_validate_logistic (2, N, 64), 3 C x 5 folds")):
                for row in r[kind]:
                    lines.append(f"| {label} | {row['n']} | {row['s']:.2f} | {row['compiles']} | {row['maps']} |")
        if "many" in args.only:
            for cache in ("off", "disk-cold"):
                r = run_child("many", cache, os.path.join(cache_dir, "many"), data_path, args.repeats)
                rows = [row for row in r["many"] if row["fits"] % 8 == 0]
                lines += ["", f"32 row buckets in one process, fit_logistic (N, 32), persistent cache {cache}: new memory "
                          "maps after " + ", ".join(f"{row['fits']} fits: {row['maps']}" for row in rows)]
                print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.record:
        sys.path.insert(0, HERE)
        from recording import record

        record("first-call latency: compiles, cold and warm, memory maps", "CPU, one core pinned per process", table)


if __name__ == "__main__":
    main()
