r"""Minibatch SGD for a binary logistic probe, on JAX's device: lmprobe's ``"sgd_gpu"`` classifier.

Each epoch visits the rows in a fresh random order, ``B`` at a time, and takes one step per minibatch
on the mean weighted log-loss of that minibatch plus a decoupled L2 pull on *all* parameters (PyTorch
``SGD(weight_decay=...)``'s rule, which lmprobe's classifier uses; the intercept is decayed too):

.. math::

    \theta \leftarrow \theta - \eta_e \Big( \tfrac{1}{|b|} \sum_{i \in b} s_i \nabla_\theta
    \ell(y_i, x_i^\top w + c) + \lambda \theta \Big), \qquad \theta = (w, c),

with ``\ell`` the binary cross-entropy on logits. In expectation over the order, one epoch is a
stochastic-gradient pass on

.. math::

    F(\theta) = \tfrac{1}{N} \sum_i s_i \, \ell(y_i, x_i^\top w + c) + \tfrac{\lambda}{2} \|\theta\|^2,

whose minimiser is scikit-learn's ``LogisticRegression(C=1 / (N \lambda), fit_intercept=False)`` on
``[X, 1]`` (the intercept penalised like a weight). An epoch is one ``lax.scan`` over its minibatches
(the last one, when ``B`` does not divide ``N``, is padded with zero-weight rows and averaged over its
real rows only). The learning rate ``\eta_e`` is per epoch: constant, a cosine decay to zero over the
epochs (``optax.cosine_decay_schedule``, PyTorch's ``CosineAnnealingLR``), or halved after 5 epochs
without a relative loss improvement of ``1e-4`` (PyTorch's ``ReduceLROnPlateau`` defaults as lmprobe
sets them). Early stopping keeps the parameters of the epoch with the lowest mean loss.

The row orders and the initial parameters (uniform in ``±1/sqrt(D)``, PyTorch's ``Linear``) come from
``numpy.random.default_rng(random_state)``, so a run is reproducible and a plain numpy loop can replay it.

A 3-D ``X`` ``(L, N, D)`` (one block of activations per layer, as :mod:`lmprobe_jax.sklearn`'s estimators
take) trains every layer's probe in the same epochs, the epoch ``vmap``-ped over layers: each layer gets
the initialisation and row orders its own 2-D fit with this ``random_state`` would, its own learning
rate (plateau) and its own early stop (a stopped layer's rate is 0, so it no longer moves).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.base import BaseEstimator, ClassifierMixin

from .exceptions import NotFittedError
from .sklearn import _PerLayer

SCHEDULERS = (None, "cosine", "reduce_on_plateau")
PLATEAU_PATIENCE, PLATEAU_FACTOR, PLATEAU_THRESHOLD = 5, 0.5, 1e-4


def _stable_sigmoid_proba(scores: Any) -> np.ndarray:
    """``(N,)`` logits -> ``(N, 2)`` probabilities ``[1 - p, p]`` with ``p = sigmoid(score)``, in float64,
    without overflow at any magnitude (``exp`` only ever sees ``-|score|``)."""
    scores = np.asarray(scores, np.float64)
    e = np.exp(-np.abs(scores))
    positive = np.where(scores >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return np.column_stack([1.0 - positive, positive])


class SGDParams(NamedTuple):
    """``coef`` ``(L, D)`` and ``intercept`` ``(L,)``: per layer, the logit ``X_l @ coef_l + intercept_l``."""

    coef: jax.Array
    intercept: jax.Array


def _batch_loss(params: SGDParams, X: jax.Array, y: jax.Array, weight: jax.Array, real: jax.Array):
    """Mean over the minibatch's real rows of ``weight * BCE(y, logit)`` (``real`` is 1 on real rows,
    0 on padding)."""
    logits = X @ params.coef + params.intercept
    loss = optax.sigmoid_binary_cross_entropy(logits, y) * weight * real
    return loss.sum() / real.sum()


def _epoch(params, X, y, weight, order, learning_rate, weight_decay, batch_size: int):
    """:func:`sgd_epoch` for one layer: ``params`` ``(D,)`` / ``()``, ``X`` ``(N, D)``, a scalar rate."""
    n = order.shape[0]
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    rows = jnp.concatenate([order, jnp.zeros(pad, order.dtype)]).reshape(n_batches, batch_size)
    real = (jnp.arange(n_batches * batch_size) < n).astype(X.dtype).reshape(n_batches, batch_size)
    optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate))

    def step(carry, batch):
        params, state = carry
        idx, mask = batch
        loss, grad = jax.value_and_grad(_batch_loss)(params, X[idx], y[idx], weight[idx], mask)
        updates, state = optimizer.update(grad, state, params)
        return (optax.apply_updates(params, updates), state), loss * mask.sum()

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), (rows, real))
    return params, losses.sum() / n


@partial(jax.jit, static_argnames=("batch_size",))
def sgd_epoch(
    params: SGDParams,
    X: jax.Array,
    y: jax.Array,
    weight: jax.Array,
    order: jax.Array,
    learning_rate: jax.Array,
    weight_decay: jax.Array,
    *,
    batch_size: int,
) -> tuple[SGDParams, jax.Array]:
    """One epoch of minibatch SGD of every layer over the rows in ``order`` ``(N,)``: ``X`` ``(L, N, D)``,
    ``y`` ``(N,)`` in {0, 1}, ``weight`` ``(N,)``, ``learning_rate`` ``(L,)``. Returns the new parameters
    and each layer's epoch loss ``(L,)``: the row-count-weighted mean of its minibatch losses, each taken
    before its step (PyTorch's bookkeeping)."""
    one_layer = partial(_epoch, batch_size=batch_size)
    return jax.vmap(one_layer, in_axes=(0, 0, None, None, None, 0, None))(
        params, X, y, weight, order, learning_rate, weight_decay
    )


class _Plateau(NamedTuple):
    """PyTorch ``ReduceLROnPlateau(mode="min", patience=5, factor=0.5)``'s state, per layer ``(L,)``."""

    learning_rate: np.ndarray
    best: np.ndarray
    bad_epochs: np.ndarray


def _plateau_start(learning_rate: float, n_layers: int) -> _Plateau:
    return _Plateau(
        np.full(n_layers, float(learning_rate)), np.full(n_layers, np.inf), np.zeros(n_layers, int)
    )


def _plateau_step(state: _Plateau, loss: np.ndarray) -> _Plateau:
    better = loss < state.best * (1 - PLATEAU_THRESHOLD)
    bad = np.where(better, 0, state.bad_epochs + 1)
    cut = bad > PLATEAU_PATIENCE
    return _Plateau(
        np.where(cut, state.learning_rate * PLATEAU_FACTOR, state.learning_rate),
        np.where(better, loss, state.best),
        np.where(cut, 0, bad),
    )


class SGDGPUClassifier(_PerLayer, ClassifierMixin, BaseEstimator):
    """Binary logistic regression by minibatch SGD on JAX's device (lmprobe's ``"sgd_gpu"``; the module
    docstring has the update and the objective it minimises).

    Parameters (lmprobe's): ``lr``; ``epochs``; ``batch_size``; ``weight_decay`` (``lambda``, an L2 pull on
    weights and intercept; ``C ~ 1 / (N weight_decay)`` in scikit-learn's terms); ``device`` (``"auto"``:
    JAX's default device; ``"cpu"``, ``"gpu"``, ``"cuda"`` or ``"cuda:K"``: that platform's device);
    ``scheduler`` (None, ``"cosine"`` or ``"reduce_on_plateau"``); ``verbose`` (print the loss every 10
    epochs, every epoch when there are at most 10); ``early_stopping`` (None, or stop after that many
    epochs without a lower loss and keep the best epoch's parameters); ``random_state``.

    Attributes: ``coef_`` ``(D,)`` and ``intercept_`` ``(1,)`` float32 numpy (lmprobe's shapes: a binary
    probe's weight vector, not scikit-learn's ``(1, D)``); ``classes_`` ``(2,)``; ``train_loss_`` (one
    float per epoch run); ``n_features_in_``. After a 3-D fit: ``coef_`` ``(L, D)``, ``intercept_``
    ``(L, 1)``, ``train_loss_`` ``(L, epochs run)`` (NaN after a layer stopped early), ``n_layers_``;
    ``select_layer(i)`` is layer ``i``'s 2-D probe, and prediction takes ``(L, N, D)``.
    """

    def __init__(
        self,
        lr: float = 0.01,
        epochs: int = 100,
        batch_size: int = 256,
        weight_decay: float = 1e-4,
        device: str = "auto",
        scheduler: str | None = None,
        verbose: bool = False,
        early_stopping: int | None = None,
        random_state: int | None = None,
    ):
        if scheduler not in SCHEDULERS:
            raise ValueError(
                f"Unknown scheduler: {scheduler!r}. Valid options: {[s for s in SCHEDULERS if s]} or None."
            )
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.device = device
        self.scheduler = scheduler
        self.verbose = verbose
        self.early_stopping = early_stopping
        self.random_state = random_state

    def _jax_device(self) -> jax.Device:
        if self.device == "auto":
            return jax.devices()[0]
        platform, _, index = str(self.device).partition(":")
        platform = {"cuda": "gpu"}.get(platform, platform)
        try:
            return jax.devices(platform)[int(index or 0)]
        except (RuntimeError, IndexError) as err:
            raise ValueError(
                f"device={self.device!r} is not available to JAX ({err}); use 'auto', 'cpu', or one of "
                f"{[str(d) for d in jax.devices()]}."
            ) from None

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> SGDGPUClassifier:
        """Train for ``epochs`` epochs (fewer under early stopping) from a fresh initialisation; ``X``
        ``(N, D)``, or ``(L, N, D)`` for one probe per layer."""
        X = np.asarray(X, np.float32)
        if X.ndim not in (2, 3):
            raise ValueError(
                f"X must be (n_samples, n_features) or (layers, n_samples, n_features); got {X.shape}."
            )
        layered = X.ndim == 3
        X3 = X if layered else X[None]
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError(
                f"SGDGPUClassifier is binary; y holds classes {self.classes_.tolist()}. Pass labels of two "
                "classes (the larger one is the positive class)."
            )
        n_layers, n, d = X3.shape
        weight = np.ones(n, np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
        if weight.shape != (n,):
            raise ValueError(f"sample_weight length {weight.shape} does not match X's {n} rows.")
        codes = (np.asarray(y) == self.classes_[1]).astype(np.float32)

        rng = np.random.default_rng(self.random_state)
        bound = 1.0 / np.sqrt(d)
        init = np.tile(rng.uniform(-bound, bound, d + 1).astype(np.float32), (n_layers, 1))
        put = partial(jax.device_put, device=self._jax_device())
        params = SGDParams(put(init[:, :d]), put(init[:, d]))
        X_d, y_d, w_d = put(X3), put(codes), put(weight)
        cosine = optax.cosine_decay_schedule(self.lr, max(self.epochs, 1))
        plateau = _plateau_start(self.lr, n_layers)
        batch = int(min(self.batch_size, n))  # one minibatch of all rows, not one padded to batch_size
        best_loss, best_params = np.full(n_layers, np.inf), params
        stale, running = np.zeros(n_layers, int), np.ones(n_layers, bool)
        every = 1 if self.epochs <= 10 else 10

        history = []
        for epoch in range(self.epochs):
            scheduled = float(cosine(epoch)) if self.scheduler == "cosine" else plateau.learning_rate
            rate = scheduled * running  # a stopped layer no longer moves
            order = put(rng.permutation(n).astype(np.int32))
            params, loss = sgd_epoch(
                params,
                X_d,
                y_d,
                w_d,
                order,
                put(rate.astype(np.float32)),
                self.weight_decay,
                batch_size=batch,
            )
            loss = np.asarray(loss, np.float64)
            history.append(np.where(running, loss, np.nan))
            if self.scheduler == "reduce_on_plateau":
                plateau = _plateau_step(plateau, loss)
            if self.verbose and (epoch % every == 0 or epoch == self.epochs - 1):
                shown = float(loss[0]) if not layered else float(loss[running].mean())
                print(f"Epoch {epoch:4d}/{self.epochs}  loss={shown:.6f}  lr={float(rate.max()):.2e}")
            if self.early_stopping is None:
                continue
            better = running & (loss < best_loss)
            best_loss = np.where(better, loss, best_loss)
            keep = put(better)
            best_params = jax.tree.map(
                lambda new, old, keep=keep: jnp.where(keep.reshape(-1, *[1] * (new.ndim - 1)), new, old),
                params,
                best_params,
            )
            stale = np.where(better, 0, stale + running)
            running &= stale < self.early_stopping
            if not running.any():
                if self.verbose:
                    print(
                        f"Early stopping at epoch {epoch} (no improvement for {self.early_stopping} epochs)"
                    )
                break
        if self.early_stopping is not None:
            params = best_params
        coef = np.asarray(params.coef, np.float32)
        intercept = np.asarray(params.intercept, np.float32)[:, None]
        losses = np.stack(history, axis=1) if history else np.zeros((n_layers, 0))
        if layered:
            self.coef_, self.intercept_, self.train_loss_ = coef, intercept, losses
            self.n_layers_ = n_layers
        else:
            self.coef_, self.intercept_ = coef[0], intercept[0]
            self.train_loss_ = [float(v) for v in losses[0] if not np.isnan(v)]
        self.n_features_in_ = d
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError("SGDGPUClassifier has not been fitted. Call fit() first.")

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``X @ coef_ + intercept_`` ``(N,)`` (``(L, N)`` after a 3-D fit, for ``(L, N, D)``)."""
        self._check_fitted()
        X = np.asarray(X, np.float32)
        if self.coef_.ndim == 2:
            return np.einsum("lnd,ld->ln", X, self.coef_) + self.intercept_
        return X @ self.coef_ + self.intercept_[0]

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(N, 2)``: the sigmoid of the logits, for ``classes_[0]`` and ``classes_[1]`` (``(L, N, 2)``
        after a 3-D fit)."""
        scores = self.decision_function(X)
        return _stable_sigmoid_proba(scores.ravel()).reshape(*scores.shape, 2)

    def predict(self, X: Any) -> np.ndarray:
        """``classes_[1]`` where the logit is >= 0, else ``classes_[0]`` ``(N,)`` (``(L, N)``)."""
        positive = self.decision_function(X) >= 0  # checks fitted before classes_ is read
        return self.classes_[positive.astype(int)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """Accuracy (a float; ``(L,)`` per-layer accuracies for ``(L, N, D)``)."""
        if np.ndim(X) != 3:
            return float(super().score(X, y, sample_weight=sample_weight))
        hit = self.predict(X) == np.asarray(y)[None]
        w = np.ones(hit.shape[1]) if sample_weight is None else np.asarray(sample_weight, np.float64)
        return hit @ w / w.sum()
