"""lmprobe_jax.lens: the readout and the streaming metric engine against dense float64 numpy, with token
and vocabulary chunks that divide neither T nor V; the logit lens on tiny models' stores against the
models' own logits."""

import _tolerance as tol
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


def logits_error(meta, arrays, h):
    """Bound on a float32 evaluation's error of the readout logits of float64 streams ``h`` ``(..., D)``:
    tol.readout_error, with the streams' cast to float32 (one ulp per entry) carried through the norm."""
    return tol.readout_error(meta, arrays, h, stream_error=tol.U32 * np.abs(h).max(-1, keepdims=True))


def _log_softmax_error(x, dx):
    """``(..., C)`` bound on a float32 streamed log-softmax's error at logits ``x`` off by up to ``dx``: the
    logits' own error plus the logsumexp's move (at most ``max dx``), and the logsumexp's rounding: a sum
    of C exponentials (relative tol.sum_rounding), each exponential's ulps relative to its argument
    ``x - max`` and the online rescalings', the log's ulp, the subtraction's."""
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) + x.max(-1, keepdims=True)
    spread = (x.max(-1, keepdims=True) - x.min(-1, keepdims=True))
    rounding = tol.sum_rounding(x.shape[-1]) + tol.U32 * (4 + 2 * spread) + tol.U32 * np.abs(lse)
    return dx + dx.max(-1, keepdims=True) + rounding + tol.U32 * np.abs(x - lse)


def _per_token(y, z, dy, dz, next_ids, k=K):
    """Per metric, bounds ``(L, T)`` (``(T,)`` for the final ones) on a float32 streaming evaluation's
    error of each token's metric, from the lens logits ``y`` ``(L, T, C)`` and final ``z`` ``(T, C)`` and
    their errors ``dy``, ``dz``.

    Each log-probability within ``_log_softmax_error``; ``sum p (lp - lq)`` moves by ``sum p (dlp + dlq)``
    plus the probabilities' own move (``|dp| <= 2 p dlp`` to first order) times ``|lp - lq|``, plus the
    C-term sum's rounding (tol.dot_error); entropies and cross-entropies likewise. The top-1 and top-k
    agreements can change only at a token whose ranks 1-2 (or k, k+1) are within the logits' reach of a
    tie (a bound of 1 there); the overlap's ``count / k`` is one float32 rounding of a value at most 1."""
    lq, lp = log_softmax(y, -1), log_softmax(z, -1)
    q, p = np.exp(lq), np.exp(lp)
    dlq, dlp = _log_softmax_error(y, dy), _log_softmax_error(z, dz)

    def divergence(a, la, dla, lb, dlb):
        terms = a * (la - lb)
        return (a * (dla + dlb)).sum(-1) + (2 * a * dla * np.abs(la - lb)).sum(-1) + tol.dot_error(terms)

    def entropy(a, la, dla):
        return (a * dla).sum(-1) + (2 * a * dla * np.abs(la)).sum(-1) + tol.dot_error(a * la)

    def near_tie(x, dx, rank):
        top = np.sort(x, -1)[..., ::-1]
        return (top[..., rank - 1] - top[..., rank] <= 2 * dx.max(-1)).astype(float)

    has = next_ids >= 0
    target = np.clip(next_ids, 0, None)
    ce_q = np.take_along_axis(dlq, np.broadcast_to(target[None, :, None], (*y.shape[:2], 1)), -1)[..., 0]
    ce_p = np.take_along_axis(dlp, target[:, None], -1)[:, 0]
    return {
        "kl_final_lens": divergence(p, lp, dlp, lq, dlq),
        "kl_lens_final": divergence(q, lq, dlq, lp, dlp),
        "entropy": entropy(q, lq, dlq),
        "top1_agreement": np.maximum(near_tie(y, dy, 1), near_tie(z, dz, 1)),
        "topk_overlap": np.maximum(near_tie(y, dy, k), near_tie(z, dz, k)) + tol.U32,  # and count / k's rounding
        "ce_next_token": np.where(has, ce_q, 0.0),
        "final_entropy": entropy(p, lp, dlp),
        "final_ce_next_token": np.where(has, ce_p, 0.0),
    }


