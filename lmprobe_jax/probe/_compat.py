"""Two helpers of lmprobe's ``probe`` module that its users import (``_parse_sweep_spec``,
``_resolve_dtype``), written on lmprobe-jax's grammar so such code keeps working."""

from __future__ import annotations

import re
from typing import Any


def _parse_sweep_spec(spec: Any) -> tuple[bool, Any]:
    """``(is_sweep, layers)``: ``"sweep"`` -> ``(True, "all")``, ``"sweep:N"`` -> ``(True, N)``,
    ``"sweep:A-B"`` -> ``(True, [A..B])``; anything else -> ``(False, spec)``."""
    if not isinstance(spec, str) or not (spec == "sweep" or spec.startswith("sweep:")):
        return False, spec
    if spec == "sweep":
        return True, "all"
    body = spec[len("sweep:") :]
    if re.fullmatch(r"\d+", body):
        return True, int(body)
    if match := re.fullmatch(r"(\d+)-(\d+)", body):
        return True, list(range(int(match[1]), int(match[2]) + 1))
    raise ValueError(f"Invalid sweep range {spec!r}: use 'sweep', 'sweep:N' or 'sweep:A-B'.")


def _resolve_dtype(dtype: Any) -> Any:
    """A torch dtype from ``"float32"`` / ``"float16"`` / ``"bfloat16"`` (None and torch dtypes pass)."""
    if dtype is None or not isinstance(dtype, str):
        return dtype
    from lmprobe_jax_extract._source import torch_dtype

    return torch_dtype(dtype)
