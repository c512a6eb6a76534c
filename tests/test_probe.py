"""Probe / LayerSweepResult: lmprobe's documented examples replayed on a tiny offline model, compared with
scikit-learn on the same activations; lmprobe's known faults as regression tests; errors."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import itertools

import _tolerance as T
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


def logistic_reach(features, y, ref, C=1.0):
    """(region, reach): our float32 fit's region (T.glm_region, tol 1e-7) on standardised float64 features,
    and the reach between it and scikit-learn's ``ref`` (its float64 gradient, T.reference_radius)."""
    region = T.glm_region(features, y, C, tol=1e-7)
    return region, region.radius + T.reference_radius(region, ref.coef_[0], ref.intercept_[0])


def assert_same_predictions(got, want, features, theta, reach):
    """Predicted labels agree wherever the decision value is farther from zero than two fits within
    ``reach`` (and float32 rounding) can move it (T.unsure); the accuracies by at most the rest."""
    sure = ~T.unsure(features, theta, reach)
    np.testing.assert_array_equal(np.asarray(got)[sure], np.asarray(want)[sure])
    return 1.0 - sure.mean()


def test_reference_example_single_layer(data):
    """Probe(layers=16, pooling="last_token", classifier="logistic_regression") -> fit -> predict."""
    probe = make(data, layers=2, pooling="last_token", classifier="logistic_regression")
    probe.fit(data["train"][:16], data["train"][16:])
    ref, scaler, ref_pred = sklearn_logistic(data["X_train"][2], data["y_train"], data["X_test"][2])
    train, test = scaler.transform(data["X_train"][2]), scaler.transform(data["X_test"][2])
    region, reach = logistic_reach(train, data["y_train"], ref)
    unsure = assert_same_predictions(probe.predict(data["test"]), ref_pred, test, region.optimum, reach)
    assert abs(probe.score(data["test"], data["y_test"]) - np.mean(ref_pred == data["y_test"])) <= unsure
    T.assert_within(T.as_theta(probe.classifier_.coef_, probe.classifier_.intercept_), T.as_theta(ref.coef_, ref.intercept_),
                    reach)
    # both float64 means of the same float32 activations: float64 rounding of a mean over N rows
    np.testing.assert_array_less(np.abs(probe.scaler_.mean_ - scaler.mean_),
                                 T.mean_rounding(len(train), T.U64) * np.abs(data["X_train"][2]).mean(0) + 1e-300)
    proba = probe.predict_proba(data["test"])
    # sigmoid moves by at most a quarter of the decision value's move (plus its own ulps)
    np.testing.assert_allclose(proba, ref.predict_proba(test), rtol=0,
                               atol=0.25 * T.decision_error(test, region.optimum, reach).max() + 4 * T.U32)
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
    # the float32 ridge solve's reach (T.ridge_region) through each test row, plus float32 rounding
    region = T.ridge_region(scaler.transform(data["X_train"][3]), targets, 1.0)
    reach = region.reach + float(np.sum(T.ridge_reference_error(region, len(targets))))
    bound = T.decision_error(scaler.transform(data["X_test"][3]), region.theta(), reach)[:, 0]
    assert bound.max() < 0.05 * np.abs(want).max()  # informative
    np.testing.assert_array_less(np.abs(probe.predict(data["test"]) - want), bound)
    with pytest.raises(ValueError, match="classification"):
        probe.predict_proba(data["test"])


