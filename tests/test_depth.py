"""lmprobe_jax_extract's depth analyses against an independent reference (benchmarks/depth_reference.py:
plain forwards with hooks, one per intervention, float64 metrics), across sequential (Llama, GPT-2) and
parallel (GPT-NeoX) blocks, both backends, and the block-layout table on every architecture it names."""

import json
import sys
from pathlib import Path

import _tolerance as T
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer

import lmprobe_jax_extract as extract
from lmprobe_jax_extract import BlockLayout

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import depth_reference as reference

TEXTS = [
    "The city of Lyon is in France, and Zurich is in Switzerland; Kyoto is in Japan.",
    "A quick brown fox jumps over the lazy dog near Marseille at dawn.",
    "Hi there",
]
QUESTION, ANSWER = "The city of Lyon is in", " France"
# Sub-modules whose outputs the blocks add, and whether the MLP reads the block's input: written out here
# from the model code, independently of the library's table.
SUBMODULES = {"llama": ("self_attn", "mlp", False), "gpt2": ("attn", "mlp", False), "gpt_neox": ("attention", "mlp", True)}
# float32 forwards: a position's norm ratio or cosine carries ~D eps = 64 x 1.2e-7 relative error, the
# batched skip rows differ from single-row forwards by a few float32 roundings per block.
RTOL, ATOL = 1e-4, 2e-6


def load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def assert_close(got, want, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("skip_first", [0, 2])
def test_contributions_match_reference(tiny_models, arch, skip_first):
    model, tok = load(tiny_models[arch])
    got = extract.depth_analysis((model, tok), TEXTS, skip_first=skip_first, skip=False, progress=False)
    want = reference.contributions(model, tok, TEXTS, *SUBMODULES[arch], skip_first=skip_first)
    c = got.contributions
    assert c.parallel == SUBMODULES[arch][2]
    assert c.n_tokens == sum(len(tok(t)["input_ids"]) - skip_first for t in TEXTS)
    for name, values in want.items():
        assert_close(getattr(c, name), values)


def test_means_are_per_token_never_per_hidden_unit(tiny_models):
    """The notebook divides by ``layer.output[0].shape[1]``, the hidden size (64 here) under transformers
    5: a mean over tokens must not change when the same text is given twice, and must equal the average
    over its T != 64 positions."""
    model, tok = load(tiny_models["llama"])
    text = TEXTS[:1]
    n_tokens = len(tok(text[0])["input_ids"])
    assert n_tokens != 64
    once = extract.depth_analysis((model, tok), text, skip=False, progress=False).contributions
    twice = extract.depth_analysis((model, tok), text * 2, skip=False, progress=False).contributions
    assert_close(twice.rel_layer, once.rel_layer, rtol=1e-6, atol=0)
    h, out = reference.forward(model, torch.tensor([tok(text[0])["input_ids"]]))[:2]
    per_position = np.linalg.norm(out - h, axis=-1) / np.linalg.norm(h, axis=-1)  # (L, T)
    assert_close(once.rel_layer, per_position.mean(-1))
    wrong = per_position.sum(-1) / 64  # the notebook's division, which this test must tell apart
    assert np.abs(np.asarray(once.rel_layer) - wrong).min() > 0.1 * np.abs(wrong).min()


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_skip_effects_match_reference(tiny_models, arch):
    model, tok = load(tiny_models[arch])
    got = extract.depth_analysis(
        (model, tok),
        TEXTS,
        skip_first=2,
        contributions=False,
        n_splits=None,
        max_batch_bytes=1,  # one row per chunk for some texts, several chunks per text
        progress=False,
    )
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]
    splits = [list(range(8, n - 4, 8)) for n in lengths]
    assert any(splits) and not all(splits)  # the short text has no split point
    for effects, variant_splits in ((got.skip, None), (got.skip_later_tokens, splits)):
        want = reference.skip_effects(model, tok, TEXTS, keep_first=1, skip_first=2, splits=variant_splits)
        for value, expected in zip(
            (effects.future_max, effects.future_mean, effects.output_max, effects.output_mean), want, strict=True
        ):
            assert_close(value, expected)
    assert np.all(np.tril(got.skip.future_max, -1) == 0)  # blocks before the skipped one: exactly 0
    np.testing.assert_array_equal(got.skip.n_positions, sum(n - 2 for n in lengths))


def test_skip_rows_in_one_chunk_equal_rows_in_many(tiny_models):
    model, tok = load(tiny_models["gpt2"])
    kwargs = {"contributions": False, "progress": False, "n_splits": 2}
    one = extract.depth_analysis((model, tok), TEXTS, max_batch_bytes=1 << 34, **kwargs)
    many = extract.depth_analysis((model, tok), TEXTS, max_batch_bytes=1, **kwargs)
    for a, b in zip(one.skip + one.skip_later_tokens, many.skip + many.skip_later_tokens, strict=True):
        assert_close(a, b)


def test_erasure_matches_reference(tiny_models):
    model, tok = load(tiny_models["llama"])
    got = extract.residual_erasure((model, tok), QUESTION, ANSWER, TEXTS, max_batch_bytes=1 << 20, progress=False)
    want = reference.erasure(model, tok, QUESTION, ANSWER, TEXTS)
    assert got.effect.shape == (5, len(got.tokens)) and got.n_answer == len(tok(ANSWER)["input_ids"])
    assert_close(got.effect, want)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_integrated_gradients_match_reference(tiny_models, arch):
    model, tok = load(tiny_models[arch])
    # batch_size 3 with 8 steps: chunks mix the steps of two blocks
    got = extract.integrated_gradients((model, tok), QUESTION, ANSWER, n_steps=8, batch_size=3, progress=False)
    want = reference.integrated_gradients(model, tok, QUESTION, ANSWER, n_steps=8, batch_size=4)
    scale = np.abs(want).max()
    assert scale > 0
    assert_close(got.attributions, want, atol=1e-4 * scale)
    assert all(p.requires_grad for p in model.parameters())  # frozen only for the duration


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gap_to_reference_is_rounding(tiny_models, arch, dtype):
    """Every batched analysis against the one-forward reference, both run in ``dtype``.

    A metric here is a norm or sum of probabilities (or of a block's write) that rounding perturbs through
    L blocks of length-D dot products: on the metric's scale, at most ~L D eps of ``dtype`` (3e-5 in
    float32, 5.7e-14 in float64 for L = 4, D = 64). The same bound at both precisions shows the float32 gaps
    are rounding: a gap from the batching itself (a wrong row, position, baseline or step; a float32 cast
    left in the float64 path) would not shrink 5e8-fold with eps.
    """
    model, tok = load(tiny_models[arch])
    model = model.to(dtype)
    n_blocks, hidden = model.config.num_hidden_layers, model.config.hidden_size
    bound = n_blocks * hidden * 2 * T.unit_roundoff(str(dtype).removeprefix("torch."))  # L D eps
    qa = ((model, tok), QUESTION, ANSWER)
    erased = extract.residual_erasure(*qa, TEXTS, max_batch_bytes=1 << 20, progress=False)
    ig = extract.integrated_gradients(*qa, n_steps=8, batch_size=3, progress=False)
    depth = extract.depth_analysis(
        (model, tok), TEXTS, skip_first=2, later_tokens=False, max_batch_bytes=1, progress=False
    )
    contributions = reference.contributions(model, tok, TEXTS, *SUBMODULES[arch], skip_first=2)
    pairs = [
        (erased.effect, reference.erasure(model, tok, QUESTION, ANSWER, TEXTS)),
        (ig.attributions, reference.integrated_gradients(model, tok, QUESTION, ANSWER, 8, 4)),
        *zip(depth.contributions[:6], contributions.values(), strict=True),
        *zip(depth.skip[:4], reference.skip_effects(model, tok, TEXTS, skip_first=2), strict=True),
    ]
    for got, want in pairs:
        assert_close(got, want, rtol=bound, atol=bound * np.abs(want).max())


