"""lmprobe_jax.lens: the readout and the streaming metric engine against dense float64 numpy, with token
and vocabulary chunks that divide neither T nor V; the logit lens on tiny models' stores against the
models' own logits."""

import numpy as np
import pytest
from scipy.special import log_softmax

from lmprobe_jax.lens import (
    Head,
    Lens,
    chunk_token_stats,
    final_norm,
    lens_metrics,
    lens_token_stats,
    linear_head,
    logit_lens,
    logit_lens_metrics,
    readout_from_arrays,
    readout_logits,
)
from lmprobe_jax_store import readout_logits_numpy

L, T, D, V, K = 3, 37, 8, 53, 5


def random_readout(rng, norm="layer", softcap=None, scale=1.0):
    meta = {
        "norm": norm,
        "eps": 1e-5,
        "logit_scale": scale,
        "logit_softcap": softcap,
        "vocab_size": V,
        "hidden_size": D,
    }
    arrays = {
        "norm.weight": rng.normal(size=D),
        "unembed.weight": rng.normal(size=(V, D)),
        "unembed.bias": rng.normal(size=V),
    }
    if norm == "layer":
        arrays["norm.bias"] = rng.normal(size=D)
    return meta, arrays


def dense_metrics(y, z, next_ids, k=K):
    """The six metrics per layer and token in float64 numpy, from full logits y (L, T, C), z (T, C)."""
    lq, lp = log_softmax(y, -1), log_softmax(z, -1)
    q, p = np.exp(lq), np.exp(lp)
    has = next_ids >= 0
    ce = -np.take_along_axis(
        lq, np.broadcast_to(np.clip(next_ids, 0, None)[None, :, None], (*y.shape[:2], 1)), -1
    )[..., 0]
    top_q = np.argsort(-y, -1, kind="stable")[..., :k]
    top_p = np.argsort(-z, -1, kind="stable")[..., :k]
    overlap = (top_q[..., :, None] == top_p[None, :, None, :]).sum((-2, -1)) / k
    return {
        "kl_final_lens": (p * (lp - lq)).sum(-1),
        "kl_lens_final": (q * (lq - lp)).sum(-1),
        "entropy": -(q * lq).sum(-1),
        "ce_next_token": np.where(has, ce, 0.0),
        "top1_agreement": (y.argmax(-1) == z.argmax(-1)).astype(float),
        "topk_overlap": overlap,
        "final_entropy": -(p * lp).sum(-1),
        "final_ce_next_token": np.where(
            has, -np.take_along_axis(lp, np.clip(next_ids, 0, None)[:, None], -1)[:, 0], 0.0
        ),
    }


def data(rng, t=T):
    streams = rng.normal(size=(L, t, D)) * 2
    streams[:, 0] *= 30  # a massive first-token activation, as SmolLM2 writes
    final = rng.normal(size=(t, D)) * 2
    next_ids = rng.integers(0, V, size=t)
    next_ids[[10, t - 1]] = -1
    return streams, final, next_ids


def tolerance(logits):
    """float32 logits of magnitude |z| carry ~|z| * 1e-7 of error; KL/CE/entropy are sums of such terms
    weighted by probabilities, so a few times that, with room for the online rescaling's roundings."""
    return 1e-5 * max(1.0, float(np.abs(logits).max()))


@pytest.mark.parametrize("norm, softcap, scale", [("layer", None, 1.0), ("rms", 2.5, 0.5)])
@pytest.mark.parametrize("token_chunk, vocab_chunk", [(16, 12), (37, 53), (5, 7)])
def test_logit_lens_metrics_match_dense_numpy(norm, softcap, scale, token_chunk, vocab_chunk):
    rng = np.random.default_rng(0)
    meta, arrays = random_readout(rng, norm, softcap, scale)
    readout = readout_from_arrays(meta, arrays)
    streams, final, next_ids = data(rng)
    y = readout_logits_numpy(meta, arrays, streams)
    z = readout_logits_numpy(meta, arrays, final)
    want = dense_metrics(y, z, next_ids)
    got = logit_lens_metrics(
        streams, final, next_ids, readout, k=K, token_chunk=token_chunk, vocab_chunk=vocab_chunk
    )
    has = next_ids >= 0
    tol = tolerance(y)
    for name in ("kl_final_lens", "kl_lens_final", "entropy", "top1_agreement", "topk_overlap"):
        np.testing.assert_allclose(getattr(got, name), want[name].mean(-1), atol=tol, err_msg=name)
    np.testing.assert_allclose(got.ce_next_token, want["ce_next_token"][:, has].mean(-1), atol=tol)
    np.testing.assert_allclose(got.final_entropy, want["final_entropy"].mean(), atol=tol)
    np.testing.assert_allclose(got.final_ce_next_token, want["final_ce_next_token"][has].mean(), atol=tol)
    assert (got.n_tokens, got.n_next, got.k) == (T, T - 2, K)


