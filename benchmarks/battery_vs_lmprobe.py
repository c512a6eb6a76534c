"""lmprobe 0.10.3's BaselineBattery against lmprobe-jax's, end to end, on all 30 layers of SmolLM2-135M.

Both libraries in one process (lmprobe importable: ``pip install --no-deps --target DIR lmprobe==0.10.3``
and DIR on PYTHONPATH), the same model directory, the same prompts (the demo's city statements split
by city), the same baselines (``bow``, ``tfidf``, ``random_direction``, ``pca``, ``layer_0``; the
activation ones read the 30 layers concatenated, as lmprobe does), ``logistic_regression``, torch and
BLAS limited to --threads threads and pinned. Each round gives each library a fresh empty activation
cache (lmprobe: LMPROBE_CACHE_DIR; lmprobe-jax: the same variable, read at call time), the two libraries
alternating; timed: ``BaselineBattery(...).fit(pos, neg, test_prompts, test_labels)`` (extraction of
train and test prompts, every baseline's fit, scoring); then one more round each, reusing its last cache
(warm: what remains is loading, fitting and scoring). Printed: medians, ratios, and each baseline's test
score in both libraries.

Usage: python benchmarks/battery_vs_lmprobe.py [--train-cities 100] [--rounds 2] [--threads 1] [--record]
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

BASELINES = ["bow", "tfidf", "random_direction", "pca", "layer_0"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-cities", type=int, default=150)
    parser.add_argument("--train-cities", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    pin_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="battery_vs_lmprobe."))
    os.environ["LMPROBE_CACHE_DIR"] = str(tmp / "warm")

    import lmprobe
    import lmprobe.cache as lmprobe_cache

    from lmprobe_jax import BaselineBattery
    from lmprobe_jax.cli import smollm2_directory

    model = str(smollm2_directory())
    pos, neg, test, y_test = city_split(args.n_cities, args.train_cities)
    common = {
        "layers": list(range(30)),
        "classifier": "logistic_regression",
        "random_state": 0,
        "include": BASELINES,
    }
    contenders = {
        "lmprobe 0.10.3": lambda: lmprobe.BaselineBattery(model=model, device="cpu", **common),
        "lmprobe-jax": lambda: BaselineBattery(model=model, batch_size=8, **common),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    warm: dict[str, float] = {}
    scores: dict[str, dict[str, float]] = {}
    with threadpool_limits(args.threads):
        for round_ in range(args.rounds + 1):  # the last round reuses the previous round's caches: warm
            for name, make in contenders.items():
                os.environ["LMPROBE_CACHE_DIR"] = str(
                    tmp / f"{name.split()[0]}-{min(round_, args.rounds - 1)}"
                )
                lmprobe_cache._backend = None  # lmprobe reads the variable once per backend
                t0 = time.perf_counter()
                results = make().fit(pos, neg, test, y_test)
                elapsed = time.perf_counter() - t0
                if round_ < args.rounds:
                    times[name].append(elapsed)
                else:
                    warm[name] = elapsed
                scores[name] = {r.name: r.score for r in results}
    med = {name: float(np.median(t)) for name, t in times.items()}
    lines = [
        (
            f"SmolLM2-135M-Instruct, {len(pos) + len(neg)} training / {len(test)} test statements (split by city), "
            f"30 layers concatenated, baselines {BASELINES}, logistic_regression; {args.threads} thread(s) pinned; "
            f"{args.rounds} alternating rounds, each from an empty cache"
        ),
        "",
        (
            "| library | BaselineBattery.fit from an empty cache (extract train+test, fit, score), median s | rounds s | "
            "again with the cache warm, s |"
        ),
        "|---|---:|---|---:|",
    ]
    for name, t in times.items():
        lines.append(f"| {name} | {med[name]:.1f} | {', '.join(f'{x:.1f}' for x in t)} | {warm[name]:.1f} |")
    a, b = "lmprobe 0.10.3", "lmprobe-jax"
    lines += [
        "",
        f"lmprobe-jax vs lmprobe: {med[a] / med[b]:.1f}x from an empty cache, {warm[a] / warm[b]:.1f}x warm",
        "",
        "| baseline | lmprobe test accuracy | lmprobe-jax |",
        "|---|---:|---:|",
    ]
    for baseline in BASELINES:
        lines.append(
            f"| {baseline} | {scores['lmprobe 0.10.3'].get(baseline, float('nan')):.3f} | "
            f"{scores['lmprobe-jax'].get(baseline, float('nan')):.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.record:
        record(
            "lmprobe 0.10.3 vs lmprobe-jax, BaselineBattery on 30 layers",
            f"CPU, {args.threads} thread(s)",
            table,
        )


if __name__ == "__main__":
    main()
