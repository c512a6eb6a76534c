"""Stratified, seedable k-fold assignments, with groups that never straddle folds.

Folds are returned as one integer per sample (``fold_ids``), which the cross-validation routines turn
into sample-weight masks over the same ``X``. Host-side numpy: fold assignment is data preparation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _checks


def stratified_folds(
    y: Any, n_folds: int = 5, *, groups: Any = None, shuffle: bool = True, random_state: int | None = 0
) -> np.ndarray:
    """Assign each sample to one of ``n_folds`` folds, keeping class proportions even across folds.

    Without ``groups``: each class's samples are (shuffled and) dealt round-robin, so every fold's
    class counts differ by at most one, as ``sklearn.model_selection.StratifiedKFold``.

    With ``groups`` (e.g. a city id shared by the true and false statement about it): whole groups are
    placed, largest first, each in the fold where it keeps every class's share closest to
    ``1 / n_folds``, so paired prompts never straddle the train/test split.

    Args:
      y: ``(N,)`` class labels.
      n_folds: ``>= 2``, at most the size of the smallest class (or the number of groups).
      groups: optional ``(N,)`` group labels.
      shuffle: shuffle before assigning (with ``random_state``); False keeps sample order.
      random_state: seed of the shuffle.

    Returns:
      ``(N,)`` int32 fold index of each sample.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y has shape {y.shape}; expected one label per sample (N,).")
    n_folds = _checks.check_positive_int(n_folds, "n_folds")
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2.")
    classes, codes = np.unique(y, return_inverse=True)
    rng = np.random.default_rng(random_state)
    fold_ids = np.empty(y.shape[0], dtype=np.int32)
    if groups is None:
        counts = np.bincount(codes)
        if counts.min() < n_folds:
            raise ValueError(
                f"the smallest class ({classes[counts.argmin()]!r}) has {counts.min()} samples, fewer than "
                f"n_folds={n_folds}; lower n_folds or add samples."
            )
        for c in range(classes.size):
            idx = np.flatnonzero(codes == c)
            if shuffle:
                idx = rng.permutation(idx)
            fold_ids[idx] = np.arange(idx.size) % n_folds
        return fold_ids

    groups = _checks.check_n_samples(y.shape[0], groups, "groups")
    group_names, group_of = np.unique(groups, return_inverse=True)
    if group_names.size < n_folds:
        raise ValueError(f"there are {group_names.size} groups, fewer than n_folds={n_folds}.")
    per_group = np.zeros((group_names.size, classes.size))
    np.add.at(per_group, (group_of, codes), 1)
    order = rng.permutation(group_names.size) if shuffle else np.arange(group_names.size)
    order = order[np.argsort(-per_group[order].sum(1), kind="stable")]
    totals = per_group.sum(0)
    placed = np.zeros((n_folds, classes.size))
    assigned = np.empty(group_names.size, dtype=np.int32)
    for g in order:
        share = (placed + per_group[g]) / totals  # each fold's class shares if g went there
        cost = ((share - 1.0 / n_folds) ** 2).sum(1) - ((placed / totals - 1.0 / n_folds) ** 2).sum(1)
        best = int(np.lexsort((placed.sum(1), cost))[0])  # least imbalance, then the smallest fold
        placed[best] += per_group[g]
        assigned[g] = best
    fold_ids[:] = assigned[group_of]
    if np.unique(fold_ids).size < n_folds:
        raise ValueError("some folds received no group; use fewer folds or more groups.")
    return fold_ids


class HeldOut(NamedTuple):
    """Each fold's held-out rows, padded to the largest fold.

    Attributes:
      index: int32 ``(F, M)``, row numbers into the ``N`` samples (0 on padding).
      weight: float32 ``(F, M)``, those rows' sample weights (0 on padding, so padding never counts).
    """

    index: np.ndarray
    weight: np.ndarray


def held_out_rows(fold_ids: Any, sample_weight: Any = None) -> HeldOut:
    """The rows each fold holds out, for :func:`fold_scores`.

    Scoring a fold's own rows, rather than all ``N`` rows under a 0/1 weight, sorts ``N / F`` scores per
    problem for AUROC instead of ``N``: on the CPU the sort was most of the scoring time (8 C x 5 folds
    x 12 layers x 3000 rows: 350 ms for all rows).

    Args:
      fold_ids: ``(N,)`` non-negative fold numbers (as from :func:`stratified_folds`), every fold
        from 0 to the largest present.
      sample_weight: ``(N,)`` or None (ones).
    """
    ids = np.asarray(fold_ids)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu" or ids.min() < 0:
        raise ValueError("fold_ids must be a non-empty 1-D array of non-negative integers, one per sample.")
    n_folds = int(ids.max()) + 1
    rows = [np.flatnonzero(ids == f) for f in range(n_folds)]
    if any(r.size == 0 for r in rows):
        raise ValueError(f"fold_ids must number folds 0 to {n_folds - 1} without gaps; renumber them with "
                         "np.unique(fold_ids, return_inverse=True)[1].")
    sw = _checks.check_sample_weight(sample_weight, ids.size)
    size = max(r.size for r in rows)
    index = np.zeros((n_folds, size), np.int32)
    weight = np.zeros((n_folds, size), np.float32)
    for f, r in enumerate(rows):
        index[f, : r.size] = r
        weight[f, : r.size] = sw[r]
    return HeldOut(index, weight)
