"""lmprobe's ``"sgd_gpu"`` (:class:`lmprobe_jax.sgd.SGDGPUClassifier`): minibatch SGD on JAX.

References: scikit-learn's float64 optimum of the objective SGD minimises (full-batch runs converge to
it, bound from gradient descent's contraction); a float64 numpy replay of the same minibatch steps
(same row orders and initialisation; bound from the float32 rounding of each step propagated through
the steps); PyTorch's own learning-rate schedulers (the semantics lmprobe's classifier has)."""

from __future__ import annotations

import _tolerance as T
import numpy as np
import pytest
from scipy.special import expit

from lmprobe_jax.sgd import SGDGPUClassifier, _Plateau, _plateau_step, _stable_sigmoid_proba


def data(n=120, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d)) + 0.8 * (2 * y[:, None] - 1) * rng.normal(size=d)
    return X.astype(np.float32), y, rng.uniform(0.5, 2.0, n)


def test_full_batch_runs_reach_scikit_learns_optimum_of_the_same_objective():
    """``(1/N) sum s_i loss_i + (lambda/2) ||[w, c]||^2`` is ``lambda`` times scikit-learn's objective at
    ``C = 1 / (N lambda)`` on ``[X, 1]`` without a separate intercept. Gradient descent with step
    ``eta <= 1 / L`` contracts by ``rho = 1 - eta mu`` (``mu >= lambda``); float32 adds per step the
    gradient's rounding (times ``eta``) and the update's (3 ulps of ``theta``), which the contraction
    sums to at most ``1 / (1 - rho)`` times one step's."""
    X, y, s = data()
    n, d = X.shape
    lam = 0.05
    A = np.hstack([X.astype(np.float64), np.ones((n, 1))])
    L = np.linalg.eigvalsh((A * s[:, None]).T @ A / n)[-1] / 4 + lam
    eta, epochs = 1.0 / L, 400
    est = SGDGPUClassifier(
        lr=eta, epochs=epochs, batch_size=n, weight_decay=lam, random_state=3, device="cpu"
    )
    est.fit(X, y, sample_weight=s)

    p = T.problem(A, y, 1.0 / (n * lam), sample_weight=s, fit_intercept=False)
    star = T.optimum(p)  # (1, D + 2): [w, c, 0]
    rho = 1 - eta * lam
    init = np.random.default_rng(3).uniform(-1 / np.sqrt(d), 1 / np.sqrt(d), d + 1)
    start = np.linalg.norm(init - star[0, :-1])
    per_step = eta * lam * np.linalg.norm(T.gradient_rounding(p, star)) + 3 * T.U32 * np.linalg.norm(star)
    bound = rho**epochs * start + per_step / (1 - rho)
    T.assert_within(np.r_[est.coef_, est.intercept_, 0.0], star[0], bound, "SGD full batch vs sklearn")
    # the last epoch's loss (before its step) is the data term at a point within `bound` of the optimum:
    # softplus is 1-Lipschitz in the logit; plus the float32 mean's rounding and each loss's few ulps
    data_loss = lam * (T.objective(p, star) - 0.5 * np.sum(star**2))
    reach = np.mean(s * np.linalg.norm(A, axis=1))
    slack = reach * bound + (T.mean_rounding(n) + 4 * T.U32) * data_loss
    assert len(est.train_loss_) == epochs
    assert abs(est.train_loss_[-1] - data_loss) <= slack, (est.train_loss_[-1], data_loss, slack)


