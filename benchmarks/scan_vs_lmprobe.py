"""lmprobe 0.10.3's SampleScan against lmprobe-jax's, end to end: ``SampleScan.run`` on SmolLM2-135M.

Both libraries in one process (lmprobe and pyarrow, which its scan storage needs, on PYTHONPATH), the same
model directory, the same corpus (the demo's city statements, true/false labels), the same signals
(``attn_delta``, ``mlp_delta``), components, batch size and float32 compute, torch and BLAS limited to
--threads threads and pinned; rounds alternate between the libraries. Timed: ``SampleScan.run`` (the
forward pass(es), the PCA of every layer and signal, projecting every token, writing the scan), then
``separability_map()``. Printed: medians and their ratio, and how the two separability maps compare
(lmprobe fits its components on padded batches and keeps float16 coordinates, so they agree in shape,
not to rounding). ``--figure PATH`` also saves lmprobe-jax's picture of one statement.

Usage: PYTHONPATH=.:LMPROBE:PYARROW python benchmarks/scan_vs_lmprobe.py [--n-cities 50] [--rounds 2]
    [--threads 1] [--figure docs/scan-smollm2.png] [--record]
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
from city_split import pin_threads
from recording import record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cities", type=int, default=50)
    parser.add_argument("--n-components", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figure", help="save lmprobe-jax's picture of the first statement here")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    pin_threads(args.threads)

    import torch
    from lmprobe.sample_scan import SampleScan as TheirScan

    from lmprobe_jax import SampleScan as OurScan
    from lmprobe_jax.cli import smollm2_directory
    from lmprobe_jax.datasets import cities

    model = str(smollm2_directory())
    data = cities(args.n_cities)
    prompts, labels = list(data.prompts), data.labels.tolist()
    common = {"n_components": args.n_components, "batch_size": args.batch_size, "signals": ["attn_delta", "mlp_delta"]}
    runs = {
        "lmprobe 0.10.3": lambda d: TheirScan.run(prompts, labels, model, d, device="cpu", dtype=torch.float32, **common),
        "lmprobe-jax": lambda d: OurScan.run(prompts, labels, model, d, device="cpu", dtype="float32", **common),
    }
    tmp = Path(tempfile.mkdtemp(prefix="scan_vs_lmprobe."))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    maps, scans = {}, {}
    with threadpool_limits(args.threads):
        for r in range(args.rounds):
            for name, run in (runs.items() if r % 2 == 0 else reversed(runs.items())):
                t0 = time.perf_counter()
                scan = scans[name] = run(tmp / f"{name.split()[0]}-{r}")
                t_run = time.perf_counter() - t0
                t0 = time.perf_counter()
                maps[name] = scan.separability_map()
                times[name].append((t_run, time.perf_counter() - t0))
                print(name, f"round {r}: run {t_run:.1f} s, separability_map {times[name][-1][1]:.2f} s", flush=True)
        if args.figure:
            scans["lmprobe-jax"].plot(prompts[0], title=prompts[0]).savefig(args.figure, dpi=90, bbox_inches="tight")

    median = {name: np.median(np.array(t), axis=0) for name, t in times.items()}
    ours, theirs = maps["lmprobe-jax"], maps["lmprobe 0.10.3"]
    lines = [
        f"SmolLM2-135M-Instruct, {len(prompts)} city statements, signals attn_delta + mlp_delta, "
        f"{args.n_components} components, batch {args.batch_size}, float32, {args.threads} thread(s) pinned, "
        f"medians of {args.rounds} alternating rounds",
        "",
        "| library | SampleScan.run s | separability_map s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {m[0]:.1f} | {m[1]:.2f} |" for name, m in median.items()]
    a, b = median["lmprobe 0.10.3"], median["lmprobe-jax"]
    best = [np.unravel_index(np.argmax(m), m.shape) for m in (ours, theirs)]
    lines += [
        "",
        f"lmprobe-jax vs lmprobe: run {a[0] / b[0]:.1f}x, separability_map {a[1] / b[1]:.1f}x. Separability "
        f"maps {ours.shape}: correlation {np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]:.3f}, largest "
        f"difference {np.abs(ours - theirs).max():.3f}; best (layer, signal) {tuple(map(int, best[0]))} "
        f"({ours.max():.3f}) vs lmprobe's {tuple(map(int, best[1]))} ({theirs.max():.3f}).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.record:
        record("lmprobe 0.10.3 vs lmprobe-jax, SampleScan.run end to end", f"CPU, {args.threads} thread(s)", table)


if __name__ == "__main__":
    main()
