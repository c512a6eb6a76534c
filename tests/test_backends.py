"""lmprobe's backend objects (``lmprobe_jax.backends``): a batch's unpooled hidden states at given layers.

Reference: a direct ``transformers`` forward of each prompt alone (``output_hidden_states``: entry
``i + 1`` is block ``i``'s output, for every block but the last, whose entry has the final norm applied),
within the rounding of two float32 forwards batched differently (``_tolerance.forward_rounding``)."""

from __future__ import annotations

import _tolerance as T
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmprobe_jax.backends import (
    ExtractionBackend,
    LocalBackend,
    NnsightBackend,
    _get_decoder_layers,
    resolve_backend,
)

PROMPTS = ["The city of Lyon is in France.", "A dog", "The quick brown fox jumps over the lazy dog."]


def alone(model, tokenizer, prompt):
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states], out.logits[0].numpy()


@pytest.mark.parametrize("kind", ["local", "nnsight"])
def test_hidden_states_are_each_prompt_s_own_forward(tiny_models, kind):
    backend = resolve_backend(kind, tiny_models["llama"], "cpu")
    acts, mask = backend.extract_batch(PROMPTS, [2, 0, -2])  # -2 is block 2 of 4: asked twice, kept twice
    model, tokenizer = backend._load()
    d = model.config.hidden_size
    assert acts.shape == (3, mask.shape[1], 3 * d) and acts.dtype == torch.float32
    for i, prompt in enumerate(PROMPTS):
        hidden, _ = alone(model, tokenizer, prompt)
        real = mask[i].bool().numpy()
        assert real.sum() == len(hidden[0])
        got = acts[i].numpy()
        assert not got[~real].any()  # zero at padding
        for k, block in enumerate([2, 0, 2]):
            want = hidden[block + 1]
            np.testing.assert_allclose(
                got[real, k * d : (k + 1) * d], want, rtol=0, atol=T.forward_rounding(want)
            )


def test_logits_are_the_full_forward_s(tiny_models):
    backend = LocalBackend(tiny_models["gpt2"], device="cpu")
    acts, mask, logits, indices = backend.extract_batch_with_logits(PROMPTS, [1])
    assert indices is None and acts.shape[:2] == mask.shape and logits.shape[:2] == mask.shape
    model, tokenizer = backend._load()
    for i, prompt in enumerate(PROMPTS):
        _, want = alone(model, tokenizer, prompt)
        got = logits[i].numpy()[mask[i].bool().numpy()]
        np.testing.assert_allclose(got, want, rtol=0, atol=T.forward_rounding(want))
    assert backend.extract_batch_with_logits(PROMPTS[:1], [])[0] is None


def test_no_hook_is_left_behind_and_the_model_is_the_loaded_one(tiny_models):
    from transformers import PreTrainedModel

    backend = LocalBackend(tiny_models["llama"], device="cpu")
    blocks = _get_decoder_layers(backend.model)
    assert isinstance(backend.model, PreTrainedModel) and len(blocks) == 4
    backend.extract_batch(["test prompt"], [3])
    assert not any(block._forward_hooks or block._forward_pre_hooks for block in blocks)
    assert "input_ids" in backend.tokenizer("Hello", return_tensors="pt")


def test_dtype_is_the_model_s_and_the_activations(tiny_models):
    backend = resolve_backend("local", tiny_models["llama"], "cpu", dtype=torch.bfloat16)
    acts, _ = backend.extract_batch(["Hello"], [0])
    assert next(backend.model.parameters()).dtype == torch.bfloat16 and acts.dtype == torch.bfloat16


def test_the_interface_and_refusals(tiny_models):
    assert issubclass(LocalBackend, ExtractionBackend) and issubclass(NnsightBackend, ExtractionBackend)
    with pytest.raises(TypeError, match="abstract"):
        ExtractionBackend("model", "cpu")
    nn = resolve_backend("nnsight", tiny_models["llama"], "cpu", remote=True)
    assert isinstance(nn, NnsightBackend) and nn.remote is True
    with pytest.raises(ValueError, match="does not support remote"):
        resolve_backend("local", tiny_models["llama"], "cpu", remote=True)
    with pytest.raises(ValueError, match="Unknown backend"):
        resolve_backend("chunked", tiny_models["llama"], "cpu")
    with pytest.raises(ValueError, match="Could not find decoder layers"):
        _get_decoder_layers(object())
    with pytest.raises(ValueError, match="empty"):
        LocalBackend(tiny_models["llama"], device="cpu").extract_batch(["a"], [])


@pytest.mark.parametrize("name", ["llama", "gpt2"])  # num_hidden_layers / n_layer in the config
def test_depth_from_the_config_is_the_loaded_model_s(tiny_models, name):
    from lmprobe_jax.extraction import get_num_layers_from_config

    model, _ = LocalBackend(tiny_models[name], device="cpu")._load()
    assert get_num_layers_from_config(tiny_models[name]) == len(_get_decoder_layers(model)) == 4
