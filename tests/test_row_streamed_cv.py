"""The row-streamed logistic CV (a layer whose rows do not fit the memory budget) gives the in-memory CV.

Both solve the same float32 problems (each fold: the training rows as sample weights) with different
engines and summation orders, so they agree within what their stopping tests and float32 rounding allow
(tests/_tolerance.py): each fold fit lies within its problem's region at ``cv_tol`` around the float64
optimum, so each held-out score lies within the slack that region gives it (a sample whose decision value
can cross zero; the log-loss's slope at most 1; a positive/negative pair whose order can flip), and two
runs within twice that. The refit at the chosen ``C`` lies within its region at ``tol``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmprobe_jax.functional as F
from lmprobe_jax_store import ActivationStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import _tolerance as T
from synthetic_store import write_synthetic_store

L, N, D = 3, 700, 40
GRID = (0.01, 0.1, 1.0)
CV_TOL = 1e-4  # cross_validate_logistic's default for the fold problems


def rows_budget(rows: int, n: int = N, d: int = D, y=None) -> int:
    """A memory budget that holds ``rows`` rows of one layer for the streamed CV, not a whole layer (with the
    work space the CV plans for labels ``y``: a softmax CV's is larger)."""
    per_row = (2 + F.cross_validate_logistic.streamed_copies) * d * 4
    return F.cross_validate_logistic.streamed_workspace(n, d, y) + rows * per_row


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[ActivationStore, np.ndarray]:
    """A float16 store of 3 layers x 700 x 40 (the middle layer carries the most signal) and its float32
    stack (the same values: float16 widens exactly)."""
    store = write_synthetic_store(tmp_path_factory.mktemp("rowcv") / "store", n_layers=L, n_rows=N, n_features=D,
                                  rank=8, n_outliers=2, pool_rows=512)
    return store, store.stack(None, dtype=np.float32)


def score_slack(X, y, theta, radius: float, weights) -> tuple[float, float, float]:
    """Most that the held-out ``(accuracy, log_loss, roc_auc)`` of a float32 fit within ``radius`` of
    ``theta`` can differ from ``theta``'s exact ones, on rows ``X`` with labels ``y`` and ``weights``."""
    w = np.asarray(weights, np.float64)
    z = np.hstack([np.asarray(X, np.float64), np.ones((len(X), 1))]) @ np.asarray(theta)[0]
    e = T.decision_error(X, theta, radius)[:, 0]
    loss = np.logaddexp(0, -(2 * y - 1) * z)
    # |d loss / dz| < 1; the mean's rounding and a few ulps of each loss term
    log_loss = (w @ e + (T.mean_rounding(len(w)) + 4 * T.U32) * (w @ (loss + e))) / w.sum()
    pos, neg = y == 1, y == 0
    flips = np.abs(z[pos][:, None] - z[neg][None, :]) <= e[pos][:, None] + e[neg][None, :]
    auc = float(w[pos] @ flips @ w[neg]) / (w[pos].sum() * w[neg].sum()) + T.auc_rounding(len(w))
    return T.accuracy_slack(X, theta, radius, w), float(log_loss), auc


def fold_slacks(X, y, fold_ids, sw) -> np.ndarray:
    """``(3, G, F)``: :func:`score_slack` of every fold problem (float32 data, solved to ``CV_TOL``)."""
    folds = np.unique(fold_ids)
    out = np.zeros((3, len(GRID), folds.size))
    for f in folds:
        train, test = fold_ids != f, fold_ids == f
        for g, C in enumerate(GRID):
            region = T.glm_region(X, y, C, tol=CV_TOL, sample_weight=sw * train, data=False)
            out[:, g, f] = score_slack(X[test], y[test], region.optimum, region.radius, sw[test])
    return out


def test_row_streamed_cv_gives_the_in_memory_cv(data, monkeypatch):
    """Before row streaming this budget was refused ("too small for one layer"); now every block read
    holds at most the planned rows, and folds, scores, choice of C and refit are the in-memory CV's
    within the derived bounds (a fold trained on its held-out rows, the held-out weights dropped, another
    C's refit or a misaligned score each lie far outside)."""
    store, stacked = data
    y, sw = store.labels, np.linspace(0.5, 1.5, N)
    budget = rows_budget(300)
    plan = F._budget.plan_chunks(L, N, D, budget=budget, extra_copies=F.cross_validate_logistic.streamed_copies,
                                 workspace=F._streaming.default_workspace(N, D), row_streaming=True)
    assert plan.rows < N
    read = []
    blocks = F._row_streaming._blocks

    def counted(source, layer, row_block, *pieces):
        for rows, x in blocks(source, layer, row_block, *pieces):
            read.append(x.shape[0])
            yield rows, x

    monkeypatch.setattr(F._row_streaming, "_blocks", counted)
    got = F.cross_validate_logistic(store, y, C=GRID, folds=3, sample_weight=sw, memory_budget=budget)
    assert read and max(read) <= plan.rows
    want = F.cross_validate_logistic(stacked, y, C=GRID, folds=3, sample_weight=sw)

    for name in want._fields:  # the same result, field for field, but for the solver's own step counts
        g_leaves, w_leaves = jax.tree.leaves(getattr(got, name)), jax.tree.leaves(getattr(want, name))
        assert [np.shape(a) for a in g_leaves] == [np.shape(a) for a in w_leaves], name
        assert [np.asarray(a).dtype for a in g_leaves] == [np.asarray(a).dtype for a in w_leaves], name
    np.testing.assert_array_equal(got.grid, want.grid)
    np.testing.assert_array_equal(got.fold_ids, want.fold_ids)
    assert np.all(np.isnan(got.mse)) and bool(np.all(got.converged))

    compared = 0
    for layer in range(L):
        slack = 2 * fold_slacks(stacked[layer], y, want.fold_ids, sw)
        for k, score in enumerate(("accuracy", "log_loss", "roc_auc")):
            gap = np.abs(np.asarray(getattr(got, score)[layer]) - np.asarray(getattr(want, score)[layer]))
            assert np.all(gap <= slack[k]), (layer, score, gap, slack[k])
        if not T.same_best(got.best_index[layer], want.best_index[layer], want.accuracy[layer], slack[0]):
            continue  # a tie within the slack: each run's refit is at its own C
        assert got.best_value[layer] == want.best_value[layer]
        region = T.glm_region(stacked[layer], y, float(want.best_value[layer]), tol=1e-7, sample_weight=sw,
                              data=False)
        T.assert_within(T.as_theta(got.fit.coef[layer], got.fit.intercept[layer]),
                        T.as_theta(want.fit.coef[layer], want.fit.intercept[layer]), 2 * region.radius,
                        f"refit, layer {layer}")
        compared += 1
    assert compared >= 2  # the data decides C on most layers: the refits are compared, not skipped


def test_one_row_streamed_layer_keeps_its_layer_axis_and_folds_groups_alike(data):
    """A single ``(N, D)`` layer's CV has ``L = 1`` in memory; streamed rows must not drop that axis, and
    groups must place whole groups in one fold exactly as in memory (the fold assignment is shared)."""
    store, stacked = data
    y, groups = store.labels, np.arange(N) // 7
    want = F.cross_validate_logistic(stacked[1], y, C=[1.0], folds=3, groups=groups)
    got = F.cross_validate_logistic(stacked[1], y, C=[1.0], folds=3, groups=groups, memory_budget=rows_budget(300))
    for name in want._fields:
        assert jax.tree.map(np.shape, getattr(got, name)) == jax.tree.map(np.shape, getattr(want, name)), name
    np.testing.assert_array_equal(got.fold_ids, want.fold_ids)
    assert got.accuracy.shape == (1, 1, 3) and got.fit.coef.shape == (1, D)


def test_row_streamed_cv_refuses_what_it_cannot_do_before_reading(data, monkeypatch):
    """A budget below one block of 256 rows, and labels that ask for a softmax fit (rows are streamed for
    two classes only), are refused with what to do, before any row is read or anything written."""
    def no_reads(*args, **kwargs):
        raise AssertionError("rows were read before the input was refused")

    store, stacked = data
    monkeypatch.setattr(F._row_streaming, "_blocks", no_reads)
    before = sorted(p.name for p in Path(store.path).rglob("*"))
    with pytest.raises(ValueError, match="too small for one block of 256 rows.*Raise memory_budget"):
        F.cross_validate_logistic(store, store.labels, memory_budget=rows_budget(100))
    three = np.argmax(stacked[1, :, :3], axis=1)
    with pytest.raises(ValueError, match="two classes only.*memory_budget that holds one whole layer"):
        F.cross_validate_logistic(store, three, memory_budget=rows_budget(300, y=three))
    assert sorted(p.name for p in Path(store.path).rglob("*")) == before


def test_the_folds_share_each_pass_over_the_rows(data, monkeypatch):
    """The streamed CV reads the layer once per solver step for all its folds, not once per fold: all its
    passes (scores and refit included) are fewer than its fold problems make when each is solved alone,
    with the same solver, settings and preconditioner (folds solved one after another, as before they were
    batched, make that sum plus the rest). Blocks reach the solver in the store's float16, not as a
    float32 copy made on the host."""
    R = F._row_streaming
    store, _ = data
    y, sw = store.labels, np.linspace(0.5, 1.5, N)
    source = F.layer_source(store)
    passes, dtypes = [], set()
    blocks = R._blocks

    def counted(source, layer, row_block, *pieces):
        passes.append(layer)
        for rows, x in blocks(source, layer, row_block, *pieces):
            dtypes.add(x.dtype)
            yield rows, x

    monkeypatch.setattr(R, "_blocks", counted)
    cv = R.logistic_cv_rows(source, 1, 300, y, C=GRID, folds=3, sample_weight=sw, cv_tol=CV_TOL)
    together = len(passes)
    opts = R._settings(D, 1e-7, 100, None, None)
    precond = R._LayerRows(source, 1, 300, y, sw, True).sketch(opts.precondition_rank)
    alone = []
    for w in R.training_weights(np.asarray(cv.fold_ids), sw):
        passes.clear()
        R._path(R._LayerRows(source, 1, 300, y, w, True), np.asarray(GRID), precond, R._origin(1, N, D), tol=CV_TOL,
                gap_tol=np.inf, max_iter=opts.max_iter, max_cg_iter=opts.max_cg_iter)
        alone.append(len(passes))
    assert max(alone) < together < sum(alone), (together, alone)
    assert dtypes == {np.dtype(np.float16)}


def test_a_pass_hands_its_blocks_to_programs_in_pieces(data, monkeypatch):
    """A logistic pass reads whole blocks but gives its programs pieces whose float32 widening is at most
    ``_PIECE_BYTES`` (a larger buffer is allocated and faulted in afresh at every call on the CPU); the
    block is a whole number of pieces, and the products are the unpieced pass's to float32 rounding."""
    R = F._row_streaming
    store, stacked = data
    source = F.layer_source(store)
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.uniform(0.05, 0.25, (2, N)), jnp.float32)
    p_coef, p_int = jnp.asarray(rng.standard_normal((2, D)), jnp.float32), jnp.asarray([0.5, -1.0], jnp.float32)
    whole = R._LayerRows(source, 1, 300, store.labels, np.ones((2, N)), True)
    assert whole.piece_rows == whole.row_block == 300
    monkeypatch.setattr(R, "_PIECE_BYTES", 4 * D * 64)
    pieced = R._LayerRows(source, 1, 300, store.labels, np.ones((2, N)), True)
    assert (pieced.row_block, pieced.piece_rows) == (256, 64)
    seen = []
    blocks = R._blocks

    def counted(source, layer, row_block, *pieces):
        for rows, x in blocks(source, layer, row_block, *pieces):
            seen.append(x.shape[0])
            yield rows, x

    monkeypatch.setattr(R, "_blocks", counted)
    got = pieced.hvp(w, p_coef, p_int)
    assert seen == [64] * 8 + [64, 64, 60]  # blocks of 256 rows (the last one 188), in pieces of 64
    want = whole.hvp(w, p_coef, p_int)
    eps = np.finfo(np.float32).eps
    for g, v in zip(got, want):  # the same sums, grouped otherwise: float32 rounding over N terms apart
        np.testing.assert_allclose(np.asarray(g), np.asarray(v), rtol=0, atol=N * eps * np.max(np.abs(np.asarray(v))))
    x, p = stacked[1].astype(np.float64), np.asarray(p_coef, np.float64)
    scale = np.abs(p) @ np.abs(x).T + np.abs(np.asarray(p_int))[:, None]
    np.testing.assert_array_less(np.abs(np.asarray(got[0]) - (p @ x.T + np.asarray(p_int)[:, None])), D * eps * scale + 1e-30)
