"""lmprobe's pooling functions (lmprobe_jax.pooling): strategy parsing, activation pooling and score
reduction on padded torch batches, against direct computations over each row's real tokens."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmprobe_jax.pooling import (
    INFERENCE_POOLING_STRATEGIES,
    get_pooling_fn,
    is_valid_inference_strategy,
    parse_pooling_strategy,
    pool_all,
    pool_first_token,
    pool_last_token,
    pool_max,
    pool_mean,
    pool_min,
    reduce_scores,
    resolve_pooling,
)

LENGTHS = [4, 1, 3]


def _batch(side: str, trailing: tuple = (5,)):
    """Random values ``(B, T, *trailing)`` padded on ``side`` with huge values in pad positions, the mask,
    and each row's real values."""
    g = torch.Generator().manual_seed(0)
    T = max(LENGTHS)
    x = torch.full((len(LENGTHS), T, *trailing), 1e6)
    mask = torch.zeros(len(LENGTHS), T, dtype=torch.long)
    rows = []
    for i, n in enumerate(LENGTHS):
        real = torch.randn(n, *trailing, generator=g)
        where = slice(T - n, T) if side == "left" else slice(0, n)
        x[i, where], mask[i, where] = real, 1
        rows.append(real)
    return x, mask, rows


@pytest.mark.parametrize("side", ["left", "right"])
def test_activation_pooling_reads_only_real_tokens(side):
    x, mask, rows = _batch(side)
    want = {
        pool_last_token: [r[-1] for r in rows],
        pool_first_token: [r[0] for r in rows],  # lmprobe took position 0: a pad under left padding
        pool_mean: [r.mean(0) for r in rows],
        pool_max: [r.amax(0) for r in rows],
        pool_min: [r.amin(0) for r in rows],
    }
    for fn, expected in want.items():
        torch.testing.assert_close(fn(x, mask), torch.stack(expected), rtol=1e-6, atol=1e-6)
    assert pool_all(x, mask) is x


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("trailing", [(), (2,)])
def test_score_reduction_reads_only_real_tokens(side, trailing):
    x, mask, rows = _batch(side, trailing)
    ops = {
        "max": lambda r: r.amax(0),
        "score:min": lambda r: r.amin(0),
        "score:mean": lambda r: r.mean(0),
        "score:first_token": lambda r: r[0],
        "score:last_token": lambda r: r[-1],
    }
    for strategy, op in ops.items():
        got = reduce_scores(x, strategy, mask)
        assert got.dtype == x.dtype
        torch.testing.assert_close(got, torch.stack([op(r) for r in rows]), rtol=1e-6, atol=1e-6)


def test_strategy_grammar():
    assert parse_pooling_strategy("max") == ("max", True, "max")
    assert parse_pooling_strategy("activation:max").extraction == "max"
    assert parse_pooling_strategy("score:mean").extraction == "all"
    assert get_pooling_fn("score:last_token") is pool_all and get_pooling_fn("activation:min") is pool_min
    assert resolve_pooling(None, None, None) == ("last_token", "last_token")
    assert resolve_pooling("mean", "all", "score:max") == ("all", "score:max")
    for bad, match in [
        ("post:mean", "Unknown pooling prefix"),
        ("score:all", "Unknown base pooling"),
        ("median", "Unknown pooling strategy"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_pooling_strategy(bad)
    with pytest.raises(ValueError, match="Invalid train_pooling"):
        resolve_pooling(None, "score:mean", None)
    # the predicate says what parsing says, for every bare name, prefixed forms and non-strings
    assert all(is_valid_inference_strategy(s) for s in INFERENCE_POOLING_STRATEGIES | {"score:mean", "activation:max"})
    assert not any(is_valid_inference_strategy(s) for s in ("median", "score:all", "post:mean", None, 3))
    with pytest.raises(ValueError, match="does not support strategy 'all'"):  # nothing to reduce to
        reduce_scores(torch.ones(1, 2), "all")
    np.testing.assert_array_equal(pool_mean(torch.ones(1, 2, 3)).numpy(), np.ones((1, 3)))  # no mask
