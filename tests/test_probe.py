"""Probe / LayerSweepResult: lmprobe's documented examples replayed on a tiny offline model, compared with
scikit-learn on the same activations; lmprobe's known faults as regression tests; errors."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import itertools

from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.preprocessing import StandardScaler

from lmprobe_jax import LayerSweepResult, Probe
from lmprobe_jax.sklearn import LogisticProbe
from lmprobe_jax_extract import extract_activations

CITIES = [
    "Lyon",
    "Paris",
    "Nice",
    "Lille",
    "Tours",
    "Metz",
    "Brest",
    "Caen",
    "Dijon",
    "Arles",
    "Nantes",
    "Rouen",
    "Reims",
    "Pau",
    "Albi",
    "Sete",
    "Vichy",
    "Agen",
    "Laval",
    "Niort",
    "Blois",
    "Gap",
]
POSITIVE = [f"The city of {c} is in France." for c in CITIES]
NEGATIVE = [f"The city of {c} is in Japan, by the quick dog." for c in CITIES]
TRAIN = slice(0, 16)
TEST = slice(16, None)


@pytest.fixture(scope="module")
def data(tiny_models, tmp_path_factory):
    """Prompts, labels and the tiny Llama's activations of every layer (last_token), train and test."""
    model = tiny_models["llama"]
    train = POSITIVE[TRAIN] + NEGATIVE[TRAIN]
    test = POSITIVE[TEST] + NEGATIVE[TEST]
    y_train = np.r_[np.ones(16, int), np.zeros(16, int)]
    y_test = np.r_[np.ones(6, int), np.zeros(6, int)]
    X_train = extract_activations(model, train, layers="all", progress=False).stack(dtype=np.float64)
    X_test = extract_activations(model, test, layers="all", progress=False).stack(dtype=np.float64)
    cache = tmp_path_factory.mktemp("activation_cache")
    return {
        "model": model,
        "train": train,
        "test": test,
        "y_train": y_train,
        "y_test": y_test,
        "X_train": X_train,
        "X_test": X_test,
        "cache": cache,
    }


def make(data, **kwargs):
    kwargs.setdefault("random_state", 0)
    return Probe(model=data["model"], cache_dir=data["cache"], progress=False, **kwargs)


def concat(X, layers):
    return np.concatenate([X[layer] for layer in layers], axis=1)


def sklearn_logistic(X_train, y, X_test):
    scaler = StandardScaler().fit(X_train)
    clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(scaler.transform(X_train), y)
    return clf, scaler, clf.predict(scaler.transform(X_test))


def test_reference_example_single_layer(data):
    """Probe(layers=16, pooling="last_token", classifier="logistic_regression") -> fit -> predict."""
    probe = make(data, layers=2, pooling="last_token", classifier="logistic_regression")
    probe.fit(data["train"][:16], data["train"][16:])
    ref, scaler, ref_pred = sklearn_logistic(data["X_train"][2], data["y_train"], data["X_test"][2])
    np.testing.assert_array_equal(probe.predict(data["test"]), ref_pred)
    assert abs(probe.score(data["test"], data["y_test"]) - np.mean(ref_pred == data["y_test"])) <= 0.01
    np.testing.assert_allclose(
        probe.classifier_.coef_, ref.coef_, rtol=2e-3, atol=2e-3 * np.abs(ref.coef_).max()
    )
    np.testing.assert_allclose(probe.scaler_.mean_, scaler.mean_, rtol=1e-6, atol=1e-8)
    proba = probe.predict_proba(data["test"])
    np.testing.assert_allclose(proba, ref.predict_proba(scaler.transform(data["X_test"][2])), atol=1e-3)
    assert list(probe.classes_) == [0, 1] and probe.selected_layers_ is None


def test_standard_fit_recognises_labels_of_every_type(data):
    base = make(data, layers=1).fit(data["train"][:16], data["train"][16:]).predict(data["test"])
    for labels in (
        data["y_train"],
        data["y_train"].tolist(),
        data["y_train"].astype(bool).tolist(),
        data["y_train"].astype(float),
    ):
        probe = make(data, layers=1).fit(data["train"], labels)
        np.testing.assert_array_equal(probe.predict(data["test"]).astype(int), base)


