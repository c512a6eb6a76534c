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


def timed_rounds(runs, rounds, clock=time.perf_counter):
    """{name: (result, [seconds per round])}: each zero-argument callable once per round, in turn, timed by
    ``clock`` (wall time by default; ``time.process_time`` for the CPU time of a pinned process)."""
    times, results = {name: [] for name in runs}, {}
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = clock()
            results[name] = jax.block_until_ready(run())
            times[name].append(clock() - t0)
    return {name: (results[name], times[name]) for name in runs}


def in_rounds(runs, repeats):
    """{name: (result, median seconds)} of zero-argument callables (JAX's already compiled, or host code)
    timed in turns, ``repeats`` rounds: the machine's drift over the minutes a comparison takes then hits
    every contender alike, where timing one after the other let it move their ratio."""
    return {name: (result, float(np.median(times))) for name, (result, times) in timed_rounds(runs, repeats).items()}


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


def float64_optimum(x, y, theta, C, steps=3):
    """Newton's method in float64 numpy for ``C sum log(1 + exp(-m)) + ||w||^2 / 2`` from ``theta`` =
    ``(w, b)`` (a near-optimum): returns the optimum and the last step's Newton decrement ``g.H^-1 g``.
    Independent arithmetic from the solvers measured against it; halves a step that does not lower the
    objective (a start outside the quadratic region)."""
    xa = np.hstack([x, np.ones((x.shape[0], 1))])
    penalty = np.ones(xa.shape[1])
    penalty[-1] = 0.0
    decrement = np.inf

    def objective(th):
        m = (2 * y - 1) * (xa @ th)
        return C * np.logaddexp(0, -m).sum() + 0.5 * np.sum(penalty * th * th)

    for _ in range(steps):
        p = 0.5 * (1 + np.tanh(0.5 * (xa @ theta)))
        g = C * xa.T @ (p - y) + penalty * theta
        H = C * (xa.T * (p * (1 - p))) @ xa + np.diag(penalty)
        step = np.linalg.solve(H, g)
        decrement = float(g @ step)
        t, f0 = 1.0, objective(theta)
        while objective(theta - t * step) > f0 and t > 1e-8:
            t *= 0.5
        theta = theta - t * step
    return theta, decrement
