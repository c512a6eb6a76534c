"""Baselines (text and activation) and the battery: against scikit-learn, and batched = separate."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from lmprobe_jax.activation_baseline import ActivationBaseline
from lmprobe_jax.baseline import BaselineProbe
from lmprobe_jax.battery import BaselineBattery

POS = [
    "The dog barked loudly",
    "My puppy loves to play fetch",
    "Dogs are loyal companions",
    "The golden retriever wagged its tail",
    "Walking the dog in the park",
    "A dog chased the ball",
]
NEG = [
    "The cat purred softly",
    "My kitten sleeps all day",
    "Cats are independent animals",
    "The tabby cat stretched lazily",
    "The cat knocked things off the table",
    "The cat sat on the mat",
]
TEST = ["Dogs love the park", "A cat on the table"]


def test_tfidf_baseline_matches_scikit_learn():
    ours = BaselineProbe(method="tfidf").fit(POS, NEG)
    vec = TfidfVectorizer(max_features=10000)
    X = vec.fit_transform(POS + NEG).toarray()
    y = np.r_[np.ones(6), np.zeros(6)]
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(X, y)
    # Same objective; ours stops at tol 1e-7 on the scaled gradient: coefficients agree to ~1e-5.
    np.testing.assert_allclose(ours.classifier_.coef_, ref.coef_, atol=1e-4)
    np.testing.assert_array_equal(ours.predict(TEST), ref.predict(vec.transform(TEST).toarray()).astype(int))
    top = ours.get_top_features(3)
    assert {w for w, _ in top["positive"]} <= set(vec.get_feature_names_out()) and top["positive"][0][1] > 0


def test_shuffled_labels_and_dummies():
    assert BaselineProbe(method="majority").fit(POS, NEG[:4]).predict(TEST).tolist() == [1, 1]
    a = BaselineProbe(method="random", random_state=3).fit(POS, NEG).predict(TEST * 10)
    b = BaselineProbe(method="random", random_state=3).fit(POS, NEG).predict(TEST * 10)
    np.testing.assert_array_equal(a, b)
    shuffled = BaselineProbe(method="shuffled_labels", random_state=0).fit(POS, NEG)
    assert shuffled.features_ == "tfidf" and shuffled.predict(TEST).shape == (2,)


def test_string_labels_and_unfitted():
    words = ["dog"] * 6 + ["cat"] * 6
    probe = BaselineProbe(method="bow").fit(POS + NEG, words)
    assert set(probe.predict(TEST)) <= {"dog", "cat"}
    with pytest.raises(RuntimeError, match="not been fitted"):
        BaselineProbe().predict(TEST)


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["llama"]


def test_battery_batched_solve_equals_separate_baselines(model, monkeypatch, tmp_path):
    """The battery's one padded batched solve gives each activation baseline the probe it would get
    alone (zero columns get zero weight)."""
    monkeypatch.setenv("LMPROBE_CACHE_DIR", str(tmp_path))
    battery = BaselineBattery(
        model=model, layers=[1, 2, 3], random_state=0, include=["random_direction", "pca", "layer_0", "tfidf"]
    )
    results = battery.fit(POS, NEG, TEST, [1, 0])
    assert [r.name for r in results] == ["tfidf", "random_direction", "pca", "layer_0"]
    for name in ("random_direction", "pca", "layer_0"):
        alone = ActivationBaseline(model, method=name, layers=[1, 2, 3], random_state=0).fit(POS, NEG)
        together = battery.get_baseline(name)
        assert together.classifier_.coef_.shape == alone.classifier_.coef_.shape
        scale = np.abs(alone.classifier_.coef_).max()
        np.testing.assert_allclose(
            together.classifier_.coef_, alone.classifier_.coef_, atol=1e-4 * max(scale, 1)
        )
        np.testing.assert_array_equal(together.predict(TEST), alone.predict(TEST))


def test_battery_without_model_runs_text_baselines_only():
    battery = BaselineBattery(random_state=0, exclude=["sentence_transformers"])
    with pytest.raises(RuntimeError, match="not fitted"):
        battery.get_best()
    results = battery.fit(POS, NEG)
    names = [r.name for r in results]
    assert names == ["bow", "tfidf", "random", "majority", "sentence_length"]
    assert results["bow"].score == pytest.approx(1.0) and "Baseline Results:" in results.summary()
    with pytest.raises(ValueError, match="Unknown baselines"):
        BaselineBattery(include=["bogus"])
