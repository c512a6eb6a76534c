r"""Preconditioners for the solver, behind one small interface: ``build``, ``refresh``, ``apply``.

A :class:`Preconditioner` is three pure functions over a state of its own (a pytree the solver carries):

* ``build(data, curvature) -> state`` at the start of a solve (``curvature``: ``omega l''`` per sample, and
  per class for a vector predictor, at the starting point);
* ``refresh(state, data, curvature, last_cg) -> state`` before every iteration: free for most, a rebuild
  for the exact inverses (``last_cg``: the CG steps the last Newton step took, 0 after a quasi-Newton one);
* ``apply(state, v) -> M v``, ``M`` an approximation of the inverse Newton matrix (CG needs it only up to
  a scale; the quasi-Newton phase rescales it itself).

Each constructor below closes over what it shares across problems (a layer's Nystrom approximation, a
path's lagged inverse, a kernel); which one a solve gets is decided by the policy (:mod:`._policy`) and
the problem's shape, never inside the solve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ._batching import any_across_batch
from ._glm import GLM, GLMData, Params, guard
from ._hessian_inverse import LaggedHessianInverse, apply_lagged_inverse, lagged_hessian_inverse
from ._nystrom import NystromApprox, apply_preconditioner, nystrom_gram
from ._precision import row_sums
from ._woodbury import apply_woodbury, woodbury_inverse


class Preconditioner(NamedTuple):
    """``build(data, curvature)``, ``refresh(state, data, curvature, last_cg)`` and ``apply(state, v)`` (see
    the module docstring)."""

    build: Callable[[GLMData, Array], Any]
    refresh: Callable[[Any, GLMData, Array, Array], Any]
    apply: Callable[[Any, Params], Params]


def identity() -> Preconditioner:
    """No preconditioning: plain CG, and the quasi-Newton phase's scaled identity."""
    return Preconditioner(lambda data, curvature: None, lambda state, data, curvature, last_cg: state,
                          lambda state, v: v)


def layer_nystrom(X: Array, rank: int, *, fit_intercept: bool, probe_rank: int, decay: float,
                  centred: bool = False) -> NystromApprox:
    """The layer's rank-``rank`` Nystrom approximation of ``[X, 1]^T [X, 1]``, or, where a
    rank-``probe_rank`` sketch finds the spectrum flat (its largest eigenvalue below ``decay`` times its
    smallest), an approximation with zero eigenvalues: :func:`nystrom` then applies the identity, and the
    full sketch's two passes of ``rank`` columns (tens of single passes) are saved.

    ``centred``: ``X``'s columns have (weighted) mean zero, so the column of ones is orthogonal to them
    (exactly, under equal weights): a direction of its own, along which a solve starts at its optimum (the
    intercept-only fit). The probe then sketches ``X`` alone: on sparse 0/1 features the ones' eigenvalue (the
    row count) was 3-5x the features' largest, and read as a steep spectrum.

    ``decay = 0`` always builds (under a vmap over layers the choice would compute both sides)."""
    build = lambda: nystrom_gram(X, rank, fit_intercept=fit_intercept)
    if not decay or probe_rank >= rank:
        return build()
    probe = nystrom_gram(X, probe_rank, fit_intercept=fit_intercept and not centred, seed=1)
    flat = probe.eig[0] < decay * probe.eig[-1]

    def skip() -> NystromApprox:
        d = X.shape[1]
        return NystromApprox(jnp.zeros((rank, d), X.dtype), jnp.zeros(rank, X.dtype), jnp.zeros(rank, X.dtype))

    return jax.lax.cond(any_across_batch(~flat), build, skip)


