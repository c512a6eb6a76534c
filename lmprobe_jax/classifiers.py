"""The one registry of classifier names: what each name builds, and which can be saved without pickle.

Every name lmprobe knows is here. The names whose maths lmprobe-jax owns build its batched estimators
(:mod:`lmprobe_jax.sklearn`); ``classifier_kwargs`` meant for scikit-learn's estimator of the same name
that only choose *how* to reach the same optimum (``solver``, ``n_jobs``, ``verbose``, ``warm_start``,
``random_state``, ``penalty="l2"``) are dropped. Any other scikit-learn argument (``penalty="l1"``,
``class_weight``, ``l1_ratio``, ...) changes the problem, and the name then builds scikit-learn's
estimator with lmprobe's defaults, so the argument is honoured rather than ignored.

===================== ============================================= ======================================
name                  lmprobe-jax estimator                           scikit-learn estimator (other kwargs)
===================== ============================================= ======================================
logistic_regression   LogisticProbe                                   LogisticRegression(max_iter=1000)
logistic_regression_cv LogisticCVProbe                                LogisticRegressionCV(cv=5, max_iter=1000)
ridge                 RidgeProbe                                      RidgeClassifier
ridge_regression      RidgeRegressionProbe                            Ridge
mass_mean             MassMeanProbe (difference of means)             --
lda                   MassMeanProbe(iid=True) (shared covariance)     LinearDiscriminantAnalysis
group_lasso           GroupLassoProbe                                 --
ensemble              EnsembleClassifier (a C path, averaged)         --
svm                   --                                              SVC(kernel="linear", probability=True)
sgd_gpu               SGDGPUClassifier (minibatch SGD on JAX)         --
sgd                   --                                              SGDClassifier(loss="log_loss")
===================== ============================================= ======================================
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from . import functional as F
from .exceptions import NotFittedError
from .sgd import (
    SGDGPUClassifier,
    _stable_sigmoid_proba,  # noqa: F401  (lmprobe.classifiers has it: same import path)
)
from .sklearn import (
    GroupLassoProbe,
    LogisticCVProbe,
    LogisticProbe,
    MassMeanProbe,
    RidgeProbe,
    RidgeRegressionProbe,
)

COMPUTE_BACKENDS = ("sklearn", "auto", "cuml")
"""``"sklearn"``: the estimators of the table (ours run on JAX's device, GPU included); ``"auto"``: the
same (lmprobe picks cuML when installed; ours already use the accelerator, batched over layers);
``"cuml"``: RAPIDS cuML's estimators for the names cuML has (:data:`_CUML_SUPPORTED_CLASSIFIERS`)."""

# Arguments of scikit-learn's estimators that pick an algorithm, not a solution: ours reaches the same
# optimum at tight tolerance whatever they say.
_HOW_NOT_WHAT = {"solver", "n_jobs", "verbose", "warm_start", "random_state", "dual", "copy_X"}


DEFAULT_C_VALUES = [0.01, 0.1, 0.5, 1.0, 5.0]
"""The ``"ensemble"`` classifier's regularisation path (lmprobe's)."""


class EnsembleClassifier(ClassifierMixin, BaseEstimator):
    """lmprobe's ``"ensemble"``: binary logistic probes at several ``C``, probabilities averaged.

    The ``C`` values are one warm-started path solve (:func:`lmprobe_jax.functional.fit_logistic` with a
    ``C`` grid), not one fit each. ``predict_proba`` is the mean over ``C`` of ``sigmoid(X w_C + b_C)``,
    the members' probabilities.

    Parameters (lmprobe's): ``C_values``; ``max_iter`` (Newton iterations per ``C``); ``solver`` and
    ``random_state`` are accepted and change nothing (the path solve is deterministic and reaches
    scikit-learn's optimum whatever solver it names).

    Attributes: ``coefs_`` ``(G, D)`` and ``intercepts_`` ``(G,)``, one row per ``C``; ``estimators_``
    (a fitted :class:`~lmprobe_jax.sklearn.LogisticProbe` per ``C``, sliced from the path); ``coef_``
    ``(1, D)`` and ``intercept_`` ``(1,)``, their averages (lmprobe's); ``classes_``.
    """

    def __init__(
        self,
        C_values: Any = DEFAULT_C_VALUES,
        solver: str = "lbfgs",
        max_iter: int = 1000,
        random_state: int | None = None,
    ):
        self.C_values = C_values
        self.solver = solver
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> EnsembleClassifier:
        X = np.asarray(X, np.float32)
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError(
                f"The 'ensemble' classifier is binary; y holds classes {self.classes_.tolist()}."
            )
        codes = np.searchsorted(self.classes_, y).astype(np.int32)
        fit = F.fit_logistic(
            X,
            codes,
            C=np.asarray(self.C_values, np.float32),
            sample_weight=sample_weight,
            max_iter=self.max_iter,
        )
        self.coefs_, self.intercepts_ = np.asarray(fit.coef), np.asarray(fit.intercept)
        self.n_iter_, self.converged_ = np.asarray(fit.n_iter), np.asarray(fit.converged)
        self.coef_, self.intercept_ = (
            self.coefs_.mean(0, keepdims=True),
            self.intercepts_.mean(0, keepdims=True),
        )
        self.n_features_in_ = X.shape[1]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coefs_"):
            raise NotFittedError("EnsembleClassifier has not been fitted: call fit() first.")

    @property
    def estimators_(self) -> list[LogisticProbe]:
        """One fitted LogisticProbe per ``C`` (in ``C_values`` order), the path's rows."""
        self._check_fitted()
        out = []
        for c, coef, intercept, n_iter, ok in zip(
            self.C_values, self.coefs_, self.intercepts_, self.n_iter_, self.converged_, strict=True
        ):
            est = LogisticProbe(C=c, max_iter=self.max_iter)
            est.coef_, est.intercept_ = coef[None], np.reshape(intercept, (1,))
            est.classes_, est.n_features_in_, est.n_iter_, est.converged_ = (
                self.classes_,
                coef.size,
                n_iter,
                ok,
            )
            out.append(est)
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """The mean of the members' probabilities ``(N, 2)``."""
        return np.mean([est.predict_proba(X) for est in self.estimators_], axis=0)

    def predict(self, X: Any) -> np.ndarray:
        positive = self.predict_proba(X)[:, 1] > 0.5  # checks fitted before classes_ is read
        return self.classes_[positive.astype(int)]


class Entry(NamedTuple):
    """One classifier name: ``native(**kwargs)`` (ours, or None), the kwargs it takes, and
    ``sklearn(random_state, **kwargs)`` (scikit-learn's, or None) for anything else."""

    native: Callable[..., BaseEstimator] | None
    native_kwargs: frozenset
    sklearn: Callable[..., BaseEstimator] | None


def _sk(module: str, name: str, **defaults: Any) -> Callable[..., BaseEstimator]:
    def build(random_state: int | None, **kwargs: Any) -> BaseEstimator:
        import importlib

        cls = getattr(importlib.import_module(module), name)
        extra = {"random_state": random_state} if "random_state" in cls().get_params() else {}
        return cls(**{**defaults, **extra, **kwargs})

    return build


_LOGISTIC = frozenset({"C", "fit_intercept", "tol", "max_iter"})
REGISTRY: dict[str, Entry] = {
    "logistic_regression": Entry(
        LogisticProbe, _LOGISTIC, _sk("sklearn.linear_model", "LogisticRegression", max_iter=1000)
    ),
    "logistic_regression_cv": Entry(
        LogisticCVProbe,
        _LOGISTIC - {"C"} | {"Cs", "cv", "scoring", "random_state"},
        _sk("sklearn.linear_model", "LogisticRegressionCV", cv=5, max_iter=1000),
    ),
    "ridge": Entry(
        RidgeProbe, frozenset({"alpha", "fit_intercept"}), _sk("sklearn.linear_model", "RidgeClassifier")
    ),
    "ridge_regression": Entry(
        RidgeRegressionProbe, frozenset({"alpha", "fit_intercept"}), _sk("sklearn.linear_model", "Ridge")
    ),
    "mass_mean": Entry(MassMeanProbe, frozenset({"iid", "shrinkage", "calibration_C"}), None),
    "lda": Entry(
        lambda **kw: MassMeanProbe(**{"iid": True, **kw}),
        frozenset({"shrinkage", "calibration_C"}),
        _sk("sklearn.discriminant_analysis", "LinearDiscriminantAnalysis"),
    ),
    "group_lasso": Entry(
        GroupLassoProbe, frozenset({"alpha", "groups", "fit_intercept", "tol", "max_iter"}), None
    ),
    "ensemble": Entry(
        EnsembleClassifier, frozenset({"C_values", "solver", "max_iter", "random_state"}), None
    ),
    "svm": Entry(None, frozenset(), _sk("sklearn.svm", "SVC", kernel="linear", probability=True)),
    "sgd": Entry(None, frozenset(), _sk("sklearn.linear_model", "SGDClassifier", loss="log_loss")),
    "sgd_gpu": Entry(SGDGPUClassifier, frozenset(SGDGPUClassifier().get_params()), None),
}

#: lmprobe's name for the mass-mean estimator.
MassMeanClassifier = MassMeanProbe

#: Names whose estimator fits every layer of a sweep in one batched solve (lmprobe_jax.sweep).
BATCHED = ("logistic_regression", "logistic_regression_cv", "ridge", "mass_mean", "lda")

BUILTIN_CLASSIFIERS = frozenset(REGISTRY)
"""Every classifier name (lmprobe's constant)."""
REGRESSION_CLASSIFIERS = frozenset({"ridge_regression"})
"""The names for ``task="regression"``."""
CLASSIFICATION_CLASSIFIERS = BUILTIN_CLASSIFIERS - REGRESSION_CLASSIFIERS
"""The names for ``task="classification"``."""

#: Estimator classes a saved probe may rebuild (by class name): only these are instantiated on load.
SAVABLE: dict[str, type] = {}


def _register_savable() -> None:
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, SGDClassifier
    from sklearn.preprocessing import StandardScaler

    for cls in (
        LogisticProbe,
        LogisticCVProbe,
        RidgeProbe,
        RidgeRegressionProbe,
        MassMeanProbe,
        GroupLassoProbe,
        EnsembleClassifier,
        SGDGPUClassifier,
        LogisticRegression,
        LogisticRegressionCV,
        Ridge,
        SGDClassifier,
        LinearDiscriminantAnalysis,
        StandardScaler,
        PCA,
    ):
        SAVABLE[cls.__name__] = cls


_register_savable()


@functools.cache
def cuml_available() -> bool:
    """Whether RAPIDS cuML imports (checked once; ``cuml_available.cache_clear()`` checks again)."""
    try:
        importlib.import_module("cuml")
    except ImportError:
        return False
    return True


def _resolve_compute_backend(compute_backend: str) -> str:
    """``"sklearn"`` or ``"cuml"``: what ``compute_backend`` builds (lmprobe's helper; see
    :data:`COMPUTE_BACKENDS`). Raises ValueError for an unknown name, ImportError for ``"cuml"`` without
    cuML."""
    _check_compute_backend(compute_backend)
    if compute_backend == "cuml" and not cuml_available():
        raise ImportError(_NO_CUML)
    return "cuml" if compute_backend == "cuml" else "sklearn"


_NO_CUML = (
    "compute_backend='cuml' requires cuML (RAPIDS: https://docs.rapids.ai/install); without it use 'sklearn' "
    "or 'auto', whose estimators already run on JAX's GPU."
)


def _check_compute_backend(compute_backend: str) -> None:
    if compute_backend not in COMPUTE_BACKENDS:
        raise ValueError(
            f"Unknown compute_backend {compute_backend!r}: choose one of {COMPUTE_BACKENDS} (lmprobe-jax's own "
            "estimators run on JAX's device, GPU included, under 'sklearn' and 'auto')."
        )


_CUML = {
    "logistic_regression": ("linear_model", "LogisticRegression", {"max_iter": 1000}),
    "ridge": ("linear_model", "Ridge", {"alpha": 1.0}),
    "ridge_regression": ("linear_model", "Ridge", {"alpha": 1.0}),
    "svm": ("svm", "SVC", {"probability": True}),
}
_CUML_SUPPORTED_CLASSIFIERS = frozenset(_CUML)
"""The names cuML has an estimator for (lmprobe's: the same classes and defaults)."""


def _build_cuml_classifier(name: str, classifier_kwargs: dict | None = None) -> Any:
    """cuML's estimator for ``name`` with lmprobe's defaults and ``classifier_kwargs``, or None when cuML
    has none (the caller then builds the table's). cuML's estimators take no ``random_state``."""
    if name not in _CUML:
        return None
    module, cls, defaults = _CUML[name]
    try:
        cuml = importlib.import_module("cuml")
    except ImportError as err:
        raise ImportError(_NO_CUML) from err
    estimator = getattr(getattr(cuml, module), cls)  # e.g. cuml.linear_model.Ridge
    return estimator(**{**defaults, **(classifier_kwargs or {})})


def check_name(name: str) -> None:
    if name not in REGISTRY:
        raise ValueError(f"Unknown classifier {name!r}: choose from {sorted(REGISTRY)} or pass an estimator.")


def build_classifier(
    name: str,
    random_state: int | None = None,
    classifier_kwargs: dict | None = None,
    compute_backend: str = "sklearn",
) -> BaseEstimator:
    """The unfitted estimator behind a classifier name, with ``classifier_kwargs`` (the module's table;
    lmprobe's signature). ``compute_backend`` (:data:`COMPUTE_BACKENDS`): ``"cuml"`` builds cuML's
    estimator for the names it has, the table's for the others."""
    check_name(name)
    _check_compute_backend(compute_backend)
    if compute_backend == "cuml" and name in _CUML_SUPPORTED_CLASSIFIERS:
        return _build_cuml_classifier(name, classifier_kwargs)
    entry = REGISTRY[name]
    kwargs = dict(classifier_kwargs or {})
    ours = {
        k: v
        for k, v in kwargs.items()
        if k in entry.native_kwargs or not (k in _HOW_NOT_WHAT or (k == "penalty" and v == "l2"))
    }
    if entry.native is not None and set(ours) <= entry.native_kwargs:
        if "random_state" in entry.native_kwargs and random_state is not None:
            ours.setdefault("random_state", random_state)
        return entry.native(**ours)
    if entry.sklearn is None:
        raise ValueError(
            f"classifier_kwargs {sorted(set(ours) - entry.native_kwargs)} do not fit classifier {name!r}, "
            f"which takes {sorted(entry.native_kwargs)}."
        )
    try:
        return entry.sklearn(random_state, **kwargs)
    except TypeError as err:
        raise ValueError(f"classifier_kwargs {kwargs} do not fit classifier {name!r}: {err}") from None


def validate_classifier(clf: Any) -> None:
    """Raise TypeError unless ``clf`` has ``fit`` and ``predict``; warn when it has no ``predict_proba``
    (a probe's ``predict_proba`` and soft voting then fail)."""
    for method in ("fit", "predict"):
        if not hasattr(clf, method):
            raise TypeError(
                f"classifier {type(clf).__name__} must have a {method}() method: pass a classifier name or a "
                "scikit-learn estimator."
            )
    if not hasattr(clf, "predict_proba"):
        warnings.warn(
            f"{type(clf).__name__} does not support predict_proba(): probe.predict_proba() will raise.",
            UserWarning,
            stacklevel=3,
        )


def resolve_classifier(
    classifier: str | BaseEstimator,
    random_state: int | None = None,
    classifier_kwargs: dict | None = None,
    compute_backend: str = "sklearn",
) -> BaseEstimator:
    """A classifier name built by :func:`build_classifier`, or an estimator as given; validated by
    :func:`validate_classifier` (lmprobe's)."""
    if isinstance(classifier, str):
        classifier = build_classifier(classifier, random_state, classifier_kwargs, compute_backend)
    validate_classifier(classifier)
    return classifier


def is_batched(name: Any, kwargs: dict | None, compute_backend: str = "sklearn") -> bool:
    """True when ``name`` with ``kwargs`` builds one of our estimators that a sweep batches."""
    return (
        isinstance(name, str)
        and name in BATCHED
        and type(build_classifier(name, None, kwargs, compute_backend)).__module__.startswith("lmprobe_jax")
    )


def linear_fit(estimator: BaseEstimator) -> Any:
    """The functional form of one of our fitted linear estimators, for :mod:`lmprobe_jax.functional`'s
    prediction; None for any other estimator (it predicts with its own methods).

    Binary ``coef_`` ``(1, D)`` becomes a fit whose probabilities are ``sigmoid(Xw + b)``, ``(K, D)`` one
    whose probabilities are the softmax of the K scores, ``(D,)`` (regression) plain ``Xw + b`` -- what
    each of our estimators' ``predict_proba`` / ``predict`` computes."""
    if type(estimator).__module__ != "lmprobe_jax.sklearn":
        return None
    coef, intercept = np.asarray(estimator.coef_), np.asarray(estimator.intercept_)
    if coef.ndim == 1:
        return F.RidgeFit(coef, intercept)
    if coef.shape[0] == 1:
        return F.RidgeFit(coef[0], intercept.reshape(-1)[0])
    return F.MulticlassRidgeFit(coef, intercept)
