"""The one registry of classifier names: what each builds, kwargs honoured (never silently ignored),
the ensemble's definition, and save/load of every name through Probe."""

from __future__ import annotations

import _tolerance as T
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError as SkNotFittedError
from sklearn.linear_model import LogisticRegression

from lmprobe_jax import Probe
from lmprobe_jax.classifiers import REGISTRY, EnsembleClassifier, build_classifier
from lmprobe_jax.sklearn import LogisticProbe


def blobs(n=60, d=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return (rng.normal(size=(n, d)) + 1.5 * y[:, None] * np.eye(d)[0]).astype(np.float32), y


def test_kwargs_that_only_pick_an_algorithm_keep_our_solver():
    est = build_classifier(
        "logistic_regression",
        classifier_kwargs={"C": 0.1, "solver": "lbfgs", "max_iter": 5000, "penalty": "l2"},
    )
    assert isinstance(est, LogisticProbe) and est.C == 0.1 and est.max_iter == 5000


@pytest.mark.parametrize("kwargs", [{"penalty": "l1", "solver": "liblinear"}, {"class_weight": "balanced"}])
def test_kwargs_that_change_the_problem_build_scikit_learns_estimator(kwargs):
    est = build_classifier("logistic_regression", 3, kwargs)
    assert isinstance(est, LogisticRegression)
    assert all(est.get_params()[k] == v for k, v in kwargs.items()) and est.random_state == 3


def test_unknown_names_and_kwargs_are_refused():
    with pytest.raises(ValueError, match="Unknown classifier"):
        build_classifier("forest")
    with pytest.raises(ValueError, match="do not fit classifier 'mass_mean'"):
        build_classifier("mass_mean", classifier_kwargs={"C": 1.0})


def test_ensemble_averages_the_probabilities_of_its_c_path():
    X, y = blobs()
    ens = EnsembleClassifier(C_values=[0.01, 1.0]).fit(X, y)
    singles = [LogisticProbe(C=c).fit(X, y) for c in (0.01, 1.0)]
    proba = [single.predict_proba(X)[:, 1] for single in singles]
    # The path's warm-started solves and the single fits are two float32 solves of each problem (tol 1e-7):
    # each within its region (T.glm_region), so two fits within twice its radius, their decision values
    # within twice T.decision_error, a probability within a quarter of that (the sigmoid's slope), plus
    # the sigmoids' few ulps and the mean's rounding.
    regions = [T.glm_region(X, y, c, tol=1e-7, data=False) for c in (0.01, 1.0)]
    reach = [2 * T.decision_error(X, r.optimum, r.radius)[:, 0] / 4 + 8 * T.U32 for r in regions]
    np.testing.assert_array_less(np.abs(ens.predict_proba(X)[:, 1] - np.mean(proba, axis=0)),
                                 np.mean(reach, axis=0) + T.mean_rounding(2))
    # informative: a probability from the other C lies far outside
    assert max(r.max() for r in reach) < 0.05 * np.abs(proba[1] - proba[0]).mean()
    for est, single, p, r in zip(ens.estimators_, singles, proba, reach, strict=True):  # each C's row is that C's fit
        assert est.C == single.C
        np.testing.assert_array_less(np.abs(est.predict_proba(X)[:, 1] - p), r)
    mean = np.mean([s.coef_[0] for s in singles], axis=0)
    T.assert_within(ens.coef_[0], mean, np.mean([2 * r.radius for r in regions]) + T.mean_rounding(2) * np.linalg.norm(mean),
                    "the path's mean coefficient")
    assert EnsembleClassifier().get_params() == {
        "C_values": [0.01, 0.1, 0.5, 1.0, 5.0],
        "solver": "lbfgs",
        "max_iter": 1000,
        "random_state": None,
    }


def test_a_regressor_is_refused_for_classification():
    X, y = blobs()
    with pytest.raises(ValueError, match="is a regressor"):  # its continuous output was thresholded at 0
        Probe(layers=0, classifier="ridge_regression").fit_from_activations(X, y)


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - {"group_lasso", "ridge_regression"}))
def test_every_name_fits_predicts_and_round_trips(name, tmp_path):
    X, y = blobs()
    # lmprobe's SGD defaults (lr 0.01, 100 full-batch steps here) stop far from the optimum on 60 rows
    kwargs = {"lr": 0.5} if name == "sgd_gpu" else None
    probe = Probe(layers=0, classifier=name, classifier_kwargs=kwargs, random_state=0).fit_from_activations(X, y)
    pred = probe.predict_from_activations(X)
    assert np.mean(pred == y) > 0.7
    try:
        probe.save(tmp_path / "p")
    except ValueError as err:  # SVC keeps private arrays: not savable without pickle, and says so
        assert name == "svm" and "pickle" in str(err)
        return
    np.testing.assert_array_equal(Probe.load(tmp_path / "p").predict_from_activations(X), pred)


