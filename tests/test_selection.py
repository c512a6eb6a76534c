import _tolerance as T
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

import lmprobe_jax.functional as F


def test_layer_importance_metrics_and_normalisation():
    coef = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    # small integers: every sum exact in float32, then one rounding (sqrt), or two (a sum and a division)
    np.testing.assert_allclose(F.layer_importance(coef, "l2", normalize=False), [5, 0, np.sqrt(2)], rtol=T.U32)
    np.testing.assert_allclose(F.layer_importance(coef, "l1", normalize=False), [7, 0, 2])
    np.testing.assert_allclose(F.layer_importance(coef, "mean_abs", normalize=False), [3.5, 0, 1])
    np.testing.assert_allclose(F.layer_importance(coef, "max_abs", normalize=False), [4, 0, 1])
    imp = F.layer_importance(coef.ravel(), "l1", n_layers=3)
    np.testing.assert_allclose(imp, np.array([7, 0, 2]) / 9, rtol=2 * T.U32)
    np.testing.assert_allclose(F.layer_importance(np.zeros((2, 3)), "l2"), [0, 0])
    with pytest.raises(ValueError, match="metric must be one of"):
        F.layer_importance(coef, "l3")


def test_resolve_candidates_lmprobe_rules():
    assert F.resolve_candidates(None, 30) == [7, 14, 21]  # int(f * 29)
    assert F.resolve_candidates([0, -1, 5, 5], 12) == [0, 11, 5]
    assert F.resolve_candidates([0.0, 1.0], 12) == [0, 11]
    for bad, match in [([12], "out of range"), ([-13], "out of range"), ([1.5], "must lie in"), ([], "empty"),
                       ([True], "bool"), ("0.5", "sequence")]:
        with pytest.raises(ValueError, match=match):
            F.resolve_candidates(bad, 12)


@given(st.integers(1, 80), st.lists(st.one_of(st.floats(0, 1), st.integers(-200, 200)), min_size=1, max_size=8))
def test_resolve_candidates_property(n_layers, spec):
    in_range = all((-n_layers <= c < n_layers) if isinstance(c, int) else True for c in spec)
    if not in_range:
        with pytest.raises(ValueError):
            F.resolve_candidates(spec, n_layers)
        return
    out = F.resolve_candidates(spec, n_layers)
    assert all(0 <= i < n_layers for i in out) and len(out) == len(set(out))


def test_fast_auto_picks_the_signal_layers_and_refits():
    rng = np.random.default_rng(0)
    L, N, D = 8, 400, 6
    X = rng.normal(size=(L, N, D)).astype(np.float32)
    y = rng.integers(0, 2, N)
    X[5, :, 0] += 1.5 * (2 * y - 1)
    X[2, :, 1] += 0.8 * (2 * y - 1)
    res = F.fast_auto(X, y, candidates=[0, 2, 4, 5, 7], top_k=2)
    assert res.candidates == [0, 2, 4, 5, 7] and res.selected == [2, 5]
    assert int(np.argmax(res.importances)) == 3
    both = np.concatenate([X[2], X[5]], axis=1)
    ref = LogisticRegression(tol=1e-10, max_iter=10000).fit(both, y)
    region = T.glm_region(both, y, 1.0, tol=1e-7, data=False)  # X is float32 data
    T.assert_within(T.as_theta(res.fit.coef, res.fit.intercept), T.as_theta(ref.coef_[0], ref.intercept_[0]),
                    region.radius + T.reference_radius(region, ref.coef_[0], ref.intercept_[0]))


def test_alpha_for_k_layers():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 300, 5))
    y = (X[1, :, 0] + 0.7 * X[3, :, 0] > 0).astype(int)
    amax = F.group_lasso_alpha_max(X, y)
    path = F.fit_group_lasso(X.astype(np.float32), y, amax * np.logspace(0, -1.5, 12))
    alpha, idx = F.alpha_for_k_layers(path, 2)
    kept = np.asarray(F.layers_kept(path))
    assert kept[idx].sum() >= 2 and float(path.alpha[idx]) == alpha
    assert all(kept[i].sum() < 2 for i in range(12) if path.alpha[i] > alpha)
    assert F.alpha_for_k_layers(path, 5) is None
