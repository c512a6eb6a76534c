"""lmprobe 0.10.3 against lmprobe-jax, end to end: Probe.sweep_layers over every layer of SmolLM2-135M.

Both libraries in one process (install both: `pip install lmprobe==0.10.3` next to this package), the
same model directory, the same prompts (the demo's city statements, split by city: --train-cities for
training, the rest for testing), the same classifier ("logistic_regression", C=1, each library's per-layer
standardisation), torch and BLAS limited to --threads threads and pinned. Each library starts from an
empty activation cache of its own (lmprobe: LMPROBE_CACHE_DIR; lmprobe-jax: cache_dir) in a temporary
directory. Timed: sweep_layers (one extraction pass + a probe per layer), then result.score on the test
prompts (one more extraction pass + scoring). ``--rounds`` alternate the libraries' order, each round
from empty caches; wall and CPU (process) time are both kept: on one pinned thread the CPU time is the
work, which a shared machine's load does not stretch. Printed: median times and ratios, per-layer test
accuracy of both and the largest difference, the best layer of each, and the bytes each cache holds.

Usage: python benchmarks/vs_lmprobe.py [--train-cities 200] [--threads 1] [--rounds 1] [--record]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from city_split import city_split, pin_threads
from recording import record


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-cities", type=int, default=300)
    parser.add_argument("--train-cities", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    pin_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="vs_lmprobe."))
    os.environ["LMPROBE_CACHE_DIR"] = str(tmp / "lmprobe_cache")  # before lmprobe reads it

    import lmprobe
    import lmprobe.cache

    from lmprobe_jax import Probe
    from lmprobe_jax.cli import smollm2_directory

    model = str(smollm2_directory())
    pos, neg, test, y_test = city_split(args.n_cities, args.train_cities)
    common = {"layers": "all", "classifier": "logistic_regression", "batch_size": args.batch_size}

    runs = {
        "lmprobe 0.10.3": lambda cache: lmprobe.Probe.sweep_layers(model, pos, neg, backend="local", **common),
        "lmprobe-jax": lambda cache: Probe.sweep_layers(model, pos, neg, cache_dir=cache, progress=False, **common),
    }
    clocks = (time.perf_counter, time.process_time)
    timings: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    scores, sizes = {}, {}
    with threadpool_limits(args.threads):
        for r in range(args.rounds):
            for name, run in (runs.items() if r % 2 == 0 else reversed(runs.items())):
                cache = tmp / f"{name.split()[0]}-{r}"
                lmprobe.cache.set_cache_backend(str(cache))  # lmprobe keeps its backend once built
                start = [clock() for clock in clocks]
                result = run(cache)
                fitted = [clock() for clock in clocks]
                scores[name] = result.score(test, y_test)
                done = [clock() for clock in clocks]
                # (sweep_layers, score) x (wall, CPU)
                timings[name].append(np.subtract([fitted, done], [start, fitted]))
                sizes[name] = tree_bytes(cache)
                print(name, f"round {r}: wall / CPU s", timings[name][-1].round(1).tolist(), flush=True)
    layers = sorted(scores["lmprobe-jax"])
    ours = np.array([scores["lmprobe-jax"][layer] for layer in layers])
    theirs = np.array([scores["lmprobe 0.10.3"][layer] for layer in layers])
    median = {name: np.median(np.array(t), axis=0) for name, t in timings.items()}
    lines = [
        (
            f"SmolLM2-135M-Instruct, {len(pos) + len(neg)} training / {len(test)} test statements (split by city), "
            f"30 layers, logistic_regression; {args.threads} thread(s) pinned; medians of {args.rounds} "
            "alternating round(s)"
        ),
        "",
        "| library | sweep_layers wall s | CPU s | score wall s | CPU s | cache bytes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in median.items():
        lines.append(f"| {name} | {m[0, 0]:.1f} | {m[0, 1]:.1f} | {m[1, 0]:.1f} | {m[1, 1]:.1f} | {sizes[name]:,} |")
    a, b = median["lmprobe 0.10.3"], median["lmprobe-jax"]
    lines += [
        "",
        (
            f"lmprobe-jax vs lmprobe: sweep_layers {a[0, 0] / b[0, 0]:.1f}x wall, {a[0, 1] / b[0, 1]:.1f}x CPU; "
            f"score {a[1, 0] / b[1, 0]:.1f}x wall, {a[1, 1] / b[1, 1]:.1f}x CPU; cache "
            f"{sizes['lmprobe 0.10.3'] / max(sizes['lmprobe-jax'], 1):.1f}x smaller. Test accuracy per layer: "
            f"largest difference {np.max(np.abs(ours - theirs)):.3f}; best layer {layers[int(np.argmax(ours))]} "
            f"({ours.max():.3f}) vs lmprobe's {layers[int(np.argmax(theirs))]} ({theirs.max():.3f})."
        ),
    ]
    table = "\n".join(lines)
    print(table)
    if args.record:
        record(
            "lmprobe 0.10.3 vs lmprobe-jax, Probe.sweep_layers end to end",
            f"CPU, {args.threads} thread(s)",
            table,
        )


if __name__ == "__main__":
    main()
