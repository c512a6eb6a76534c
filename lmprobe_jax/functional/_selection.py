"""Layer selection helpers: which layers a group lasso keeps, coefficient-based importance, fast_auto.

These follow lmprobe's layer-selection vocabulary: *candidates* are the layers considered (explicit
indices, negatives counting from the end, or fractional positions ``f -> int(f * (L - 1))``),
*importance* ranks layers by the size of their block of a multi-layer linear probe's coefficients, and
*fast_auto* fits one probe on all candidates, keeps the top-k layers by importance and refits on them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np
from jax import Array

from lmprobe_jax_store import normalise_layer

from . import _checks
from ._group_lasso import GroupLassoFit
from ._logistic import LogisticFit, fit_logistic

_IMPORTANCE_METRICS = ("l2", "l1", "mean_abs", "max_abs")
DEFAULT_CANDIDATES = (0.25, 0.5, 0.75)


def layers_kept(fit: GroupLassoFit) -> Array:
    """bool ``([A,] L)``: the layers (groups) with a non-zero coefficient block."""
    if fit.coef.ndim < 2:
        raise ValueError("layers_kept needs a layer-grouped fit (coef (..., L, D)), from a 3-D X.")
    return jnp.any(fit.coef != 0, axis=-1)


def alpha_for_k_layers(path: GroupLassoFit, k: int) -> tuple[float, int] | None:
    """The largest ``alpha`` of a path whose fit keeps at least ``k`` layers, and its index in the path.

    Returns None when no ``alpha`` of the path keeps ``k`` layers (extend the path to smaller ``alpha``).
    """
    k = _checks.check_positive_int(k, "k")
    if path.alpha.ndim != 1:
        raise ValueError("alpha_for_k_layers needs a path: fit_group_lasso with a 1-D alpha grid.")
    counts = np.asarray(layers_kept(path)).sum(axis=-1)
    alphas = np.asarray(path.alpha)
    ok = np.flatnonzero(counts >= k)
    if ok.size == 0:
        return None
    best = int(ok[np.argmax(alphas[ok])])
    return float(alphas[best]), best


def layer_importance(coef: Any, metric: str = "l2", *, n_layers: int | None = None, normalize: bool = True) -> Array:
    """Per-layer importance of a multi-layer linear probe's coefficients (lmprobe's
    ``compute_layer_importance``).

    Args:
      coef: ``(..., L, D)``, or ``(..., L * D)`` layer-major with ``n_layers`` given (the coefficients of
        a probe on concatenated layers).
      metric: ``"l2"`` (block norm), ``"l1"``, ``"mean_abs"`` or ``"max_abs"``.
      n_layers: split a flat last axis into this many equal layer blocks.
      normalize: divide by the sum over layers, so importances sum to 1 (all-zero rows stay zero).

    Returns:
      ``(..., L)``.
    """
    if metric not in _IMPORTANCE_METRICS:
        raise ValueError(f"metric must be one of {_IMPORTANCE_METRICS}; got {metric!r}.")
    coef = jnp.asarray(coef)
    if n_layers is not None:
        if coef.shape[-1] % n_layers:
            raise ValueError(f"coef has {coef.shape[-1]} entries, not a multiple of n_layers={n_layers}.")
        coef = coef.reshape(coef.shape[:-1] + (n_layers, coef.shape[-1] // n_layers))
    if coef.ndim < 2:
        raise ValueError("coef needs a layer axis: (..., L, D), or a flat (..., L * D) with n_layers.")
    a = jnp.abs(coef)
    scores = {
        "l2": lambda: jnp.sqrt(jnp.sum(a * a, axis=-1)),
        "l1": lambda: jnp.sum(a, axis=-1),
        "mean_abs": lambda: jnp.mean(a, axis=-1),
        "max_abs": lambda: jnp.max(a, axis=-1),
    }[metric]()
    if normalize:
        total = jnp.sum(scores, axis=-1, keepdims=True)
        scores = jnp.where(total > 0, scores / jnp.where(total > 0, total, 1.0), 0.0)
    return scores


def resolve_candidates(candidates: Sequence[float | int] | None, n_layers: int) -> list[int]:
    """Candidate layer indices from explicit indices (negatives allowed) or fractional positions.

    Floats in ``[0, 1]`` are positions, ``int(f * (n_layers - 1))`` (lmprobe's rule); integers are
    indices. Order is kept and duplicates are dropped. Default: ``(0.25, 0.5, 0.75)``.
    """
    n_layers = _checks.check_positive_int(n_layers, "n_layers")
    spec = DEFAULT_CANDIDATES if candidates is None else candidates
    if isinstance(spec, (str, bytes)) or not hasattr(spec, "__iter__"):
        raise ValueError(f"candidates must be a sequence of indices or fractions; got {candidates!r}.")
    out: list[int] = []
    seen: set[int] = set()
    for c in spec:
        if isinstance(c, (bool, np.bool_)):
            raise ValueError(f"candidate {c!r} is a bool; give layer indices or fractions in [0, 1].")
        if isinstance(c, (int, np.integer)):
            idx = normalise_layer(c, n_layers, allow_embeddings=False)
        elif isinstance(c, (float, np.floating)):
            if not 0.0 <= c <= 1.0:
                raise ValueError(f"fractional candidate {c} must lie in [0, 1]; use an int for a layer index.")
            idx = int(c * (n_layers - 1))
        else:
            raise ValueError(f"candidate {c!r} is neither a layer index nor a fraction.")
        if idx not in seen:
            seen.add(idx)
            out.append(idx)
    if not out:
        raise ValueError("candidates is empty; give at least one layer.")
    return out


class FastAutoResult(NamedTuple):
    """What :func:`fast_auto` chose.

    Attributes:
      candidates: candidate layer indices, in order.
      importances: ``(len(candidates),)`` importance of each candidate in the all-candidates probe.
      selected: the kept layer indices, in candidate order.
      fit: the logistic probe refitted on the selected layers concatenated (``coef`` ``(k * D,)``,
        layer-major in ``selected`` order).
    """

    candidates: list[int]
    importances: np.ndarray
    selected: list[int]
    fit: LogisticFit


def concatenate_layers(X: Any, layers: Sequence[int]) -> Array:
    """``(N, k * D)``: the given layers of ``X`` ``(L, N, D)`` side by side, layer-major."""
    X3, _ = _checks.check_activations(X)
    return jnp.concatenate([X3[l] for l in layers], axis=1)


def fast_auto(
    X: Any,
    y: Any,
    *,
    candidates: Sequence[float | int] | None = None,
    top_k: int | None = None,
    C: float = 1.0,
    metric: str = "l2",
    **logistic_options: Any,
) -> FastAutoResult:
    """lmprobe's ``fast_auto``: one logistic probe on all candidate layers, top-k by importance, refit.

    Importance compares raw coefficient blocks, so standardise layers first when their scales differ
    (lmprobe's ``normalize_layers``).

    Args:
      X: ``(L, N, D)`` activations of all layers.
      y: ``(N,)`` two class labels.
      candidates: see :func:`resolve_candidates`.
      top_k: layers to keep (default half the candidates, at least one).
      C: inverse regularisation of both logistic fits.
      metric: importance metric (see :func:`layer_importance`).
      **logistic_options: passed to :func:`fit_logistic` (``tol``, ``sample_weight``, ...).
    """
    X3, was_2d = _checks.check_activations(X)
    if was_2d:
        raise ValueError("fast_auto needs X of shape (L, N, D): one block of activations per layer.")
    cands = resolve_candidates(candidates, X3.shape[0])
    k = max(1, len(cands) // 2) if top_k is None else _checks.check_positive_int(top_k, "top_k")
    if k > len(cands):
        raise ValueError(f"top_k={k} exceeds the {len(cands)} candidate layers.")
    full = fit_logistic(concatenate_layers(X3, cands), y, C, **logistic_options)
    importances = np.asarray(layer_importance(full.coef, metric, n_layers=len(cands)))
    keep = sorted(np.argsort(-importances, kind="stable")[:k].tolist())
    selected = [cands[i] for i in keep]
    refit = fit_logistic(concatenate_layers(X3, selected), y, C, **logistic_options)
    return FastAutoResult(cands, importances, selected, refit)
