import gc
import os

# The library turns JAX's persistent compilation cache on at its first solver call; the suite leaves it
# off (one process, programs compiled here only), except where a test turns it on in a subprocess.
os.environ.setdefault("LMPROBE_JAX_COMPILATION_CACHE", "0")

import jax
import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free every compiled XLA program after each test module.

    Each compiled program keeps memory mappings; one pytest process compiles thousands, and the suite
    crossed Linux's per-process limit (vm.max_map_count, 65530) at ~93%: XLA then crashed, a segfault
    or an abort inside compilation, wherever the next program happened to be compiled. Cleared after
    every module, the count stays far below it (programs shared by modules are compiled again).
    """
    yield
    jax.clear_caches()
    gc.collect()


def objective(X, y01, w, b, C, sw=None):
    """scikit-learn's binary logistic objective in float64."""
    sw = np.ones(len(y01)) if sw is None else sw
    m = (2 * y01 - 1) * (X @ w + b)
    return C * np.sum(sw * np.logaddexp(0, -m)) + 0.5 * w @ w


@pytest.fixture
def binary_layers():
    """Three layers of 200 x 8 with a signal in layers 1 and 2, float64 (tests cast as needed)."""
    rng = np.random.default_rng(0)
    L, N, D = 3, 200, 8
    X = rng.normal(size=(L, N, D)) * np.linspace(0.3, 2.0, D)
    y = (X[1] @ rng.normal(size=D) + 0.8 * rng.normal(size=N) > 0).astype(int)
    X[2, :, 0] += 1.5 * (2 * y - 1)
    return X, y


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["The city of Lyon is in France.", "The quick brown fox jumps over the lazy dog."] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Random 4-layer, hidden-64 Llama, GPT-2 and GPT-NeoX causal LMs with a byte-level BPE tokenizer,
    saved to disk offline: ``{"llama": dir, "gpt2": dir, "gpt_neox": dir}``. The GPT-NeoX blocks are
    parallel (``use_parallel_residual=True``: attention and MLP both read the block's input). Skips when
    the extract extra is not installed."""
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

    tokenizer = _tiny_tokenizer()
    common = {"vocab_size": len(tokenizer), "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    sizes = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 256,
    }
    configs = {
        "llama": LlamaConfig(num_key_value_heads=2, **sizes, **common),
        "gpt2": GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=256, **common),
        "gpt_neox": GPTNeoXConfig(use_parallel_residual=True, **sizes, **common),
    }
    root = tmp_path_factory.mktemp("tiny_models")
    paths = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths
