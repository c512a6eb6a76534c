"""lmprobe 0.10.3's ``SGDGPUClassifier`` (PyTorch) against lmprobe-jax's (JAX), on the CPU, one core each.

Both fit the same data with the same settings (lmprobe's defaults: ``lr=0.01``, ``weight_decay=1e-4``,
constant learning rate; ``--epochs`` epochs, minibatches of ``batch``), in one process, pinned to one core
(``os.sched_setaffinity``, ``torch.set_num_threads(1)``, XLA's CPU client on one thread), timed in
alternating rounds (medians). lmprobe-jax's first fit in a process compiles its epoch (counted apart:
``cold``); later fits of the same shapes reuse it. Data: two Gaussian classes in ``D`` dimensions, a
panel of ``(L, N, D, batch)`` regimes (activation-probe sizes: a 135M model's width 576, a 1B model's
2048); with ``L`` layers (a sweep) lmprobe fits each layer in turn, lmprobe-jax fits ``(L, N, D)`` once
(which fits each layer in turn, reusing one compiled epoch).
Printed per regime: seconds per fit, the ratio, and each fit's last-epoch loss and training accuracy (the
two run the same algorithm from different random draws, so they agree only statistically).

lmprobe importable: ``pip install --no-deps --target DIR lmprobe==0.10.3`` and DIR on PYTHONPATH.

Usage: python benchmarks/sgd_vs_lmprobe.py [--epochs 10] [--rounds 3] [--record]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import in_rounds
from recording import record

REGIMES = [
    (1, 4096, 576, 256),
    (1, 16384, 576, 256),
    (1, 4096, 2048, 256),
    (1, 16384, 576, 2048),
    (30, 2048, 576, 256),
]


def blobs(n_layers: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(L, N, D)`` float32 and ``(N,)`` labels: per layer, a random direction separating the classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    shift = 2.0 * (2 * y[None, :, None] - 1) * rng.normal(size=(n_layers, 1, d)) / np.sqrt(d)
    return (rng.normal(size=(n_layers, n, d)) + shift).astype(np.float32), y


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    import time

    import torch
    from lmprobe.classifiers import SGDGPUClassifier as TorchSGD

    from lmprobe_jax.classifiers import SGDGPUClassifier as JaxSGD

    torch.set_num_threads(1)
    header = (
        "| L | N | D | batch | lmprobe (torch) s | lmprobe-jax s (cold) | ratio | last loss torch / jax "
        "| train acc torch / jax |"
    )
    rows = [header, "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    ratios = []
    for n_layers, n, d, batch in REGIMES:
        X, y = blobs(n_layers, n, d)
        kw = {"epochs": args.epochs, "batch_size": batch, "device": "cpu", "random_state": 0}
        ours_input = X if n_layers > 1 else X[0]
        t0 = time.perf_counter()
        JaxSGD(**kw).fit(ours_input, y)
        cold = time.perf_counter() - t0
        runs = {
            "torch": lambda X=X, y=y, kw=kw: [TorchSGD(**kw).fit(block, y) for block in X],
            "jax": lambda X=ours_input, y=y, kw=kw: JaxSGD(**kw).fit(X, y),
        }
        out = in_rounds(runs, args.rounds)
        (t_fits, t_s), (j_fit, j_s) = out["torch"], out["jax"]
        ratios.append(t_s / j_s)
        t_loss = np.mean([fit.train_loss_[-1] for fit in t_fits])
        t_acc = np.mean([fit.score(block, y) for fit, block in zip(t_fits, X, strict=True)])
        j_loss = float(np.mean(np.asarray(j_fit.train_loss_)[..., -1]))
        j_acc = float(np.mean(j_fit.score(ours_input, y)))
        rows.append(
            f"| {n_layers} | {n} | {d} | {batch} | {t_s:.3f} | {j_s:.3f} ({cold:.2f}) | {t_s / j_s:.2f}x | "
            f"{t_loss:.4f} / {j_loss:.4f} | {t_acc:.3f} / {j_acc:.3f} |"
        )
    table = "\n".join(rows) + f"\n\nWorst regime: {min(ratios):.2f}x (lmprobe's time / ours, warm)."
    print(table)
    if args.record:
        record(
            f"SGDGPUClassifier, lmprobe 0.10.3 (torch) vs lmprobe-jax (JAX), {args.epochs} epochs",
            f"2-core CPU, shared, one core each, load {os.getloadavg()[0]:.1f}",
            table,
        )


if __name__ == "__main__":
    main()
