"""lmprobe_jax_extract/ and lmprobe_jax_store/: poolings against an unpadded per-prompt reference, backends, the store and its trust rules."""

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import _tolerance as T
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import lmprobe_jax_extract as extract
from lmprobe_jax_extract import EMBEDDINGS, POOLINGS, ActivationStore, extract_activations
from lmprobe_jax_store import ALIGNMENT

PROMPTS = [
    "The city of Lyon is in France.",
    "Hi",
    "The quick brown fox jumps over the lazy dog, and then it jumps again.",
    "A b",
    "Lyon is in Japan.",
    "The dog",
    "fox fox fox fox",
]


def load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def reference(path, prompts):
    """Per-prompt hidden states with no padding at all: HF's own ``hidden_states`` from a copy of the
    model whose final norm is the identity, so entry i + 1 is the raw output of block i."""
    model, tok = load(path)
    model = copy.deepcopy(model)
    if hasattr(model, "model"):
        model.model.norm = torch.nn.Identity()
    else:
        model.transformer.ln_f = torch.nn.Identity()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            out.append([h[0].numpy() for h in hidden])  # [L + 1] of (T, D)
    return out


def pooled_reference(per_prompt, layer, pooling):
    index = 0 if layer == EMBEDDINGS else layer + 1
    states = [h[index] for h in per_prompt]
    reduce = {
        "last_token": lambda h: h[-1],
        "first_token": lambda h: h[0],
        "mean": lambda h: h.mean(0),
        "max": lambda h: h.max(0),
        "min": lambda h: h.min(0),
    }
    if pooling == "all":
        return np.concatenate(states)
    return np.stack([reduce[pooling](h) for h in states])


