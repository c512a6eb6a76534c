"""Token-level stores (lmprobe_jax_store._tokens / _readout, lmprobe_jax_extract._tokens / _readout): token
ids, next-token ids, and a readout that reproduces the model's own logits, on Llama (RMSNorm), GPT-2
(LayerNorm + bias), Gemma (1 + weight), Gemma 2 (soft-capping) and a head with a bias; refusals before
anything is written."""

import copy

import _tolerance as T
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer

import lmprobe_jax_store as store_format
from lmprobe_jax_extract import extract_activations, extract_token_streams
from lmprobe_jax_store import ActivationStore, next_token_ids, read_readout, read_tokens, readout_logits_numpy

TEXTS = ["The city of Lyon is in France.", "The quick brown fox jumps over the lazy dog.", "Lyon is"]


def load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def randomise_norm(model):
    """Give the final norm (and its bias) non-trivial values, so a dropped weight or bias shows."""
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if name.endswith(("norm.weight", "ln_f.weight", "norm.bias", "ln_f.bias")):
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5 + (name.endswith("weight")))
    return model


def model_logits_and_last_stream(model, tok, text):
    ids = tok(text, return_tensors="pt")["input_ids"]
    captured = {}
    blocks = model.model.layers if hasattr(model, "model") else model.transformer.h
    handle = blocks[-1].register_forward_hook(
        lambda m, a, out: captured.setdefault("h", out if torch.is_tensor(out) else out[0])
    )
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double().numpy()
    handle.remove()
    return logits, captured["h"][0].double().numpy()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_readout_reproduces_the_model_logits(tiny_models, arch):
    model, tok = load(tiny_models[arch])
    randomise_norm(model)
    store = extract_token_streams((model, tok), TEXTS, layers=[0, 2], progress=False)
    meta, arrays = read_readout(store)
    assert meta["norm"] == {"llama": "rms", "gpt2": "layer"}[arch]
    assert ("norm.bias" in arrays) == (arch == "gpt2")
    logits, last = model_logits_and_last_stream(model, tok, TEXTS[1])
    got = readout_logits_numpy(meta, arrays, last)
    # the model's float32 final norm and unembedding vs the float64 formula on the same float32 stream
    np.testing.assert_array_less(np.abs(got - logits), T.readout_error(meta, arrays, last) + 1e-300)  # exact zeros: pad rows
    # and the stored last layer is that stream, row-aligned with the tokens (the extraction's forward
    # batches the texts: equal up to two float32 forwards' rounding)
    offsets = store.offsets()
    stored = store.load(3, "all")
    np.testing.assert_allclose(stored[offsets[1] : offsets[2]], last, rtol=0, atol=T.forward_rounding(last))


def test_token_ids_and_next_ids_line_up_with_the_rows(tiny_models, tmp_path):
    _, tok = load(tiny_models["llama"])
    store = extract_token_streams(
        tiny_models["llama"], TEXTS, layers=[1], out_dir=tmp_path / "s", progress=False
    )
    tokens = read_tokens(store)
    assert store.layers == [1, 3]  # the last block is always stored: the final distribution's source
    for i, text in enumerate(TEXTS):
        ids = tok(text)["input_ids"]
        rows = slice(tokens.offsets[i], tokens.offsets[i + 1])
        np.testing.assert_array_equal(tokens.input_ids[rows], ids)
        np.testing.assert_array_equal(tokens.next_ids[rows], [*ids[1:], -1])
    reopened = ActivationStore(tmp_path / "s")
    reopened.verify_all()
    np.testing.assert_array_equal(read_tokens(reopened).next_ids, tokens.next_ids)
    assert read_readout(reopened)[1]["unembed.weight"].dtype == np.float32


def test_next_token_ids_and_bad_offsets():
    np.testing.assert_array_equal(next_token_ids([5, 6, 7, 8, 9], [0, 3, 5]), [6, 7, -1, 9, -1])
    with pytest.raises(ValueError, match="non-empty texts"):
        next_token_ids([5, 6, 7], [0, 0, 3])


def test_an_all_store_grows_into_a_token_store_in_the_same_cache_entry(tiny_models, tmp_path):
    pooled = extract_activations(
        tiny_models["gpt2"], TEXTS, layers=[0, 3], pooling="all", cache_dir=tmp_path, progress=False
    )
    assert not store_format.is_token_level(pooled)
    store = extract_token_streams(tiny_models["gpt2"], TEXTS, layers=[0], cache_dir=tmp_path, progress=False)
    assert store.path == pooled.path and store_format.is_token_level(store)
    before = {p.name: p.stat().st_mtime_ns for p in store.path.rglob("*.safetensors")}
    again = extract_token_streams(tiny_models["gpt2"], TEXTS, layers=[0], cache_dir=tmp_path, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in again.path.rglob("*.safetensors")} == before


def test_half_precision_streams_keep_a_float32_readout(tiny_models):
    store = extract_token_streams(
        tiny_models["llama"], TEXTS, layers=[0], storage_dtype="bfloat16", progress=False
    )
    assert str(store.load(0, "all").dtype) == "bfloat16"
    assert all(a.dtype == np.float32 for a in read_readout(store)[1].values())


