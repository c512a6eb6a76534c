"""``ProbeEnsemble``: several probes voting, and bootstrap stability of one probe (lmprobe's API).

Members may read different layers or use different classifiers; the ensemble extracts every layer any
member needs in **one** pass per prompt set (members of one model share the activation cache, so their
own fits and predictions read it without running the model). ``voting="soft"`` averages the members'
probabilities with ``weights`` (normalised to sum 1); ``"hard"`` takes the weighted majority of their
predictions. :meth:`ProbeEnsemble.bootstrap` makes ``n_resamples`` copies of a probe, each fitted on a
bootstrap resample of the training rows (optionally balanced across ``groups``), all from one
extraction; :meth:`prediction_std` is the spread of their positive-class probabilities.

``save`` writes each member with :meth:`Probe.save` plus ``ensemble.json`` (no pickle).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lmprobe_jax_store import layer_order
from lmprobe_jax_store._store import write_json

from .exceptions import NotFittedError
from .probe import Probe
from .probe._labels import check_labels, check_prompts, split_fit_args


class ProbeEnsemble:
    """Probes voting together (module doc). Attributes after ``fit``: ``probes_``, ``weights_``."""

    def __init__(self, probes: list[Probe], weights: list[float] | None = None, voting: str = "soft"):
        if not probes:
            raise ValueError("probes must be a non-empty list of Probe objects.")
        if voting not in ("soft", "hard"):
            raise ValueError(f"Unknown voting strategy {voting!r}: choose 'soft' or 'hard'.")
        if weights is not None:
            if len(weights) != len(probes):
                raise ValueError(f"weights length ({len(weights)}) must match probes length ({len(probes)}).")
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"weights must be non-negative and must sum to a positive value; got {list(weights)}."
                )
        self.probes = list(probes)
        self.weights = weights
        self.voting = voting
        self.probes_ = self.probes
        total = float(sum(weights)) if weights is not None else float(len(probes))
        self.weights_ = np.asarray(weights if weights is not None else [1.0] * len(probes), float) / total
        # lmprobe's attributes: whether fit resamples the rows for each member, and the resampling seed
        self._bootstrap_mode = False
        self._bootstrap_seed: int | None = None
        self._fitted = False

    @classmethod
    def from_configs(
        cls,
        model: Any,
        configs: list[dict],
        weights: list[float] | None = None,
        voting: str = "soft",
        **shared_kwargs: Any,
    ) -> ProbeEnsemble:
        """One member per dict of Probe parameters (``shared_kwargs`` go to every member)."""
        return cls([Probe(**{**shared_kwargs, **cfg, "model": model}) for cfg in configs], weights, voting)

    @classmethod
    def bootstrap(
        cls,
        base_probe: Probe,
        n_resamples: int = 10,
        random_state: int | None = None,
        weights: list[float] | None = None,
        voting: str = "soft",
    ) -> ProbeEnsemble:
        """``n_resamples`` unfitted copies of ``base_probe``; ``fit`` trains each on a bootstrap resample."""
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1, not {n_resamples}.")
        ensemble = cls([base_probe._with_params() for _ in range(n_resamples)], weights, voting)
        ensemble._bootstrap_mode, ensemble._bootstrap_seed = True, random_state
        return ensemble

    # -- one extraction for every member ---------------------------------------------------------------------
    def _warm(self, prompts: list[str]) -> None:
        """Extract, once, every layer any member reads (for training: every candidate layer)."""
        by_model: dict[int, tuple[Probe, set]] = {}
        for probe in self.probes_:
            if probe.model is None:
                continue
            layers = (
                probe.layers_
                if hasattr(probe, "layers_")
                else probe._layer_spec(probe._n_model_layers()).layers
            )
            entry = by_model.setdefault(id(probe.model), (probe, set()))
            entry[1].update(layers)
        for reader, layers in by_model.values():
            reader._extract(prompts, sorted(layers, key=layer_order), reader._train_pooling)

    def fit(
        self,
        positive_prompts: Any,
        negative_prompts: Any = None,
        remote: bool | None = None,
        sample_weight: Any = None,
        groups: Any = None,
    ) -> ProbeEnsemble:
        prompts, y, _ = split_fit_args(positive_prompts, negative_prompts)
        y = check_labels(y, len(prompts), task=self.probes_[0].task, training=True)
        n = len(prompts)
        sw = None if sample_weight is None else np.asarray(sample_weight, float)
        if sw is not None and sw.shape != (n,):
            raise ValueError(
                f"sample_weight length ({len(sw)}) must match the number of training samples ({n})."
            )
        if groups is not None and len(groups) != n:
            raise ValueError(
                f"groups length ({len(groups)}) must match the number of training samples ({n})."
            )
        if groups is not None and not self._bootstrap_mode:
            warnings.warn(
                "groups parameter is ignored: it is used only by bootstrap ensembles (ProbeEnsemble.bootstrap).",
                UserWarning,
                stacklevel=2,
            )
        self._warm(prompts)
        rng = np.random.default_rng(self._bootstrap_seed)
        for probe in self.probes_:
            rows = _resample(rng, y, groups, sw) if self._bootstrap_mode else np.arange(n)
            probe.fit(
                [prompts[i] for i in rows],
                y[rows],
                remote=remote,
                sample_weight=None if sw is None else sw[rows],
            )
        self._fitted = True
        return self

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError("This ProbeEnsemble has not been fitted yet: call fit first.")

    def _member_proba(self, prompts: list[str], remote: bool | None) -> np.ndarray:
        """``(M, N, K)`` every member's probabilities (one extraction pass per model)."""
        self._check_fitted()
        prompts = check_prompts(prompts)
        self._warm(prompts)
        return np.stack([probe.predict_proba(prompts, remote=remote) for probe in self.probes_])

    def predict_proba(self, prompts: list[str], remote: bool | None = None) -> np.ndarray:
        """Weighted average of the members' class probabilities ``(N, K)``."""
        return np.tensordot(self.weights_, self._member_proba(prompts, remote), axes=1)

    def predict(self, prompts: list[str], remote: bool | None = None) -> np.ndarray:
        self._check_fitted()
        classes = self.probes_[0].classes_
        if self.voting == "soft":
            return classes[np.argmax(self.predict_proba(prompts, remote), axis=1)]
        self._check_fitted()
        self._warm(check_prompts(prompts))
        votes = np.stack([np.searchsorted(classes, p.predict(prompts, remote=remote)) for p in self.probes_])
        tally = np.stack(
            [(self.weights_[:, None] * (votes == k)).sum(0) for k in range(len(classes))], axis=1
        )
        return classes[np.argmax(tally, axis=1)]  # ties: the first class

    def score(self, prompts: list[str], labels: Any, remote: bool | None = None) -> float:
        pred = self.predict(prompts, remote)
        return float(np.mean(pred == check_labels(labels, len(pred), task="classification", training=False)))

    def prediction_std(self, prompts: list[str], remote: bool | None = None) -> np.ndarray:
        """``(N,)`` standard deviation over members of the positive-class probability."""
        return self._member_proba(prompts, remote)[..., -1].std(axis=0)

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """``path/member_XX/`` (each a saved Probe) and ``path/ensemble.json``."""
        self._check_fitted()
        path = Path(path)
        if path.is_file() and path.stat().st_size == 0:  # an empty placeholder (a temporary file's name)
            path.unlink()
        for i, probe in enumerate(self.probes_):
            probe.save(path / f"member_{i:02d}")
        write_json(
            path / "ensemble.json",
            {
                "format": "lmprobe-jax-ensemble",
                "version": 1,
                "n": len(self.probes_),
                "weights": self.weights_.tolist(),
                "voting": self.voting,
                "bootstrap_mode": self._bootstrap_mode,
                "bootstrap_seed": self._bootstrap_seed,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProbeEnsemble:
        path = Path(path)
        if not (path / "ensemble.json").is_file():
            raise ValueError(f"{path} holds no saved ensemble (no ensemble.json).")
        config = json.loads((path / "ensemble.json").read_text())
        if config.get("format") != "lmprobe-jax-ensemble":
            raise ValueError(f"{path / 'ensemble.json'} is not an lmprobe-jax ensemble.")
        probes = [Probe.load(path / f"member_{i:02d}") for i in range(int(config["n"]))]
        ensemble = cls(probes, config["weights"], config["voting"])
        ensemble._bootstrap_mode = bool(config.get("bootstrap_mode", False))
        ensemble._bootstrap_seed = config.get("bootstrap_seed")
        ensemble._fitted = True
        return ensemble

    @staticmethod
    def _group_balanced_resample(
        groups: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        """One group-balanced bootstrap draw (lmprobe's helper): ``ceil(N / n_groups)`` row indices from
        each group, with replacement, within a group in proportion to ``sample_weight`` (uniform if
        None). ``labels`` is not read (lmprobe's signature)."""
        groups = np.asarray(groups)
        per_group = math.ceil(len(groups) / np.unique(groups).size)
        parts = []
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            p = None if sample_weight is None else sample_weight[members] / sample_weight[members].sum()
            parts.append(rng.choice(members, size=per_group, replace=True, p=p))
        return np.concatenate(parts)


def _resample(rng: np.random.Generator, y: np.ndarray, groups: Any, sw: np.ndarray | None) -> np.ndarray:
    """Bootstrap row indices holding every class (redrawn up to 100 times); with ``groups``, the same
    number of rows from each group, drawn within a group in proportion to ``sw``."""
    n, classes = len(y), np.unique(y)
    for _ in range(100):
        if groups is None:
            rows = rng.choice(n, size=n, replace=True)
        else:
            rows = ProbeEnsemble._group_balanced_resample(groups, y, sw, rng)
        if np.unique(y[rows]).size == classes.size:
            return rows
    raise ValueError(
        "100 bootstrap resamples in a row missed a class: the training set is too small or unbalanced."
    )
