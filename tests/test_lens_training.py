"""lmprobe_jax.lens training: the vocabulary-streamed losses and their custom gradients against dense
autodiff; the tuned lens (identity start, tuned-lens's optimizer step for step against torch, layers
independent, held-out KL down, early stops, save/load); next-token probes (linear / MLP, vocabulary /
top-K + other, KL / CE, save/load)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmprobe_jax.lens import logit_lens_metrics, readout_from_arrays
from lmprobe_jax.lens._head import Head
from lmprobe_jax.lens._loss import chunked_ce, chunked_kl
from lmprobe_jax.lens._probes import (
    collapsed_final_log_probs,
    fit_next_token_probes,
    load_probes,
    probe_metrics,
    save_probes,
    top_k_classes,
)
from lmprobe_jax.lens._tuned import (
    fit_tuned_lens,
    identity_translator,
    load_tuned_lens,
    save_tuned_lens,
    tuned_lens_metrics,
    tuned_lens_optimizer,
)

L, T, D, V = 3, 400, 8, 40


@pytest.fixture(scope="module")
def problem():
    """Streams that are noisy linear images of the final stream: a translator can undo most of it."""
    rng = np.random.default_rng(0)
    meta = {
        "norm": "rms",
        "eps": 1e-5,
        "logit_scale": 1.0,
        "logit_softcap": None,
        "vocab_size": V,
        "hidden_size": D,
    }
    readout = readout_from_arrays(
        meta, {"norm.weight": np.ones(D), "unembed.weight": rng.normal(size=(V, D))}
    )
    final = rng.normal(size=(T, D)) * 2
    streams = np.stack(
        [final @ rng.normal(size=(D, D)) * 0.5 + rng.normal(size=(T, D)) * 0.3 for _ in range(L)]
    )
    next_ids = rng.integers(0, V, T)
    next_ids[::50] = -1
    return streams.astype(np.float32), final.astype(np.float32), next_ids, readout


def dense_logits(features, head):
    z = (
        features @ head.weight.T + head.bias
        if not head.per_layer
        else (jnp.einsum("ltf,lcf->ltc", features, head.weight) + head.bias[:, None])
    )
    return head.transform(z)


@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_streamed_losses_and_gradients_match_dense_autodiff(per_layer, loss):
    rng = np.random.default_rng(1)
    n_layers, t, f, c = 3, 7, 5, 29
    features = jnp.asarray(rng.normal(size=(n_layers, t, f)), jnp.float32)
    shape = (n_layers, c, f) if per_layer else (c, f)
    head = Head(
        jnp.asarray(rng.normal(size=shape), jnp.float32),
        jnp.asarray(rng.normal(size=shape[:-1]), jnp.float32),
        jnp.float32(0.8),
        jnp.float32(3.0),
    )
    ref_features = jnp.asarray(rng.normal(size=(t, f)), jnp.float32)
    ref_head = Head(
        jnp.asarray(rng.normal(size=(c, f)), jnp.float32), jnp.zeros(c), jnp.float32(1), jnp.float32(0)
    )
    labels = jnp.asarray(rng.integers(0, c, t)).at[3].set(-1)
    weights = jnp.asarray(rng.normal(size=(n_layers, t)), jnp.float32)

    def dense(features, head):
        lq = jax.nn.log_softmax(dense_logits(features, head))
        if loss == "ce":
            picked = jnp.take_along_axis(
                lq, jnp.broadcast_to(jnp.clip(labels, 0)[None, :, None], (n_layers, t, 1)), -1
            )
            return jnp.where(labels >= 0, -picked[..., 0], 0.0)
        lp = jax.nn.log_softmax(dense_logits(ref_features, ref_head))
        return jnp.sum(jnp.exp(lp) * (lp - lq), -1)

    def streamed(features, head):  # windows of 6 classes: 29 is not a multiple
        if loss == "ce":
            return chunked_ce(6, True, features, head, labels)
        return chunked_kl(6, True, features, head, ref_features, ref_head)

    np.testing.assert_allclose(streamed(features, head), dense(features, head), atol=1e-5)
    ours = jax.grad(lambda f, h: jnp.sum(streamed(f, h) * weights), argnums=(0, 1))(features, head)
    want = jax.grad(lambda f, h: jnp.sum(dense(f, h) * weights), argnums=(0, 1))(features, head)
    for got, expected in ((ours[0], want[0]), (ours[1].weight, want[1].weight), (ours[1].bias, want[1].bias)):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tuned_lens_starts_as_the_logit_lens_and_lowers_held_out_kl(problem):
    streams, final, next_ids, readout = problem
    train, held = slice(0, 300), slice(300, None)
    start = tuned_lens_metrics(
        identity_translator(L, D), streams[:, held], final[held], next_ids[held], readout
    )
    logit = logit_lens_metrics(streams[:, held], final[held], next_ids[held], readout)
    np.testing.assert_allclose(start.kl_final_lens, logit.kl_final_lens, rtol=1e-6)
    fit = fit_tuned_lens(streams[:, train], final[train], readout, max_steps=150, batch_tokens=64)
    after = tuned_lens_metrics(fit.params, streams[:, held], final[held], next_ids[held], readout)
    assert np.all(after.kl_final_lens < 0.5 * logit.kl_final_lens), (after.kl_final_lens, logit.kl_final_lens)
    assert fit.loss.shape == fit.grad_norm.shape == (150, L) and fit.stop_reason == "max_steps"
    assert np.all(fit.loss[-10:].mean(0) < fit.loss[:10].mean(0))


def test_layers_train_independently(problem):
    """Clipping and moments are per layer: layer 1 trains the same whatever the other layers hold.

    The other layers' streams are changed, not dropped: one program on the same shapes then computes layer
    1's slice from the same numbers in the same order, so any difference is coupling (a global clip norm,
    shared moments), never rounding, and the comparison is exact. (Layer 1 alone, a batch of one, orders
    its sums differently: equal only up to its float32 trajectory's rounding, which no fixed number bounds.)"""
    streams, final, _, readout = problem
    together = fit_tuned_lens(streams, final, readout, max_steps=5, batch_tokens=50).params
    others = streams.copy()
    others[[0, 2]] = 3 * streams[[2, 0]]  # other data, gradients of another size in the other layers
    changed = fit_tuned_lens(others, final, readout, max_steps=5, batch_tokens=50).params
    np.testing.assert_array_equal(changed.weight[1], together.weight[1])
    np.testing.assert_array_equal(changed.bias[1], together.bias[1])
    assert not np.allclose(changed.weight[0], together.weight[0])  # the other layers did change


def test_tuned_lens_optimizer_is_tuned_lens_torch_recipe():
    """Same gradients in, same parameters out as tuned-lens's torch setup: clip_grad_norm_(1.0), SGD
    (lr = 1.0 * (1 - 0.9), momentum 0.9, Nesterov, weight decay 1e-3), linear decay to 0 (warm-up 0)."""
    torch = pytest.importorskip("torch")
    steps = 6
    rng = np.random.default_rng(2)
    grads = rng.normal(size=(steps, 4)) * np.array([[0.1], [3.0], [0.5], [2.0], [0.2], [1.0]])
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, (steps - step) / steps))
    optimizer = tuned_lens_optimizer(steps)
    params = jnp.array([1.0, -2.0, 0.5, 0.0])
    state = optimizer.init(params)
    for g in grads:
        p.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_([p], 1.0)
        opt.step()
        sched.step()
        updates, state = optimizer.update(jnp.asarray(g, jnp.float32), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_stopping_early_leaves_a_usable_lens(problem, tmp_path):
    streams, final, next_ids, readout = problem
    fit = fit_tuned_lens(streams, final, readout, max_steps=50, batch_tokens=32, time_budget=0.0)
    assert fit.n_steps == 1 and fit.stop_reason == "time_budget"
    fit = fit_tuned_lens(
        streams, final, readout, max_steps=50, batch_tokens=32, callback=lambda step, loss: step == 2
    )
    assert fit.n_steps == 3 and fit.stop_reason == "callback"
    save_tuned_lens(tmp_path / "lens", fit.params, layers=[0, 1, 2], model={"id": "toy"})
    loaded, config = load_tuned_lens(tmp_path / "lens")
    np.testing.assert_array_equal(loaded.weight, fit.params.weight)
    assert config["layers"] == ["0", "1", "2"] and config["model"] == {"id": "toy"}
    metrics = tuned_lens_metrics(loaded, streams, final, next_ids, readout)
    assert np.all(np.isfinite(metrics.kl_final_lens))
    with pytest.raises(ValueError, match="holds a 'tuned_lens' lens, not a 'next_token_probes'"):
        load_probes(tmp_path / "lens")
    with pytest.raises(ValueError, match="holds no saved lens"):
        load_tuned_lens(tmp_path / "nothing")


@pytest.mark.parametrize("budget", [{"max_steps": 0}, {"batch_tokens": 0}, {"batch_tokens": T + 1}])
def test_bad_training_budgets(problem, budget):
    streams, final, _, readout = problem
    with pytest.raises(ValueError, match="max_steps|batch_tokens"):
        fit_tuned_lens(streams, final, readout, **{"max_steps": 3, "batch_tokens": 8, **budget})


def test_collapsed_final_distribution_matches_numpy(problem):
    from scipy.special import log_softmax, logsumexp

    _, final, next_ids, readout = problem
    classes = top_k_classes(next_ids, V, 6)
    got = collapsed_final_log_probs(readout, final, classes.tokens, token_chunk=70, vocab_chunk=7)
    logits = np.asarray(
        jax.vmap(lambda h: jnp.asarray(readout.unembed) @ (h / jnp.sqrt(jnp.mean(h * h) + 1e-5)))(final)
    )
    lp = log_softmax(logits, -1)
    rest = np.setdiff1d(np.arange(V), classes.tokens)
    want = np.concatenate([lp[:, classes.tokens], logsumexp(lp[:, rest], -1)[:, None]], 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    counts = np.bincount(next_ids[next_ids >= 0], minlength=V)
    assert counts[classes.tokens].min() >= np.delete(counts, classes.tokens).max()
    np.testing.assert_array_equal(classes.of([classes.tokens[2], rest[0], -1]), [2, 6, -1])


@pytest.mark.parametrize(
    "options",
    [{}, {"hidden": 16}, {"top_k": 10}, {"top_k": 10, "objective": "ce"}, {"objective": "ce", "hidden": 8}],
)
def test_next_token_probes_train_and_round_trip(problem, tmp_path, options):
    streams, final, next_ids, readout = problem
    probes, training = fit_next_token_probes(
        streams[:, :300],
        final[:300],
        next_ids[:300],
        readout,
        max_steps=60,
        batch_tokens=64,
        optimizer=optax.adamw(1e-2),
        **options,
    )
    assert np.all(training.loss[-10:].mean(0) < training.loss[:10].mean(0))
    metrics = probe_metrics(probes, streams[:, 300:], final[300:], next_ids[300:], readout, k=3)
    assert metrics.kl_final_lens.shape == (L,) and np.all(np.isfinite(metrics.ce_next_token))
    save_probes(tmp_path / "p", probes, layers=[0, 1, 2])
    loaded, config = load_probes(tmp_path / "p")
    again = probe_metrics(loaded, streams[:, 300:], final[300:], next_ids[300:], readout, k=3)
    np.testing.assert_array_equal(again.kl_final_lens, metrics.kl_final_lens)
    assert (config["objective"], config["hidden"]) == (probes.objective, probes.hidden)


def test_bad_probe_options(problem):
    streams, final, next_ids, readout = problem
    for options, match in (
        ({"objective": "mse"}, "objective"),
        ({"top_k": V}, "top_k"),
        ({"hidden": -1}, "hidden"),
    ):
        with pytest.raises(ValueError, match=match):
            fit_next_token_probes(streams, final, next_ids, readout, max_steps=2, batch_tokens=8, **options)
