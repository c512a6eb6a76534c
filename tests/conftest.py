import gc
import os

# The library turns JAX's persistent compilation cache on at its first solver call; the suite leaves it
# off (one process, programs compiled here only), except where a test turns it on in a subprocess.
os.environ.setdefault("LMPROBE_JAX_COMPILATION_CACHE", "0")

import jax
import numpy as np
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so a clean checkout's result does not depend on
# chance; HYPOTHESIS_PROFILE=explore draws fresh ones (and 10x as many) to look for new failures.
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=1000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


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


def store_manifest(
    n: int, d: int, layers, poolings, *, n_layers: int = 4, storage_dtype: str = "float32", prompts=None
) -> dict:
    """The request fields a writer needs, as an extraction would give them (tests write stores from numpy);
    ``prompt_hashes`` are the real hashes of ``prompts`` when given."""
    from lmprobe_jax_store import prompt_hash

    return {
        "format": "lmprobe-jax-activations",
        "format_version": 2,
        "library_version": "test",
        "model": {"id": "synthetic", "fingerprint": "none", "n_layers": n_layers},
        "tokenizer": {"name": "synthetic"},
        "tokens_sha256": "0" * 64,
        "max_length": None,
        "compute_dtype": "float32",
        "storage_dtype": storage_dtype,
        "hidden_size": d,
        "layers": list(layers),
        "poolings": list(poolings),
        "n_prompts": n,
        "prompts_sha256": "0" * 64,
        "prompt_hashes": [prompt_hash(p) for p in prompts] if prompts else [f"{i:016x}" for i in range(n)],
    }


@pytest.fixture
def write_store():
    """``write_store(root, ...) -> (store, data, counts)``: a store written through StoreWriter from
    random numpy rows, batches in a shuffled order; ``data[(layer, pooling)]`` is what it must hold."""
    from lmprobe_jax_store import StoreContent, StoreWriter, store_lock

    def write(root, *, n=7, d=8, layers=(0, 2), poolings=("mean", "all"), batch=3, seed=0, labels=None,
              metadata=None, replace=False):
        rng = np.random.default_rng(seed)
        counts = rng.integers(1, 5, n)
        order = rng.permutation(n)
        batches = [order[i : i + batch].tolist() for i in range(0, n, batch)]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        data = {
            (layer, p): rng.normal(size=(offsets[-1] if p == "all" else n, d)).astype(np.float32)
            for layer in layers
            for p in poolings
        }
        with store_lock(root):
            content = StoreContent(store_manifest(n, d, layers, poolings), batches, counts,
                                   [f"prompt {i}" for i in range(n)], labels, metadata)
            writer = StoreWriter(root, content, replace=replace)
            for k in rng.permutation(writer.pending).tolist():
                rows = np.asarray(batches[k])
                tokens = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in rows])
                writer.write(k, {key: value[tokens if key[1] == "all" else rows] for key, value in data.items()})
            return writer.finish(), data, counts

    return write


@pytest.fixture(scope="module")
def outcomes():
    """Per-class outcome counts of a fuzz or fault module (tests/outcomes.py), printed when it ends."""
    from outcomes import Counts

    counts = Counts()
    yield counts
    counts.report()
