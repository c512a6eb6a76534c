r"""Limited-memory BFGS directions, preconditioned: the cheap phase of every solve.

With the last ``m`` steps ``s_j`` and gradient changes ``y_j``, the L-BFGS approximation of the inverse
Hessian applied to the gradient is the two-loop recursion (Nocedal & Wright, *Numerical Optimization*,
2nd ed., Algorithm 7.4), started from ``H_0 = gamma M``: ``M`` is the layer's preconditioner (the
identity, or a Nystrom approximation of the inverse Gram matrix) and ``gamma = s.y / y.M y`` from the
newest pair (Shanno-Phua scaling under ``M``'s metric). Each iteration then costs two passes over ``X``
(the direction's product ``X d`` and the new gradient); the line search works on ``z + t X d`` and costs
none. As in optax's ``scale_by_lbfgs``, the memory is a ring of stacked arrays indexed by a counter.

Newton-CG applies the same ``H`` as its preconditioner at every CG step (Morales & Nocedal 2000), with the
memory fixed for the Newton step: there the compact form (Byrd, Nocedal & Schnabel 1994) is built once per
step (:func:`compact_inverse`) and applied with two ``(P, 2m)`` products (:func:`apply_compact`), where
the two-loop recursion's ``2m`` sequential updates and two applications of ``M`` cost more than a pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.lax import Precision

from ._glm import guard
from ._precision import vdot


class LBFGSMemory(NamedTuple):
    """The newest ``m`` curvature pairs, as a ring.

    Attributes:
      s: ``(m, P)`` steps; slot ``(count - 1) % m`` holds the newest.
      y: ``(m, P)`` the gradient changes over those steps.
      rho: ``(m,)`` ``1 / s.y``, zero for slots not (yet) filled, or whose pair was skipped.
      count: int32 ``()``, pairs offered so far.
    """

    s: Array
    y: Array
    rho: Array
    count: Array


def empty_memory(m: int, size: int, dtype: jnp.dtype) -> LBFGSMemory:
    return LBFGSMemory(jnp.zeros((m, size), dtype), jnp.zeros((m, size), dtype), jnp.zeros(m, dtype), jnp.int32(0))


def remember(memory: LBFGSMemory, s: Array, y: Array) -> LBFGSMemory:
    """``memory`` with the pair ``(s, y)`` added, unless ``s.y`` is not safely positive (a step the line
    search rejected, or curvature lost to rounding): BFGS needs ``s.y > 0`` to stay positive definite."""
    sy = vdot(s, y)
    ok = sy > jnp.finfo(s.dtype).eps * jnp.sqrt(vdot(s, s) * vdot(y, y))
    slot = memory.count % memory.rho.shape[0]
    return LBFGSMemory(
        memory.s.at[slot].set(jnp.where(ok, s, memory.s[slot])),
        memory.y.at[slot].set(jnp.where(ok, y, memory.y[slot])),
        memory.rho.at[slot].set(jnp.where(ok, 1.0 / guard(sy), memory.rho[slot])),
        memory.count + ok.astype(jnp.int32),
    )


def reweight_penalty(memory: LBFGSMemory, change: Array, n_penalised: int) -> LBFGSMemory:
    """``memory``'s pairs for the objective whose L2 penalty on the first ``n_penalised`` entries moved by
    ``change`` (a path's next ``C``): ``y_j + change s_j`` on those entries is exact for the penalty's part
    of every gradient change (the loss's part does not depend on ``C``). A pair whose ``s.y`` is no longer
    safely positive is dropped (``rho = 0``)."""
    shift = jnp.where(jnp.arange(memory.s.shape[-1]) < n_penalised, change, 0.0).astype(memory.s.dtype)
    y = memory.y + shift * memory.s
    sy = jnp.sum(memory.s * y, axis=-1)
    ok = (memory.rho != 0) & (sy > jnp.finfo(y.dtype).eps * jnp.sqrt(jnp.sum(memory.s**2, -1) * jnp.sum(y * y, -1)))
    return memory._replace(y=y, rho=jnp.where(ok, 1.0 / guard(sy), 0.0))


def lbfgs_direction(memory: LBFGSMemory, g: Array, apply_m: Callable[[Array], Array]) -> Array:
    """``-H g`` for the flat gradient ``g`` ``(P,)``, with ``H_0 = gamma M`` (``apply_m``: ``v -> M v``)."""
    m = memory.rho.shape[0]
    newest = (memory.count - 1) % m
    order = (newest - jnp.arange(m)) % m  # newest first; empty slots have rho = 0 and drop out

    def backward(q: Array, i: Array) -> tuple[Array, Array]:
        alpha = memory.rho[i] * vdot(memory.s[i], q)
        return q - alpha * memory.y[i], alpha

    q, alphas = jax.lax.scan(backward, g, order)
    y_new = memory.y[newest]
    my = apply_m(y_new)
    gamma = jnp.where(memory.rho[newest] != 0, vdot(memory.s[newest], y_new) / guard(vdot(y_new, my)), 1.0)
    r = gamma * apply_m(q)

    def forward(r: Array, step: tuple[Array, Array]) -> tuple[Array, None]:
        i, alpha = step
        beta = memory.rho[i] * vdot(memory.y[i], r)
        return r + (alpha - beta) * memory.s[i], None

    r, _ = jax.lax.scan(forward, r, (order[::-1], alphas[::-1]))
    return -r


class CompactInverse(NamedTuple):
    """The L-BFGS inverse Hessian ``H = gamma M + V N V^T`` of a fixed memory (:func:`compact_inverse`).

    Attributes:
      gamma: ``()``, the scale of ``H_0 = gamma M``.
      factor: ``(2m, P)`` ``V^T``: the steps ``s_j`` and ``H_0 y_j``, oldest first (zero rows for empty slots).
      middle: ``(2m, 2m)`` ``N``.
    """

    gamma: Array
    factor: Array
    middle: Array


def compact_inverse(memory: LBFGSMemory, apply_m: Callable[[Array], Array]) -> CompactInverse:
    r"""The operator of :func:`lbfgs_direction` (``g -> H g``) in compact form, for repeated application:
    with ``S``, ``W = H_0 Y`` the pairs as columns, oldest first, ``R`` the upper triangle of ``S^T Y``,
    ``D`` its diagonal, ``H = H_0 + [S, W] [[R^{-T} (D + Y^T W) R^{-1}, -R^{-T}], [-R^{-1}, 0]] [S, W]^T``
    (Byrd, Nocedal & Schnabel, Math. Programming 63, 1994, eq. 3.13). Costs ``m + 1`` applications of ``M``.

    An empty or dropped slot (``rho = 0``) gets zero ``s``, ``y`` and a unit diagonal in ``R``: it adds nothing."""
    m = memory.rho.shape[0]
    newest = (memory.count - 1) % m
    order = (newest + 1 + jnp.arange(m)) % m  # oldest first
    used = (memory.rho[order] != 0)[:, None]
    S = jnp.where(used, memory.s[order], 0.0)
    Y = jnp.where(used, memory.y[order], 0.0)
    y_new = memory.y[newest]
    gamma = jnp.where(memory.rho[newest] != 0, vdot(memory.s[newest], y_new) / guard(vdot(y_new, apply_m(y_new))), 1.0)
    W = gamma * jax.vmap(apply_m)(Y)
    SY = jnp.matmul(S, Y.T, precision=Precision.HIGHEST)
    R = jnp.triu(SY) + jnp.diag(jnp.where(used[:, 0], 0.0, 1.0))
    R_inv = jax.scipy.linalg.solve_triangular(R, jnp.eye(m, dtype=R.dtype), lower=False)
    inner = jnp.diag(jnp.diag(SY)) + jnp.matmul(Y, W.T, precision=Precision.HIGHEST)
    top = jnp.matmul(R_inv.T, jnp.matmul(inner, R_inv, precision=Precision.HIGHEST), precision=Precision.HIGHEST)
    middle = jnp.block([[top, -R_inv.T], [-R_inv, jnp.zeros_like(R_inv)]])
    return CompactInverse(gamma, jnp.concatenate([S, W]), middle)


def apply_compact(inverse: CompactInverse, v: Array, mv: Array) -> Array:
    """``H v`` for the flat ``v`` ``(P,)``, given ``mv = M v``."""
    coeffs = jnp.matmul(inverse.middle, jnp.matmul(inverse.factor, v, precision=Precision.HIGHEST),
                        precision=Precision.HIGHEST)
    return inverse.gamma * mv + jnp.matmul(coeffs, inverse.factor, precision=Precision.HIGHEST)
