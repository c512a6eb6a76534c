"""Peak memory of a streamed fit against its plan: ``fit_logistic`` (or another solver) on a float16 memory map.

For each shape ``LxNxD``, a float16 ``.npy`` memory map of that shape (random normal, written once into
--dir) is fitted by ``F.fit_logistic(X, y, memory_budget=B)`` with ``B`` the plan for --chunk layers a
chunk (``F._budget.chunk_bytes``), in a fresh process per shape: its program is compiled first on one
chunk, then the high-water mark is reset (``/proc/self/clear_refs``) and the full fit's peak RSS growth
(VmHWM - VmRSS before) is compared with the plan's peak (``plan_chunks(...).peak_bytes``). "Beyond the
chunks" is the growth less the two chunks (the one solved, the one read), in float32 layers: what the
solver itself held, against the plan's share for it (its copies of a layer and its work space).

With --store PATH (an activation store, e.g. from synthetic_store.py) instead of --shapes: the first
--fit-layers layers of the store, streamed by --solver (``fit_logistic``, or ``cross_validate_logistic``
with a 5-fold CV over C = 0.1, 1, 10 and the refit) within --budget (or the plan for --chunk layers a
chunk when --budget is not given), in a fresh process; the first call, compile included (no warm-up: a
solve of one layer of a large store takes minutes), so the growth also holds the compiler's memory, which
the plan does not count. The whole process's peak RSS (VmHWM) is printed too.

With --products NxD ..., instead: the two forms of a one-vector product ``X @ v`` (XLA's matrix-vector
kernel ``X @ v``; the row form ``v[None] @ X.T``), each paired with ``X^T @ u`` in a 20-step loop as the
solver's CG runs them: the compiled loop's temporaries (``memory_analysis``) and the time per product
pair (median of --repeats interleaved rounds; pin the process with taskset for a fair figure).

Usage: python benchmarks/streamed_memory.py [--dir /tmp/streamed-memory] [--shapes 4x40000x2048 ...]
       [--chunk 1] [--keep] [--products 3000x768 8192x4096 ... --repeats 9]
       [--store PATH --solver cross_validate_logistic --budget 2GB --fit-layers 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import numpy as np
import lmprobe_jax.functional as F
from lmprobe_jax_store import ActivationStore
path, k, settings = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
spec = getattr(F, settings["solver"])
kwargs = {"C": [0.1, 1.0, 10.0], "folds": 5} if settings["solver"] == "cross_validate_logistic" else {}
if settings["store"]:
    store = ActivationStore(path)
    y = store.labels
    X = F.layer_source(store, layers=list(range(settings["fit_layers"])))
else:
    X = np.load(path, mmap_mode="r")
    y = (np.arange(X.shape[1]) % 2).astype(int)
L, N, D = X.shape
workspace = F._streaming.default_workspace(N, D)
padded = spec is F.fit_logistic and F._logistic.same_settings_padded(N, D)
sizes = dict(extra_copies=spec.streamed_copies, workspace=workspace, padded_reads=padded)
budget = settings["budget"] or F._budget.chunk_bytes(k, N, D, **sizes) + 1
plan = F._budget.plan_chunks(L, N, D, budget=F._budget.memory_budget(budget), row_streaming=spec.streams_rows, **sizes)
k = plan.layers
if not settings["store"]:
    spec(X[:k + 1], y, memory_budget=budget, **kwargs)  # compile the chunk's program first
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark restarts from the current RSS
before = status("VmRSS")
started = time.process_time()
fit = spec(X, y, memory_budget=budget, **kwargs)
grown = status("VmHWM") - before
layer = F._checks.bucket_rows(N) * D * 4
chunks = 2 * k * (F._checks.bucket_rows(N) if padded else plan.rows) * D * 4  # the chunk (or rows) solved, the one read
converged = fit.converged if hasattr(fit, "converged") else fit.fit.converged
print("RESULT", plan.layers, plan.peak_bytes, grown, layer, chunks, int(np.sum(converged)), status("VmHWM"),
      before, round(time.process_time() - started), plan.rows)
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


def measure(path: Path, chunk: int, settings: dict) -> list[int]:
    """The child's ``RESULT`` figures for one memory map or store, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(chunk), json.dumps(settings)], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{path}: the child failed")
    return [int(v) for v in done.stdout.split("RESULT", 1)[1].split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/tmp/streamed-memory")
    parser.add_argument("--shapes", nargs="*", default=["4x40000x2048", "3x8000x4096", "3x120000x512"])
    parser.add_argument("--chunk", type=int, default=1, help="layers a chunk")
    parser.add_argument("--store", default=None, help="measure the first --fit-layers layers of this store instead")
    parser.add_argument("--solver", default="fit_logistic", choices=["fit_logistic", "cross_validate_logistic"])
    parser.add_argument("--budget", default=None, help="memory_budget (default: the plan for --chunk layers)")
    parser.add_argument("--fit-layers", type=int, default=3)
    parser.add_argument("--products", nargs="*", default=None, help="time the product forms at NxD instead")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--keep", action="store_true", help="keep the memory maps for another run")
    args = parser.parse_args()
    if args.products:
        products(args.products, args.repeats)
        return
    settings = {"solver": args.solver, "budget": args.budget, "store": args.store is not None,
                "fit_layers": args.fit_layers}
    head = ("| shape L x N x D | layers a chunk | one float32 layer (padded) | plan peak | measured growth | "
            "beyond the two chunks: planned / measured | growth / plan |")
    if args.store:
        print(head + " process peak RSS (before the fit) | CPU s | converged | rows a block |\n"
              + "|" + "---|" * 11)
        from lmprobe_jax_store import ActivationStore

        store = ActivationStore(args.store)
        text = f"{args.fit_layers} of {len(store.layers)} x {store.n_prompts} x {store.hidden_size} ({args.solver})"
        row(text, measure(Path(args.store), args.chunk, settings))
        return
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    print(head + "\n|---|---|---|---|---|---|---|")
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split("x"))
        path = folder / f"{text}.npy"
        write_map(path, shape)
        row(text, measure(path, args.chunk, settings)[:6])
        if not args.keep:
            path.unlink()


def row(text: str, figures: list[int]) -> None:
    layers, plan, grown, layer, chunks, converged, *store = figures
    extra = f" {store[0] / 1e9:.2f} GB ({store[1] / 1e9:.2f} GB) | {store[2]} | {converged} | {store[3]} |" if store else ""
    print(f"| {text} | {layers} | {layer / 1e6:.0f} MB | {plan / 1e6:.0f} MB | {grown / 1e6:.0f} MB | "
          f"{(plan - chunks) / layer:.2f} / {(grown - chunks) / layer:.2f} layers | {grown / plan:.2f} |{extra}",
          flush=True)


if __name__ == "__main__":
    main()
