"""What Probe makes of its inputs: label formats, ambiguous calls, atomic saves, and hypothesis fuzzing
of every public entry of Probe / LayerSweepResult. Each input either gives the right answer or raises
ValueError / TypeError with a message; never a silently wrong result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import _tolerance as T
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from lmprobe_jax import LayerSweepResult, Probe
from lmprobe_jax.probe import NotFittedError
from lmprobe_jax.probe._labels import check_labels, split_fit_args

POS = [f"The city of {c} is in France." for c in ("Lyon", "Paris", "Nice", "Lille", "Tours", "Metz")]
NEG = [f"The city of {c} is in Japan." for c in ("Osaka", "Kyoto", "Nara", "Kobe", "Sendai", "Chiba")]


def blobs(n=40, d=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) + 2.0 * y[:, None] * np.eye(d)[0]
    return X.astype(np.float32), y


# -- how fit's arguments are read -------------------------------------------------------------------------
def test_string_class_labels_are_labels_not_negative_prompts():
    words = ["positive", "negative"] * 6
    prompts, y, contrastive = split_fit_args(POS + NEG, words)
    assert not contrastive and prompts == POS + NEG and list(y) == words


def test_single_word_prompts_without_repeats_are_negative_prompts():
    """lmprobe's own tests fit(["good", "great"], ["bad", "terrible"]): four prompts, not two labels."""
    prompts, y, contrastive = split_fit_args(["good", "great"], ["bad", "terrible"])
    assert contrastive and prompts == ["good", "great", "bad", "terrible"] and y.tolist() == [1, 1, 0, 0]


def test_numpy_prompt_arrays_are_contrastive():
    """lmprobe-jax once read np.array(neg) as 6 labels (a 12-class probe of sentences)."""
    prompts, y, contrastive = split_fit_args(np.array(POS), np.array(NEG))
    assert contrastive and prompts == POS + NEG and y.tolist() == [1] * 6 + [0] * 6


def test_repeated_sentences_of_prompt_length_are_refused_as_ambiguous():
    with pytest.raises(ValueError, match="negative prompts or class labels"):
        split_fit_args(POS, [NEG[0], NEG[1]] * 3)


@pytest.mark.parametrize(
    "labels", [[1] * 6 + [0] * 6, np.r_[np.ones(6), np.zeros(6)], [True] * 6 + [False] * 6]
)
def test_numeric_labels_are_labels(labels):
    _, y, contrastive = split_fit_args(POS + NEG, labels)
    assert (
        not contrastive
        and check_labels(y, 12, task="classification", training=True).tolist() == [1] * 6 + [0] * 6
    )


def test_missing_second_argument_says_how_to_call_fit():
    with pytest.raises(ValueError, match=r"fit\(\) requires two arguments"):
        split_fit_args(POS, None)


def test_label_shapes_are_checked_never_broadcast():
    assert check_labels(np.ones((5, 1), int), 5, task="classification", training=False).shape == (5,)
    for bad in ([1], np.ones((5, 2)), np.ones(4)):
        with pytest.raises(ValueError, match="one label per prompt"):
            check_labels(bad, 5, task="classification", training=False)


def test_string_labels_from_activations_give_string_predictions():
    X, y = blobs()
    words = np.where(y == 1, "yes", "no")
    probe = Probe(layers=0).fit_from_activations(X, words)
    by_int = Probe(layers=0).fit_from_activations(X, y)
    assert list(probe.classes_) == ["no", "yes"]
    np.testing.assert_array_equal(
        probe.predict_from_activations(X) == "yes", by_int.predict_from_activations(X) == 1
    )
    assert probe.score_from_activations(X, words) == by_int.score_from_activations(X, y)


def test_scoring_one_class_labels_is_allowed():
    """Monitoring data is often all one class: score and evaluate must not reuse the training check."""
    X, y = blobs()
    probe = Probe(layers=0).fit_from_activations(X, y)
    positives = y == 1
    expected = float(np.mean(probe.predict_from_activations(X[positives]) == 1))
    assert probe.score_from_activations(X[positives], y[positives]) == expected


def test_unfitted_errors_are_runtime_and_sklearn_errors():
    with pytest.raises(RuntimeError, match="not been fitted"):
        Probe().predict_from_activations(np.zeros((2, 4)))
    with pytest.raises(NotFittedError):
        Probe().predict_proba_from_activations(np.zeros((2, 4)))


