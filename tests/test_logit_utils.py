"""logit_utils (lmprobe's names) on the exported readout: the readout read from a checkpoint without
loading the model, the final norm, and perplexity from cached activations against the model's own
logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmprobe_jax import Probe, cache
from lmprobe_jax.logit_utils import (
    _detect_norm_type,
    apply_norm,
    compute_perplexity_from_activations,
    download_lm_head_weights,
)
from lmprobe_jax_extract import _checkpoint, export_readout, find_decoder_layers, readout_from_checkpoint

PROMPTS = ["The city of Lyon is in France.", "The quick brown fox", "Lyon"]


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(params=["llama", "gpt2"])
def sharded(request, tiny_models, tmp_path):
    """The tiny model re-saved in many small shards (GPT-2: a tied head under the ``transformer.``
    prefix and a LayerNorm with a bias)."""
    model = _load(tiny_models[request.param])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    return tmp_path / "sharded", model


def test_checkpoint_readout_equals_the_loaded_models_and_reads_only_its_shards(sharded, monkeypatch):
    path, model = sharded
    opened = []
    original = _checkpoint.checkpoint_file
    monkeypatch.setattr(
        _checkpoint,
        "checkpoint_file",
        lambda m, name, rev=None: opened.append(name) or original(m, name, rev),
    )
    meta, arrays = readout_from_checkpoint(path)
    want_meta, want = export_readout(model, find_decoder_layers(model)[0])
    assert meta == want_meta and sorted(arrays) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(arrays[name], want[name])
    weight_map = json.loads((path / _checkpoint.INDEX).read_text())["weight_map"]
    assert len(set(weight_map.values())) > 3  # the test means something only with many shards
    norm = "model.norm" if "model.norm.weight" in weight_map else "transformer.ln_f"
    head = "lm_head.weight" if "lm_head.weight" in weight_map else "transformer.wte.weight"
    needed = {weight_map[k] for k in weight_map if k.startswith(norm + ".") or k == head}
    assert sorted(opened) == sorted([_checkpoint.INDEX, *needed])


def test_download_lm_head_weights_in_lmprobes_layout(tiny_models):
    norm_weight, head, config = download_lm_head_weights(str(tiny_models["gpt2"]), dtype=torch.float64)
    model = _load(tiny_models["gpt2"])
    assert config["norm_type"] == "layer_norm" and config["eps"] == model.transformer.ln_f.eps
    torch.testing.assert_close(head, model.lm_head.weight.double(), rtol=0, atol=0)
    torch.testing.assert_close(config["norm_bias"], model.transformer.ln_f.bias.double(), rtol=0, atol=0)
    assert norm_weight.dtype == torch.float64 and config["logit_softcap"] is None


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_apply_norm_is_the_models_final_norm(tiny_models, name):
    model = _load(tiny_models[name])
    norm_weight, _, config = download_lm_head_weights(str(tiny_models[name]))
    module = model.model.norm if name == "llama" else model.transformer.ln_f
    h = torch.randn(3, 5, norm_weight.shape[0], generator=torch.Generator().manual_seed(0)) * 4 + 1
    got = apply_norm(h, norm_weight, config["eps"], config["norm_type"], config["norm_bias"])
    with torch.no_grad():
        want = module(h)
    assert got.dtype == h.dtype and got.shape == h.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # float32, unit-scale outputs
    with pytest.raises(ValueError, match="Unknown norm_type"):
        apply_norm(h, norm_weight, 1e-5, "batch_norm")


def test_config_declared_norms():
    from types import SimpleNamespace

    assert _detect_norm_type(SimpleNamespace(rms_norm_eps=1e-6)) == ("rms_norm", 1e-6)
    # GPT-2 spells it layer_norm_epsilon (lmprobe took it for an RMS norm)
    assert _detect_norm_type(SimpleNamespace(layer_norm_epsilon=1e-5)) == ("layer_norm", 1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_perplexity_from_cached_activations_matches_the_models_logits(
    tiny_models, tmp_path, monkeypatch, name
):
    monkeypatch.setenv("LMPROBE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_LIMIT_BYTES", None)
    path = str(tiny_models[name])
    Probe(model=path, layers=[3], pooling="all", progress=False).warmup(PROMPTS)
    aggregates, per_token, ids = compute_perplexity_from_activations(path, PROMPTS, 3, return_per_token=True)
    model, tokenizer = _load(path).double(), __import__("transformers").AutoTokenizer.from_pretrained(path)
    for prompt, agg, ppl, token_ids in zip(PROMPTS, aggregates, per_token, ids):
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        torch.testing.assert_close(token_ids, input_ids[0])
        with torch.no_grad():
            logits = model(input_ids).logits[0]
        loss = torch.logsumexp(logits[:-1], -1) - logits[:-1].gather(1, input_ids[0, 1:, None])[:, 0]
        # float32 readout against float64 logits of size O(1): losses agree to ~1e-6, ppl relatively
        torch.testing.assert_close(ppl.double(), loss.exp(), rtol=1e-4, atol=0)
        want = torch.stack([loss.mean(), loss.min(), loss.max()]).exp() if len(loss) else torch.ones(3)
        torch.testing.assert_close(agg.double(), want.double(), rtol=1e-4, atol=0)
    with pytest.raises(FileNotFoundError, match="pooling='all'"):
        compute_perplexity_from_activations(path, ["never extracted"], 3)
