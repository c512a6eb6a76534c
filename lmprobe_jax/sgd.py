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
take) fits one probe per layer, each the 2-D fit of its block with this ``random_state``, one layer after
the other: the same compiled epoch serves them all, and a layer's rows stay in cache for all its epochs.
(One ``vmap``-ped fit of all layers streams every layer's rows through memory at each step: 3.7x slower
on one core at 30 x 2048 x 576; it wins only while all layers fit in cache. RESULTS.md.)
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.base import BaseEstimator, ClassifierMixin, clone

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
    """``coef`` ``(D,)`` and ``intercept`` ``()`` of the logit ``X @ coef + intercept``."""

    coef: jax.Array
    intercept: jax.Array


def _batch_loss(params: SGDParams, X: jax.Array, y: jax.Array, weight: jax.Array, real: jax.Array):
    """Mean over the minibatch's real rows of ``weight * BCE(y, logit)`` (``real`` is 1 on real rows,
    0 on padding)."""
    logits = X @ params.coef + params.intercept
    loss = optax.sigmoid_binary_cross_entropy(logits, y) * weight * real
    return loss.sum() / real.sum()


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
    """One epoch of minibatch SGD over the rows in ``order`` ``(N,)``: ``X`` ``(N, D)``, ``y`` ``(N,)`` in
    {0, 1}, ``weight`` ``(N,)``. Returns the new parameters and the epoch's loss, the row-count-weighted
    mean of the minibatch losses (each taken before its step, PyTorch's bookkeeping)."""
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


class _Plateau(NamedTuple):
    """PyTorch ``ReduceLROnPlateau(mode="min", patience=5, factor=0.5)``'s state."""

    learning_rate: float
    best: float = float("inf")
    bad_epochs: int = 0


def _plateau_step(state: _Plateau, loss: float) -> _Plateau:
    if loss < state.best * (1 - PLATEAU_THRESHOLD):
        return _Plateau(state.learning_rate, loss, 0)
    if state.bad_epochs + 1 > PLATEAU_PATIENCE:
        return _Plateau(state.learning_rate * PLATEAU_FACTOR, state.best, 0)
    return _Plateau(state.learning_rate, state.best, state.bad_epochs + 1)


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
    ``(L, 1)``, ``train_loss_`` ``(L, most epochs run)`` (NaN after a layer stopped early), ``n_layers_``;
    ``select_layer(i)`` is layer ``i``'s probe, and prediction takes ``(L, N, D)``.
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
        if X.ndim == 3:
            return self._fit_layers(X, y, sample_weight)
        if X.ndim != 2:
            raise ValueError(
                f"X must be (n_samples, n_features) or (layers, n_samples, n_features); got {X.shape}."
            )
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError(
                f"SGDGPUClassifier is binary; y holds classes {self.classes_.tolist()}. Pass labels of two "
                "classes (the larger one is the positive class)."
            )
        n, d = X.shape
        weight = np.ones(n, np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
        if weight.shape != (n,):
            raise ValueError(f"sample_weight length {weight.shape} does not match X's {n} rows.")
        codes = (np.asarray(y) == self.classes_[1]).astype(np.float32)

        rng = np.random.default_rng(self.random_state)
        bound = 1.0 / np.sqrt(d)
        init = rng.uniform(-bound, bound, d + 1).astype(np.float32)
        device = self._jax_device()
        put = partial(jax.device_put, device=device)
        params = SGDParams(put(init[:d]), put(init[d]))
        X_d, y_d, w_d = put(X), put(codes), put(weight)
        cosine = optax.cosine_decay_schedule(self.lr, max(self.epochs, 1))
        plateau = _Plateau(float(self.lr))
        batch = int(min(self.batch_size, n))  # one minibatch of all rows, not one padded to batch_size
        best_loss, best_params, stale = float("inf"), params, 0
        every = 1 if self.epochs <= 10 else 10

        self.train_loss_: list[float] = []
        for epoch in range(self.epochs):
            if self.scheduler == "cosine":
                lr = float(cosine(epoch))
            else:
                lr = plateau.learning_rate  # constant unless reduce_on_plateau lowers it
            order = put(rng.permutation(n).astype(np.int32))
            params, loss = sgd_epoch(params, X_d, y_d, w_d, order, lr, self.weight_decay, batch_size=batch)
            loss = float(loss)
            self.train_loss_.append(loss)
            if self.scheduler == "reduce_on_plateau":
                plateau = _plateau_step(plateau, loss)
            if self.verbose and (epoch % every == 0 or epoch == self.epochs - 1):
                print(f"Epoch {epoch:4d}/{self.epochs}  loss={loss:.6f}  lr={lr:.2e}")
            if self.early_stopping is None:
                continue
            if loss < best_loss:
                best_loss, best_params, stale = loss, params, 0
                continue
            stale += 1
            if stale >= self.early_stopping:
                if self.verbose:
                    print(
                        f"Early stopping at epoch {epoch} (no improvement for {self.early_stopping} epochs)"
                    )
                break
        if self.early_stopping is not None:
            params = best_params
        self.coef_ = np.asarray(params.coef, np.float32)
        self.intercept_ = np.asarray(params.intercept, np.float32).reshape(1)
        self.n_features_in_ = d
        return self

    def _fit_layers(self, X: np.ndarray, y: Any, sample_weight: Any) -> SGDGPUClassifier:
        """One 2-D fit per block of ``X`` ``(L, N, D)``, stacked."""
        fits = [clone(self).fit(block, y, sample_weight) for block in X]
        epochs = max(len(fit.train_loss_) for fit in fits)
        self.coef_ = np.stack([fit.coef_ for fit in fits])
        self.intercept_ = np.stack([fit.intercept_ for fit in fits])
        self.train_loss_ = np.array(
            [fit.train_loss_ + [np.nan] * (epochs - len(fit.train_loss_)) for fit in fits]
        )
        self.classes_, self.n_features_in_, self.n_layers_ = fits[0].classes_, X.shape[2], len(fits)
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