def test_per_token_stats_and_a_per_layer_head_with_a_dense_reference():
    """A probe-like lens: per-layer head over C classes, reference given as dense log-probabilities."""
    rng = np.random.default_rng(1)
    C = 11
    streams, _, _ = data(rng)
    next_ids = rng.integers(0, C, size=T)
    next_ids[-1] = -1
    weight, bias = rng.normal(size=(L, C, D)), rng.normal(size=(L, C))
    ref_logp = log_softmax(rng.normal(size=(T, C)) * 3, -1)
    lens = Lens(identity, None, linear_head(np.float32(weight), np.float32(bias)))
    reference = Lens(identity, None, None)
    stats = lens_token_stats(lens, reference, streams, ref_logp, next_ids, k=3, token_chunk=8, vocab_chunk=4)
    y = np.einsum("ltd,lcd->ltc", streams, weight) + bias[:, None, :]
    want = dense_metrics(y, ref_logp, next_ids, k=3)
    for name, value in want.items():
        np.testing.assert_allclose(getattr(stats, name), value, atol=tolerance(y), err_msg=name)
    np.testing.assert_array_equal(stats.has_next, next_ids >= 0)


def identity(params, h):
    del params
    return h


def test_the_last_layer_agrees_with_itself_and_kl_is_zero():
    rng = np.random.default_rng(2)
    meta, arrays = random_readout(rng)
    readout = readout_from_arrays(meta, arrays)
    streams, final, next_ids = data(rng)
    streams[-1] = final
    got = logit_lens_metrics(streams, final, next_ids, readout, token_chunk=16, vocab_chunk=12)
    assert got.top1_agreement[-1] == 1.0 and got.topk_overlap[-1] == 1.0
    assert abs(got.kl_final_lens[-1]) < 1e-5 and abs(got.kl_lens_final[-1]) < 1e-5
    np.testing.assert_allclose(got.ce_next_token[-1], got.final_ce_next_token, rtol=1e-6)
    np.testing.assert_allclose(got.entropy[-1], got.final_entropy, rtol=1e-6)


def test_readout_logits_and_final_norm_match_the_numpy_formula():
    rng = np.random.default_rng(3)
    for norm, softcap in (("layer", None), ("rms", 4.0)):
        meta, arrays = random_readout(rng, norm, softcap, 2.0)
        readout = readout_from_arrays(meta, arrays)
        h = rng.normal(size=(4, 6, D)) * 5
        want = readout_logits_numpy(meta, arrays, h)
        np.testing.assert_allclose(readout_logits(readout, h), want, atol=tolerance(want))
        assert readout.kind == norm
        assert final_norm(readout, h).shape == h.shape


def test_every_token_chunk_runs_one_compiled_program():
    rng = np.random.default_rng(4)
    meta, arrays = random_readout(rng)
    readout = readout_from_arrays(meta, arrays)
    streams, final, next_ids = data(rng, t=40)
    before = chunk_token_stats._cache_size()
    logit_lens_metrics(streams, final, next_ids, readout, token_chunk=13, vocab_chunk=9)  # 4 chunks
    assert chunk_token_stats._cache_size() == before + 1


def test_memory_mapped_layer_lists_are_read_chunk_by_chunk(tmp_path):
    rng = np.random.default_rng(5)
    meta, arrays = random_readout(rng)
    readout = readout_from_arrays(meta, arrays)
    streams, final, next_ids = data(rng)
    maps = []
    for i, layer in enumerate(streams.astype(np.float16)):
        path = tmp_path / f"{i}.npy"
        np.save(path, layer)
        maps.append(np.load(path, mmap_mode="r"))
    got = logit_lens_metrics(maps, final, next_ids, readout, token_chunk=10, vocab_chunk=20)
    want = logit_lens_metrics(streams.astype(np.float16).astype(np.float32), final, next_ids, readout)
    np.testing.assert_allclose(got.kl_final_lens, want.kl_final_lens, rtol=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"next_ids": np.zeros(5, int)}, "one row per token position"),
        ({"k": 0}, "k must be a positive integer"),
        ({"k": 60}, "exceeds the head's 53 classes"),
        ({"token_chunk": 0}, "token_chunk must be a positive integer"),
        ({"next_ids": np.full(T, -1)}, "No position has a next token"),
    ],
)
def test_bad_engine_input(change, match):
    rng = np.random.default_rng(6)
    meta, arrays = random_readout(rng)
    readout = readout_from_arrays(meta, arrays)
    streams, final, next_ids = data(rng)
    kwargs = {"next_ids": next_ids, **change}
    next_ids = kwargs.pop("next_ids")
    with pytest.raises(ValueError, match=match):
        lens_metrics(logit_lens(readout), logit_lens(readout), streams, final, next_ids, **kwargs)


def test_head_softcap_gradient_is_the_derivative_of_the_transform():
    import jax

    head = Head(np.zeros((2, 3), np.float32), np.zeros(2, np.float32), np.float32(0.7), np.float32(2.0))
    z = np.linspace(-6, 6, 13).astype(np.float32)
    numeric = jax.vmap(jax.grad(lambda x: head.transform(x)))(z)
    np.testing.assert_allclose(head.transform_grad(z), numeric, rtol=1e-5, atol=1e-7)
