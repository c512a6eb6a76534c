"""Issue 20's store and extraction classes, one test per class, each through the public API (each failed
on main at 2658d26): stale keys, label sets, label dtypes, malformed stores, links, replaced stores."""

import json
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


def test_truncation_side_is_part_of_the_key(tiny_models, tmp_path):
    model, _ = load(tiny_models["gpt2"])
    kwargs = {"layers": [1], "pooling": "mean", "max_length": 3, "cache_dir": tmp_path / "cache", "progress": False}
    right = np.array(extract_activations((model, AutoTokenizer.from_pretrained(tiny_models["gpt2"])), PROMPTS,
                                         **kwargs).load(1))
    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"], truncation_side="left")
    left = np.array(extract_activations((model, tok), PROMPTS, **kwargs).load(1))
    assert not np.allclose(left[0], right[0])  # prompt 0 is longer than 3 tokens
    np.testing.assert_array_equal(left, fresh((model, tok), layers=[1], pooling="mean", max_length=3))


def test_a_second_label_set_leaves_an_open_store_and_its_sweep_alone(tiny_models, tmp_path):
    from lmprobe_jax import sweep_activations

    kwargs = {"layers": [1, 2], "pooling": "mean", "cache_dir": tmp_path / "cache", "progress": False}
    y1, y2 = np.array([0, 1, 0, 1, 0, 1]), np.array([1, 1, 0, 0, 1, 0])
    first = extract_activations(tiny_models["gpt2"], PROMPTS, labels=y1, **kwargs)
    second = extract_activations(tiny_models["gpt2"], PROMPTS, labels=y2, **kwargs)
    assert first.path == second.path  # one cache entry, two label sets
    np.testing.assert_array_equal(first.labels, y1)
    np.testing.assert_array_equal(second.labels, y2)
    sweep = sweep_activations(first, classifier="mass_mean", folds=2, layers=[1, 2])
    direct = sweep_activations(first.stack([1, 2]), y1, classifier="mass_mean", folds=2, layers=[1, 2])
    np.testing.assert_array_equal(sweep.accuracy, direct.accuracy)


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "int32", "float16"])
def test_bool_and_small_integer_labels_round_trip(tiny_models, tmp_path, dtype):
    labels = (np.arange(6) % 2).astype(dtype)
    extract_activations(tiny_models["gpt2"], PROMPTS, layers=[0], pooling="mean", out_dir=tmp_path / "s",
                        labels=labels, progress=False)
    read = ActivationStore(tmp_path / "s").labels
    assert read.dtype == labels.dtype
    np.testing.assert_array_equal(read, labels)


def test_string_labels_are_classes_with_their_names(tiny_models, tmp_path):
    labels = ["true", "false", "true", "unknown", "false", "true"]
    store = extract_activations(tiny_models["gpt2"], PROMPTS, layers=[0], pooling="mean", out_dir=tmp_path / "s",
                                labels=labels, progress=False)
    assert store.label_names == ["false", "true", "unknown"]
    assert [store.label_names[i] for i in store.labels] == labels


def _set_header_length(path, length):
    data = bytearray(path.read_bytes())
    data[:8] = length.to_bytes(8, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["no layers", "layers not a list", "huge header", "header not json"])
def test_a_malformed_store_is_a_clear_corrupted_store_error(tiny_models, tmp_path, damage):
    out = tmp_path / "s"
    extract_activations(tiny_models["gpt2"], PROMPTS, layers=[0], pooling="mean", out_dir=out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / "mean" / "layer_000.safetensors"
    if damage == "no layers":
        del manifest["layers"]
    elif damage == "layers not a list":
        manifest["layers"] = 7
    elif damage == "huge header":
        _set_header_length(shard, 1 << 61)
    else:
        _set_header_length(shard, 20)
    if damage.endswith(("header", "json")):
        import hashlib

        entry = manifest["files"]["mean/layer_000.safetensors"]
        entry["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()  # a consistent forgery
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="(?i)corrupted"):
        ActivationStore(out).load(0)


def test_a_link_inside_out_dir_is_never_written_through(tiny_models, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "s").mkdir()
    os.symlink(victim, tmp_path / "s" / "mean")
    try:
        extract_activations(tiny_models["gpt2"], PROMPTS, layers=[0], pooling="mean", out_dir=tmp_path / "s",
                            overwrite=True, progress=False)
    except ValueError as err:
        assert "not an activation store" in str(err)
    assert list(victim.iterdir()) == []


def test_a_store_replaced_while_open_is_detected(tiny_models, tmp_path):
    kwargs = {"layers": [0], "pooling": "mean", "out_dir": tmp_path / "s", "progress": False}
    extract_activations(tiny_models["gpt2"], PROMPTS, **kwargs)
    opened = ActivationStore(tmp_path / "s", verify=False)
    extract_activations(tiny_models["gpt2"], PROMPTS[::-1], overwrite=True, **kwargs)
    with pytest.raises(ValueError, match="replaced"):
        opened.load(0)
