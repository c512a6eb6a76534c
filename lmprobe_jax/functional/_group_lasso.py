r"""Group lasso over layers: one linear probe on all candidate layers, whole layers switched off.

.. math::

    \min_{W, b} \; \frac{1}{\sum_i s_i} \sum_i s_i \, \ell(z_i, y_i) + \alpha \sum_g \lVert W_g \rVert_2,
    \qquad z_i = \sum_g X_{g,i} \cdot W_g + b,

with ``l`` the logistic loss (the convention of lmprobe's ``layers="auto"``, which runs skglm, plus an
unpenalised intercept) or the squared loss ``(y - z)^2 / 2`` (scikit-learn's ``MultiTaskLasso`` scaling).
With activations ``X`` of shape ``(L, N, D)`` each layer is one group: the layers are concatenated into
one model and ``coef`` is ``(L, D)``; groups whose coefficients are exactly zero are the layers the
penalty removed. A 2-D ``X`` with a ``groups`` array allows arbitrary groups of features.

Solver: working-set rounds of accelerated proximal gradient (FISTA, Beck & Teboulle 2009) with the
gradient-based adaptive restart of O'Donoghue & Candès (2015). Each round runs FISTA on the groups that
are non-zero or violate their KKT condition (the rest stay zero and are not even multiplied), with step
``1 / Lip`` from a power-iteration bound on that working set's Hessian
(``lambda_max([X_ws, 1]^T S [X_ws, 1]) / (4 sum s)`` for the logistic loss); a full KKT check over all
groups ends the round. Layers a penalty removes cost nothing after the first check. The prox is the
group soft-threshold

.. math::

    \operatorname{prox}(v)_g = \max\!\Big(0, 1 - \frac{t \alpha}{\lVert v_g \rVert}\Big) v_g,

written so that its value at ``v_g = 0`` is exactly zero (no division by a zero norm). Predictors are
carried along (``z`` of the iterate and of the previous one), so each iteration costs two passes over
the working set's columns. It stops on the KKT conditions, checked every ``check_every`` iterations on
the working set and after each round on all groups:

* zero group: ``||grad_g f|| <= alpha (1 + tol)``;
* non-zero group: ``||grad_g f + alpha W_g / ||W_g|| || <= tol * alpha``;
* intercept: ``|d f / d b| <= tol * alpha``,

and returns the largest violation, relative to ``alpha``. A grid of ``alpha`` is solved as a path from
the largest value down, each warm-started from the previous solution.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from . import _checks
from ._products import matvec, rmatvec

_POWER_ITERATIONS = 30  # from a flat start, for the first working set of a path
_WARM_POWER_ITERATIONS = 10  # from the previous working set's top eigenvector
_LIPSCHITZ_SAFETY = 1.1  # power iteration approaches lambda_max from below


class GroupLassoFit(NamedTuple):
    """Group-lasso probes. ``[A]`` is present for a 1-D ``alpha`` grid (leading axis).

    Attributes:
      coef: ``([A,] L, D)`` for layer groups (3-D ``X``); ``([A,] P)`` for a 2-D ``X`` with ``groups``.
      intercept: ``([A])``.
      n_iter: int32 ``([A])`` proximal-gradient iterations.
      converged: bool ``([A])``, the KKT violation fell to ``<= tol``.
      kkt_violation: ``([A])`` the largest KKT violation relative to ``alpha`` (see the module docstring).
      alpha: ``([A])`` the penalty of each fit.
    """

    coef: Array
    intercept: Array
    n_iter: Array
    converged: Array
    kkt_violation: Array
    alpha: Array


class _FistaState(NamedTuple):
    w: Array  # (G, Dg) iterate
    b: Array  # ()
    z: Array  # (N,) X w + b
    w_prev: Array
    b_prev: Array
    z_prev: Array
    momentum: Array  # () FISTA's t_k
    lip: Array  # () current local Lipschitz estimate (backtracking), at most the power-iteration bound
    n_iter: Array  # int32 ()
    violation: Array  # () last KKT violation measured on the working set


class _OuterState(NamedTuple):
    w: Array  # (G, Dg)
    b: Array  # ()
    n_iter: Array  # int32 (): FISTA iterations over all rounds
    violation: Array  # () KKT violation over all groups
    mask: Array  # bool (G,): the next round's working set
    top: tuple[Array, Array]  # last working set's top eigenvector (coef part, intercept part)
    warm: Array  # bool (): `top` is a usable start for the power iteration


def _loss_parts(loss: str) -> tuple[Any, Any, float]:
    """(value, dl/dz, curvature bound) of the per-sample loss."""
    if loss == "logistic":
        return (lambda z, y: jax.nn.softplus(-(2 * y - 1) * z)), (lambda z, y: jax.nn.sigmoid(z) - y), 0.25
    return (lambda z, y: 0.5 * (z - y) ** 2), (lambda z, y: z - y), 1.0


def _products(Xg: Array) -> tuple[Any, Any]:
    """``X w`` and ``X^T r`` over the groups of ``Xg`` ``(G, N, Dg)`` selected by a mask.

    Groups outside the mask are skipped (``lax.cond``), not multiplied by zero: with 4 of 12 layer
    groups active (1600 x 768 each), a pair of products took 1.2 ms against 4.0 ms for all groups,
    one core. Each group's block is a contiguous ``(N, Dg)`` matrix, used in row form.
    """
    n_groups, n, d = Xg.shape

    def forward(w: Array, mask: Array) -> Array:
        def body(g: int, z: Array) -> Array:
            return z + jax.lax.cond(mask[g], lambda: matvec(Xg[g], w[g]), lambda: jnp.zeros(n, Xg.dtype))

        return jax.lax.fori_loop(0, n_groups, body, jnp.zeros(n, Xg.dtype))

    def backward(r: Array, mask: Array) -> Array:
        def body(g: int, out: Array) -> Array:
            return out.at[g].set(jax.lax.cond(mask[g], lambda: rmatvec(Xg[g], r), lambda: jnp.zeros(d, Xg.dtype)))

        return jax.lax.fori_loop(0, n_groups, body, jnp.zeros((n_groups, d), Xg.dtype))

    return forward, backward


def _group_norms(w: Array) -> Array:
    return jnp.sqrt(jnp.sum(w * w, axis=-1))


def _group_soft_threshold(v: Array, threshold: Array) -> Array:
    """``max(0, 1 - threshold / ||v_g||) v_g`` per group, exactly zero (and NaN-free) when ``v_g = 0``."""
    norms = _group_norms(v)
    safe = jnp.where(norms > threshold, norms, 1.0)
    scale = jnp.where(norms > threshold, 1.0 - threshold / safe, 0.0)
    return v * scale[:, None]


def _group_violations(grad_w: Array, w: Array, alpha: Array) -> Array:
    """``(G,)`` per-group KKT violation, absolute (see the module docstring)."""
    norms = _group_norms(w)
    active = norms > 0
    direction = w / jnp.where(active, norms, 1.0)[:, None]
    on_active = _group_norms(grad_w + alpha * direction)
    on_zero = jnp.maximum(_group_norms(grad_w) - alpha, 0.0)
    return jnp.where(active, on_active, on_zero)


def _kkt_violation(grad_w: Array, grad_b: Array, w: Array, alpha: Array, mask: Array, fit_intercept: bool) -> Array:
    """Largest KKT violation over the masked groups (and the intercept), relative to ``alpha``."""
    worst = jnp.max(jnp.where(mask, _group_violations(grad_w, w, alpha), 0.0))
    if fit_intercept:
        worst = jnp.maximum(worst, jnp.abs(grad_b))
    return worst / alpha


def _lipschitz(
    Xg: Array, mask: Array, s: Array, fit_intercept: bool, curvature: float, top: tuple[Array, Array], warm: Array
) -> tuple[Array, tuple[Array, Array]]:
    """Bound on the Lipschitz constant of the smooth part's gradient restricted to the masked groups,
    by power iteration, and the top eigenvector it found. The working set's constant is smaller than
    the full one (longer steps). Started from the previous working set's eigenvector (``warm``),
    10 iterations do what 30 do from a flat start."""
    forward, backward = _products(Xg)
    total = jnp.sum(s)

    def apply(v: tuple[Array, Array]) -> tuple[Array, Array]:
        w, b = v
        u = s * (forward(w, mask) + (b if fit_intercept else 0.0))
        return backward(u, mask), (jnp.sum(u) if fit_intercept else jnp.zeros_like(b))

    def body(_: int, v: tuple[Array, Array]) -> tuple[Array, Array]:
        w, b = apply(v)
        norm = jnp.sqrt(jnp.sum(w * w) + b * b)
        return w / norm, b / norm

    g, _, d = Xg.shape
    scale = 1.0 / np.sqrt(g * d + 1.0)
    flat = jnp.full((g, d), scale, Xg.dtype)
    # New groups of the working set get a flat share, so the iteration can grow into them.
    v0 = (jnp.where(mask[:, None], jnp.where(warm, top[0] + 0.1 * flat, flat), 0.0), jnp.where(warm, top[1], scale))
    n_power = jnp.where(warm, _WARM_POWER_ITERATIONS, _POWER_ITERATIONS)
    w, b = jax.lax.fori_loop(0, n_power, body, body(0, v0))
    aw, ab = apply((w, b))
    rayleigh = jnp.sum(w * aw) + b * ab  # of the unit vector (w, b)
    return _LIPSCHITZ_SAFETY * curvature * rayleigh / total, (w, b)


def _null_intercept(y: Array, s: Array, loss: str) -> Array:
    """Optimal intercept of the empty model (``W = 0``)."""
    mean = jnp.sum(s * y) / jnp.sum(s)
    if loss == "logistic":
        mean = jnp.clip(mean, 1e-7, 1 - 1e-7)
        return jnp.log(mean) - jnp.log1p(-mean)
    return mean


def _fista(
    Xg: Array, y: Array, s: Array, alpha: Array, mask: Array, w0: Array, b0: Array, n_iter0: Array,
    lip: Array, *, loss: str, fit_intercept: bool, tol: float, max_iter: int, check_every: int,
) -> _FistaState:
    """FISTA with adaptive restart on the masked groups (the others stay as they are: zero).

    The step adapts (Scheinberg, Goldfarb & Bai 2014): each iteration first tries ``0.8 L`` and
    doubles it until the quadratic upper bound holds, never beyond the power-iteration bound ``lip``
    (which always holds). The global bound uses the worst-case curvature (1/4 for the logistic loss);
    the local one is typically 2-3x smaller, so steps are longer.
    """
    value, dloss, _ = _loss_parts(loss)
    forward, backward = _products(Xg)
    total = jnp.sum(s)

    def gradient(z: Array) -> tuple[Array, Array]:
        r = s * dloss(z, y) / total
        return backward(r, mask), (jnp.sum(r) if fit_intercept else jnp.zeros((), z.dtype))

    def violation_at(st: _FistaState) -> Array:
        gw, gb = gradient(st.z)
        return _kkt_violation(gw, gb, st.w, alpha, mask, fit_intercept)

    def cond(st: _FistaState) -> Array:
        return (st.n_iter < max_iter) & (st.violation > tol) & jnp.isfinite(st.violation)

    def body(st: _FistaState) -> _FistaState:
        def one_step(_: int, st: _FistaState) -> _FistaState:
            beta = (st.momentum - 1.0) / (1.0 + jnp.sqrt(1.0 + 4.0 * st.momentum**2)) * 2.0
            # Extrapolated point y_k = x_k + beta (x_k - x_{k-1}); its predictor is the same mix of z's.
            yw = st.w + beta * (st.w - st.w_prev)
            yb = st.b + beta * (st.b - st.b_prev)
            yz = st.z + beta * (st.z - st.z_prev)
            gw, gb = gradient(yz)
            base = value(yz, y)

            def attempt(local: Array) -> tuple[Array, Array, Array, Array]:
                step = 1.0 / local
                w = jnp.where(mask[:, None], _group_soft_threshold(yw - step * gw, step * alpha), st.w)
                b = yb - step * gb if fit_intercept else yb
                z = forward(w, mask) + b
                # f(x) <= f(y) + g.(x - y) + local/2 |x - y|^2, the decrease summed per sample (float32-safe).
                dw, db = w - yw, b - yb
                rise = jnp.sum(s * (value(z, y) - base)) / total
                bound = jnp.sum(gw * dw) + gb * db + 0.5 * local * (jnp.sum(dw * dw) + db * db)
                return w, b, z, (rise <= bound + 1e-7 * jnp.abs(bound)) | (local >= lip)

            def retry(carry: tuple) -> tuple:
                local = jnp.minimum(2.0 * carry[0], lip)
                return (local,) + attempt(local)

            local0 = 0.8 * st.lip
            local, w, b, z, _ = jax.lax.while_loop(lambda c: ~c[4], retry, (local0,) + attempt(local0))
            # Gradient restart: drop the momentum when the step goes against the extrapolation.
            restart = jnp.sum((yw - w) * (w - st.w)) + (yb - b) * (b - st.b) > 0
            momentum = jnp.where(restart, 1.0, (1.0 + jnp.sqrt(1.0 + 4.0 * st.momentum**2)) / 2.0)
            return _FistaState(w, b, z, st.w, st.b, st.z, momentum.astype(st.momentum.dtype), local,
                               st.n_iter + 1, st.violation)

        st = jax.lax.fori_loop(0, check_every, one_step, st)
        return st._replace(violation=violation_at(st))

    dtype = Xg.dtype
    z0 = forward(w0, mask) + b0
    init = _FistaState(w0, b0, z0, w0, b0, z0, jnp.ones((), dtype), lip, n_iter0, jnp.asarray(jnp.inf, dtype))
    return jax.lax.while_loop(cond, body, init._replace(violation=violation_at(init)))


def _solve_one(
    Xg: Array, y: Array, s: Array, alpha: Array, w0: Array, b0: Array, top: tuple[Array, Array], warm: Array, *,
    loss: str, fit_intercept: bool, tol: float, max_iter: int, check_every: int,
) -> tuple[GroupLassoFit, tuple[Array, Array], Array]:
    """Working-set rounds: FISTA on the non-zero groups plus the KKT violators, then a full KKT check.

    A group outside the working set is zero and satisfies its KKT condition, so when a round ends
    with no violator outside the set, the whole problem is solved to ``tol``.
    """
    _, dloss, curvature = _loss_parts(loss)
    _, backward = _products(Xg)
    total = jnp.sum(s)
    everything = jnp.ones(Xg.shape[0], bool)

    def full_check(w: Array, b: Array) -> tuple[Array, Array]:
        z = _products(Xg)[0](w, everything) + b
        r = s * dloss(z, y) / total
        gw, gb = backward(r, everything), (jnp.sum(r) if fit_intercept else jnp.zeros((), z.dtype))
        per_group = _group_violations(gw, w, alpha)
        mask = (_group_norms(w) > 0) | (per_group > tol * alpha)
        return _kkt_violation(gw, gb, w, alpha, everything, fit_intercept), mask

    def cond(st: _OuterState) -> Array:
        return (st.n_iter < max_iter) & (st.violation > tol) & jnp.isfinite(st.violation)

    def body(st: _OuterState) -> _OuterState:
        lip, top = _lipschitz(Xg, st.mask, s, fit_intercept, curvature, st.top, st.warm)
        inner = _fista(Xg, y, s, alpha, st.mask, st.w, st.b, st.n_iter, lip, loss=loss,
                       fit_intercept=fit_intercept, tol=tol, max_iter=max_iter, check_every=check_every)
        violation, mask = full_check(inner.w, inner.b)
        return _OuterState(inner.w, inner.b, inner.n_iter, violation, mask, top, jnp.bool_(True))

    violation, mask = full_check(w0, b0)
    st = jax.lax.while_loop(cond, body, _OuterState(w0, b0, jnp.int32(0), violation, mask, top, warm))
    fit = GroupLassoFit(st.w, st.b, st.n_iter, st.violation <= tol, st.violation, alpha)
    return fit, st.top, st.warm


@functools.partial(
    jax.jit, static_argnames=("loss", "fit_intercept", "tol", "max_iter", "check_every")
)
def group_lasso_solve(
    Xg: Array, y: Array, s: Array, alphas: Array, *,
    loss: str, fit_intercept: bool, tol: float, max_iter: int, check_every: int,
) -> GroupLassoFit:
    """Jitted core: grouped ``Xg (G, N, Dg)``, ``y (N,)``, ``s (N,)``, ``alphas (A,)``.

    Returns fields with a leading ``(A,)`` axis, ``coef`` ``(A, G, Dg)``. The path runs from the largest
    ``alpha`` down (warm starts); results come back in the given order.
    """
    dtype = _checks.compute_dtype(Xg.dtype)
    Xg, y, s, alphas = Xg.astype(dtype), y.astype(dtype), s.astype(dtype), alphas.astype(dtype)
    order = jnp.argsort(-alphas)
    g, _, d = Xg.shape
    b0 = _null_intercept(y, s, loss) if fit_intercept else jnp.zeros((), dtype)

    def step(carry: tuple, alpha: Array) -> tuple[tuple, GroupLassoFit]:
        w, b, top, warm = carry
        fit, top, warm = _solve_one(Xg, y, s, alpha, w, b, top, warm, loss=loss, fit_intercept=fit_intercept,
                                    tol=tol, max_iter=max_iter, check_every=check_every)
        return (fit.coef, fit.intercept, top, warm), fit

    start = (jnp.zeros((g, d), dtype), b0, (jnp.zeros((g, d), dtype), jnp.zeros((), dtype)), jnp.bool_(False))
    _, path = jax.lax.scan(step, start, alphas[order])
    unsorted = jnp.argsort(order)
    return GroupLassoFit(*(a[unsorted] for a in path))


def grouped_activations(X: Any, groups: Any) -> tuple[Array, np.ndarray | None, int]:
    """``(Xg (G, N, Dg), feature layout or None, N)``; a 3-D ``X`` is already grouped by layer."""
    X3, was_2d = _checks.check_activations(X)
    if groups is None:
        if was_2d:
            raise ValueError(
                "X is 2-D (N, D) and no groups were given; pass X as (L, N, D) for one group per layer, or a "
                "groups array of length D."
            )
        return X3, None, X3.shape[1]
    if not was_2d:
        raise ValueError("groups applies to a 2-D X (N, D); a 3-D X is already grouped by layer.")
    X2 = X3[0]
    groups = np.asarray(groups)
    if groups.shape != (X2.shape[1],):
        raise ValueError(f"groups has shape {groups.shape}; expected one group label per feature, ({X2.shape[1]},).")
    names, codes = np.unique(groups, return_inverse=True)
    width = int(np.bincount(codes).max())
    # Pad every group to the widest with zero columns: zero columns have zero gradient, so their
    # coefficients stay zero and add nothing to the group norms.
    layout = np.full((names.size, width), -1, dtype=np.int64)
    for g in range(names.size):
        members = np.flatnonzero(codes == g)
        layout[g, : members.size] = members
    padded = jnp.concatenate([X2, jnp.zeros((X2.shape[0], 1), X2.dtype)], axis=1)
    Xg = jnp.transpose(padded[:, np.where(layout < 0, X2.shape[1], layout)], (1, 0, 2))
    return Xg, layout, X2.shape[0]


def _ungroup(coef: Array, layout: np.ndarray, n_features: int) -> Array:
    """Padded group coefficients ``(..., G, Dg)`` back to the caller's feature order ``(..., D)``."""
    flat = jnp.zeros(coef.shape[:-2] + (n_features + 1,), coef.dtype)
    idx = np.where(layout < 0, n_features, layout)
    flat = flat.at[..., idx].set(coef)
    return flat[..., :n_features]