def test_integrated_gradients_sum_to_the_probability_gain(tiny_models):
    """IG's completeness: over positions, a block's attributions add up to P(x) - P(x'), up to the
    Riemann sum's error (which shrinks with the step count)."""
    model, tok = load(tiny_models["llama"])
    ig = extract.integrated_gradients((model, tok), QUESTION, ANSWER, n_steps=64, batch_size=32, progress=False)
    ids, n_answer = reference.question_answer(tok, QUESTION, ANSWER)
    outs = reference.forward(model, ids)[1]
    block = 2
    x = torch.tensor(outs[block], dtype=torch.float32)
    gain = []
    for value in (x, x.mean(0, keepdim=True).expand_as(x)):
        handle = model.model.layers[block].register_forward_hook(lambda m, a, o, v=value: v[None])
        with torch.no_grad():
            probs = model(input_ids=ids).logits[0, :-1].softmax(-1)[-n_answer:]
        handle.remove()
        gain.append(float(probs.gather(-1, ids[0, -n_answer:, None]).sum()))
    total = ig.attributions[block].sum()
    assert abs(total - (gain[0] - gain[1])) <= 0.05 * abs(gain[0] - gain[1])


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_nnsight_backend_agrees_with_hooks(tiny_models, arch):
    pytest.importorskip("nnsight")
    model, tok = load(tiny_models[arch])
    kwargs = {"skip_first": 1, "n_splits": 1, "progress": False}
    hooks = extract.depth_analysis((model, tok), TEXTS, **kwargs)
    traced = extract.depth_analysis((model, tok), TEXTS, backend="nnsight", **kwargs)
    for a, b in zip(hooks.contributions[:6], traced.contributions[:6], strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-7)
    for a, b in zip(hooks.skip + hooks.skip_later_tokens, traced.skip + traced.skip_later_tokens, strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-7)
    args = ((model, tok), QUESTION, ANSWER)
    erased = [extract.residual_erasure(*args, TEXTS, backend=b, progress=False).effect for b in ("local", "nnsight")]
    assert_close(erased[1], erased[0], rtol=1e-5, atol=1e-7)
    ig = [
        extract.integrated_gradients(*args, n_steps=4, batch_size=3, backend=b, progress=False).attributions
        for b in ("local", "nnsight")
    ]
    assert_close(ig[1], ig[0], rtol=1e-5, atol=1e-5 * np.abs(ig[0]).max())


# -- block layouts ---------------------------------------------------------------------------------------
def tiny_config(model_type: str):
    import transformers

    common = {"vocab_size": 300, "num_hidden_layers": 2, "max_position_embeddings": 128}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64, "intermediate_size": 96}
    configs = {
        "llama": ("LlamaConfig", heads),
        "mistral": ("MistralConfig", heads),
        "qwen2": ("Qwen2Config", heads),
        "qwen3": ("Qwen3Config", {**heads, "head_dim": 16}),
        "gemma": ("GemmaConfig", {**heads, "head_dim": 16}),
        "gemma2": ("Gemma2Config", {**heads, "head_dim": 16}),
        "phi3": ("Phi3Config", {**heads, "pad_token_id": 0}),
        "gpt2": ("GPT2Config", {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 128}),
        "gpt_neox": ("GPTNeoXConfig", {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96}),
        "gptj": ("GPTJConfig", {"n_embd": 64, "n_head": 4, "n_layer": 2, "rotary_dim": 8, "n_positions": 128}),
        "phi": ("PhiConfig", {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96}),
        "opt": ("OPTConfig", {"hidden_size": 64, "num_attention_heads": 4, "ffn_dim": 96, "word_embed_proj_dim": 64}),
        "bloom": ("BloomConfig", {"hidden_size": 64, "n_head": 4, "n_layer": 2}),
    }
    name, extra = configs[model_type]
    return getattr(transformers, name)(**{**common, **extra})