def test_regression_takes_float_targets_not_negative_prompts(data):
    """lmprobe took float targets for negative prompts with task="regression"."""
    targets = np.linspace(-1.0, 1.0, len(data["train"]))
    probe = make(data, layers=3, task="regression").fit(data["train"], targets)
    scaler = StandardScaler().fit(data["X_train"][3])
    ref = Ridge(alpha=1.0).fit(scaler.transform(data["X_train"][3]), targets)
    want = ref.predict(scaler.transform(data["X_test"][3]))
    np.testing.assert_allclose(probe.predict(data["test"]), want, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="classification"):
        probe.predict_proba(data["test"])


def test_layer_importance_example(data):
    """layers="all", classifier="ridge" -> compute_layer_importance(metric="l2"), sums to 1."""
    probe = make(data, layers="all", classifier="ridge").fit(data["train"][:16], data["train"][16:])
    importance = probe.compute_layer_importance(metric="l2")
    flat = concat(data["X_train"], range(4))
    ref = RidgeClassifier(alpha=1.0).fit(StandardScaler().fit_transform(flat), data["y_train"])
    norms = np.linalg.norm(ref.coef_.reshape(4, -1), axis=1)
    np.testing.assert_allclose(importance, norms / norms.sum(), rtol=1e-3)
    assert probe.candidate_layers_ == [0, 1, 2, 3] and np.isclose(importance.sum(), 1.0)
    assert probe.layer_importances_ is importance


def test_fast_auto_example(data):
    """layers="fast_auto", fast_auto_top_k=3: fit on all layers, keep the top 3 by importance, refit."""
    probe = make(data, layers="fast_auto", fast_auto_top_k=3, normalize_layers=True)
    probe.fit(data["train"][:16], data["train"][16:])
    flat = concat(data["X_train"], range(4))
    ref = LogisticRegression(tol=1e-10, max_iter=10000).fit(
        StandardScaler().fit_transform(flat), data["y_train"]
    )
    norms = np.linalg.norm(ref.coef_.reshape(4, -1), axis=1)
    assert probe.selected_layers_ == sorted(np.argsort(-norms)[:3].tolist())
    assert probe.layers_ == probe.selected_layers_


def group_lasso_reference(Xs, y, alpha, iters=20000):
    """Float64 proximal gradient (ISTA) for (1/n) sum logloss + alpha * sum_l ||w_l||, intercept free."""
    L, n, d = Xs.shape
    A = np.concatenate(list(Xs), axis=1)
    w, b = np.zeros(L * d), 0.0
    step = 4 * n / (np.linalg.norm(A, 2) ** 2 + n)
    for _ in range(iters):
        r = 1 / (1 + np.exp(-(A @ w + b))) - y
        w = w - step * A.T @ r / n
        b = b - step * r.mean()
        blocks = w.reshape(L, d)
        norms = np.linalg.norm(blocks, axis=1, keepdims=True)
        w = (blocks * np.maximum(0, 1 - step * alpha / np.maximum(norms, 1e-300))).reshape(-1)
    return np.linalg.norm(w.reshape(L, d), axis=1) > 0


def test_auto_example(data):
    """layers="auto", auto_candidates=[0.25, 0.5, 0.75], auto_alpha -> selected_layers_."""
    probe = make(data, layers="auto", auto_candidates=[0.25, 0.5, 0.75], auto_alpha=0.05)
    probe.fit(data["train"][:16], data["train"][16:])
    candidates = [0, 1, 2]  # int(f * 3) for f in 0.25, 0.5, 0.75
    assert probe.candidate_layers_ == candidates
    Xs = np.stack([StandardScaler().fit_transform(data["X_train"][c]) for c in candidates])
    kept = group_lasso_reference(Xs, data["y_train"], 0.05)
    assert probe.selected_layers_ == [c for c, k in zip(candidates, kept, strict=True) if k]