# -- atomic save / load ------------------------------------------------------------------------------------
def fitted(seed):
    X, y = blobs(seed=seed)
    return Probe(layers=0, random_state=seed).fit_from_activations(X, y), X


def test_a_save_killed_before_its_rename_leaves_the_old_probe(tmp_path, monkeypatch):
    old, X = fitted(0)
    new, _ = fitted(1)
    old.save(tmp_path / "p")
    real_replace = os.replace

    def crash(src, dst):
        if str(dst) == str(tmp_path / "p") and "tmp-" in str(src):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "p")
    monkeypatch.setattr(os, "replace", real_replace)
    loaded = Probe.load(tmp_path / "p") if (tmp_path / "p").exists() else None
    if loaded is None:  # killed between the two renames: the old probe was set aside, never mixed
        (aside,) = tmp_path.glob(".p.old-*/probe")
        loaded = Probe.load(aside)
    np.testing.assert_array_equal(
        loaded.predict_proba_from_activations(X), old.predict_proba_from_activations(X)
    )
    assert not list(tmp_path.glob(".p.tmp-*"))


def test_arrays_of_one_save_beside_json_of_another_are_refused(tmp_path):
    a, _ = fitted(0)
    b, _ = fitted(1)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    (tmp_path / "a" / "arrays.safetensors").write_bytes((tmp_path / "b" / "arrays.safetensors").read_bytes())
    with pytest.raises(ValueError, match="SHA-256"):
        Probe.load(tmp_path / "a")


def test_save_refuses_to_replace_something_that_is_not_a_probe(tmp_path):
    probe, _ = fitted(0)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a saved probe"):
        probe.save(tmp_path / "data")
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine"