@pytest.mark.parametrize("name", sorted(n for n, e in REGISTRY.items() if e.native is not None))
def test_our_unfitted_estimators_raise_what_both_kinds_of_caller_catch(name):
    """lmprobe's estimators raise RuntimeError('... not been fitted') before fit; scikit-learn code
    catches its NotFittedError. Ours must be both (a bare check_is_fitted raised only the latter)."""
    est = build_classifier(name)
    X = np.ones((2, 3), np.float32)
    for method in ("predict", "decision_function"):
        if hasattr(est, method):
            with pytest.raises(RuntimeError, match="not been fitted"):
                getattr(est, method)(X)
            with pytest.raises(SkNotFittedError):
                getattr(est, method)(X)


def test_compute_backend_names_resolve_or_say_what_is_missing():
    from lmprobe_jax.classifiers import _resolve_compute_backend, cuml_available

    assert [_resolve_compute_backend(b) for b in ("sklearn", "auto")] == ["sklearn", "sklearn"]
    with pytest.raises(ValueError, match="Unknown compute_backend"):
        Probe(compute_backend="tensorflow")
    cuml_available.cache_clear()
    if not cuml_available():
        with pytest.raises(ImportError, match="compute_backend='cuml' requires cuML"):
            Probe(compute_backend="cuml")


def test_cuml_builds_cumls_estimators_with_lmprobes_defaults(monkeypatch):
    """cuML needs an NVIDIA GPU and RAPIDS, so it cannot run here: a stand-in ``cuml`` package whose
    classes are scikit-learn's (cuML's are drop-ins with the same constructor arguments) checks which
    class each name builds, with which arguments, and that a probe trains with it unbatched."""
    import importlib.machinery
    import types

    from sklearn.linear_model import Ridge
    from sklearn.svm import SVC

    from lmprobe_jax.classifiers import _CUML_SUPPORTED_CLASSIFIERS, cuml_available, is_batched

    cuml = types.ModuleType("cuml")
    cuml.__spec__ = importlib.machinery.ModuleSpec("cuml", None)
    cuml.linear_model = types.SimpleNamespace(LogisticRegression=LogisticRegression, Ridge=Ridge)
    cuml.svm = types.SimpleNamespace(SVC=SVC)
    monkeypatch.setitem(__import__("sys").modules, "cuml", cuml)
    cuml_available.cache_clear()
    try:
        assert _CUML_SUPPORTED_CLASSIFIERS == {"logistic_regression", "ridge", "ridge_regression", "svm"}
        est = build_classifier("logistic_regression", 3, {"C": 0.5}, compute_backend="cuml")
        assert type(est) is LogisticRegression and est.max_iter == 1000 and est.C == 0.5
        assert est.random_state is None  # cuML's estimators take none
        assert type(build_classifier("ridge", compute_backend="cuml")) is Ridge
        assert build_classifier("svm", compute_backend="cuml").probability is True
        assert isinstance(build_classifier("mass_mean", compute_backend="cuml"), REGISTRY["mass_mean"].native)
        assert not is_batched("logistic_regression", None, "cuml") and is_batched("logistic_regression", None)
        X, y = blobs()
        probe = Probe(layers=0, compute_backend="cuml").fit_from_activations(X, y)
        assert probe._compute_backend == "cuml" and type(probe.classifier_) is LogisticRegression
        features = probe._features(X[None].astype(np.float32))
        np.testing.assert_array_equal(probe.predict_from_activations(X), probe.classifier_.predict(features))
    finally:
        cuml_available.cache_clear()
