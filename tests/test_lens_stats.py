"""lmprobe_jax.lens.stream_statistics: the covariance spectrum entropy against numpy's covariance and
eigenvalues, Layer-Probing's statistic against torch.cov as Layer-Probing calls it, and what each does
when one token carries a massive activation."""

import itertools

import numpy as np
import pytest

from lmprobe_jax.lens import spectrum_entropy, stream_statistics

L, D = 3, 6


def texts(rng, lengths=(5, 9, 2, 13)):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    streams = rng.normal(size=(L, offsets[-1], D)) * np.linspace(0.5, 3, D) + 4.0
    return streams, offsets


def test_spectrum_entropy_matches_numpy_over_all_tokens():
    rng = np.random.default_rng(0)
    streams, offsets = texts(rng)
    got = stream_statistics(streams, offsets, token_chunk=7)  # 29 tokens: the chunks do not divide
    for layer in range(L):
        eig = np.linalg.eigvalsh(np.cov(streams[layer], rowvar=False))
        p = eig / eig.sum()
        # float32 scatter per chunk, float64 merge: relative 1e-6 on the eigenvalues
        np.testing.assert_allclose(got.spectrum_entropy[layer], -(p * np.log(p)).sum(), rtol=1e-5)
    np.testing.assert_allclose(got.effective_rank, np.exp(got.spectrum_entropy))
    assert (got.n_tokens, got.n_texts) == (29, 4)


def test_layer_probing_statistic_matches_torch_cov():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    streams, offsets = texts(rng)
    got = stream_statistics(streams, offsets)
    for layer in range(L):
        per_text = [
            np.log(torch.cov(torch.as_tensor(streams[layer, a:b], dtype=torch.float64)).norm(p="fro").item())
            for a, b in itertools.pairwise(offsets)
        ]
        # the streams pass through float32 (as store shards do): 1e-7 relative on each entry
        np.testing.assert_allclose(got.log_frobenius[layer], np.mean(per_text), atol=1e-6)
        rest = [
            np.log(
                torch.cov(torch.as_tensor(streams[layer, a + 1 : b], dtype=torch.float64))
                .norm(p="fro")
                .item()
            )
            for a, b in itertools.pairwise(offsets)
        ]
        np.testing.assert_allclose(got.log_frobenius_no_first[layer], np.mean(rest), atol=1e-6)


def test_a_massive_first_token_moves_layer_probings_statistic_not_the_rest():
    rng = np.random.default_rng(2)
    streams, offsets = texts(rng, lengths=(40, 40, 40))
    base = stream_statistics(streams, offsets)
    loud = streams.copy()
    loud[:, offsets[:-1], 0] += 1e4  # one feature of each text's first token, 1000x the others
    spiked = stream_statistics(loud, offsets)
    assert np.all(spiked.log_frobenius - base.log_frobenius > 10)  # ~ log of the spike's squared norm
    np.testing.assert_allclose(spiked.log_frobenius_no_first, base.log_frobenius_no_first)
    assert np.all(spiked.spectrum_entropy < base.spectrum_entropy)  # variance piles onto one direction


def test_spectrum_entropy_is_scale_invariant_and_bounded():
    rng = np.random.default_rng(3)
    streams, offsets = texts(rng)
    a = stream_statistics(streams, offsets).spectrum_entropy
    b = stream_statistics(streams * 1000.0, offsets).spectrum_entropy
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(spectrum_entropy(np.eye(D)), np.log(D))
    assert np.all((a > 0) & (a < np.log(D)))


def test_bad_input():
    rng = np.random.default_rng(4)
    streams, offsets = texts(rng)
    with pytest.raises(ValueError, match="one row per token"):
        stream_statistics(streams[:, :-1], offsets)
