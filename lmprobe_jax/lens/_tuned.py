"""The tuned lens (Belrose et al., 2023): one affine translator per layer, ``h -> h + A_l h + b_l``
(identity at the start, as tuned-lens parametrises it, so weight decay pulls towards the logit lens),
read out through the model's frozen final norm and unembedding, trained on KL(final || lens) at each
position -- every layer at once, in one vmapped, jit-compiled optax step.

Departures from tuned-lens 0.2.0's ``train_loop.py``, on purpose: the training data are cached streams
(tuned-lens re-runs the model every step); all layers in one step (tuned-lens backpropagates layer by
layer "to save VRAM"; here memory is bounded by streaming the vocabulary instead, see
:mod:`lmprobe_jax.lens._loss`); gradients are clipped per layer (tuned-lens clips the norm of all
translators together, which couples the layers' step sizes); float32 throughout (tuned-lens autocasts
to bfloat16). Its optimizer is the default here: SGD with Nesterov momentum 0.9, learning rate
``1.0 * (1 - 0.9)``, weight decay 1e-3, gradient-norm clip 1.0, linear decay to 0 over the steps
(``tuned_lens.scripts.ingredients.Optimizer`` and ``Train``: 250 steps of 2**18 tokens by default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from ._engine import Lens, LensMetrics, lens_metrics
from ._logit_lens import final_distribution
from ._loss import chunked_kl
from ._readout import Readout, final_norm, readout_head
from ._training import Training, check_budget, minibatches, train_layers


class Translator(NamedTuple):
    """Per-layer affine translators: layer ``l`` maps ``h`` to ``h + h @ weight[l].T + bias[l]``.

    Attributes:
      weight: ``(L, D, D)`` float32 (zeros: the identity, i.e. the logit lens).
      bias: ``(L, D)`` float32.
    """

    weight: Array
    bias: Array


def identity_translator(n_layers: int, hidden_size: int) -> Translator:
    """The translator that leaves every stream as it is (the tuned lens's starting point)."""
    return Translator(
        jnp.zeros((n_layers, hidden_size, hidden_size), jnp.float32),
        jnp.zeros((n_layers, hidden_size), jnp.float32),
    )


def translate(translator: Translator, h: Array) -> Array:
    """``h + h @ A_l^T + b_l`` for streams ``h`` ``(L, t, D)``."""
    h = jnp.asarray(h, jnp.float32)
    return h + jnp.einsum("ltd,led->lte", h, translator.weight) + translator.bias[:, None, :]


def tuned_lens_features(params: tuple[Translator, Readout], h: Array) -> Array:
    """The tuned lens's features: the final norm of the translated streams, ``(L, t, D)``."""
    translator, readout = params
    return final_norm(readout, translate(translator, h))


def tuned_lens(translator: Translator, readout: Readout) -> Lens:
    """The tuned lens as a :class:`Lens` (features + the model's unembedding)."""
    return Lens(tuned_lens_features, (translator, readout), readout_head(readout))


def tuned_lens_optimizer(
    max_steps: int,
    *,
    learning_rate: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    clip_norm: float = 1.0,
) -> optax.GradientTransformation:
    """tuned-lens's default optimizer for ``max_steps`` steps, for one layer (the fit vmaps it over
    layers): clip the gradient norm to ``clip_norm``, add ``weight_decay * params`` (torch SGD's
    ``weight_decay``), SGD with Nesterov momentum at ``learning_rate * (1 - momentum)`` (tuned-lens undoes
    torch's effective ``1 / (1 - momentum)`` scaling) decaying linearly to 0 at ``max_steps``."""
    schedule = optax.linear_schedule(learning_rate * (1 - momentum), 0.0, max_steps)
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.add_decayed_weights(weight_decay),
        optax.sgd(schedule, momentum=momentum, nesterov=True),
    )


def tuned_lens_loss(
    translator: Translator, readout: Readout, h: Array, h_final: Array, *, vocab_chunk: int
) -> tuple[Array, Array]:
    """``(sum over layers, per-layer (L,))`` of the mean over tokens of KL(final || tuned lens) for
    streams ``h`` ``(L, n, D)`` and the last block's ``h_final`` ``(n, D)``; memory-bounded (see
    :func:`lmprobe_jax.lens._loss.chunked_kl`)."""
    head = readout_head(readout)
    features = tuned_lens_features((translator, readout), h)
    kl = chunked_kl(vocab_chunk, False, features, head, final_norm(readout, h_final), head)
    per_layer = jnp.mean(kl, axis=-1)
    return jnp.sum(per_layer), per_layer


