"""Timing helpers and the float64 logistic objective shared by the benchmark scripts.

Imports nothing that sets threads or pins cores: each script does that itself, before JAX starts.
"""

from __future__ import annotations

import time

import jax
import numpy as np


def proc_status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``RssAnon``...) in bytes."""
    with open("/proc/self/status") as handle:
        return int(next(line for line in handle if line.startswith(field + ":")).split()[1]) * 1024


def first_call(fn):
    """(result, seconds) of one call of a JAX callable (blocks on its result): its trace and compile."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def in_rounds(runs, repeats):
    """{name: (result, median seconds)} of zero-argument callables (JAX's already compiled, or host code)
    timed in turns, ``repeats`` rounds: the machine's drift over the minutes a comparison takes then hits
    every contender alike, where timing one after the other let it move their ratio."""
    times, results = {name: [] for name in runs}, {}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            results[name] = jax.block_until_ready(run())
            times[name].append(time.perf_counter() - t0)
    return {name: (results[name], float(np.median(times[name]))) for name in runs}


def timed(fn, repeats):
    """(result, first-call seconds, median warm seconds) of a JAX callable (blocks on its result)."""
    _, first = first_call(fn)
    out, median = in_rounds({"run": fn}, repeats)["run"]
    return out, first, median


def sk_timed(fn, repeats):
    """(result, median seconds) of a host callable."""
    return in_rounds({"run": fn}, repeats)["run"]


def logistic_objective(X, y, w, b, C):
    """scikit-learn's objective ``C sum log(1 + exp(-m)) + ||w||^2 / 2`` in the inputs' precision."""
    m = (2 * y - 1) * (X @ w + b)
    return C * np.logaddexp(0, -m).sum() + 0.5 * w @ w