def _replay(X, y, s, *, lr, epochs, batch_size, weight_decay, seed, learning_rates=None):
    """The same minibatch SGD in float64 numpy, and a bound on a float32 run's distance to it after each
    epoch: ``D_{k+1} <= (1 + eta (L_b + lambda)) D_k + eta e_b + 3 u ||theta||``, with ``L_b`` the
    minibatch loss's curvature bound and ``e_b`` its float32 gradient's rounding (each row's linear
    predictor through the sigmoid's slope <= 1/4, the sigmoid's few ulps, and the sum of the rows'
    terms); and on each epoch's loss: each row's logit error (softplus is 1-Lipschitz), its few ulps, the
    float32 means."""
    X = X.astype(np.float64)
    n, d = X.shape
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-1 / np.sqrt(d), 1 / np.sqrt(d), d + 1)
    A = np.hstack([X, np.ones((n, 1))])
    dist, losses, bounds, loss_errors = 0.0, [], [], []
    for epoch in range(epochs):
        eta = lr if learning_rates is None else learning_rates[epoch]
        order = rng.permutation(n)
        total = error = 0.0
        for start in range(0, n, batch_size):
            b = order[start : start + batch_size]
            Ab, yb, sb = A[b], y[b], s[b]
            z = Ab @ theta
            loss = float(np.mean(sb * np.logaddexp(0, -(2 * yb - 1) * z)))
            total += loss * len(b)
            terms = (sb * (expit(z) - yb))[:, None] * Ab / len(b)
            dz = T.dot_error(Ab * theta, axis=-1) + T.LAMBDA * T.U32 * np.linalg.norm(Ab * theta, axis=-1)
            own = (sb * (dz / 4 + 4 * T.U32))[:, None] * np.abs(Ab) / len(b)
            e = T.dot_error(terms, axis=0) + T.independent_sum(own, axis=0)
            error += (np.mean(sb * dz) + (T.mean_rounding(len(b)) + 4 * T.U32) * loss) * len(b)
            curvature = np.linalg.eigvalsh((Ab * sb[:, None]).T @ Ab / len(b))[-1] / 4
            theta = theta - eta * (terms.sum(0) + weight_decay * theta)
            dist = (
                (1 + eta * (curvature + weight_decay)) * dist
                + eta * np.linalg.norm(e)
                + 3 * T.U32 * np.linalg.norm(theta)
            )
        losses.append(total / n)
        bounds.append(dist)
        loss_errors.append(error / n + T.mean_rounding(n) * total / n)
    return theta, np.array(losses), np.array(bounds), np.array(loss_errors), A


@pytest.mark.parametrize("batch_size", [16, 50])  # 16 does not divide 50: a ragged last minibatch
def test_minibatch_steps_match_a_float64_replay(batch_size):
    X, y, s = data(n=50, d=6, seed=1)
    kw = {"lr": 0.1, "epochs": 6, "batch_size": batch_size, "weight_decay": 0.01}
    est = SGDGPUClassifier(**kw, random_state=7, device="cpu").fit(X, y, sample_weight=s)
    theta, losses, bounds, loss_errors, A = _replay(X, y, s, **kw, seed=7)
    T.assert_within(np.r_[est.coef_, est.intercept_], theta, bounds[-1], f"SGD B={batch_size} vs replay")
    # each epoch's loss: the parameters' distance (at most the epoch's final bound) through the largest
    # weighted row, plus the float32 arithmetic of the losses themselves
    slack = np.max(s * np.linalg.norm(A, axis=1)) * bounds + loss_errors
    assert np.all(np.abs(np.array(est.train_loss_) - losses) <= slack), (est.train_loss_, losses, slack)


def test_the_cosine_schedule_is_pytorchs_per_epoch():
    torch = pytest.importorskip("torch")
    X, y, s = data(n=40, d=3, seed=2)
    kw = {"lr": 0.2, "epochs": 8, "batch_size": 16, "weight_decay": 0.0}
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=kw["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=kw["epochs"])
    rates = []
    for _ in range(kw["epochs"]):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    est = SGDGPUClassifier(**kw, scheduler="cosine", random_state=5, device="cpu").fit(X, y, sample_weight=s)
    theta, _, bounds, _, _ = _replay(X, y, s, **kw, seed=5, learning_rates=rates)
    T.assert_within(np.r_[est.coef_, est.intercept_], theta, bounds[-1], "cosine schedule vs replay")


def test_plateau_rule_is_pytorchs_reduce_on_plateau():
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=5, factor=0.5)
    losses = [1.0, 0.9, 0.9, 0.89995, 0.95, 0.9, 0.9, 0.9, 0.8, *[0.8] * 14, 0.5, *[0.6] * 8]
    state = _Plateau(0.1)
    for loss in losses:
        sched.step(loss)
        state = _plateau_step(state, loss)
        assert state.learning_rate == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
    assert state.learning_rate < 0.1 / 4  # the sequence did trigger reductions


def test_early_stopping_keeps_the_best_epoch():
    """Stops ``early_stopping`` epochs after the lowest loss and returns that epoch's parameters: the same
    run cut at that epoch (same row orders) gives them exactly."""
    X = np.ones((100, 8), np.float32)
    y = np.r_[np.ones(50), np.zeros(50)]
    kw = {"lr": 0.01, "device": "cpu", "random_state": 42}
    est = SGDGPUClassifier(epochs=500, early_stopping=5, **kw).fit(X, y)
    best = int(np.argmin(est.train_loss_))
    assert len(est.train_loss_) == best + 6 < 500
    cut = SGDGPUClassifier(epochs=best + 1, **kw).fit(X, y)
    np.testing.assert_array_equal(est.coef_, cut.coef_)
    np.testing.assert_array_equal(est.intercept_, cut.intercept_)