def assert_close(got, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=T.forward_rounding(want))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_every_pooling_matches_unpadded_reference(tiny_models, arch, padding_side):
    layers = [EMBEDDINGS, 0, 2, -1]
    store = extract_activations(
        tiny_models[arch],
        PROMPTS,
        layers=layers,
        pooling=list(POOLINGS),
        batch_size=3,
        padding_side=padding_side,
        progress=False,
    )
    ref = reference(tiny_models[arch], PROMPTS)
    assert store.layers == [EMBEDDINGS, 0, 2, 3]
    for pooling in POOLINGS:
        for layer in store.layers:
            assert_close(store.load(layer, pooling), pooled_reference(ref, layer, pooling))
    lengths = [len(h[0]) for h in ref]
    np.testing.assert_array_equal(store.offsets(), np.concatenate([[0], np.cumsum(lengths)]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_nnsight_backend_agrees_with_local(tiny_models, arch):
    pytest.importorskip("nnsight")
    kwargs = {
        "layers": [EMBEDDINGS, 1, 3],
        "pooling": ["mean", "last_token", "all"],
        "batch_size": 4,
        "progress": False,
    }
    local = extract_activations(tiny_models[arch], PROMPTS, **kwargs)
    traced = extract_activations(tiny_models[arch], PROMPTS, backend="nnsight", padding_side="left", **kwargs)
    for pooling in local.poolings:
        for layer in local.layers:
            assert_close(traced.load(layer, pooling), np.asarray(local.load(layer, pooling), np.float64))


def test_forward_stops_after_last_requested_layer(tiny_models):
    model, tok = load(tiny_models["llama"])
    calls = {"block3": 0, "head": 0, "block1": 0}
    model.model.layers[1].register_forward_hook(lambda *a: calls.__setitem__("block1", calls["block1"] + 1))
    model.model.layers[3].register_forward_hook(lambda *a: calls.__setitem__("block3", calls["block3"] + 1))
    model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    extract_activations((model, tok), PROMPTS, layers=[0, 1], batch_size=4, progress=False)
    assert calls == {"block1": 2, "block3": 0, "head": 0}


def test_store_on_disk_is_memory_mapped_and_sized_to_the_data(tiny_models, tmp_path):
    store = extract_activations(
        tiny_models["llama"],
        PROMPTS,
        layers="all",
        pooling="mean",
        out_dir=tmp_path / "s",
        labels=np.arange(len(PROMPTS)) % 2,
        metadata=[{"i": i} for i in range(len(PROMPTS))],
        progress=False,
    )
    layer = store.load(2)
    assert isinstance(layer, np.memmap) and layer.shape == (len(PROMPTS), 64)
    assert store.stack().shape == (4, len(PROMPTS), 64)
    assert store.stack([3, 1], dtype=np.float64).dtype == np.float64
    shard = tmp_path / "s" / "mean" / "layer_002.safetensors"
    overhead = shard.stat().st_size - len(PROMPTS) * 64 * 4
    assert overhead == ALIGNMENT  # the safetensors header, padded so the data starts on a page
    assert layer.ctypes.data % ALIGNMENT == 0 and not layer.flags.writeable
    np.testing.assert_array_equal(safetensors.numpy.load_file(shard)["activations"], layer)  # plain safetensors
    np.testing.assert_array_equal(store.labels, np.arange(len(PROMPTS)) % 2)
    assert store.metadata[3] == {"i": 3} and store.prompts == PROMPTS
    reopened = ActivationStore(tmp_path / "s")
    np.testing.assert_array_equal(reopened.load(-2), layer)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    for field in (
        "model",
        "tokenizer",
        "compute_dtype",
        "storage_dtype",
        "layers",
        "poolings",
        "prompt_hashes",
        "library_version",
    ):
        assert field in manifest
    assert manifest["model"]["fingerprint"].startswith("files-sha256:")


@pytest.mark.parametrize("storage_dtype", ["float16", "bfloat16"])
def test_half_precision_storage(tiny_models, tmp_path, storage_dtype):
    full = extract_activations(tiny_models["gpt2"], PROMPTS, layers=[1], progress=False)
    half = extract_activations(
        tiny_models["gpt2"],
        PROMPTS,
        layers=[1],
        storage_dtype=storage_dtype,
        out_dir=tmp_path / "h",
        progress=False,
    )
    got = np.asarray(half.load(1), np.float32)
    assert half.load(1).dtype.itemsize == 2
    want = np.asarray(full.load(1), np.float64)
    rtol, atol = T.storage_tolerance(want, storage_dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def count_forwards(model):
    calls = [0]
    model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_matching_store_is_served_without_running_the_model(tiny_models, tmp_path):
    model, tok = load(tiny_models["llama"])
    calls = count_forwards(model)
    kwargs = {
        "pooling": ["mean", "last_token"],
        "out_dir": tmp_path / "s",
        "batch_size": 4,
        "progress": False,
    }
    first = extract_activations((model, tok), PROMPTS, layers=[0, 2], **kwargs)
    assert calls[0] == 2
    again = extract_activations((model, tok), PROMPTS, layers=[2], **{**kwargs, "pooling": "mean"})
    assert calls[0] == 2
    np.testing.assert_array_equal(again.load(2, "mean"), first.load(2, "mean"))
    with pytest.raises(ValueError, match="prompt_hashes|prompts_sha256"):
        extract_activations((model, tok), PROMPTS[::-1], layers=[2], **kwargs)


def test_changed_weights_and_dtype_are_never_served_stale(tiny_models, tmp_path):
    path = tmp_path / "model"
    model, tok = load(tiny_models["llama"])
    model.save_pretrained(path)
    tok.save_pretrained(path)
    cache = tmp_path / "cache"
    before = extract_activations(path, PROMPTS, layers=[1], cache_dir=cache, progress=False)
    old = np.array(before.load(1))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    model.save_pretrained(path)  # same path, new weights
    after = extract_activations(path, PROMPTS, layers=[1], cache_dir=cache, progress=False)
    fresh = extract_activations(path, PROMPTS, layers=[1], progress=False)
    assert not np.allclose(after.load(1), old)
    np.testing.assert_array_equal(after.load(1), fresh.load(1))
    bf16 = extract_activations(path, PROMPTS, layers=[1], cache_dir=cache, dtype="bfloat16", progress=False)
    assert bf16.manifest["compute_dtype"] == "bfloat16" and bf16.path != after.path
    assert not np.array_equal(bf16.load(1), after.load(1))
    # An explicit out_dir holding another request is refused, not served.
    extract_activations(path, PROMPTS, layers=[1], out_dir=tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="compute_dtype"):
        extract_activations(
            path, PROMPTS, layers=[1], out_dir=tmp_path / "s", dtype="bfloat16", progress=False
        )
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(2.0)
    model.save_pretrained(path)
    with pytest.raises(ValueError, match="model"):
        extract_activations(path, PROMPTS, layers=[1], out_dir=tmp_path / "s", progress=False)
    replaced = extract_activations(
        path, PROMPTS, layers=[1], out_dir=tmp_path / "s", overwrite=True, progress=False
    )
    assert not np.allclose(replaced.load(1), fresh.load(1))


def test_cache_entry_grows_to_the_union_of_requests(tiny_models, tmp_path):
    cache = tmp_path / "cache"
    a = extract_activations(
        tiny_models["gpt2"], PROMPTS, layers=[0], pooling="mean", cache_dir=cache, progress=False
    )
    b = extract_activations(
        tiny_models["gpt2"], PROMPTS, layers=[2], pooling="max", cache_dir=cache, progress=False
    )
    assert a.path == b.path and b.layers == [0, 2] and b.poolings == ["mean", "max"]


RESUMABLE = """
import sys, time
from transformers import AutoModelForCausalLM, AutoTokenizer
from lmprobe_jax_extract import extract_activations
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model.model.layers[0].register_forward_pre_hook(lambda *a: time.sleep(0.4))
prompts = {prompts!r}
extract_activations((model, tok), prompts, layers="all", pooling=["mean", "all"], batch_size=2,
                    out_dir=sys.argv[2], progress=False)
"""


def staging(out):
    return out.parent / f".{out.name}.partial"


def done_batches(out) -> int:
    """Batches a (killed) extraction logged as finished in its staging directory."""
    log = staging(out) / "progress-0-of-1.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_killed_extraction_resumes_to_identical_files(tiny_models, tmp_path):
    prompts = PROMPTS * 2  # 14 prompts: 7 batches of 2
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(RESUMABLE.format(prompts=prompts)))
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_models["llama"]), str(out)])
    deadline = time.time() + 120
    while time.time() < deadline and done_batches(out) < 2:
        assert proc.poll() is None, "the extraction finished or crashed before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = done_batches(out)
    assert 2 <= done < 7 and not out.exists()
    with pytest.raises(ValueError, match="resume"):
        ActivationStore(out)

    model, tok = load(tiny_models["llama"])
    calls = count_forwards(model)
    kwargs = {"layers": "all", "pooling": ["mean", "all"], "batch_size": 2, "progress": False}
    extract_activations((model, tok), prompts, out_dir=out, **kwargs)
    assert calls[0] == 7 - done  # only the unfinished batches ran
    extract_activations((model, tok), prompts, out_dir=tmp_path / "clean", **kwargs)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "clean") for p in (tmp_path / "clean").rglob("*") if p.is_file()
    )
    assert not staging(out).exists() and not list(tmp_path.glob(".killed.old-*"))
    for relative in files:
        assert (out / relative).read_bytes() == (tmp_path / "clean" / relative).read_bytes(), relative