def tiny_model(model_type: str, **overrides):
    config = tiny_config(model_type)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    for p in model.parameters():  # some inits leave norms at exactly 1 and biases at 0: vary them
        p.data += 0.02 * torch.randn_like(p)
    return model


def mlp_reads_attention(model, layout: BlockLayout) -> bool:
    """Whether block 0's MLP output changes when the attention's write is zeroed: True for a sequential
    block, False for a parallel one (a check of the layout's ``parallel`` by intervention)."""
    block = extract.find_decoder_layers(model)[1][0]
    ids = torch.randint(3, 300, (1, 12))
    outputs = []
    for zero in (False, True):
        seen = {}
        handles = [block.get_submodule(layout.mlp).register_forward_hook(lambda m, a, o, seen=seen: seen.setdefault("m", o))]
        if zero:
            handles.append(
                block.get_submodule(layout.attention).register_forward_hook(
                    lambda m, a, o: torch.zeros_like(o) if torch.is_tensor(o) else (torch.zeros_like(o[0]), *o[1:])
                )
            )
        with torch.no_grad():
            model(input_ids=ids)
        for handle in handles:
            handle.remove()
        outputs.append(seen["m"] if torch.is_tensor(seen["m"]) else seen["m"][0])
    return not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize(
    "model_type, overrides",
    [(t, {}) for t in extract.SUPPORTED_MODEL_TYPES] + [("gpt_neox", {"use_parallel_residual": False})],
)
def test_every_known_layout_sums_to_the_block_output_and_names_its_mlp_input(tiny_models, model_type, overrides):
    model = tiny_model(model_type, **overrides)
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    layout = extract.block_layout(model)
    assert layout.parallel == (not mlp_reads_attention(model, layout))
    # The run checks h_out == h_in + attn + mlp on every block (it raises otherwise).
    got = extract.depth_analysis((model, tok), TEXTS[:1], skip=False, progress=False).contributions
    assert np.all(np.isfinite(got.rel_mlp)) and np.all(np.asarray(got.rel_mlp) > 0)


def test_a_wrong_layout_is_refused_not_mis_measured(tiny_models):
    model = tiny_model("gemma2")  # the outputs of self_attn / mlp are normalised again before the add
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    with pytest.raises(ValueError, match=r"does not write h_out = h_in \+ attn \+ mlp"):
        extract.depth_analysis(
            (model, tok), TEXTS[:1], skip=False, layout=BlockLayout("self_attn", "mlp", False), progress=False
        )


@pytest.mark.parametrize("model_type", ["opt", "bloom"])
def test_unsupported_architecture_gets_a_clear_error(tiny_models, model_type):
    model = tiny_model(model_type)
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    with pytest.raises(ValueError, match=f"model_type='{model_type}'.*known block layouts are"):
        extract.depth_analysis((model, tok), TEXTS[:1], progress=False)
    # Skipping, erasing and gradients need no layout: they run on any decoder.
    skip = extract.depth_analysis((model, tok), TEXTS[:1], contributions=False, later_tokens=False, progress=False)
    assert skip.skip.output_max.shape == (2,)