def metric_bounds(y, z, dy, dz, next_ids, values, k=K):
    """Bounds on the per-layer means over tokens (the cross-entropies over tokens with a next id) of the
    metrics whose dense float64 per-token ``values`` are given: the per-token bounds' mean
    (:func:`_per_token`) plus the mean's own rounding (tol.mean_rounding, relative to the values' mean)."""
    has = next_ids >= 0
    bounds = {}
    for name, b in _per_token(y, z, dy, dz, next_ids, k).items():
        v = values[name]
        if name.endswith("ce_next_token"):
            b, v = b[..., has], v[..., has]
        bounds[name] = b.mean(-1) + tol.mean_rounding(b.shape[-1]) * np.abs(v).mean(-1)
    return bounds


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
    bound = metric_bounds(y, z, logits_error(meta, arrays, streams), logits_error(meta, arrays, final), next_ids, want)
    for name in ("kl_final_lens", "kl_lens_final", "entropy", "top1_agreement", "topk_overlap"):
        np.testing.assert_array_less(np.abs(getattr(got, name) - want[name].mean(-1)), bound[name] + 1e-300, err_msg=name)
    for name in ("ce_next_token", "final_entropy", "final_ce_next_token"):
        value = want[name][..., has] if name.endswith("ce_next_token") else want[name]
        np.testing.assert_array_less(np.abs(getattr(got, name) - value.mean(-1)), bound[name] + 1e-300, err_msg=name)
    # informative: the layers' divergences and entropies differ by O(1)
    assert max(float(np.max(bound[n])) for n in ("kl_final_lens", "kl_lens_final", "entropy", "ce_next_token")) < 0.01
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
    # The head's float32 logits: a D-term product with its bias (tol.dot_error), the streams' cast through
    # |weight|; the reference log-probabilities are given, cast to float32 (one ulp each).
    terms = np.concatenate([streams[:, :, None, :] * weight[:, None], np.broadcast_to(bias[:, None, :, None], (*y.shape, 1))], -1)
    dy = tol.dot_error(terms) + tol.U32 * np.abs(streams) @ np.abs(weight).transpose(0, 2, 1)
    bound = _per_token(y, ref_logp, dy, tol.U32 * np.abs(ref_logp), next_ids, 3)
    for name, value in want.items():
        np.testing.assert_array_less(np.abs(getattr(stats, name) - value), bound[name] + 1e-300, err_msg=name)
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
    # The same logits, evaluated on two paths: each metric within its derived bound of the exact one,
    # where the divergences are 0 and the last layer's cross-entropy and entropy are the final ones.
    y = readout_logits_numpy(meta, arrays, streams)
    d = logits_error(meta, arrays, streams)
    bound = metric_bounds(y, y[-1], d, d[-1], next_ids, dense_metrics(y, y[-1], next_ids))
    assert abs(got.kl_final_lens[-1]) <= bound["kl_final_lens"][-1]
    assert abs(got.kl_lens_final[-1]) <= bound["kl_lens_final"][-1]
    assert abs(got.ce_next_token[-1] - got.final_ce_next_token) <= bound["ce_next_token"][-1] + bound["final_ce_next_token"]
    assert abs(got.entropy[-1] - got.final_entropy) <= bound["entropy"][-1] + bound["final_entropy"]
    assert bound["kl_final_lens"][-1] < 0.01 * got.kl_final_lens[0]  # informative: another layer's is far off


def test_readout_logits_and_final_norm_match_the_numpy_formula():
    rng = np.random.default_rng(3)
    for norm, softcap in (("layer", None), ("rms", 4.0)):
        meta, arrays = random_readout(rng, norm, softcap, 2.0)
        readout = readout_from_arrays(meta, arrays)
        h = rng.normal(size=(4, 6, D)) * 5
        want = readout_logits_numpy(meta, arrays, h)
        np.testing.assert_array_less(np.abs(np.asarray(readout_logits(readout, h), np.float64) - want),
                                     logits_error(meta, arrays, h))
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
    half = streams.astype(np.float16).astype(np.float64)
    want = logit_lens_metrics(half.astype(np.float32), final, next_ids, readout)
    # Two float32 evaluations (other chunks) of the same float16 data: each within the derived bound.
    y, z = readout_logits_numpy(meta, arrays, half), readout_logits_numpy(meta, arrays, final)
    bound = metric_bounds(y, z, logits_error(meta, arrays, half), logits_error(meta, arrays, final), next_ids,
                          dense_metrics(y, z, next_ids))
    np.testing.assert_array_less(np.abs(got.kl_final_lens - want.kl_final_lens), 2 * bound["kl_final_lens"])


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