def test_kill_9_during_repeated_saves_never_leaves_a_mixed_probe(tmp_path):
    """A real SIGKILL at random points of a loop that saves probe A or B over one path: afterwards the
    path (or the copy set aside during the swap) loads as exactly A or exactly B."""
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {os.getcwd()!r})
        from lmprobe_jax import Probe
        rng = np.random.default_rng(0)
        X = rng.normal(size=(40, 6)).astype(np.float32); y = np.arange(40) % 2
        probes = [Probe(layers=0, classifier_kwargs={{"C": c}}).fit_from_activations(X, y) for c in (0.01, 10.0)]
        probes[0].save({str(tmp_path / "p")!r})
        print("ready", flush=True)
        i = 1
        while True:
            probes[i % 2].save({str(tmp_path / "p")!r}); i += 1
    """)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)).astype(np.float32)
    y = np.arange(40) % 2
    expected = [
        Probe(layers=0, classifier_kwargs={"C": c})
        .fit_from_activations(X, y)
        .predict_proba_from_activations(X)
        for c in (0.01, 10.0)
    ]
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env={**os.environ})
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.2 + 0.3 * rng.random())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Killed between the two renames, the path is missing and the copy set aside is whole.
        (where,) = [tmp_path / "p"] if (tmp_path / "p").exists() else list(tmp_path.glob(".p.old-*/probe"))
        proba = Probe.load(where).predict_proba_from_activations(X)
        assert any(np.array_equal(proba, e) for e in expected), f"round {round_}"
    Probe.load(where).save(tmp_path / "p")  # the next save clears what the killed ones left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


# -- hypothesis: every public entry --------------------------------------------------------------------------
label_kinds = st.sampled_from(["int", "bool", "str", "float", "column", "shifted"])


def encode(y, kind):
    return {
        "int": y,
        "bool": y.astype(bool),
        "str": np.where(y == 1, "b", "a"),
        "float": y.astype(float),
        "column": y[:, None],
        "shifted": y * 5 - 2,
    }[kind]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=label_kinds, n=st.integers(8, 30), seed=st.integers(0, 3), score_kind=label_kinds)
def test_fuzz_label_encodings_from_activations(kind, n, seed, score_kind):
    """Any label encoding gives the same probe, predictions in its own encoding, and the same score."""
    X, y = blobs(n=n, seed=seed)
    probe = Probe(layers=0).fit_from_activations(X, encode(y, kind))
    reference = Probe(layers=0).fit_from_activations(X, y)
    flat = np.ravel(encode(y, kind))
    assert set(probe.classes_.tolist()) == set(
        np.unique(flat if kind != "float" else flat.astype(int)).tolist()
    )
    pred = probe.predict_from_activations(X)
    assert (pred == probe.classes_[1]).tolist() == (reference.predict_from_activations(X) == 1).tolist()
    if score_kind == kind or {score_kind, kind} <= {"int", "float", "column"}:
        assert probe.score_from_activations(X, encode(y, score_kind)) == reference.score_from_activations(
            X, y
        )


@settings(max_examples=40, deadline=None)
@given(
    second=st.one_of(
        st.lists(st.sampled_from(["yes", "no", "a b", "c d", "x"]), min_size=0, max_size=14),
        st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=14),
        st.lists(st.integers(-3, 3), min_size=0, max_size=14),
        st.lists(st.floats(allow_nan=True), min_size=1, max_size=14),
        st.lists(st.one_of(st.integers(), st.text()), min_size=1, max_size=6),
        st.text(max_size=5),
        st.none(),
    ),
    n=st.integers(1, 12),
)
def test_fuzz_fit_arguments_are_read_or_refused(second, n):
    prompts = [f"prompt {i}" for i in range(n)]
    try:
        out, y, contrastive = split_fit_args(prompts, second)
        if not contrastive:
            y = check_labels(y, len(out), task="classification", training=True)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    if contrastive:
        assert out == prompts + list(second) and y.tolist() == [1] * n + [0] * len(second)
    else:
        assert out == prompts and len(y) == n and np.unique(y).size >= 2


probe_params = st.fixed_dictionaries(
    {},
    optional={
        "layers": st.one_of(
            st.integers(-5, 5),
            st.sampled_from(
                [
                    "middle",
                    "all",
                    "last",
                    "sweep",
                    "sweep:1",
                    "fast_auto",
                    "auto",
                    "embeddings",
                    "bogus",
                    "sweep:0-9",
                    "1-2",
                ]
            ),
            st.lists(st.integers(-3, 3), max_size=3),
            st.floats(-1, 2),
        ),
        "pooling": st.sampled_from(["last_token", "mean", "max", "median", "all", "score:max"]),
        "inference_pooling": st.sampled_from(
            [None, "score:mean", "activation:max", "max", "bad:max", "score:all"]
        ),
        "classifier": st.sampled_from(
            [
                "logistic_regression",
                "ridge",
                "mass_mean",
                "lda",
                "svm",
                "sgd",
                "ensemble",
                "logistic_regression_cv",
                "nope",
            ]
        ),
        "task": st.sampled_from(["classification", "regression", "ranking"]),
        "normalize_layers": st.sampled_from([True, False, "per_layer", "per_neuron", "sometimes"]),
        "preprocessing": st.sampled_from(
            [None, "standard", "pca", "pca:2", "standard_scaler+pca:2", "whiten"]
        ),
        "pca_components": st.sampled_from([None, 2]),
        "mass_mean_augment": st.booleans(),
        "dtype": st.sampled_from([None, "float32", "bfloat16", "int8"]),
        "backend": st.sampled_from(["local", "nnsight", "tpu"]),
        "remote": st.booleans(),
        "classifier_kwargs": st.sampled_from(
            [
                None,
                {"C": 0.5},
                {"solver": "liblinear"},
                {"penalty": "l1", "solver": "liblinear"},
                {"class_weight": "balanced"},
                {"nonsense": 1},
            ]
        ),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=probe_params, seed=st.integers(0, 2))
def test_fuzz_probe_parameters_from_activations(params, seed):
    """Any parameter set is refused at construction with a message, or fits and predicts consistently:
    predictions are classes, probabilities rows sum to 1, score is the accuracy of predict."""
    try:
        probe = Probe(**params)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    X, y = blobs(n=24, d=4, seed=seed)
    X3 = np.stack([X, X[:, ::-1], X * 2])  # three layers
    if probe.task == "regression":
        y = X[:, 0] * 2.0 + 0.1
    try:
        probe.fit_from_activations(X3, y)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    pred = probe.predict_from_activations(X3)
    assert pred.shape == (24,)
    if probe.task == "classification":
        assert set(pred.tolist()) <= set(probe.classes_.tolist())
        assert probe.score_from_activations(X3, y) == pytest.approx(np.mean(pred == y))
        proba = probe.predict_proba_from_activations(X3)
        # A float32 softmax row sums to 1 within (2K + 4) ulps (K exponentials and divisions, a K-term sum);
        # the ensemble averages up to 5 such rows (its default C path: T.mean_rounding), and the row sum
        # here is K more float32 additions (T.sum_rounding).
        K = proba.shape[1]
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=(2 * K + 4) * T.U32 + T.mean_rounding(5) + T.sum_rounding(K))
        np.testing.assert_array_equal(probe.classes_[np.argmax(proba, axis=1)], pred)
    with pytest.raises(ValueError):
        probe.predict_from_activations(X3[:, :, :3])


@pytest.fixture(scope="module")
def sweep(tiny_models, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return Probe.sweep_layers(tiny_models["llama"], POS, NEG, layers=[1, 2], cache_dir=cache, progress=False)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    labels=st.one_of(
        st.just("right"),
        st.just("column"),
        st.lists(st.integers(0, 1), min_size=1, max_size=3),
        st.just("strings"),
    )
)
def test_fuzz_layer_sweep_result_score_labels(sweep, labels):
    """LayerSweepResult.score: right-length labels give the accuracy of predict; length-1 or wrong-length
    labels are refused (they were broadcast into wrong accuracies)."""
    test = POS[:2] + NEG[:2]
    truth = np.array([1, 1, 0, 0])
    named = {"right": truth, "column": truth[:, None], "strings": ["1", "1", "0", "0"]}
    given_labels = named[labels] if isinstance(labels, str) else labels
    try:
        scores = sweep.score(test, given_labels)
    except ValueError as err:
        assert "one label per prompt" in str(err) or "classes are" in str(err)
        assert labels not in ("right", "column")
        return
    predictions = sweep.predict(test)
    for layer in (1, 2):
        assert scores[layer] == np.mean(predictions[layer] == np.asarray(given_labels).ravel())


def test_layer_sweep_result_container():
    empty = LayerSweepResult()
    assert len(empty) == 0 and empty.layers == []


def test_embeddings_layer_is_accepted(tiny_models, tmp_path):
    probe = Probe(model=tiny_models["llama"], layers="embeddings", cache_dir=tmp_path, progress=False)
    probe.fit(POS, NEG)
    assert probe.layers_ == ["embeddings"] and probe.predict(POS[:2]).shape == (2,)
    both = Probe(
        model=tiny_models["llama"], layers=["embeddings", 2], cache_dir=tmp_path, progress=False
    ).fit(POS, NEG)
    assert both.layers_ == ["embeddings", 2]
    both.save(tmp_path / "p")
    np.testing.assert_array_equal(Probe.load(tmp_path / "p").predict_proba(NEG), both.predict_proba(NEG))
    json.loads((tmp_path / "p" / "probe.json").read_text())


@pytest.fixture(scope="module")
def fitted_probe(tiny_models, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return Probe(model=tiny_models["llama"], layers=[1, 3], cache_dir=cache, progress=False).fit(POS, NEG)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(st.integers(0, 11), min_size=1, max_size=6, unique=True),
    labels=st.one_of(
        st.lists(st.integers(0, 1), min_size=1, max_size=7), st.just("truth"), st.just("one class")
    ),
)
def test_fuzz_predict_score_evaluate_on_prompts(fitted_probe, rows, labels):
    """score / evaluate on any prompt subset: the accuracy of predict against the labels, one class
    allowed, wrong lengths refused; evaluate's hash and count describe the set."""
    pool = POS + NEG
    prompts = [pool[i] for i in rows]
    truth = [1 if i < 6 else 0 for i in rows]
    y = (
        {"truth": truth, "one class": [1] * len(rows)}.get(labels, labels)
        if isinstance(labels, str)
        else labels
    )
    pred = fitted_probe.predict(prompts)
    if len(y) != len(prompts):
        with pytest.raises(ValueError, match="one label per prompt"):
            fitted_probe.score(prompts, y)
        return
    expected = float(np.mean(pred == np.asarray(y)))
    assert fitted_probe.score(prompts, y) == expected
    report = fitted_probe.evaluate(prompts, y)
    assert report["accuracy"] == expected and report["n_eval"] == len(prompts)
    assert report["eval_hash"].startswith("sha256:")
    proba = fitted_probe.predict_proba(prompts)
    np.testing.assert_array_equal(fitted_probe.classes_[np.argmax(proba, axis=1)], pred)