def targets_for_loss(y: Any, n: int, loss: str) -> np.ndarray:
    if loss == "logistic":
        return _checks.check_binary_labels(y, n)[0].astype(np.float32)
    y = _checks.check_n_samples(n, y, "y").astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinity; the squared loss needs finite targets.")
    return y.astype(np.float32)


def group_lasso_alpha_max(
    X: Any, y: Any, *, groups: Any = None, sample_weight: Any = None, fit_intercept: bool = True,
    loss: str = "logistic",
) -> float:
    """The smallest ``alpha`` whose solution is the empty model: ``max_g ||grad_g f(0, b0)||``.

    ``b0`` is the best intercept of the empty model (the log-odds or mean of ``y``).
    """
    loss = _check_loss(loss)
    Xg, _, n = grouped_activations(X, groups)
    y_arr = jnp.asarray(targets_for_loss(y, n, loss))
    s = jnp.asarray(_checks.check_sample_weight(sample_weight, n))
    Xg = Xg.astype(_checks.compute_dtype(Xg.dtype))
    b0 = _null_intercept(y_arr, s, loss) if fit_intercept else 0.0
    dloss = _loss_parts(loss)[1]
    _, backward = _products(Xg)
    grad = backward(s * dloss(jnp.full(n, b0, Xg.dtype), y_arr) / jnp.sum(s), jnp.ones(Xg.shape[0], bool))
    return float(jnp.max(_group_norms(grad)))