def test_layer_importance_example(data):
    """layers="all", classifier="ridge" -> compute_layer_importance(metric="l2"), sums to 1."""
    probe = make(data, layers="all", classifier="ridge").fit(data["train"][:16], data["train"][16:])
    importance = probe.compute_layer_importance(metric="l2")
    flat = StandardScaler().fit_transform(concat(data["X_train"], range(4)))
    ref = RidgeClassifier(alpha=1.0).fit(flat, data["y_train"])
    norms = np.linalg.norm(ref.coef_.reshape(4, -1), axis=1)
    # each layer's norm moves by at most the solve's coefficient reach (T.ridge_region); the shares of
    # their sum by at most twice that over the sum
    region = T.ridge_region(flat, 2.0 * data["y_train"] - 1, 1.0)
    reach = float(region.radius[0] + T.ridge_reference_error(region, len(flat))[0][0])
    assert 2 * reach / norms.sum() < 1e-2  # informative
    np.testing.assert_allclose(importance, norms / norms.sum(), rtol=0, atol=2 * reach / norms.sum() + 8 * T.U32)
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
        train, test = scaler.transform(data["X_train"][layer]), scaler.transform(data["X_test"][layer])
        ref = RidgeClassifier(alpha=1.0).fit(train, data["y_train"])
        want = ref.score(test, data["y_test"])
        # The sweep standardises in float32 (statistics to T.mean_rounding, relative) and solves in float32
        # (T.ridge_region): the coefficients move by both; scores only through samples within reach of 0.
        region = T.ridge_region(train, 2.0 * data["y_train"] - 1, 1.0)
        coef = region.coef[0]
        reach = float(region.radius[0] + T.ridge_reference_error(region, 32)[0][0]
                      + 2 * T.mean_rounding(32) * np.linalg.norm(coef))
        T.assert_within(result[layer].classifier_.coef_.ravel(), ref.coef_.ravel(), reach, f"layer {layer}")
        unsure = T.unsure(test, region.theta(), reach + float(region.intercept_error[0])).mean()
        assert abs(scores[layer] - want) <= unsure
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
    ref, scaler, ref_pred = sklearn_logistic(X, data["y_train"], concat(data["X_test"], [1, 3]))
    test = scaler.transform(concat(data["X_test"], [1, 3]))
    region, reach = logistic_reach(scaler.transform(X), data["y_train"], ref)
    unsure = assert_same_predictions(probe.predict_from_activations(concat(data["X_test"], [1, 3])), ref_pred, test,
                                     region.optimum, reach)
    assert abs(probe.score_from_activations(concat(data["X_test"], [1, 3]), data["y_test"])
               - np.mean(ref_pred == data["y_test"])) <= unsure
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
    # Ours runs the same chain in float32. How far its test decision values can be from these: the
    # features' error (the cast; the float32 SVD's backward error lambda sqrt(m) u ||M|| turned by
    # Wedin's theorem into each component's error over its singular-value gap; the float32 class means),
    # carried through the logistic fit (a data perturbation of its gradient over mu) and the region of
    # its own solve. Predictions must agree wherever the decision is farther from zero.
    M = std.transform(a)
    sv = np.linalg.svd(M - M.mean(0), compute_uv=False)
    gaps = np.minimum(sv[:5] - sv[1:6], np.r_[np.inf, sv[:4] - sv[1:5]])
    E = T.LAMBDA * np.sqrt(M.shape[1]) * T.U32 * sv[0] + np.linalg.norm(T.U32 * np.abs(M), 2)
    angle = np.sqrt(np.sum((E / (gaps - E)) ** 2))
    assert np.all(gaps > 2 * E) and angle < 1e-2  # each component resolved in float32, informative

    def feature_error(Z):
        Zs = std.transform(Z)
        pca_err = np.linalg.norm(Zs - pca.mean_, axis=1) * angle + T.LAMBDA * T.U32 * np.abs(Zs) @ np.abs(pca.components_).T.sum(1)
        mean_err = 2 * T.mean_rounding(len(a)) * np.abs(a).max(0) / np.linalg.norm(a[y == 1].mean(0) - a[y == 0].mean(0))
        aug_err = np.linalg.norm(Z, axis=1) * np.linalg.norm(mean_err) * 2 + T.dot_error(Z * direction, axis=1)
        return np.sqrt(pca_err**2 + aug_err**2)

    train_f, test_f = features(a), features(a_test)
    region, reach = logistic_reach(train_f, y, ref)
    p = 1 / (1 + np.exp(-(train_f @ ref.coef_[0] + ref.intercept_[0])))
    A = np.hstack([train_f, np.ones((len(y), 1))])
    theta_norm = np.linalg.norm(region.optimum)
    moved = np.sum((np.abs(p - y) + p * (1 - p) * theta_norm * np.linalg.norm(A, axis=1)) * feature_error(a)) / region.mu
    z = test_f @ region.optimum[0, :-1] + region.optimum[0, -1]
    z_reach = (np.linalg.norm(np.hstack([test_f, np.ones((len(test_f), 1))]), axis=1) * (reach + moved)
               + theta_norm * feature_error(a_test) + T.decision_error(test_f, region.optimum, 0)[:, 0])
    sure = np.abs(z) > z_reach
    assert sure.mean() >= 0.5  # informative
    np.testing.assert_array_equal(probe.predict(data["test"])[sure], ref.predict(test_f)[sure])


def test_score_level_max_inference_pooling(data):
    probe = make(data, layers=2, pooling="mean", inference_pooling="max")
    probe.fit(data["train"][:16], data["train"][16:])
    store = extract_activations(data["model"], data["test"], layers=[2], pooling="all", progress=False)
    tokens, offsets = np.asarray(store.load(2)), store.offsets()
    scaled = probe.scaler_.transform(tokens)
    per_token = probe.classifier_.predict_proba(scaled)[:, 1]
    want = np.array([per_token[a:b].max() for a, b in itertools.pairwise(offsets)])
    # The same probe on the same float32 rows, its products perhaps batched differently: the float32
    # decision values' rounding, a quarter of it on the sigmoid, plus its ulps.
    theta = T.as_theta(probe.classifier_.coef_, probe.classifier_.intercept_)
    atol = 0.25 * T.decision_error(scaled, theta, 0).max() + 4 * T.U32
    np.testing.assert_allclose(probe.predict_proba(data["test"])[:, 1], want, rtol=0, atol=atol)


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
    _region, reach = logistic_reach(scaler.transform(tokens), y, ref, C=0.5)
    T.assert_within(T.as_theta(probe.classifier_.coef_, probe.classifier_.intercept_), T.as_theta(ref.coef_, ref.intercept_),
                    reach)


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
        ({"preprocessing": "whiten"}, "preprocessing"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Probe(model=None, **kwargs)


def test_normalize_layers_is_checked_when_fitting_as_lmprobe_does():
    probe = Probe(model=None, normalize_layers="per_token")  # lmprobe accepts it here
    with pytest.raises(ValueError, match="normalize_layers"):
        probe.fit_from_activations(np.ones((4, 3), np.float32), [0, 1, 0, 1])


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
    _region, reach = logistic_reach(np.hstack(blocks), data["y_train"], ref)
    T.assert_within(T.as_theta(probe.classifier_.coef_, probe.classifier_.intercept_), T.as_theta(ref.coef_, ref.intercept_),
                    reach)


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
    for layer in (1, 3):  # two float32 solves of one problem (the same float32 standardised activations)
        features = np.asarray(plain[layer].scaler_.transform(data["X_train"][layer]), np.float64)
        region = T.glm_region(features, data["y_train"], 1.0, tol=1e-7, data=False)
        T.assert_within(T.as_theta(plain[layer].classifier_.coef_, plain[layer].classifier_.intercept_),
                        T.as_theta(checked[layer].classifier_.coef_, checked[layer].classifier_.intercept_),
                        2 * region.radius, f"layer {layer}")