def nystrom(glm: GLM, approx: NystromApprox) -> Preconditioner:
    """The layer's Nystrom approximation of the Gram matrix, scaled by the mean curvature (per class for
    a vector predictor): ``H_kk ~ a_k (A + mu_k I)`` with ``a_k`` the mean of ``omega l''`` and
    ``mu_k = lambda / a_k`` (:mod:`._nystrom`), inverted with each class's own scale (classes' curvatures
    differ by orders of magnitude under a Zipf law; one scale for all would leave that to CG). State:
    ``(a, mu)``, refreshed from the predictor at every iteration (no pass over ``X``)."""

    def scales(data: GLMData, curvature: Array) -> tuple[Array, Array]:
        a = guard(row_sums(curvature) / curvature.shape[-1])
        return a, data.penalty / a

    def apply(state: tuple[Array, Array], v: Params) -> Params:
        a, mu = state
        # A skipped approximation is the identity: a branch, not rank-r products with a zero basis (0.4-0.8 of
        # a pass over X each at D = 4096, rank 256).
        coef, intercept = jax.lax.cond(any_across_batch(approx.built),
                                       lambda: apply_preconditioner(approx, mu, v.coef, v.intercept),
                                       lambda: (v.coef, v.intercept))
        # apply_preconditioner inverts (A + mu I) / (eig_r + mu); back to the inverse of a (A + mu I), up
        # to one factor for all classes (CG and the L-BFGS scaling do not see it): the largest class's
        # scale is 1, so M's norm stays <= 1 however small lambda or the curvatures get (1 / (a (eig_r +
        # mu)) alone reached 1 / lambda = C sum s, whose squares in CG overflowed float32 from C ~ 1e18).
        denominator = a * (approx.eig[-1] + mu)
        scale = jnp.maximum(jnp.min(denominator) / denominator, jnp.finfo(denominator.dtype).eps)
        coef, intercept = coef * scale[..., None], intercept * scale
        if intercept.ndim:
            # Softmax is unchanged by adding one constant to every intercept: H is singular along that
            # direction and the gradient has no part in it; the per-class scales would put some in.
            intercept = intercept - jnp.mean(intercept, axis=-1, keepdims=True)
        return Params(coef, glm.intercept_part(intercept))

    return Preconditioner(scales, lambda state, data, curvature, last_cg: scales(data, curvature), apply)


def lagged(glm: GLM, inverse: LaggedHessianInverse, fallback: Preconditioner) -> Preconditioner:
    """A path's exact inverse Newton matrix from an earlier ``C`` (:mod:`._hessian_inverse`) once it is
    built (``inverse.active``), else ``fallback``. Scalar predictors only."""

    def apply(state: Any, v: Params) -> Params:
        def use_inverse() -> Params:
            coef, intercept = apply_lagged_inverse(inverse, v.coef, v.intercept)
            return Params(coef, glm.intercept_part(intercept))

        # The flag is one per layer; under a vmap of the caller's, any_across_batch keeps it one flag, so
        # this stays a branch (one of the two runs), not a select computing both.
        return jax.lax.cond(any_across_batch(inverse.active), use_inverse, lambda: fallback.apply(state, v))

    return Preconditioner(fallback.build, fallback.refresh, apply)


class _Refreshed(NamedTuple):
    inverse: LaggedHessianInverse
    fallback: Any


def refreshed(glm: GLM, fallback: Preconditioner, threshold: int, *, halve: bool) -> Preconditioner:
    """The exact inverse Newton matrix at the current iterate, (re)built before any Newton step that
    follows one whose CG took ``threshold`` steps or more; ``fallback`` serves until the first build
    (the policy's ``hessian_refresh_cg``: accelerators, where the build's Gram is cheap). Scalar
    predictors only."""

    def build(data: GLMData, curvature: Array) -> _Refreshed:
        d1 = data.X.shape[1] + 1
        empty = LaggedHessianInverse(jnp.zeros((d1, d1), data.X.dtype), jnp.bool_(False))
        return _Refreshed(empty, fallback.build(data, curvature))

    def refresh(state: _Refreshed, data: GLMData, curvature: Array, last_cg: Array) -> _Refreshed:
        def rebuild() -> LaggedHessianInverse:
            return lagged_hessian_inverse(data.X, curvature, data.penalty, fit_intercept=glm.fit_intercept,
                                          halve=halve)

        # One decision for a whole vmapped batch (layers): a batched predicate would build every step.
        inverse = jax.lax.cond(any_across_batch(last_cg >= threshold), rebuild, lambda: state.inverse)
        return _Refreshed(inverse, fallback.refresh(state.fallback, data, curvature, last_cg))

    def apply(state: _Refreshed, v: Params) -> Params:
        return lagged(glm, state.inverse, fallback).apply(state.fallback, v)

    return Preconditioner(build, refresh, apply)


def woodbury(glm: GLM, X: Array, kernel: Array, *, halve: bool) -> Preconditioner:
    """The exact inverse Newton matrix through the layer's ``N x N`` kernel (``X`` the layer's matrix;
    :mod:`._woodbury`), rebuilt at every iteration: CG then takes one step. For wide binary layers."""

    def build(data: GLMData, curvature: Array) -> Any:
        # In C's units (the scaled objective's Newton matrix divided by lambda): the same matrix up to scale.
        return woodbury_inverse(X, kernel, curvature / data.penalty, fit_intercept=glm.fit_intercept,
                                products=glm.products, halve=halve)

    def apply(state: Any, v: Params) -> Params:
        coef, intercept = apply_woodbury(state, X, v.coef, v.intercept, fit_intercept=glm.fit_intercept,
                                         products=glm.products)
        return Params(coef, glm.intercept_part(intercept))

    return Preconditioner(build, lambda state, data, curvature, last_cg: build(data, curvature), apply)
