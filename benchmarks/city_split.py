"""What the end-to-end benchmarks against lmprobe share: pinning to N cores, and the demo's city
statements split by city (a true/false pair never straddles training and test)."""

from __future__ import annotations

import os

import numpy as np


def pin_threads(threads: int) -> None:
    """Run this process (torch included) on its first ``threads`` cores."""
    import torch

    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    torch.set_num_threads(threads)


def city_split(n_cities: int, train_cities: int) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """``(positive, negative, test_prompts, test_labels)``: statements about the first ``train_cities``
    of ``n_cities`` cities for training, the rest for testing."""
    from lmprobe_jax.datasets import cities

    data = cities(n_cities)
    train = data.groups < train_cities
    prompts = np.array(data.prompts)
    pos = prompts[train & (data.labels == 1)].tolist()
    neg = prompts[train & (data.labels == 0)].tolist()
    return pos, neg, prompts[~train].tolist(), data.labels[~train]
