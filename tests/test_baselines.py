"""Baselines (text and activation) and the battery: against scikit-learn, and batched = separate."""

from __future__ import annotations

import _tolerance as T
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
    # Same objective: ours (float32 features, stopped at tol 1e-7) within its derived region of the float64
    # optimum, scikit-learn as far as its own float64 gradient says; predictions equal wherever the
    # decision value is out of that reach of zero.
    region = T.glm_region(X, y, 1.0, tol=ours.classifier_.tol)
    bound = region.radius + T.reference_radius(region, ref.coef_[0], ref.intercept_)
    T.assert_within(T.as_theta(ours.classifier_.coef_[0], ours.classifier_.intercept_),
                    T.as_theta(ref.coef_[0], ref.intercept_), bound, "tfidf probe")
    X_test = vec.transform(TEST).toarray()
    sure = ~T.unsure(X_test, region.optimum, bound)
    assert sure.any()
    np.testing.assert_array_equal(ours.predict(TEST)[sure], ref.predict(X_test).astype(int)[sure])
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
        # Two float32 solves of one problem (the padded columns stay at zero weight), ordered differently:
        # each within its derived region (stopped at tol) of the exact solution on these float32 features.
        features = alone.transform(alone.activations(POS + NEG))
        region = T.glm_region(features, np.r_[np.ones(6), np.zeros(6)], alone.classifier_.C, tol=alone.classifier_.tol,
                              data=False)
        fits = [T.as_theta(b.classifier_.coef_[0], b.classifier_.intercept_) for b in (together, alone)]
        T.assert_within(*fits, 2 * region.radius, name)
        sure = ~T.unsure(alone.transform(alone.activations(TEST)), region.optimum, region.radius)
        np.testing.assert_array_equal(together.predict(TEST)[sure], alone.predict(TEST)[sure])


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