def test_stable_sigmoid_proba_matches_float64_expit_at_any_magnitude():
    scores = np.r_[-800.0, -500.0, -30.0, -1.0, -1e-9, 0.0, 1e-9, 1.0, 30.0, 500.0, 800.0]
    proba = _stable_sigmoid_proba(scores)
    assert proba.shape == (scores.size, 2) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba[:, 1], expit(scores), rtol=4 * T.U64, atol=0)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=0, atol=2 * T.U64)


def test_labels_predictions_and_refusals():
    X, y, _ = data(n=60, d=3, seed=4)
    labels = np.array(["no", "yes"])[y]
    est = SGDGPUClassifier(epochs=50, random_state=0, device="cpu").fit(X, labels)
    assert est.classes_.tolist() == ["no", "yes"] and est.coef_.shape == (3,) and est.intercept_.shape == (1,)
    scores = est.decision_function(X)
    np.testing.assert_array_equal(est.predict(X), est.classes_[(scores >= 0).astype(int)])
    np.testing.assert_allclose(est.predict_proba(X)[:, 1], expit(scores.astype(np.float64)), rtol=1e-12)
    with pytest.raises(ValueError, match="binary"):
        SGDGPUClassifier().fit(X, np.arange(60) % 3)
    with pytest.raises(ValueError, match="sample_weight length"):
        SGDGPUClassifier().fit(X, y, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="Unknown scheduler"):
        SGDGPUClassifier(scheduler="step")
    with pytest.raises(ValueError, match="not available"):
        SGDGPUClassifier(device="tpu:7").fit(X, y)


def test_a_3d_fit_trains_each_layer_as_its_own_2d_fit():
    """``(L, N, D)``: each layer's probe is its block's 2-D fit with the same ``random_state``, checked
    against the float64 replay of that run."""
    X, y, s = data(n=50, d=6, seed=1)
    X3 = np.stack([X, X[:, ::-1], 0.5 - X])
    kw = {"lr": 0.1, "epochs": 6, "batch_size": 16, "weight_decay": 0.01}
    est = SGDGPUClassifier(**kw, random_state=7, device="cpu").fit(X3, y, sample_weight=s)
    assert est.coef_.shape == (3, 6) and est.intercept_.shape == (3, 1) and est.train_loss_.shape == (3, 6)
    for i in range(3):
        theta, _, bounds, _, _ = _replay(X3[i], y, s, **kw, seed=7)
        layer = est.select_layer(i)
        assert layer.coef_.shape == (6,) and layer.intercept_.shape == (1,)
        T.assert_within(np.r_[layer.coef_, layer.intercept_], theta, bounds[-1], f"layer {i} vs its replay")
        np.testing.assert_array_equal(layer.predict(X3[i]), est.predict(X3)[i])
        assert est.score(X3, y)[i] == layer.score(X3[i], y)
    scores = est.decision_function(X3).astype(np.float64)
    np.testing.assert_allclose(est.predict_proba(X3)[..., 1], expit(scores), rtol=1e-12)


def test_each_layer_stops_early_on_its_own():
    """A layer with constant features stops improving (its loss reaches float32's floor) long before an
    informative one: it stops, keeps its best epoch's parameters, and its history ends there (NaN after)."""
    X, y, _ = data(n=100, d=8, seed=3)
    X3 = np.stack([X, np.ones_like(X)])
    kw = {"lr": 0.01, "device": "cpu", "random_state": 42, "early_stopping": 5}
    est = SGDGPUClassifier(epochs=400, **kw).fit(X3, y)
    ran = np.isfinite(est.train_loss_).sum(axis=1)
    assert ran[1] < ran[0] and np.isfinite(est.train_loss_[1, : ran[1]]).all()
    best = int(np.nanargmin(est.train_loss_[1]))
    assert ran[1] == best + 6
    cut = SGDGPUClassifier(epochs=best + 1, **{**kw, "early_stopping": None}).fit(X3, y)
    np.testing.assert_array_equal(est.coef_[1], cut.coef_[1])  # the same run, stopped at its best epoch
