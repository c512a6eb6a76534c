"""Issue 20's store and extraction classes, one test per class, each through the public API (each failed
on main at 2658d26): stale keys."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer

from lmprobe_jax_extract import ActivationStore, extract_activations

PROMPTS = [
    "The city of Lyon is in France.",
    "Hi there",
    "The quick brown fox jumps over the lazy dog, and then it jumps again.",
    "A b c d",
    "Lyon is in Japan.",
    "The dog",
]


def load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def fresh(model, **kwargs):
    """The same extraction in memory, with no cache: what any cached answer must equal."""
    return np.array(extract_activations(model, PROMPTS, progress=False, **kwargs).load(1))


def test_an_in_place_edit_of_a_model_object_is_never_served_stale(tiny_models, tmp_path):
    model, tok = load(tiny_models["llama"])
    kwargs = {"layers": [1], "pooling": "mean", "cache_dir": tmp_path / "cache", "progress": False}
    before = np.array(extract_activations((model, tok), PROMPTS, **kwargs).load(1))
    model.model.layers[0].mlp.down_proj.weight.data.zero_()  # an ablation: bypasses the version counter
    after = np.array(extract_activations((model, tok), PROMPTS, **kwargs).load(1))
    assert not np.allclose(after, before)
    np.testing.assert_array_equal(after, fresh((model, tok), layers=[1], pooling="mean"))


def test_weights_rewritten_with_their_mtime_restored_are_never_served_stale(tiny_models, tmp_path):
    path = tmp_path / "model"
    model, tok = load(tiny_models["llama"])
    model.save_pretrained(path)
    tok.save_pretrained(path)
    kwargs = {"layers": [1], "pooling": "mean", "cache_dir": tmp_path / "cache", "progress": False}
    before = np.array(extract_activations(path, PROMPTS, **kwargs).load(1))
    weights = path / "model.safetensors"
    stat = weights.stat()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(-1.0)  # same size, same file, other values
    other = tmp_path / "other"
    model.save_pretrained(other)
    with open(weights, "r+b") as handle:  # rewritten in place: same inode, same size
        handle.write((other / "model.safetensors").read_bytes())
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    after = np.array(extract_activations(path, PROMPTS, **kwargs).load(1))
    assert not np.allclose(after, before)
    np.testing.assert_array_equal(after, fresh(other, layers=[1], pooling="mean", tokenizer=tok))