def test_sweep_layers_example(data):
    """Probe.sweep_layers(..., layers="all", classifier="ridge") -> score, best_layer, probes[best]."""
    result = Probe.sweep_layers(
        data["model"],
        data["train"][:16],
        data["train"][16:],
        layers="all",
        classifier="ridge",
        cache_dir=data["cache"],
        progress=False,
        cv=True,
    )
    assert isinstance(result, LayerSweepResult) and result.layers == [0, 1, 2, 3]
    scores = result.score(data["test"], data["y_test"])
    for layer in range(4):
        scaler = StandardScaler().fit(data["X_train"][layer])
        ref = RidgeClassifier(alpha=1.0).fit(scaler.transform(data["X_train"][layer]), data["y_train"])
        want = ref.score(scaler.transform(data["X_test"][layer]), data["y_test"])
        assert abs(scores[layer] - want) <= 0.01
        np.testing.assert_allclose(
            result[layer].classifier_.coef_.ravel(), ref.coef_.ravel(), rtol=1e-3, atol=1e-4
        )
    best = result.best_layer(data["test"], data["y_test"])
    assert scores[best] == max(scores.values())
    np.testing.assert_array_equal(
        result.probes[best].predict(data["test"]), result.predict(data["test"])[best]
    )
    assert set(result.predict_proba(data["test"])) == {0, 1, 2, 3}
    assert result.sweep is not None and len(result.sweep.table()) == 4


@pytest.mark.parametrize(
    "spec, layers", [("sweep", [0, 1, 2, 3]), ("sweep:2", [0, 2]), ("sweep:1-2", [1, 2])]
)
def test_sweep_spec_in_a_probe_chooses_without_the_eval_set(data, spec, layers):
    probe = make(data, layers=spec).fit(data["train"][:16], data["train"][16:])
    assert probe.sweep_.layers == layers and probe.best_layer_ in layers
    report = probe.evaluate(data["test"], data["y_test"])
    other = probe.evaluate(data["test"][::-1][:8], data["y_test"][::-1][:8])
    assert set(report["layer_results"]) == set(layers)
    assert report["best_layer"] == other["best_layer"] == probe.best_layer_  # not picked on eval data
    assert report["accuracy"] == report["layer_results"][probe.best_layer_]["accuracy"]


def test_evaluate_reports_lmprobe_metrics(data):
    probe = make(data, layers=-1).fit(data["train"][:16], data["train"][16:])
    report = probe.evaluate(data["test"], data["y_test"])
    assert set(report) == {"accuracy", "auroc", "f1", "precision", "recall", "n_eval", "eval_hash"}
    assert report["n_eval"] == 12 and report["accuracy"] == probe.score(data["test"], data["y_test"])


def test_from_activations_round_trip(data):
    X = concat(data["X_train"], [1, 3])
    probe = Probe(layers=[1, 3], random_state=0).fit_from_activations(X, data["y_train"], n_layers=2)
    _ref, _scaler, ref_pred = sklearn_logistic(X, data["y_train"], concat(data["X_test"], [1, 3]))
    np.testing.assert_array_equal(probe.predict_from_activations(concat(data["X_test"], [1, 3])), ref_pred)
    assert probe.score_from_activations(concat(data["X_test"], [1, 3]), data["y_test"]) == np.mean(
        ref_pred == data["y_test"]
    )
    assert probe.predict_proba_from_activations(data["X_test"][[1, 3]]).shape == (12, 2)
    # selection among the blocks handed over
    auto = Probe(layers="fast_auto", fast_auto_top_k=1).fit_from_activations(data["X_train"], data["y_train"])
    assert len(auto.layers_) == 1 and auto.predict_from_activations(data["X_test"]).shape == (12,)


