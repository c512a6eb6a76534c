r"""One L2-penalised generalised linear model, in scikit-learn's scaled units: the objective the solvers see.

For one design matrix ``X`` ``(N, D)``, sample weights ``s`` and inverse regularisation ``C``,

.. math::

    \tilde F(W, b) = \sum_i \omega_i \, \ell(z_i, y_i) + \tfrac{\lambda}{2} \lVert W \rVert_F^2,
    \qquad z_i = W x_i + b, \quad \omega_i = \frac{s_i}{\sum_j s_j}, \quad \lambda = \frac{1}{C \sum_j s_j},

which is scikit-learn's ``LogisticRegression`` objective ``C sum_i s_i l_i + ||W||^2 / 2`` divided by
``C sum s`` (scikit-learn's own solvers use this scaling, and its ``tol`` acts on this gradient). Every
quantity stays of order one whatever ``C`` is: in the unscaled form a Hessian-vector product grows as
``C`` and CG's inner products as ``C^2``, which overflowed float32 from ``C ~ 1e10`` (NaN weights) and
at ``C = 1e12`` made every CG step zero (a zero probe reported as converged).

``W`` is ``(D,)`` for a scalar predictor (binary logistic) or ``(K, D)`` for a vector one (softmax,
laid out as scikit-learn's ``coef_``); ``z`` is then ``(N,)`` or ``(K, N)``. The loss enters only through
its derivatives in ``z`` (a :class:`GLMLoss`), so each gradient costs one pass over ``X`` and each
Hessian-vector product two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ._precision import rounded_matmul, row_sums, vdot
from ._products import Products

# The solvers' default tol: tight enough that a float32 fit is scikit-learn's float64 optimum to within
# its rounding (tests/_tolerance.py derives every comparison from it). tol=1e-4 is scikit-learn's default.
DEFAULT_TOL = 1e-7


class GLMLoss(NamedTuple):
    """A per-sample loss, given by its derivatives with respect to the linear predictor ``z``.

    A predictor ``z`` is ``(N,)`` (scalar) or ``(K, N)`` (vector, class axis first), labels ``y``
    ``(N,)``; nothing here applies sample weights.

    Attributes:
      evaluate: ``(z, y) -> (value (N,), dl/dz like z, aux)``: the loss of each sample, its gradient, and
        what its Hessian needs (the probabilities), from one evaluation of the link function.
      hvp: ``(aux, u) -> like z``, the per-sample Hessian ``d2l/dz2`` at ``aux`` applied to ``u``.
      curvature: ``aux -> like z``, the diagonal of that Hessian (sizes the preconditioners).
      null_intercept: ``(y, weight, n_outputs) -> like an intercept``, the intercept that minimises the
        loss with ``W = 0`` (where a cold solve starts); ``weight`` ``(N,)`` sums to one, ``n_outputs`` is
        ``K`` (None for a scalar predictor).
    """

    evaluate: Callable[[Array, Array], tuple[Array, Array, Array]]
    hvp: Callable[[Array, Array], Array]
    curvature: Callable[[Array], Array]
    null_intercept: Callable[[Array, Array, int | None], Array]


class Evaluation(NamedTuple):
    """The loss at one predictor, weighted: ``losses`` ``(N,)`` ``omega l``, ``residual`` (like ``z``)
    ``omega dl/dz``, and the loss's ``aux`` (see :class:`GLMLoss`). The solver keeps the current point's,
    so neither a line search nor a CG step evaluates the link function again."""

    losses: Array
    residual: Array
    aux: Array


class Params(NamedTuple):
    """A point (or a direction) of the problem: ``coef`` ``(D,)`` or ``(K, D)``, ``intercept`` ``()`` or ``(K,)``."""

    coef: Array
    intercept: Array


def dot(a: Params, b: Params) -> Array:
    """The inner product of two points as one flat vector, at full precision."""
    return vdot(a.coef, b.coef) + vdot(a.intercept, b.intercept)


def axpy(t: Array, d: Params, p: Params) -> Params:
    """``p + t d``."""
    return Params(p.coef + t * d.coef, p.intercept + t * d.intercept)


def flatten(p: Params) -> Array:
    """``(P,)``: ``coef`` row by row, then the intercept."""
    return jnp.concatenate([p.coef.reshape(-1), p.intercept.reshape(-1)])


def unflatten(v: Array, like: Params) -> Params:
    """The inverse of :func:`flatten` for points shaped as ``like``."""
    n = like.coef.size
    return Params(v[:n].reshape(like.coef.shape), v[n:].reshape(like.intercept.shape))


class GLMData(NamedTuple):
    """One problem's arrays (see the module docstring).

    Attributes:
      X: ``(N, D)``.
      y: ``(N,)`` labels as the loss expects them.
      weight: ``(N,)`` ``omega = s / sum s`` (zeros drop samples: how CV folds are expressed).
      penalty: ``()`` ``lambda = 1 / (C sum s)``.
      C: ``()`` the problem's ``C`` (preconditioners built in ``C``'s units use it).
      rounded: None, or ``(X^T, X)`` rounded to bfloat16, ``(D, N)`` and ``(N, D)``: the operands of
        :meth:`GLM.rounded_hvp`.
    """

    X: Array
    y: Array
    weight: Array
    penalty: Array
    C: Array
    rounded: tuple[Array, Array] | None = None


# The fewest rows a block of a Hessian product takes: below it a scan step's fixed cost is not repaid.
MIN_BLOCK_ROWS = 8


def block_rows(most: int, n_rows: int) -> int:
    """The rows of the blocks a Hessian product over ``n_rows`` rows takes: the largest power of two up to
    ``most`` (a power of two) that divides ``n_rows``, or 0 (two whole products) where that is below
    :data:`MIN_BLOCK_ROWS` or one block would hold every row."""
    rows = min(most, n_rows & -n_rows)
    return rows if MIN_BLOCK_ROWS <= rows < n_rows else 0


@dataclasses.dataclass(frozen=True)
class GLM:
    """The static half of a problem: its loss, whether it has an intercept, the products it uses, and the
    most rows of the blocks its Hessian products take, a power of two (0: two whole products; :meth:`hvp`)."""

    loss: GLMLoss
    fit_intercept: bool
    products: Products
    hessian_block_rows: int = 0

    def data(self, X: Array, y: Array, sample_weight: Array, C: Array,
             rounded: tuple[Array, Array] | None = None) -> GLMData:
        """The problem's arrays for ``X`` ``(N, D)``, labels, weights ``s`` ``(N,)`` and ``C`` ``()``
        (``rounded``: :func:`rounded_operands` of ``X`` where Hessian products may use them)."""
        s = sample_weight.astype(X.dtype)
        total = jnp.sum(s)
        C = jnp.asarray(C, X.dtype)
        return GLMData(X, y, s / total, 1.0 / (C * total), C, rounded)

    def intercept_part(self, v: Array) -> Array:
        return v if self.fit_intercept else jnp.zeros_like(v)

    def null_point(self, data: GLMData, n_outputs: int | None) -> Params:
        """``W = 0`` and the best intercept for it (zero without an intercept)."""
        lead = () if n_outputs is None else (n_outputs,)
        coef = jnp.zeros(lead + data.X.shape[1:], data.X.dtype)
        return Params(coef, self.intercept_part(self.loss.null_intercept(data.y, data.weight, n_outputs).astype(data.X.dtype)))

    def predictor(self, X: Array, p: Params) -> Array:
        """``z = W X^T + b``: one pass over ``X``."""
        return self.products.matvec(X, p.coef) + p.intercept[..., None]

    def evaluate(self, data: GLMData, z: Array) -> Evaluation:
        """The weighted loss, residual and aux at predictor ``z`` (no pass over ``X``)."""
        value, grad, aux = self.loss.evaluate(z, data.y)
        return Evaluation(data.weight * value, data.weight * grad, aux)

    def objective(self, data: GLMData, p: Params, ev: Evaluation) -> Array:
        return jnp.sum(ev.losses) + 0.5 * data.penalty * vdot(p.coef, p.coef)

    def gap_bound(self, data: GLMData, p: Params, g: Params, ev: Evaluation, x_norm: Array | None) -> Array:
        r"""``()``: a bound on the relative objective gap ``(F - F^*) / F`` at ``p`` from its gradient ``g``.

        ``F`` is ``lambda``-strongly convex in ``W``: for ``phi(W) = min_b F(W, b)``,
        ``phi(W) - F^* <= |grad phi(W)|^2 / (2 lambda)`` (the duality gap of the dual point ``-dl/dz``). The
        intercept has no penalty; to first order in its own Newton step ``delta_k = g_{b_k} / h_k``
        (``h_k = sum_i omega_i d2l/dz_ik^2``, the class's own curvature), ``F - phi(W) = delta . g_b / 2`` and
        ``grad_W phi = g_W - X^T u`` with ``u = omega d2l/dz2 delta`` per sample (the intercept's coupling to
        the features, strong on raw activations' offsets).

        ``x_norm``: ``||X||_F``, to bound ``|(X^T u)_k| <= |u_k| ||X||_F`` (Cauchy-Schwarz) without a pass over
        ``X``; None: the product itself, one pass (a tighter bound where ``X``'s columns are not aligned with
        ``u``, as standardised features are not).
        """
        lam = guard(data.penalty)
        if not self.fit_intercept:
            return vdot(g.coef, g.coef) / lam / (2 * guard(self.objective(data, p, ev)))
        h = guard(jnp.sum(self.curvature(data, ev.aux), axis=-1))  # () or (K,)
        delta = g.intercept / h
        u = self.weighted_hvp(data, ev.aux, jnp.broadcast_to(delta[..., None], ev.residual.shape))
        if x_norm is None:
            coef = jnp.sum(jnp.square(g.coef - self.products.rmatvec(data.X, u)))
        else:
            norms = jnp.sqrt(jnp.sum(jnp.square(g.coef), axis=-1)) + jnp.sqrt(jnp.sum(jnp.square(u), axis=-1)) * x_norm
            coef = jnp.sum(jnp.square(norms))
        return (coef / lam + jnp.sum(delta * g.intercept)) / (2 * guard(self.objective(data, p, ev)))

    def gradient(self, data: GLMData, p: Params, ev: Evaluation) -> Params:
        """The gradient of the scaled objective at ``p`` (``ev`` its evaluation): one pass over ``X``."""
        r = ev.residual
        return Params(self.products.rmatvec(data.X, r) + data.penalty * p.coef,
                      self.intercept_part(row_sums(r)))

    def curvature(self, data: GLMData, aux: Array) -> Array:
        """``omega * d2l/dz2`` (its diagonal for a vector predictor), like ``z``."""
        return data.weight * self.loss.curvature(aux)

    def weighted_hvp(self, data: GLMData, aux: Array, u: Array) -> Array:
        """``omega * d2l/dz2 u`` per sample."""
        return data.weight * self.loss.hvp(aux, u)

    def hvp(self, data: GLMData, aux: Array, v: Params) -> tuple[Params, Array]:
        """``(H v, X v_coef + v_intercept)`` at the point whose ``aux`` is given: two passes over ``X``, or
        with ``hessian_block_rows`` one read of it from memory: ``X^T (S X v)`` summed over blocks of rows,
        both products on a block while it is in cache (layers larger than the cache)."""
        def products_of(part: GLMData, part_aux: Array) -> tuple[Array, Array, Array]:
            """``(X^T (S X v)_coef, X v, S X v)`` over ``part``'s rows: two products."""
            u = self.predictor(part.X, v)
            hu = self.weighted_hvp(part, part_aux, u)
            return self.products.rmatvec(part.X, hu), u, hu

        n, d = data.X.shape
        # Of this program's N: rows resolved for a bucketed N, where a caller of the solver may pass any.
        rows = block_rows(self.hessian_block_rows, n)
        if not rows:
            coef, u, hu = products_of(data, aux)
        else:
            def split(a: Array) -> Array:  # (..., N) -> (N / rows, ..., rows)
                return jnp.moveaxis(a.reshape(a.shape[:-1] + (n // rows, rows)), -2, 0)

            def merge(a: Array) -> Array:  # the inverse of split
                return jnp.moveaxis(a, 0, -2).reshape(a.shape[1:-1] + (n,))

            def block(acc: Array, part: tuple[Array, Array, Array]) -> tuple[Array, tuple[Array, Array]]:
                x, weight, a = part
                coef, u, hu = products_of(data._replace(X=x, weight=weight), a)
                return acc + coef, (u, hu)

            parts = (data.X.reshape(n // rows, rows, d), split(data.weight), split(aux))
            coef, (u, hu) = jax.lax.scan(block, jnp.zeros_like(v.coef), parts)
            u, hu = merge(u), merge(hu)
        hv = Params(coef + data.penalty * v.coef, self.intercept_part(row_sums(hu)))
        return hv, u

    def rounded_hvp(self, data: GLMData, aux: Array, v: Params) -> Params:
        r"""``H v`` with both products' operands rounded to bfloat16 (``data.rounded``) and summed in float32:
        ``X^T (S (X v))`` within about ``2^-7 |X|^T |S| |X| |v|`` of the exact product. For CG's steps only,
        whose direction the line search and the float32 gradient judge; ``X v`` is not returned (too
        rounded for the line search's predictor). Two passes over a bfloat16 copy of ``X``."""
        xt, x = data.rounded
        u = rounded_matmul(v.coef, xt) + v.intercept[..., None]
        hu = self.weighted_hvp(data, aux, u)
        return Params(rounded_matmul(hu, x) + data.penalty * v.coef, self.intercept_part(row_sums(hu)))


def rounded_operands(X: Array) -> tuple[Array, Array]:
    """``(X^T, X)`` in bfloat16, ``(D, N)`` and ``(N, D)``: :meth:`GLM.rounded_hvp`'s operands, each laid out
    as its product reads it fastest (one float32 copy of ``X`` in all)."""
    return X.T.astype(jnp.bfloat16), X.astype(jnp.bfloat16)


def optimality(g: Params) -> Array:
    """The max-abs entry of the scaled gradient: scikit-learn's ``tol`` test."""
    return jnp.maximum(jnp.max(jnp.abs(g.coef)), jnp.max(jnp.abs(g.intercept), initial=0.0))


def guard(x: Array) -> Array:
    """``x`` with its magnitude floored at the dtype's smallest normal (a safe divisor for ``x >= 0``)."""
    return jnp.maximum(x, jnp.finfo(x.dtype).tiny)

