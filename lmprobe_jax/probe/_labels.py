"""What the arguments of ``fit`` / ``score`` mean: negative prompts or labels, and labels as classes.

``fit(a, b)`` has two readings in lmprobe: contrastive (``b`` holds negative prompts) and standard
(``b`` holds one label per prompt of ``a``). The reading is decided by what ``b`` holds, never by
position or by the mode of the probe:

* numbers or bools (a list, a numpy / torch / jax array) -> labels;
* strings that are clearly class names -> labels, as scikit-learn takes them: as many as the prompts,
  every value repeated, none with whitespace, none of them among the prompts
  (``["positive", "negative", ...]``);
* other strings -> negative prompts (lmprobe's reading: ``fit(["good", "great"], ["bad", "terrible"])``),
  unless they look like labels made of sentences (as many as the prompts, every one repeated): then the
  call is ambiguous and is refused with the two ways to say it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(values: Any) -> np.ndarray:
    """``values`` as a numpy array (torch tensors without importing torch)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        values = values.float() if values.is_floating_point() else values
        values = values.numpy()
    return np.asarray(values)


def check_prompts(prompts: Any, what: str = "prompts") -> list[str]:
    """``prompts`` as a non-empty list of str (numpy string arrays too); TypeError / ValueError naming
    ``what`` otherwise. Extraction owns the rules; it is imported here, not at start-up."""
    from lmprobe_jax_extract import check_prompts as check

    if isinstance(prompts, np.ndarray) and prompts.dtype.kind in "US":
        prompts = prompts.tolist()
    return check(prompts, what)


def _is_string_sequence(values: Any) -> bool:
    if isinstance(values, str):
        return False
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "USO" and all(isinstance(v, str) for v in values.ravel().tolist())
    if hasattr(values, "dtype"):  # torch / jax: numbers
        return False
    items = list(values)
    return bool(items) and all(isinstance(v, str) for v in items)


def split_fit_args(first: Any, second: Any) -> tuple[list[str], Any, bool]:
    """``(prompts, labels, contrastive)``. Contrastive: ``prompts`` are the positive then the negative
    prompts and ``labels`` 1 / 0; else ``labels`` is ``second`` as given (check it with
    :func:`check_labels`). Raises for a missing second argument or an ambiguous one."""
    prompts = check_prompts(first, "positive_prompts")
    if second is None:
        raise ValueError(
            "fit() requires two arguments: fit(positive_prompts, negative_prompts) (contrastive) or "
            "fit(prompts, labels) with one label per prompt."
        )
    if isinstance(second, str):
        raise TypeError(
            "The second argument of fit is one string: pass a list of negative prompts or labels."
        )
    if not _is_string_sequence(second):
        values = to_numpy(second)
        if values.dtype.kind == "O":
            raise ValueError(
                "The second argument of fit mixes strings and other values: pass negative prompts "
                "(all strings) or labels (all numbers, or all class names)."
            )
        return prompts, second, False
    words = second.ravel().tolist() if isinstance(second, np.ndarray) else list(second)
    distinct = set(words)
    same_length = len(words) == len(prompts)
    every_value_repeats = same_length and all(words.count(w) > 1 for w in distinct)
    single_words = not any(any(c.isspace() for c in w) for w in distinct)
    if every_value_repeats and single_words and not distinct & set(prompts):
        return prompts, np.asarray(words), False
    if every_value_repeats:
        raise ValueError(
            f"fit(prompts, second): the second argument holds {len(words)} strings with only "
            f"{len(distinct)} distinct values, each repeated: negative prompts or class labels? Pass "
            "labels as numbers (e.g. np.unique(labels, return_inverse=True)[1]) or as single-word class "
            "names; pass negative prompts without repeats."
        )
    negatives = check_prompts(words, "negative_prompts")
    labels = np.r_[np.ones(len(prompts), np.int64), np.zeros(len(negatives), np.int64)]
    return prompts + negatives, labels, True


def check_labels(y: Any, n: int, *, task: str, training: bool) -> np.ndarray:
    """Labels as a 1-D array of ``n`` entries. ``(n, 1)`` columns are flattened (as scikit-learn's
    ``column_or_1d``); anything else of the wrong shape is refused, never broadcast. Classification
    labels that are whole floats become ints; ``training`` also requires two classes or more."""
    y = to_numpy(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels has shape {y.shape}; expected ({n},), one label per prompt.")
    if task == "regression":
        if y.dtype.kind not in "biuf" or not np.all(np.isfinite(y.astype(np.float64))):
            raise ValueError("Regression targets must be finite numbers.")
        return y.astype(np.float64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(
                "Float labels were given to a classifier: use task='regression' for continuous targets, "
                "or integer class labels."
            )
        y = y.astype(np.int64)
    if y.dtype.kind == "O" and not all(isinstance(v, str) for v in y.tolist()):
        raise ValueError("Class labels must be all numbers, all bools or all strings.")
    if training and np.unique(y).size < 2:
        raise ValueError(f"labels hold one class only ({np.unique(y).tolist()}); a classifier needs two.")
    return y