def test_preprocessing_and_augmentation_match_sklearn(data):
    from sklearn.decomposition import PCA

    probe = make(data, layers=[1, 2], preprocessing="standard+pca:5", mass_mean_augment=True)
    probe.fit(data["train"][:16], data["train"][16:])
    flat, flat_test = concat(data["X_train"], [1, 2]), concat(data["X_test"], [1, 2])
    scaled = StandardScaler().fit(flat)
    a, a_test = scaled.transform(flat), scaled.transform(flat_test)
    std, pca = StandardScaler().fit(a), None
    pca = PCA(5, random_state=0).fit(std.transform(a))
    y = data["y_train"]
    direction = a[y == 1].mean(0) - a[y == 0].mean(0)
    direction /= np.linalg.norm(direction)

    def features(Z):
        return np.hstack([pca.transform(std.transform(Z)), (Z @ direction)[:, None]])

    ref = LogisticRegression(tol=1e-10, max_iter=10000).fit(features(a), y)
    np.testing.assert_array_equal(probe.predict(data["test"]), ref.predict(features(a_test)))


def test_score_level_max_inference_pooling(data):
    probe = make(data, layers=2, pooling="mean", inference_pooling="max")
    probe.fit(data["train"][:16], data["train"][16:])
    store = extract_activations(data["model"], data["test"], layers=[2], pooling="all", progress=False)
    tokens, offsets = np.asarray(store.load(2)), store.offsets()
    per_token = probe.classifier_.predict_proba(probe.scaler_.transform(tokens))[:, 1]
    want = np.array([per_token[a:b].max() for a, b in itertools.pairwise(offsets)])
    np.testing.assert_allclose(probe.predict_proba(data["test"])[:, 1], want, rtol=1e-5)


def test_pooling_all_trains_on_real_tokens_only(data):
    """lmprobe trained on pad rows with pooling="all"."""
    probe = make(data, layers=1, pooling="all", classifier=LogisticProbe(C=0.5))
    probe.fit(data["train"][:16], data["train"][16:])
    store = extract_activations(data["model"], data["train"], layers=[1], pooling="all", progress=False)
    tokens, counts = np.asarray(store.load(1), np.float64), np.diff(store.offsets())
    y = np.repeat(data["y_train"], counts)
    assert len(tokens) == counts.sum() < len(data["train"]) * counts.max()  # no pad rows
    scaler = StandardScaler().fit(tokens)
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(scaler.transform(tokens), y)
    np.testing.assert_allclose(
        probe.classifier_.coef_, ref.coef_, rtol=5e-3, atol=5e-3 * np.abs(ref.coef_).max()
    )