def test_head_bias_and_logit_transforms_are_exported(tiny_models):
    model, tok = load(tiny_models["llama"])
    model.lm_head = torch.nn.Linear(64, model.config.vocab_size, bias=True)
    model.config.logits_scaling = 4.0  # Granite-style: logits / 4
    model.config.tie_word_embeddings = False
    # LlamaForCausalLM ignores logits_scaling: the forward check must notice the mismatch ...
    with pytest.raises(ValueError, match="does not reproduce the model's logits"):
        extract_token_streams((model, tok), TEXTS, progress=False)
    del model.config.logits_scaling
    store = extract_token_streams((model, tok), TEXTS, progress=False)
    meta, arrays = read_readout(store)
    np.testing.assert_array_equal(arrays["unembed.bias"], model.lm_head.bias.detach().numpy())
    logits, last = model_logits_and_last_stream(model, tok, TEXTS[0])
    got = readout_logits_numpy(meta, arrays, last)
    np.testing.assert_array_less(np.abs(got - logits), T.readout_error(meta, arrays, last) + 1e-300)  # exact zeros: pad rows


@pytest.mark.parametrize("family", ["gemma", "gemma2"])
def test_gemma_norm_offset_and_softcap(tmp_path, family):
    from conftest import _tiny_tokenizer
    from transformers import Gemma2Config, GemmaConfig

    tok = _tiny_tokenizer()
    common = {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 128,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config = (
        GemmaConfig(**common) if family == "gemma" else Gemma2Config(final_logit_softcapping=3.0, **common)
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.model.norm.weight.normal_(0, 0.5)
    store = extract_token_streams((model, tok), TEXTS, progress=False)
    meta, arrays = read_readout(store)
    assert meta["norm_weight_offset"] == 1.0
    assert meta["logit_softcap"] == (None if family == "gemma" else 3.0)
    np.testing.assert_allclose(arrays["norm.weight"], 1 + model.model.norm.weight.detach().numpy(), rtol=2 * T.U32)  # one rounding of 1 + w (u |1 + w| / (1 - u))
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    # hidden_states[-2] is the input of the last block; run the last block through the store instead
    offsets = store.offsets()
    last = store.load(1, "all")[offsets[0] : offsets[1]]
    logits = out.logits[0].double().numpy()
    got = readout_logits_numpy(meta, arrays, last)
    # the stored stream comes from the extraction's own (batched) forward: up to two forwards' rounding
    bound = T.readout_error(meta, arrays, last, stream_error=T.forward_rounding(last, n_layers=2))
    np.testing.assert_array_less(np.abs(got - logits), bound + 1e-300)


class OddNorm(torch.nn.Module):
    """A final norm of a class nobody exports."""

    def __init__(self, norm):
        super().__init__()
        self.inner = norm

    def forward(self, x):
        return self.inner(x)


class ShiftedRMSNorm(torch.nn.Module):
    """Named like an RMSNorm, computes something else (a centred RMS norm): the numeric check refuses it."""

    def __init__(self, norm):
        super().__init__()
        self.weight, self.variance_epsilon = norm.weight, norm.variance_epsilon

    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


ShiftedRMSNorm.__name__ = "ShiftedRMSNorm"


@pytest.mark.parametrize(
    "breaking, match",
    [
        (lambda m: setattr(m.model, "norm", OddNorm(m.model.norm)), "final norm is a OddNorm"),
        (lambda m: setattr(m.model, "norm", ShiftedRMSNorm(m.model.norm)), "differs from a rms norm"),
        (lambda m: setattr(m.model, "extra_norm", copy.deepcopy(m.model.norm)), "found norm, extra_norm"),
    ],
)
def test_unsupported_norms_are_refused_before_anything_is_written(tiny_models, tmp_path, breaking, match):
    model, tok = load(tiny_models["llama"])
    breaking(model)
    with pytest.raises(ValueError, match=match):
        extract_token_streams((model, tok), TEXTS, out_dir=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_a_model_without_an_unembedding_is_refused(tiny_models, tmp_path):
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tiny_models["llama"])
    _, tok = load(tiny_models["llama"])
    with pytest.raises(ValueError, match="has no unembedding.*AutoModelForCausalLM"):
        extract_token_streams((base, tok), TEXTS, out_dir=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "texts, kwargs, match",
    [
        ([], {}, "texts is empty"),
        ("one string", {}, "not one string"),
        (["The city of Lyon", "A"], {}, r"fewer than 2 tokens \(first: texts\[1\] = 'A'\)"),
        (TEXTS, {"layers": [7]}, "out of range"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tiny_models, tmp_path, texts, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        extract_token_streams(tiny_models["gpt2"], texts, out_dir=tmp_path / "s", progress=False, **kwargs)
    assert not (tmp_path / "s").exists()


def test_readout_description_validation():
    good = {
        "norm": "rms",
        "eps": 1e-6,
        "logit_scale": 1.0,
        "logit_softcap": None,
        "vocab_size": 3,
        "hidden_size": 2,
    }
    assert store_format.check_readout_meta(good) is good
    for bad, match in [
        ({**good, "norm": "batch"}, "Unknown readout norm"),
        ({**good, "eps": -1.0}, "eps"),
        ({**good, "logit_softcap": 0.0}, "logit_softcap"),
        ({k: v for k, v in good.items() if k != "eps"}, "lacks"),
    ]:
        with pytest.raises(ValueError, match=match):
            store_format.check_readout_meta(bad)
    arrays = {"norm.weight": np.ones(2), "unembed.weight": np.ones((3, 2))}
    store_format.check_readout_arrays(good, arrays)
    with pytest.raises(ValueError, match=r"unembed.weight has shape \(2, 3\)"):
        store_format.check_readout_arrays(good, {**arrays, "unembed.weight": np.ones((2, 3))})
    with pytest.raises(ValueError, match="RMS norm has no bias"):
        store_format.check_readout_arrays(good, {**arrays, "norm.bias": np.ones(2)})
