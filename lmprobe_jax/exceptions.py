"""Errors lmprobe-jax raises that its users catch by class."""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFitted


class NotFittedError(_SklearnNotFitted, RuntimeError):
    """Raised when an unfitted Probe, ensemble, baseline or scaler is used: scikit-learn's
    ``NotFittedError`` (a ValueError and an AttributeError) and a RuntimeError (what lmprobe raises),
    so both kinds of caller catch it."""


__all__ = ["NotFittedError"]