def test_truncated_or_corrupted_shards_are_refused(tiny_models, tmp_path):
    out = tmp_path / "s"
    extract_activations(
        tiny_models["gpt2"], PROMPTS, layers=[0, 1], pooling="mean", out_dir=out, progress=False
    )
    shard = out / "mean" / "layer_001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        ActivationStore(out)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    store = ActivationStore(out)
    store.load(0)
    with pytest.raises(ValueError, match="corrupted"):
        store.load(1)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupted"):
        ActivationStore(out)


def test_a_damaged_finished_batch_is_recomputed_on_resume(tiny_models, tmp_path):
    out = tmp_path / "s"
    kwargs = {"layers": [1], "pooling": "mean", "batch_size": 2, "out_dir": out, "progress": False}
    clean = np.array(extract_activations(tiny_models["gpt2"], PROMPTS, **{**kwargs, "out_dir": None}).load(1))
    # A crash after two batches, then one bit of the second batch's rows flipped on disk.
    model, tok = load(tiny_models["gpt2"])
    calls = count_forwards(model)
    model.transformer.h[0].register_forward_pre_hook(
        lambda *a: (_ for _ in ()).throw(KeyboardInterrupt) if calls[0] > 2 else None
    )
    with pytest.raises(KeyboardInterrupt):
        extract_activations((model, tok), PROMPTS, **kwargs)
    assert done_batches(out) == 2
    row = json.loads((staging(out) / "plan.json").read_text())["batches"][1][0]
    shard = staging(out) / "mean" / "layer_001.safetensors"
    data = bytearray(shard.read_bytes())
    data[ALIGNMENT + row * 64 * 4 + 5] ^= 0x10
    shard.write_bytes(bytes(data))
    model2, _ = load(tiny_models["gpt2"])
    calls2 = count_forwards(model2)
    store = extract_activations((model2, tok), PROMPTS, **kwargs)
    assert calls2[0] == 3  # the damaged batch and the two never written
    assert_close(store.load(1), clean)