def _check_loss(loss: str) -> str:
    if loss not in ("logistic", "squared"):
        raise ValueError(f"loss must be 'logistic' or 'squared'; got {loss!r}.")
    return loss


def fit_group_lasso(
    X: Any,
    y: Any,
    alpha: Any,
    *,
    groups: Any = None,
    sample_weight: Any = None,
    fit_intercept: bool = True,
    loss: str = "logistic",
    tol: float = 1e-3,
    max_iter: int = 20000,
    check_every: int = 10,
) -> GroupLassoFit:
    """Fit a group-lasso probe over layers (or feature groups), for one ``alpha`` or a path.

    Args:
      X: ``(L, N, D)`` activations (one group per layer), or ``(N, D)`` with ``groups``.
      y: ``(N,)`` two class labels (``loss="logistic"``; the larger is positive) or float targets
        (``loss="squared"``).
      alpha: ``> 0``, a scalar or a 1-D grid (adds a leading axis; solved as a warm-started path from the
        largest down). :func:`group_lasso_alpha_max` gives the value above which every group is zero.
      groups: ``(D,)`` group label of each feature of a 2-D ``X``.
      sample_weight: ``(N,)`` non-negative weights.
      fit_intercept: fit an unpenalised intercept.
      loss: ``"logistic"`` or ``"squared"``.
      tol: stop when the largest KKT violation relative to ``alpha`` is ``<= tol``.
      max_iter: most proximal-gradient iterations per ``alpha``.
      check_every: iterations between KKT checks (each check costs one pass over ``X``).

    Returns:
      A :class:`GroupLassoFit`.
    """
    loss = _check_loss(loss)
    Xg, layout, n = grouped_activations(X, groups)
    y_arr = targets_for_loss(y, n, loss)
    sw = _checks.check_sample_weight(sample_weight, n)
    alphas, is_grid = _checks.check_grid(alpha, "alpha")
    fit = group_lasso_solve(
        Xg, jnp.asarray(y_arr), jnp.asarray(sw), jnp.asarray(alphas), loss=loss,
        fit_intercept=bool(fit_intercept), tol=_checks.check_tol(tol),
        max_iter=_checks.check_positive_int(max_iter, "max_iter"),
        check_every=_checks.check_positive_int(check_every, "check_every"),
    )
    if layout is not None:
        fit = fit._replace(coef=_ungroup(fit.coef, layout, int(np.shape(X)[1])))
    return fit if is_grid else GroupLassoFit(*(a[0] for a in fit))


@functools.partial(
    jax.jit, static_argnames=("loss", "fit_intercept", "tol", "max_iter", "check_every")
)
def group_lasso_weight_sets(
    Xg: Array, y: Array, weights: Array, alphas: Array, *,
    loss: str, fit_intercept: bool, tol: float, max_iter: int, check_every: int,
) -> GroupLassoFit:
    """:func:`group_lasso_solve` for each row of ``weights`` ``(W, N)`` (CV folds), one after another.

    ``lax.map``, not ``vmap``: under ``vmap`` the working-set ``lax.cond``s would turn into selects that
    compute every group. Fields ``(W, A, ...)``.
    """
    options = dict(loss=loss, fit_intercept=fit_intercept, tol=tol, max_iter=max_iter, check_every=check_every)
    return jax.lax.map(lambda s: group_lasso_solve(Xg, y, s, alphas, **options), weights)
