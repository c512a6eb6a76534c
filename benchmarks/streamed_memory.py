"""Peak memory of a streamed fit against its plan: ``fit_logistic`` on a float16 memory map.

For each shape ``LxNxD``, a float16 ``.npy`` memory map of that shape (random normal, written once into
--dir) is fitted by ``F.fit_logistic(X, y, memory_budget=B)`` with ``B`` the plan for --chunk layers a
chunk (``F._budget.chunk_bytes``), in a fresh process per shape: its program is compiled first on one
chunk, then the high-water mark is reset (``/proc/self/clear_refs``) and the full fit's peak RSS growth
(VmHWM - VmRSS before) is compared with the plan's peak (``plan_chunks(...).peak_bytes``). "Beyond the
chunks" is the growth less the two chunks (the one solved, the one read), in float32 layers: what the
solver itself held, against the plan's share for it (its copies of a layer and its work space).

With --products NxD ..., instead: the two forms of a one-vector product ``X @ v`` (XLA's matrix-vector
kernel ``X @ v``; the row form ``v[None] @ X.T``), each paired with ``X^T @ u`` in a 20-step loop as the
solver's CG runs them: the compiled loop's temporaries (``memory_analysis``) and the time per product
pair (median of --repeats interleaved rounds; pin the process with taskset for a fair figure).

Usage: python benchmarks/streamed_memory.py [--dir /tmp/streamed-memory] [--shapes 4x40000x2048 ...]
       [--chunk 1] [--keep] [--products 3000x768 8192x4096 ... --repeats 9]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys
import numpy as np
import lmprobe_jax.functional as F
X = np.load(sys.argv[1], mmap_mode="r")
L, N, D = X.shape
k = int(sys.argv[2])
y = (np.arange(N) % 2).astype(int)
spec = F.fit_logistic
workspace = F._streaming.default_workspace(N, D)
padded = F._logistic.same_settings_padded(N, D)
sizes = dict(extra_copies=spec.streamed_copies, workspace=workspace, padded_reads=padded)
budget = F._budget.chunk_bytes(k, N, D, **sizes) + 1
plan = F._budget.plan_chunks(L, N, D, budget=budget, **sizes)
F.fit_logistic(X[:k + 1], y, memory_budget=budget)  # compile the chunk's program first
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark restarts from the current RSS
before = status("VmRSS")
fit = F.fit_logistic(X, y, memory_budget=budget)
grown = status("VmHWM") - before
layer = F._checks.bucket_rows(N) * D * 4
chunks = 2 * k * (F._checks.bucket_rows(N) if padded else N) * D * 4  # the chunk solved, the chunk read
print("RESULT", plan.layers, plan.peak_bytes, grown, layer, chunks, int(np.sum(fit.converged)))
"""


def write_map(path: Path, shape: tuple[int, int, int]) -> None:
    if path.exists():
        return
    X = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16, shape=shape)
    rng = np.random.default_rng(0)
    for layer in range(shape[0]):
        X[layer] = rng.standard_normal(shape[1:], dtype=np.float32)
    X.flush()
    del X
    path.with_suffix(".tmp.npy").rename(path)


def products(shapes: list[str], repeats: int) -> None:
    import time

    import jax
    import jax.numpy as jnp

    highest = jax.lax.Precision.HIGHEST
    forms = {"X @ v": lambda X, v: jnp.matmul(X, v, precision=highest),
             "v @ X^T": lambda X, v: jnp.matmul(v[None], X.T, precision=highest)[0]}

    def loop(form):
        def run(X, v):
            def body(_, acc):  # X @ acc, then X^T of it: a CG step's product pair
                return acc + 1e-9 * jnp.matmul(form(X, acc), X, precision=highest)
            return jax.lax.fori_loop(0, 20, body, v)
        return jax.jit(run)

    print("| X (N x D) | " + " | ".join(f"{name}: temporaries, ms a pair" for name in forms) + " |")
    print("|---|" + "---|" * len(forms))
    for text in shapes:
        n, d = (int(s) for s in text.split("x"))
        X = jnp.asarray(np.random.default_rng(0).standard_normal((n, d), dtype=np.float32))
        v = jnp.ones(d, jnp.float32)
        runs = {name: loop(form) for name, form in forms.items()}
        temp = {name: f.lower(X, v).compile().memory_analysis().temp_size_in_bytes for name, f in runs.items()}
        times = {name: [] for name in runs}
        for f in runs.values():
            f(X, v).block_until_ready()
        for _ in range(repeats):
            for name, f in runs.items():
                t0 = time.perf_counter()
                f(X, v).block_until_ready()
                times[name].append((time.perf_counter() - t0) / 20)
        print(f"| {text} | " + " | ".join(f"{temp[k] / 1e6:.0f} MB, {np.median(times[k]) * 1e3:.2f}" for k in runs)
              + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/tmp/streamed-memory")
    parser.add_argument("--shapes", nargs="*", default=["4x40000x2048", "3x8000x4096", "3x120000x512"])
    parser.add_argument("--chunk", type=int, default=1, help="layers a chunk")
    parser.add_argument("--products", nargs="*", default=None, help="time the product forms at NxD instead")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--keep", action="store_true", help="keep the memory maps for another run")
    args = parser.parse_args()
    if args.products:
        products(args.products, args.repeats)
        return
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    print("| shape L x N x D | layers a chunk | one float32 layer (padded) | plan peak | measured growth | "
          "beyond the two chunks: planned / measured | growth / plan |")
    print("|---|---|---|---|---|---|---|")
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split("x"))
        path = folder / f"{text}.npy"
        write_map(path, shape)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.chunk)], env=env, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{text}: the child failed")
        layers, plan, grown, layer, chunks, _ = (int(v) for v in done.stdout.split("RESULT", 1)[1].split())
        print(f"| {text} | {layers} | {layer / 1e6:.0f} MB | {plan / 1e6:.0f} MB | {grown / 1e6:.0f} MB | "
              f"{(plan - chunks) / layer:.2f} / {(grown - chunks) / layer:.2f} layers | {grown / plan:.2f} |",
              flush=True)
        if not args.keep:
            path.unlink()


if __name__ == "__main__":
    main()
