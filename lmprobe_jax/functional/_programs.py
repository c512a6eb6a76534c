"""A bound on the compiled programs a process keeps.

JAX keeps every program it compiles until the process ends, and each holds a few hundred memory maps
(one new row bucket: ~310 for ``fit_logistic``, ~850 for ``cross_validate_logistic``, measured with
``benchmarks/first_call.py``). A process that fits many datasets of different shapes reached Linux's
per-process limit (``vm.max_map_count``, 65530) and XLA crashed inside a compile. Row bucketing
(:func:`._checks.bucket_rows`) makes shapes repeat; this bounds what is left: each registered jitted
function keeps at most :data:`MAX_PROGRAMS` compiled programs (``LMPROBE_JAX_MAX_PROGRAMS``), and is
cleared when it holds more (the programs a call needs next are compiled again, or loaded from the
persistent compilation cache, in a fraction of a second).
"""

from __future__ import annotations

import os
from typing import Any

MAX_PROGRAMS = int(os.environ.get("LMPROBE_JAX_MAX_PROGRAMS", "8"))
"""Most programs one jitted solver keeps (its input shapes and static settings)."""

_REGISTERED: list[Any] = []


def register(*jitted: Any) -> None:
    """Bound the compiled programs of these ``jax.jit`` functions."""
    _REGISTERED.extend(jitted)


def limit_compiled_programs() -> None:
    """Clear every registered function that holds more than :data:`MAX_PROGRAMS` programs (called at the
    public boundary, before a solve: never while a program runs)."""
    for fn in _REGISTERED:
        size = getattr(fn, "_cache_size", None)  # jax.jit functions' count of compiled programs (jax 0.10)
        if size is not None and size() > MAX_PROGRAMS:
            fn.clear_cache()
