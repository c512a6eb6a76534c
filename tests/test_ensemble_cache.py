"""ProbeEnsemble (voting, bootstrap, one extraction) and cache management (info, discovery, eviction,
dtype, LMPROBE_CACHE_DIR)."""

from __future__ import annotations

import _tolerance as T
import numpy as np
import pytest

pytest.importorskip("torch")

from lmprobe_jax import (
    Probe,
    ProbeEnsemble,
    cache,
)

POS = [f"The city of {c} is in France." for c in ("Lyon", "Paris", "Nice", "Lille", "Tours", "Metz")]
NEG = [f"The city of {c} is in Japan." for c in ("Osaka", "Kyoto", "Nara", "Kobe", "Sendai", "Chiba")]


@pytest.fixture
def model(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("LMPROBE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_LIMIT_BYTES", None)
    monkeypatch.setattr(cache, "_STORAGE_DTYPE", None)
    return tiny_models["llama"]


def test_soft_and_hard_voting_follow_their_definitions(model):
    members = [Probe(model=model, layers=layer, progress=False) for layer in (1, 2, 3)]
    soft = ProbeEnsemble(members, weights=[1, 2, 1]).fit(POS, NEG)
    proba = np.stack([m.predict_proba(NEG) for m in members])
    # The same members' probabilities, averaged in two orders: a weighted mean of three non-negative terms,
    # each side within its rounding (relative).
    np.testing.assert_allclose(soft.predict_proba(NEG), (proba[0] + 2 * proba[1] + proba[2]) / 4,
                               rtol=2 * T.mean_rounding(3))
    hard = ProbeEnsemble(members, voting="hard")
    hard._fitted = True
    votes = np.stack([m.predict(NEG) for m in members])
    np.testing.assert_array_equal(hard.predict(NEG), (votes.sum(0) >= 2).astype(int))


def test_bootstrap_members_differ_and_reload(model, tmp_path):
    ensemble = ProbeEnsemble.bootstrap(
        Probe(model=model, layers=2, progress=False), n_resamples=4, random_state=0
    )
    ensemble.fit(POS, NEG)
    coefs = np.stack([p.classifier_.coef_ for p in ensemble.probes_])
    assert not np.allclose(coefs[0], coefs[1])  # different resamples
    std = ensemble.prediction_std(POS + NEG)
    assert std.shape == (12,) and np.all(std >= 0)
    ensemble.save(tmp_path / "ens")
    np.testing.assert_array_equal(ProbeEnsemble.load(tmp_path / "ens").predict(NEG), ensemble.predict(NEG))


def test_cache_info_discovery_and_loading(model, tmp_path):
    probe = Probe(model=model, layers=[1, 2], progress=False).fit(POS, NEG)
    info = cache.cache_info()
    assert info.cache_dir == tmp_path / "cache" and info.total_size_bytes > 0 and len(info.models) == 1
    found = cache.discover_cached(model, POS[0])
    assert found is not None and found.pooled == {"last_token": [1, 2]}
    assert cache.discover_cached(model, "never extracted") is None
    acts = cache.load_activations(model, prompts=NEG[:3], layers=[2])
    expected = probe._extract(NEG[:3], [2], "last_token")[0][0]
    np.testing.assert_array_equal(acts[2], expected)


def test_eviction_and_limits(model, tmp_path):
    Probe(model=model, layers=1, progress=False).fit(POS, NEG)
    Probe(model=model, layers=1, progress=False).fit(POS[:3], NEG[:3])
    before = cache.cache_info()
    assert len(before.models[0].entries) == 2
    cache.set_cache_limit(before.total_size_bytes / 1e9 * 0.75)
    removed = cache.evict()
    assert len(removed) == 1 and cache.cache_info().total_size_bytes <= 0.75 * before.total_size_bytes
    cache.set_cache_limit(0)
    assert cache.activation_cache_dir() is None
    with pytest.raises(ValueError, match="non-negative"):
        cache.set_cache_limit(-1)


def test_cache_dtype_halves_storage_and_is_part_of_the_key(model):
    Probe(model=model, layers=1, progress=False).fit(POS, NEG)
    full = cache.cache_info().total_size_bytes
    cache.set_cache_dtype("float16")
    Probe(model=model, layers=1, progress=False).fit(POS, NEG)
    entries = cache.cache_info().models[0].entries
    assert len(entries) == 2  # a float16 request is not served the float32 store
    with pytest.raises(ValueError, match="Unknown cache dtype"):
        cache.set_cache_dtype("int8")
    assert cache.cache_info().total_size_bytes < 2 * full
