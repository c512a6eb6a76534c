"""Saving and loading fitted lenses: arrays in safetensors, everything else in JSON (no pickle, so loading
runs no code), written to a temporary directory that is renamed into place (never half-written)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

ARRAYS = "arrays.safetensors"
CONFIG = "config.json"


def save_lens(path: str | os.PathLike, kind: str, arrays: dict[str, np.ndarray], config: dict) -> Path:
    """Write ``path/arrays.safetensors`` and ``path/config.json`` (``{"kind": kind, ...config}``) at once:
    an existing lens at ``path`` is replaced whole, and a crash leaves it as it was."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({name: np.ascontiguousarray(a) for name, a in arrays.items()}, tmp / ARRAYS)
        (tmp / CONFIG).write_text(json.dumps({"kind": kind, **config}, indent=1) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_lens(path: str | os.PathLike, kind: str) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, config)`` of a lens saved by :func:`save_lens`; ValueError when ``path`` holds none, or
    a lens of another kind."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / ARRAYS).is_file():
        raise ValueError(f"{path} holds no saved lens (expected {CONFIG} and {ARRAYS}).")
    config = json.loads((path / CONFIG).read_text())
    if config.get("kind") != kind:
        raise ValueError(f"{path} holds a {config.get('kind')!r} lens, not a {kind!r} one.")
    return load_file(path / ARRAYS), config
