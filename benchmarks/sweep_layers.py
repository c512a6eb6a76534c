"""Probe.sweep_layers over all 30 layers of SmolLM2-135M: where the time goes, and the scikit-learn anchor.

The demo's data (600 true/false city statements, lmprobe_jax.datasets.cities), one process, torch and
BLAS limited to --threads threads (threadpoolctl), pinned to that many cores. Prints:

* Probe.sweep_layers(..., classifier="logistic_regression_cv") with its timing split -- one extraction
  pass (cache disabled, so it really runs the model) and one batched solve (cold: compilation included;
  then warm, the same solve again);
* the anchor: scikit-learn LogisticRegressionCV per layer on the same standardised activations, with the
  same folds (grouped by city) and C grid -- the loop lmprobe runs -- and the largest difference in
  per-layer CV accuracy between the two.

Usage: python benchmarks/sweep_layers.py [--n-cities 300] [--threads 1] [--record]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import PredefinedSplit
from threadpoolctl import threadpool_limits

from lmprobe_jax import Probe, functional
from lmprobe_jax.cli import smollm2_directory
from lmprobe_jax.datasets import cities
from lmprobe_jax.sweep import standardize, sweep_activations

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recording import record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-cities", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    torch.set_num_threads(args.threads)
    grid = [0.01, 0.1, 1.0, 10.0]
    data = cities(args.n_cities)
    model = smollm2_directory()

    with threadpool_limits(args.threads):
        result = Probe.sweep_layers(
            model,
            data.prompts,
            data.labels,
            layers="all",
            classifier="logistic_regression_cv",
            classifier_kwargs={"Cs": grid},
            cache_dir=None,
            progress=False,
            batch_size=32,
        )
        X = result.template._extract(data.prompts, result.layers, "last_token")[0]  # the same activations
        t0 = time.perf_counter()
        warm = sweep_activations(
            X, data.labels, classifier="logistic_regression_cv", C=grid, groups=data.groups
        )
        t_warm = time.perf_counter() - t0

        Xs, _, _ = standardize(X)
        folds = functional.stratified_folds(data.labels, 5, groups=data.groups, random_state=0)
        t0 = time.perf_counter()
        sk_acc = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for layer in range(Xs.shape[0]):
                est = LogisticRegressionCV(
                    Cs=grid, cv=PredefinedSplit(folds), scoring="accuracy", max_iter=1000
                )
                est.fit(Xs[layer], data.labels)
                sk_acc.append(np.max(np.mean(est.scores_[1], axis=0)))
        t_sk = time.perf_counter() - t0
    ours_acc = warm.accuracy.mean(axis=1)
    lines = [
        (
            f"SmolLM2-135M-Instruct, {len(data.prompts)} prompts, 30 layers x 576, 5 folds (grouped) x "
            f"{len(grid)} C; {args.threads} thread(s), pinned"
        ),
        "",
        "| step | seconds |",
        "|---|---:|",
        f"| Probe.sweep_layers: one extraction pass (30 layers, last_token) | {result.timings['extract_s']:.1f} |",
        f"| Probe.sweep_layers: one batched CV solve + refit, cold (compile included) | {result.timings['fit_s']:.1f} |",
        f"| the same solve, warm | {t_warm:.2f} |",
        f"| anchor: LogisticRegressionCV per layer, same folds and grid (lmprobe's loop) | {t_sk:.1f} |",
        "",
        (
            f"Warm solve vs the anchor: {t_sk / t_warm:.1f}x; cold: {t_sk / result.timings['fit_s']:.1f}x. "
            f"Largest per-layer difference in best mean CV accuracy: "
            f"{np.max(np.abs(ours_acc - np.array(sk_acc))):.4f}. Best layer {warm.best_layer} "
            f"(anchor: {int(np.argmax(sk_acc))})."
        ),
    ]
    table = "\n".join(lines)
    print(table)
    if args.record:
        record(
            "Probe.sweep_layers timing split, SmolLM2-135M-Instruct",
            f"CPU, {args.threads} thread(s) pinned",
            table,
        )


if __name__ == "__main__":
    main()
