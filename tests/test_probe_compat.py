"""lmprobe's private-looking names that its users' code reaches for, as real parts of lmprobe-jax:
``Probe._extractor`` (the extractor the probe extracts through: its model, backend, layers, batch size),
``Probe``'s helpers (``_get_scaling_strategy``, ``_parse_preprocessing_spec``,
``_preprocessing_includes_standard``, ``_get_remote``, ``_try_auroc``, ``_to_numpy``, ``_train_pooling``)
and ``ProbeEnsemble``'s bootstrap state (``_bootstrap_mode``, ``_bootstrap_seed``,
``_group_balanced_resample``)."""

import math
import pickle

import _tolerance as T
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sklearn.metrics import roc_auc_score

from lmprobe_jax import Probe, ProbeEnsemble
from lmprobe_jax.backends import LocalBackend, NnsightBackend
from lmprobe_jax.extraction import ActivationExtractor

POS = ["The city of Lyon is in France.", "Paris is in France.", "Nice is in France.", "Metz is in France."]
NEG = ["Osaka is in Japan, by the dog.", "Kyoto is in Japan.", "Nara is in Japan.", "Kobe is in Japan."]


def probe_of(model, **kwargs):
    return Probe(model=model, device="cpu", random_state=0, cache_dir=None, progress=False, **kwargs)


def test_extractor_is_none_without_a_model():
    assert Probe()._extractor is None


def test_extractor_runs_the_probe_s_extraction(tiny_models):
    """``_extractor.model`` is the model the probe's activations come from: its hidden states at the
    probe's layer, read at each prompt's last real token, are the probe's stored features."""
    probe = probe_of(tiny_models["llama"], layers=[1, 3], batch_size=8)
    ex = probe._extractor
    assert isinstance(ex, ActivationExtractor) and isinstance(ex._backend, LocalBackend)
    assert ex.layer_indices == [1, 3] and ex.num_layers == 2 and ex.batch_size == 8
    probe.fit(POS, NEG, batch_size=2)
    assert probe._extractor.batch_size == 8  # a call's batch_size is that call's only
    X, _ = probe._extract(POS + NEG, [3], "last_token")
    acts, mask = probe._extractor.extract_batch(POS + NEG, [3])
    last = [np.flatnonzero(row)[-1] for row in mask.numpy()]
    want = acts[torch.arange(len(last)), last].float().numpy()
    np.testing.assert_allclose(X[0], want, rtol=0, atol=T.forward_rounding(want))
    assert probe._extractor.model is probe._extractor._backend.model
    ex.batch_size = 3  # extract: batches of 3, each padded on the right to the longest
    all_acts, all_mask = ex.extract(POS + NEG, layers=[3])
    assert all_acts.shape[:2] == all_mask.shape and all_mask.shape[0] == len(POS + NEG)
    real = all_mask.numpy().astype(bool)
    np.testing.assert_array_equal(real.sum(1), mask.numpy().sum(1))
    assert not all_acts.numpy()[~real].any()
    got = np.concatenate([a[r] for a, r in zip(all_acts.numpy(), real)])
    want = np.concatenate([a[r] for a, r in zip(acts.numpy(), mask.numpy().astype(bool))])
    np.testing.assert_allclose(got, want, rtol=0, atol=T.forward_rounding(want))


def test_extractor_follows_the_parameters_and_the_fit(tiny_models):
    probe = probe_of(tiny_models["llama"], layers="auto", auto_candidates=[0, 1, 2, 3], auto_alpha=0.001)
    first = probe._extractor
    assert first is probe._extractor  # one object while the parameters stay
    assert first.layer_indices == [0, 1, 2, 3]  # before fit: the candidates
    probe.fit(POS, NEG)
    assert probe._extractor.layer_indices == probe.layers_  # after fit: the layers the probe reads
    probe.batch_size = 3
    assert probe._extractor.batch_size == 3
    bf16 = probe_of(tiny_models["llama"], layers=-1, dtype="bfloat16")._extractor._backend
    assert isinstance(bf16, LocalBackend) and bf16.dtype == torch.bfloat16
    assert isinstance(probe_of(tiny_models["llama"], backend="nnsight")._extractor._backend, NnsightBackend)


