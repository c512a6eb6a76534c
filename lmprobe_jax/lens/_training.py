"""The training loop shared by the tuned lens and the next-token probes: every layer's parameters
updated in one jit-compiled optax step (the optimizer vmapped over the layer axis, so each layer is its
own problem: its own clipping, its own moments), minibatches streamed from memory-mapped streams, and
three ways to stop early with a usable result: ``max_steps``, a time budget, a callback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

LossFn = Callable[..., tuple[jax.Array, jax.Array]]
"""``loss(params, *batch) -> (sum over layers, per-layer (L,))``; parameters' leaves lead with ``L``."""


class Training(NamedTuple):
    """What a training run did.

    Attributes:
      params: the parameters after the last step taken (usable whenever training stopped).
      loss: ``(n_steps, L)`` each step's minibatch loss per layer, before the step.
      grad_norm: ``(n_steps, L)`` each step's gradient norm per layer, before clipping (last row: final).
      n_steps: steps taken; stop_reason: ``"max_steps"``, ``"time_budget"`` or ``"callback"``.
      seconds: wall time of the steps (the first includes compilation).
    """

    params: Any
    loss: np.ndarray
    grad_norm: np.ndarray
    n_steps: int
    stop_reason: str
    seconds: float


def layer_norms(tree: Any) -> jax.Array:
    """``(L,)`` Euclidean norm per layer of a pytree whose leaves lead with the layer axis."""
    squares = [jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1) for leaf in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(squares))


@partial(jax.jit, static_argnames=("loss_fn", "optimizer"), donate_argnums=(0, 1))
def _step(params, opt_state, batch, *, loss_fn, optimizer):
    grads, per_layer = jax.grad(loss_fn, has_aux=True)(params, *batch)
    updates, opt_state = jax.vmap(optimizer.update)(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, per_layer, layer_norms(grads)


def minibatches(n_rows: int, batch: int, seed: int) -> Iterator[np.ndarray]:
    """Endless sorted row batches: each epoch a fresh permutation of ``n_rows`` cut into ``batch`` rows
    (an epoch's last incomplete batch is dropped, so every step has the same shape: one compiled step)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n_rows)
        for start in range(0, n_rows - batch + 1, batch):
            yield np.sort(order[start : start + batch])


def check_budget(max_steps: Any, batch_tokens: Any, n_tokens: int) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, not {max_steps!r}.")
    if (
        isinstance(batch_tokens, bool)
        or not isinstance(batch_tokens, int)
        or not 1 <= batch_tokens <= n_tokens
    ):
        raise ValueError(
            f"batch_tokens must be an integer in 1..{n_tokens} (the training tokens), not {batch_tokens!r}."
        )


def train_layers(
    loss_fn: LossFn,
    params: Any,
    optimizer: optax.GradientTransformation,
    batches: Iterator[tuple],
    *,
    max_steps: int,
    time_budget: float | None = None,
    callback: Callable[[int, np.ndarray], bool] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> Training:
    """Run up to ``max_steps`` steps of ``optimizer`` (for one layer's parameters, vmapped over layers) on
    ``loss_fn`` with the batches ``batches`` yields; stop early after ``time_budget`` seconds or when
    ``callback(step, per_layer_loss)`` returns True. ``loss_fn`` and ``optimizer`` are static arguments
    of the compiled step: pass the same objects to reuse it."""
    from tqdm.auto import tqdm

    opt_state = jax.vmap(optimizer.init)(params)
    losses, norms, stop = [], [], "max_steps"
    start = time.perf_counter()
    with tqdm(total=max_steps, desc=desc, unit="step", disable=not progress) as bar:
        for step in range(max_steps):
            params, opt_state, loss, grad_norm = _step(
                params, opt_state, next(batches), loss_fn=loss_fn, optimizer=optimizer
            )
            losses.append(np.asarray(loss))
            norms.append(np.asarray(grad_norm))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1].mean():.3f}")
            if callback is not None and callback(step, losses[-1]):
                stop = "callback"
                break
            if time_budget is not None and time.perf_counter() - start > time_budget and step + 1 < max_steps:
                stop = "time_budget"
                break
    return Training(params, np.array(losses), np.array(norms), len(losses), stop, time.perf_counter() - start)