def test_out_of_memory_backs_off_to_smaller_batches(tiny_models):
    model, tok = load(tiny_models["llama"])

    def refuse_big_batches(module, args, kwargs):
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: batch too large for the device")

    model.register_forward_pre_hook(refuse_big_batches, with_kwargs=True)
    store = extract_activations(
        (model, tok), PROMPTS, layers=[1], pooling="mean", batch_size=6, progress=False
    )
    ref = reference(tiny_models["llama"], PROMPTS)
    assert_close(store.load(1), pooled_reference(ref, 1, "mean"))


def test_labels_and_metadata_are_updated_on_a_store_hit(tiny_models, tmp_path):
    kwargs = {"layers": [0], "pooling": "mean", "out_dir": tmp_path / "s", "progress": False}
    extract_activations(tiny_models["gpt2"], PROMPTS, labels=np.zeros(len(PROMPTS)), **kwargs)
    store = extract_activations(
        tiny_models["gpt2"],
        PROMPTS,
        labels=np.ones(len(PROMPTS)),
        metadata=[{"k": i} for i in range(len(PROMPTS))],
        **kwargs,
    )
    np.testing.assert_array_equal(ActivationStore(tmp_path / "s").labels, np.ones(len(PROMPTS)))
    assert store.metadata[-1] == {"k": len(PROMPTS) - 1}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompts": []}, "empty"),
        ({"pooling": "median"}, "Unknown pooling"),
        ({"layers": [4]}, "out of range"),
        ({"layers": ["middle"]}, "Unknown layer"),
        ({"backend": "hooks"}, "Unknown backend"),
        ({"remote": True}, "nnsight"),
        ({"batch_size": 0}, "batch_size"),
        ({"labels": [0, 1]}, "one per prompt"),
        ({"labels": [0.5, np.nan] + [1.0] * (len(PROMPTS) - 2)}, "NaN"),
        ({"metadata": [{}]}, "one per prompt"),
        ({"storage_dtype": "int8"}, "Unknown dtype"),
        ({"padding_side": "middle"}, "padding_side"),
    ],
)
def test_bad_arguments_raise_clear_errors(tiny_models, kwargs, match):
    args = {"prompts": PROMPTS, "progress": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        extract_activations(tiny_models["gpt2"], **args)


@pytest.mark.parametrize("prompts, match", [("one prompt", "list of strings"), (["a", 3], r"prompts\[1\]")])
def test_prompts_of_the_wrong_type(tiny_models, prompts, match):
    with pytest.raises(TypeError, match=match):
        extract_activations(tiny_models["gpt2"], prompts)


def test_bad_model_arguments(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        extract_activations("./no/such/model", PROMPTS)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="gguf"):
        extract_activations(tmp_path / "weights.txt", PROMPTS)
    with pytest.raises(ValueError, match="tokenizer"):
        extract_activations(torch.nn.Linear(2, 2), PROMPTS)
    with pytest.raises(TypeError, match="model must be"):
        extract_activations(42, PROMPTS)


def test_store_rejects_unknown_layers_and_poolings(tiny_models):
    store = extract_activations(
        tiny_models["gpt2"], PROMPTS, layers=[1, 2], pooling=["mean", "max"], progress=False
    )
    with pytest.raises(ValueError, match="not in this store"):
        store.load(0, "mean")
    with pytest.raises(ValueError, match="no 'min' pooling"):
        store.load(1, "min")
    with pytest.raises(ValueError, match="say which one"):
        store.load(1)
    np.testing.assert_array_equal(store.load(-2, "max"), store.load(2, "max"))


@pytest.mark.parametrize(
    "config_name, path",
    [
        ("LlamaConfig", "model.layers"),
        ("Qwen2Config", "model.layers"),
        ("GemmaConfig", "model.layers"),
        ("GPT2Config", "transformer.h"),
        ("GPTNeoXConfig", "gpt_neox.layers"),
        ("OPTConfig", "model.decoder.layers"),
    ],
)
def test_decoder_blocks_are_found_across_families(config_name, path):
    import transformers

    config = getattr(transformers, config_name)(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        n_embd=32,
        n_layer=3,
        n_head=2,
        ffn_dim=64,
        word_embed_proj_dim=32,
    )
    model = AutoModelForCausalLM.from_config(config)
    found, blocks = extract.find_decoder_layers(model)
    assert found == path and len(blocks) == 3 and model.get_submodule(found) is blocks


def test_decoder_blocks_fallback_search_and_failure():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
            self.trunk = torch.nn.Sequential()
            self.trunk.stack = torch.nn.ModuleList([Block() for _ in range(5)])

    assert extract.find_decoder_layers(Net())[0] == "trunk.stack"
    with pytest.raises(ValueError, match="Could not find decoder layers"):
        extract.find_decoder_layers(torch.nn.Linear(2, 2))


def test_resolve_layers():
    resolve = extract.resolve_layers
    assert resolve("all", 4) == [0, 1, 2, 3]
    assert resolve(None, 3) == [0, 1, 2]
    assert resolve(-1, 4) == [3]
    assert resolve([3, "embeddings", -4, 0, np.int64(2)], 4) == [EMBEDDINGS, 0, 2, 3]
    assert resolve("2", 4) == [2]
    for bad, match in [
        ([], "empty"),
        ([True], "not an integer"),
        ([1.5], "not an integer"),
        (-5, "out of range"),
    ]:
        with pytest.raises(ValueError, match=match):
            resolve(bad, 4)


def _imports(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_extract_never_imports_jax():
    assert "jax" not in _imports("lmprobe_jax_extract")


def test_store_imports_neither_torch_nor_jax():
    loaded = _imports("lmprobe_jax_store")
    assert not loaded & {"torch", "jax", "jaxlib", "transformers"}, loaded & {"torch", "jax"}


def test_a_model_object_is_never_converted_to_another_dtype(tiny_models):
    model, tok = load(tiny_models["gpt2"])
    with pytest.raises(ValueError, match="convert it yourself"):
        extract_activations((model, tok), PROMPTS, layers=[0], dtype="bfloat16", progress=False)
    assert next(model.parameters()).dtype == torch.float32


def _write_tiny_gguf(path):
    """A 2-block Llama with the tiny tokenizer as a GGUF file (float32 tensors), written offline."""
    import gguf
    from conftest import _tiny_tokenizer

    tok = _tiny_tokenizer()
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, vocab_size=len(tok), pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tok))
    definition = json.loads(tok.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(definition["model"]["vocab"].items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in definition["model"]["merges"]])
    writer.add_token_types([3 if t in ("<pad>", "<s>", "</s>") else 1 for t in tokens])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    top = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in model.state_dict().items():
        if name in top:
            target = top[name]
        else:
            index, part = name.split(".")[2], ".".join(name.split(".")[3:-1])
            target = f"blk.{index}.{parts[part]}"
        writer.add_tensor(f"{target}.weight", tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_is_converted_once_and_keyed_by_its_content(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from lmprobe_jax_extract import _source

    monkeypatch.setenv("LMPROBE_JAX_CACHE", str(tmp_path / "cache"))
    conversions = []
    real = _source._convert_gguf
    monkeypatch.setattr(_source, "_convert_gguf", lambda *a: (conversions.append(a), real(*a)))
    gguf_file = tmp_path / "tiny.gguf"
    _write_tiny_gguf(gguf_file)
    first = extract_activations(gguf_file, PROMPTS, layers=[1], pooling="mean", progress=False)
    again = extract_activations(gguf_file, PROMPTS, layers=[1], pooling="mean", progress=False)
    assert len(conversions) == 1  # the second run loads the converted directory
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    reference = extract_activations((direct, tok), PROMPTS, layers=[1], pooling="mean", progress=False)
    np.testing.assert_array_equal(first.load(1), reference.load(1))
    np.testing.assert_array_equal(again.load(1), reference.load(1))
    assert first.manifest["model"]["fingerprint"] == again.manifest["model"]["fingerprint"]
    moved = tmp_path / "moved" / "same.gguf"
    moved.parent.mkdir()
    moved.write_bytes(gguf_file.read_bytes())
    extract_activations(moved, PROMPTS, layers=[1], pooling="mean", progress=False)
    assert len(conversions) == 1  # same content, another path: no new conversion
    data = bytearray(gguf_file.read_bytes())
    data[-5] ^= 0x01  # one weight changed
    gguf_file.write_bytes(bytes(data))
    changed = extract_activations(gguf_file, PROMPTS, layers=[1], pooling="mean", progress=False)
    assert len(conversions) == 2 and changed.manifest["model"]["fingerprint"] != first.manifest["model"]["fingerprint"]


def test_a_model_spread_over_devices_by_device_map_gives_the_same_activations(tiny_models):
    pytest.importorskip("accelerate")
    kwargs = {"layers": [EMBEDDINGS, 0, 2, 3], "pooling": ["mean", "all"], "batch_size": 3, "progress": False}
    plain = extract_activations(tiny_models["llama"], PROMPTS, **kwargs)
    # Blocks 1 and 3 offloaded to disk: their weights live on the meta device and are loaded per forward.
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    spread = extract_activations(tiny_models["llama"], PROMPTS, device_map=device_map, **kwargs)
    auto = extract_activations(tiny_models["llama"], PROMPTS, device_map="auto", **kwargs)
    for pooling in kwargs["pooling"]:
        for layer in plain.layers:
            np.testing.assert_array_equal(spread.load(layer, pooling), plain.load(layer, pooling))
            np.testing.assert_array_equal(auto.load(layer, pooling), plain.load(layer, pooling))
    with pytest.raises(ValueError, match="device or device_map"):
        extract_activations(tiny_models["llama"], PROMPTS, device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="dispatch a model object yourself"):
        extract_activations(load(tiny_models["llama"]), PROMPTS, device_map="auto", progress=False)
