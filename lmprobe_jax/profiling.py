"""Wall-clock timing of a probe's steps (lmprobe's profiling API).

``set_profiling(True)`` (or ``LMPROBE_PROFILE=1`` in the environment at import) makes each profiled
:class:`~lmprobe_jax.Probe` method log its time and its steps' times to the ``lmprobe_jax.profile``
logger and leave them on the probe as ``last_profile_`` (a dict of seconds: ``"total"`` and one entry
per step: ``extract_and_pool``, ``scale`` -- the feature pipeline: scaling, and preprocessing when set
--, ``fit``, ``transform``, ``predict``). Off, nothing is timed or logged: each step costs one
context-manager entry (a few microseconds). The steps' results are host arrays when a step ends (JAX's
asynchronous dispatch has finished), so each time is the step's.

    import lmprobe_jax
    lmprobe_jax.set_profiling(True)
    probe.fit(pos, neg); probe.last_profile_   # {'total': 1.9, 'extract_and_pool': 1.7, 'scale': ..., ...}
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from typing_extensions import Self

profile_logger = logging.getLogger("lmprobe_jax.profile")

_enabled = os.environ.get("LMPROBE_PROFILE", "0") not in ("0", "")
_current: contextvars.ContextVar[ProfileAccumulator | None] = contextvars.ContextVar("profile", default=None)


def set_profiling(enabled: bool) -> None:
    """Turn profiling on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


def is_profiling() -> bool:
    """Whether profiling is on."""
    return _enabled


def _fmt_time(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps it >= 1: ``"850µs"``, ``"12.5ms"``, ``"3.2s"``,
    ``"2.0min"``."""
    if seconds >= 60:
        return f"{seconds / 60:.1f}min"
    if seconds >= 1:
        return f"{seconds:.1f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds * 1e6:.0f}µs"


class ProfileAccumulator:
    """The times of one operation: ``total`` (set when its ``with`` block ends) and ``sections``
    (seconds per named step; a step timed more than once -- one per layer of a sweep -- adds up)."""

    def __init__(self, name: str):
        self.name = name
        self.sections: dict[str, float] = {}
        self.total = 0.0
        self._start = 0.0

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.total = time.perf_counter() - self._start
        parts = ", ".join(f"{k}: {_fmt_time(v)}" for k, v in self.sections.items())
        profile_logger.info("%s: %s%s", self.name, _fmt_time(self.total), f" ({parts})" if parts else "")

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as step ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sections[name] = self.sections.get(name, 0.0) + time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        """``{"total": ..., step: seconds, ...}``."""
        return {"total": self.total, **self.sections}


@contextmanager
def profile_op(name: str) -> Iterator[ProfileAccumulator | None]:
    """Time the ``with`` block as operation ``name``: yields its accumulator (the current one for
    :func:`current` inside the block), or None when profiling is off."""
    if not _enabled:
        yield None
        return
    acc = ProfileAccumulator(name)
    token = _current.set(acc)
    try:
        with acc:
            yield acc
    finally:
        _current.reset(token)


@contextmanager
def profile_section(accumulator: ProfileAccumulator | None, name: str) -> Iterator[None]:
    """Time the ``with`` block as step ``name`` of ``accumulator``; nothing when it is None."""
    if accumulator is None:
        yield
        return
    with accumulator.section(name):
        yield


def current() -> ProfileAccumulator | None:
    """The innermost operation being profiled, or None."""
    return _current.get()


def profiled(name: str) -> Callable[[Callable], Callable]:
    """Decorate a method to run as operation ``name`` and leave its times on ``self.last_profile_``."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            with profile_op(name) as acc:
                out = method(self, *args, **kwargs)
            if acc is not None:
                self.last_profile_ = acc.as_dict()
            return out

        return run

    return decorate