def test_a_pickled_probe_leaves_the_loaded_model_behind(tiny_models):
    probe = probe_of(tiny_models["llama"], layers=-1)
    probe._extractor.model  # noqa: B018  (loads it)
    copy = pickle.loads(pickle.dumps(probe))
    assert "_extractor_cache" not in copy.__dict__
    assert copy._extractor.layer_indices == [3]


def test_sweep_layer_probes_each_read_their_layer(tiny_models):
    result = Probe.sweep_layers(tiny_models["llama"], POS, NEG, layers="all", device="cpu", cache_dir=None,
                                progress=False)  # fmt: skip
    for layer, probe in result.probes.items():
        assert probe._extractor.layer_indices == [layer]


@pytest.mark.parametrize(
    "value, strategy",
    [(True, "per_neuron"), ("per_neuron", "per_neuron"), ("per_layer", "per_layer"), (False, None)],
)
def test_scaling_strategy(value, strategy):
    assert Probe(normalize_layers=value)._get_scaling_strategy() == strategy


def test_a_bad_scaling_strategy_raises_when_asked_and_at_fit():
    probe = Probe(normalize_layers="wrong")  # accepted at construction, as lmprobe
    with pytest.raises(ValueError, match="Invalid normalize_layers 'wrong'"):
        probe._get_scaling_strategy()
    with pytest.raises(ValueError, match="Invalid normalize_layers"):
        probe.fit_from_activations(np.ones((4, 3)), [0, 1, 0, 1])


def test_preprocessing_helpers():
    assert Probe._parse_preprocessing_spec(None) is None
    assert Probe._parse_preprocessing_spec("standard + pca:50") == ["standard", "pca:50"]
    assert Probe._parse_preprocessing_spec(("standard", "pca")) == ["standard", "pca"]
    assert Probe(preprocessing="standard_scaler+pca:3")._preprocessing_includes_standard() is True
    assert Probe(preprocessing="pca:3")._preprocessing_includes_standard() is False
    assert Probe()._preprocessing_includes_standard() is False


def test_remote_and_pooling_helpers(tiny_models):
    assert Probe(remote=False)._get_remote(None) is False and Probe()._get_remote(True) is True
    assert Probe()._train_pooling is None and Probe()._inference_pooling is None
    probe = Probe(model=tiny_models["llama"], pooling="mean", inference_pooling="max")
    assert probe._train_pooling == "mean" and probe._inference_pooling == "max"


def test_try_auroc_and_to_numpy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    score = rng.random(50)
    proba = np.stack([1 - score, score], axis=1)
    assert Probe._try_auroc(y, proba) == roc_auc_score(y, score) == Probe._try_auroc(y, score)
    assert math.isnan(Probe._try_auroc(np.zeros(5, int), proba[:5]))
    out = Probe._to_numpy(torch.tensor([1.0, 2.0], dtype=torch.bfloat16))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.tolist() == [1.0, 2.0]


def test_group_balanced_resample():
    groups = np.array([0, 0, 0, 1, 1, 2, 2])
    rng = np.random.default_rng(0)
    rows = ProbeEnsemble._group_balanced_resample(groups, np.zeros(7), None, rng)
    assert len(rows) == 3 * math.ceil(7 / 3)
    np.testing.assert_array_equal(np.bincount(groups[rows]), [3, 3, 3])  # ceil(N / groups) from each
    weights = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    rows = ProbeEnsemble._group_balanced_resample(groups, np.zeros(7), weights, rng)
    assert weights[rows].all()  # a zero-weight row is never drawn


def test_bootstrap_state_is_kept_and_saved(tiny_models, tmp_path):
    base = probe_of(tiny_models["llama"], layers=-1)
    assert ProbeEnsemble([base, base._with_params()])._bootstrap_mode is False
    ensemble = ProbeEnsemble.bootstrap(base, n_resamples=2, random_state=7)
    assert ensemble._bootstrap_mode is True and ensemble._bootstrap_seed == 7
    ensemble.fit(POS, NEG)
    ensemble.save(tmp_path / "ens")
    loaded = ProbeEnsemble.load(tmp_path / "ens")
    assert loaded._bootstrap_mode is True and loaded._bootstrap_seed == 7