def test_save_and_load_run_no_code(data, tmp_path):
    probe = make(data, layers="fast_auto", fast_auto_top_k=2, preprocessing="pca:4", classifier="mass_mean")
    with pytest.raises(RuntimeError, match="preprocessing"):
        probe.fit(data["train"][:16], data["train"][16:])
    probe = make(data, layers=[0, 2], preprocessing="standard+pca:4").fit(
        data["train"][:16], data["train"][16:]
    )
    probe.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["arrays.safetensors", "probe.json"]
    json.loads((tmp_path / "p" / "probe.json").read_text())
    loaded = Probe.load(tmp_path / "p")
    np.testing.assert_allclose(
        loaded.predict_proba(data["test"]), probe.predict_proba(data["test"]), rtol=1e-6
    )
    assert loaded.layers_ == [0, 2] and list(loaded.classes_) == [0, 1]

    class Custom(LogisticRegression):
        pass

    custom = make(data, layers=1, classifier=Custom()).fit(data["train"], data["y_train"])
    with pytest.raises(ValueError, match="pickle"):
        custom.save(tmp_path / "c")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": "middel"}, "Unknown layer spec"),
        ({"classifier": "svn"}, "Unknown classifier"),
        ({"pooling": "median"}, "Invalid pooling"),
        ({"inference_pooling": "score:all"}, "Unknown base pooling"),
        ({"preprocessing": "pca"}, "no component count"),
        ({"backend": "local", "remote": True}, "does not support remote"),
        ({"dtype": "int8"}, "Unknown dtype"),
        ({"task": "ranking"}, "Unknown task"),
        ({"normalize_layers": "per_token"}, "normalize_layers"),
        ({"preprocessing": "whiten"}, "preprocessing"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Probe(model=None, **kwargs)


def test_errors_at_fit_and_predict(data):
    with pytest.raises(ValueError, match="out of range"):
        make(data, layers=7).fit(data["train"], data["y_train"])
    with pytest.raises(ValueError, match="empty"):
        make(data).fit([], [])
    with pytest.raises(ValueError, match="one label per prompt"):
        make(data).fit(data["train"], data["y_train"][:-1])
    with pytest.raises(ValueError, match="Float labels"):
        make(data).fit(data["train"], np.linspace(0, 1, len(data["train"])))
    with pytest.raises(ValueError, match=r"fit\(\) requires two arguments"):
        make(data).fit(data["train"])
    with pytest.raises(NotFittedError):
        make(data).predict(data["test"])
    with pytest.raises(ValueError, match="No model"):
        Probe(layers=1).fit(data["train"], data["y_train"])
    with pytest.raises(TypeError, match="one string"):
        make(data).fit("a prompt", [1])


def test_sweep_takes_labels_as_labels(data):
    """lmprobe took the labels of fit(prompts, labels) for negative prompts under layers="sweep"."""
    contrastive = make(data, layers="sweep").fit(data["train"][:16], data["train"][16:])
    labelled = make(data, layers="sweep").fit(data["train"], data["y_train"])
    assert labelled.best_layer_ == contrastive.best_layer_
    np.testing.assert_array_equal(labelled.predict(data["test"]), contrastive.predict(data["test"]))
    result = Probe.sweep_layers(
        data["model"],
        data["train"],
        data["y_train"],
        layers="sweep:1-2",
        cache_dir=data["cache"],
        progress=False,
    )
    assert result.layers == [1, 2] and set(result.timings) == {"extract_s", "fit_s"}


def test_warmup_then_fit_runs_no_forward(data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(data["model"]).eval()
    tok = AutoTokenizer.from_pretrained(data["model"])
    calls = [0]
    model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    probe = Probe(model=(model, tok), layers=[1, 2], cache_dir=tmp_path, progress=False)
    probe.warmup(data["train"])
    warm_calls = calls[0]
    assert warm_calls > 0
    probe.fit(data["train"], data["y_train"])
    assert calls[0] == warm_calls  # served from the cache the warmup filled


def test_per_layer_normalisation_matches_a_hand_computation(data):
    X = data["X_train"][[1, 2]]
    probe = Probe(normalize_layers="per_layer").fit_from_activations(X, data["y_train"])
    blocks = []
    for layer in X:
        blocks.append((layer - layer.mean()) / layer.std())  # one mean and one std per layer
    ref = LogisticRegression(tol=1e-10, max_iter=10000).fit(np.hstack(blocks), data["y_train"])
    np.testing.assert_allclose(
        probe.classifier_.coef_, ref.coef_, rtol=2e-3, atol=2e-3 * np.abs(ref.coef_).max()
    )


@pytest.mark.parametrize(
    "classifier",
    ["logistic_regression", "logistic_regression_cv", "ridge", "mass_mean", "lda", "group_lasso"],
)
def test_every_named_classifier_fits_and_predicts(data, classifier):
    kwargs = {"classifier_kwargs": {"alpha": 0.001}} if classifier == "group_lasso" else {}
    probe = Probe(layers=[0, 1], classifier=classifier, **kwargs).fit_from_activations(
        data["X_train"][[2, 3]], data["y_train"]
    )
    accuracy = probe.score_from_activations(data["X_train"][[2, 3]], data["y_train"])
    assert accuracy >= 0.9 and probe.predict_proba_from_activations(data["X_test"][[2, 3]]).shape == (12, 2)


def test_sweep_layers_without_cv_fits_the_same_probes(data):
    kwargs = {"layers": [1, 3], "cache_dir": data["cache"], "progress": False}
    plain = Probe.sweep_layers(data["model"], data["train"], data["y_train"], **kwargs)
    checked = Probe.sweep_layers(data["model"], data["train"], data["y_train"], cv=True, **kwargs)
    assert plain.sweep is None and checked.sweep.layers == [1, 3]
    for layer in (1, 3):
        np.testing.assert_allclose(
            plain[layer].classifier_.coef_, checked[layer].classifier_.coef_, rtol=1e-4, atol=1e-5
        )
