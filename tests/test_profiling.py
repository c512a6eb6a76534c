"""Profiling (lmprobe's API): off it records nothing; on, each profiled Probe call leaves the time of
each step it ran, inside its total, and logs them."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from lmprobe_jax import Probe, is_profiling, set_profiling
from lmprobe_jax.profiling import ProfileAccumulator, _fmt_time, current, profile_op, profile_section


@pytest.fixture
def profiling():
    before = is_profiling()
    set_profiling(True)
    yield
    set_profiling(before)


def test_times_are_written_in_the_largest_unit_that_keeps_them_above_one():
    assert [_fmt_time(t) for t in (4e-4, 0.0125, 3.21, 120.0)] == ["400µs", "12.5ms", "3.2s", "2.0min"]


def test_off_records_nothing():
    set_profiling(False)
    with profile_op("op") as acc:
        assert acc is None and current() is None
        with profile_section(acc, "step"):
            pass
    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    probe = Probe(layers=0, random_state=0).fit_from_activations(X, np.arange(20) % 2)
    assert getattr(probe, "last_profile_", None) is None


def test_sections_are_timed_inside_the_total_and_repeated_ones_add_up(profiling, caplog):
    with caplog.at_level(logging.INFO, logger="lmprobe_jax.profile"), profile_op("op") as acc:
        assert isinstance(acc, ProfileAccumulator) and current() is acc
        for _ in range(2):
            with profile_section(acc, "sleep"):
                time.sleep(0.02)
    assert current() is None
    times = acc.as_dict()
    assert times["sleep"] >= 0.04 and times["total"] >= times["sleep"]
    assert any("op:" in r.message and "sleep:" in r.message for r in caplog.records)


def test_probe_calls_leave_their_steps_times(profiling):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 8)).astype(np.float32), np.arange(40) % 2
    probe = Probe(layers=0, random_state=0, preprocessing="standard")
    probe.fit_from_activations(X, y)
    fit = probe.last_profile_
    assert set(fit) == {"total", "scale", "fit"}
    assert 0 < fit["scale"] + fit["fit"] <= fit["total"]
    for method in (probe.predict_from_activations, probe.predict_proba_from_activations):
        method(X)
        times = probe.last_profile_
        assert set(times) == {"total", "transform", "predict"}
        assert 0 < times["transform"] + times["predict"] <= times["total"]


def test_a_probe_on_a_model_times_extraction_and_evaluate_times_its_parts(profiling, tiny_models, tmp_path):
    probe = Probe(model=tiny_models["llama"], layers=-1, cache_dir=tmp_path, progress=False, random_state=0)
    probe.fit(["a dog barks", "the dog runs"], ["a cat sleeps", "the cat purrs"])
    assert {"total", "extract_and_pool", "scale", "fit"} <= set(probe.last_profile_)
    probe.predict_proba(["a dog"])
    assert {"total", "extract_and_pool", "transform", "predict"} <= set(probe.last_profile_)
    probe.evaluate(["a dog", "a cat"], [1, 0])
    times = probe.last_profile_  # evaluate's own (the predict_proba it runs is a nested operation)
    assert set(times) == {"total", "extract_and_predict", "score"}
    assert times["extract_and_predict"] + times["score"] <= times["total"]