# -- bad input -------------------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors(tiny_models):
    path = tiny_models["llama"]
    with pytest.raises(ValueError, match="texts is empty"):
        extract.depth_analysis(path, [], progress=False)
    with pytest.raises(ValueError, match=r"texts\[1\] \(''\) tokenises to nothing"):
        extract.depth_analysis(path, ["Hi", ""], progress=False)
    with pytest.raises(ValueError, match=r"texts\[0\] has \d+ tokens, so skip_first=50"):
        extract.depth_analysis(path, ["Hi there"], skip_first=50, progress=False)
    with pytest.raises(ValueError, match="later-tokens variant needs a text of at least 13 tokens"):
        extract.depth_analysis(path, ["Hi there"], progress=False)
    with pytest.raises(ValueError, match="skip_first must be an integer >= 0"):
        extract.depth_analysis(path, TEXTS, skip_first=-1, progress=False)
    with pytest.raises(ValueError, match="answer '' tokenises to nothing"):
        extract.residual_erasure(path, QUESTION, "", TEXTS, progress=False)
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        extract.integrated_gradients(path, QUESTION, ANSWER, n_steps=0, progress=False)


# -- command line ----------------------------------------------------------------------------------------
def test_cli_depth_writes_report_csv_and_figures(tiny_models, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from lmprobe_jax.cli import main

    monkeypatch.setenv("LMPROBE_JAX_CACHE", str(tmp_path / "cache"))  # the logit lens's token store

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "out"
    argv = ["depth", "--model", str(tiny_models["gpt_neox"]), "--texts", str(texts), "--out", str(out)]
    assert main([*argv, "--skip-first", "1", "--ig-steps", "4", "--quiet"]) == 0
    report = json.loads((out / "depth.json").read_text())
    L = 4
    for key in ("rel_contrib_attn", "rel_contrib_mlp", "rel_contrib_layer", "cos_attn", "cos_mlp", "cos_layer",
                "skip_effect_output_max", "skip_effect_output_mean"):
        assert len(report[key]) == L, key
    for key in ("skip_effect_future_max", "skip_effect_future_mean", "skip_effect_future_max_later_tokens"):
        assert np.asarray(report[key]).shape == (L, L), key
    T = len(report["attribution_tokens"])
    assert np.asarray(report["erasure"]).shape == (L + 1, T)
    assert np.asarray(report["integrated_gradients"]).shape == (L, T)
    assert report["parallel_blocks"] is True and report["skip_first"] == 1
    assert (out / "depth.csv").read_text().splitlines()[0].startswith("layer,rel_contrib_attn")
    assert len(report["logit_lens_kl_lens_final"]) == L and len(report["logit_lens_top5_overlap"]) == L
    for figure in ("contributions", "skip_layers", "skip_output", "logit_lens", "erasure", "integrated_gradients"):
        assert (out / f"{figure}.png").stat().st_size > 10_000


def logit_lens_reference(model, tok, texts, k=5):
    """The notebook's Fig. 4 in float64 torch, independently of lmprobe_jax.lens: per block l, the final
    norm and unembedding applied to the stream entering block l, KL(lens || final) and the top-k overlap
    with the output, means over every position of every text. Returns ``(kl (L,), overlap (L,), max |z|,
    near_ties)``: ``near_ties(margin)`` counts per block the positions whose k-th and (k+1)-th lens logits
    are closer than ``margin`` (where rounding could change the top-k set)."""
    model = model.double()
    norm, head = model.model.norm, model.get_output_embeddings()
    kl, overlap, n, scale, gaps = 0.0, 0.0, 0, 0.0, []
    for text in texts:
        inputs, _, _, _, logits = reference.forward(model, torch.tensor([tok(text)["input_ids"]]))
        with torch.no_grad():
            lens = head(norm(torch.from_numpy(inputs)))  # (L, T, V)
        final = torch.from_numpy(logits).log_softmax(-1)
        logp = lens.log_softmax(-1)
        kl = kl + (logp.exp() * (logp - final)).sum(-1).sum(-1)
        top_final = final.topk(k, -1).indices
        top = lens.topk(k + 1, -1)
        hits = (top.indices[..., :k, None] == top_final[:, None, :]).any(-1).sum(-1)  # (L, T)
        overlap = overlap + hits.sum(-1) / k
        scale = max(scale, float(lens.abs().max()))
        gaps.append(top.values[..., k - 1] - top.values[..., k])
        n += len(logits)
    gaps = torch.cat(gaps, -1)
    return (kl / n).numpy(), (overlap / n).numpy(), scale, lambda margin: (gaps < margin).sum(-1).numpy()


@pytest.mark.parametrize("arch", ["llama"])
def test_cli_depth_logit_lens_is_the_notebooks_fig4(tiny_models, tmp_path, monkeypatch, arch):
    """``--analyses lens``: the logit lens on the stream entering each block (the notebook's tap), equal to a
    float64 torch computation. Ours runs the model and the lens in float32: the streams carry ~L D eps
    relative error, so a logit ~L D eps |z|, a log-probability twice that, and KL(lens || final) (a
    p-weighted mean of differences of two of them) at most 4 L D eps max|z| nats; a top-5 overlap can only
    change at positions whose 5th and 6th logits are within 2 L D eps max|z|."""
    pytest.importorskip("matplotlib")
    from lmprobe_jax.cli import main

    monkeypatch.setenv("LMPROBE_JAX_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "out"
    argv = ["depth", "--model", str(tiny_models[arch]), "--texts", str(texts), "--out", str(out)]
    assert main([*argv, "--analyses", "lens", "--quiet"]) == 0
    report = json.loads((out / "depth.json").read_text())
    model, tok = load(tiny_models[arch])
    n_blocks, hidden = model.config.num_hidden_layers, model.config.hidden_size
    kl, overlap, scale, near_ties = logit_lens_reference(model, tok, TEXTS)
    n_tokens = sum(len(tok(t)["input_ids"]) for t in TEXTS)
    assert report["logit_lens_n_tokens"] == n_tokens and report["layers"] == list(range(n_blocks))
    drift = n_blocks * hidden * 2 * T.U32 * scale  # L D eps max|z|
    assert np.abs(np.diff(kl)).min() > 8 * drift  # the bound tells the stream entering a block from the next
    assert_close(report["logit_lens_kl_lens_final"], kl, rtol=0, atol=4 * drift)
    # a flipped top-5 member moves the mean by 1 / (5 n); the float32 mean has its own rounding
    flips = near_ties(2 * drift) / n_tokens + T.mean_rounding(n_tokens)
    assert np.all(np.abs(np.asarray(report["logit_lens_top5_overlap"]) - overlap) <= flips)
    rows = (out / "depth.csv").read_text().splitlines()
    assert "logit_lens_kl_lens_final" in rows[0] and len(rows) == n_blocks + 1
    assert (out / "logit_lens.png").stat().st_size > 10_000


def test_cli_depth_bad_input_writes_nothing(tiny_models, tmp_path, capsys):
    from lmprobe_jax.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("Hi there\n")
    out = tmp_path / "out"
    argv = ["depth", "--model", str(tiny_models["llama"]), "--texts", str(texts), "--out", str(out), "--quiet"]
    assert main([*argv, "--skip-first", "40"]) == 1
    assert "skip_first=40 leaves none of its positions" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main([*argv[:4], str(empty), *argv[5:]]) == 1
    assert "holds no prompts" in capsys.readouterr().err
    assert main([*argv, "--analyses", "skip,attention"]) == 1
    assert "unknown ['attention']" in capsys.readouterr().err
    assert not out.exists()


def test_skip_rows_do_not_rerun_the_blocks_before_the_skipped_one(tiny_models):
    """Rows skipping block s share the clean run up to s: those blocks return their clean outputs instead of
    running (one row per chunk here, so each chunk starts right after its skipped block)."""
    model, tok = load(tiny_models["llama"])
    calls = [0] * 4
    for i, block in enumerate(model.model.layers):
        block.mlp.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    extract.depth_analysis(
        (model, tok), TEXTS[:1], contributions=False, later_tokens=False, max_batch_bytes=1, progress=False
    )
    assert calls == [1, 2, 3, 4]  # the clean pass, then the rows skipping an earlier block