def fit_tuned_lens(
    streams: Sequence[np.ndarray] | np.ndarray,
    final_stream: np.ndarray,
    readout: Readout,
    *,
    max_steps: int = 250,
    batch_tokens: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    init: Translator | None = None,
    vocab_chunk: int = 2048,
    seed: int = 0,
    time_budget: float | None = None,
    callback: Callable[[int, np.ndarray], bool] | None = None,
    progress: bool = False,
) -> Training:
    """Train a tuned lens for every layer of ``streams`` at once.

    Args:
      streams: ``(L, T, D)`` or L arrays ``(T, D)`` (memory-mapped store shards are read batch by batch):
        the layers' streams of the *training* tokens.
      final_stream: ``(T, D)`` the last block's stream of the same tokens (its readout is the target).
      readout: the model's :class:`Readout` (frozen).
      max_steps: optimizer steps (the default schedule decays to 0 at the last one).
      batch_tokens: token positions per step (all layers see the same positions).
      optimizer: an optax transformation for *one layer's* parameters (vmapped over layers); default
        :func:`tuned_lens_optimizer` ``(max_steps)``, tuned-lens's recipe.
      init: starting translators (default :func:`identity_translator`: the logit lens).
      vocab_chunk: vocabulary window of the loss (memory ``~ 4 x L x batch_tokens x vocab_chunk x 4``
        bytes in the backward pass).
      seed: the minibatch order.
      time_budget: stop after this many seconds (checked between steps); the lens so far is returned.
      callback: ``callback(step, loss)`` after each step with the per-layer loss ``(L,)``; return True to
        stop there.
      progress: show a progress bar.

    Returns:
      A :class:`~lmprobe_jax.lens._training.Training` whose ``params`` is the :class:`Translator`, with
      the per-layer loss curve and gradient norms. Evaluate it on held-out tokens with
      :func:`tuned_lens_metrics`.
    """
    n_layers, n_tokens = len(streams), len(final_stream)
    check_budget(max_steps, batch_tokens, n_tokens)
    if {len(s) for s in streams} != {n_tokens}:
        raise ValueError(
            f"streams have {sorted({len(s) for s in streams})} rows; final_stream has {n_tokens}."
        )
    optimizer = tuned_lens_optimizer(max_steps) if optimizer is None else optimizer
    hidden = readout.norm_weight.shape[0]
    translator = identity_translator(n_layers, hidden) if init is None else jax.tree.map(jnp.array, init)
    batches = (
        (
            readout,
            np.stack([np.asarray(s[rows], np.float32) for s in streams]),
            np.asarray(final_stream[rows], np.float32),
        )
        for rows in minibatches(n_tokens, batch_tokens, seed)
    )
    loss = _LOSSES.setdefault(vocab_chunk, partial(tuned_lens_loss, vocab_chunk=vocab_chunk))
    return train_layers(
        loss,
        translator,
        optimizer,
        batches,
        max_steps=max_steps,
        time_budget=time_budget,
        callback=callback,
        progress=progress,
        desc="tuned lens",
    )


# One loss function object per vocabulary window, so repeated fits reuse the compiled step.
_LOSSES: dict[int, Callable] = {}


def tuned_lens_metrics(
    translator: Translator,
    streams,
    final_stream: np.ndarray,
    next_ids: np.ndarray,
    readout: Readout,
    **options: Any,
) -> LensMetrics:
    """Per-layer metrics of a tuned lens against the final distribution (see
    :func:`~lmprobe_jax.lens.lens_metrics` for the metrics and options)."""
    if translator.weight.shape[0] != len(streams):
        raise ValueError(
            f"The translator has {translator.weight.shape[0]} layers; streams has {len(streams)}."
        )
    return lens_metrics(
        tuned_lens(translator, readout),
        final_distribution(readout),
        streams,
        final_stream,
        next_ids,
        **options,
    )


def save_tuned_lens(path, translator: Translator, *, layers: Sequence, model: dict | None = None) -> None:
    """Save translators to ``path`` (``arrays.safetensors`` + ``config.json``: layers, hidden size, the
    model's id / fingerprint when given)."""
    from ._io import save_lens

    weight, bias = np.asarray(translator.weight, np.float32), np.asarray(translator.bias, np.float32)
    if len(layers) != weight.shape[0]:
        raise ValueError(f"{len(layers)} layer names for {weight.shape[0]} translators.")
    config = {
        "layers": [str(layer) for layer in layers],
        "hidden_size": int(weight.shape[-1]),
        "model": model,
    }
    save_lens(path, "tuned_lens", {"weight": weight, "bias": bias}, config)


def load_tuned_lens(path) -> tuple[Translator, dict]:
    """``(translator, config)`` saved by :func:`save_tuned_lens`."""
    from ._io import load_lens

    arrays, config = load_lens(path, "tuned_lens")
    return Translator(jnp.asarray(arrays["weight"]), jnp.asarray(arrays["bias"])), config
