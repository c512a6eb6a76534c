"""Products with a design matrix ``X`` (``(N, D)``) that stay matrix-matrix under ``vmap``.

A one-problem solver computes ``X @ v`` and ``X^T @ u``. Vmapped over problems that share ``X`` (a ``C``
grid, CV folds), JAX's default batching rule puts the new axis last, and XLA's CPU backend then
transposes ``X`` on every call (20x slower than the row form ``U @ X``). These products carry a vmap rule
that keeps every batch axis in front, so a batch of ``B`` problems costs one ``(B, N) @ (N, D)`` product.

``V @ X^T`` for 2 to ``fused_max_rows`` rows (a policy setting; 16 on the CPU, 0 elsewhere) is written as
an elementwise product summed over ``D``, which XLA's CPU backend fuses into one pass over ``X`` for
all rows (padded to 4, or from 5 rows on to a multiple of 8: the widths it ran fastest); one row keeps the
matrix-vector kernel. The measurements behind both choices are in ``benchmarks/RESULTS.md``
(``python benchmarks/solver_choices.py products`` reruns them). The Nystrom sketches take the dot whatever
the setting (:func:`._nystrom.nystrom_gram`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ._policy import default_policy
from ._precision import einsum, matmul


class Products(NamedTuple):
    """``matvec(X, v)`` = ``X @ v`` (``v`` ``(..., D)`` -> ``(..., N)``) and ``rmatvec(X, u)`` = ``X^T @ u``
    (``u`` ``(..., N)`` -> ``(..., D)``), each with a vmap rule that keeps the batch axes in front."""

    matvec: object
    rmatvec: object


def _rows(v: Array) -> Array:
    return v.reshape(-1, v.shape[-1])


@functools.cache
def products(fused_max_rows: int) -> Products:
    """The products with ``X`` in the form a policy picks: ``V @ X^T`` for 2 to ``fused_max_rows`` rows as
    the fused elementwise sum (see the module docstring), XLA's dot otherwise. One pair per setting, so a
    policy's programs reuse it."""

    def rows_times_transpose(rows: Array, X: Array) -> Array:
        n_rows = rows.shape[0]
        if 2 <= n_rows <= fused_max_rows:
            padded = jnp.pad(rows, ((0, (4 - n_rows) if n_rows <= 4 else -n_rows % 8), (0, 0)))
            return jnp.sum(X[None] * padded[:, None, :], axis=-1)[:n_rows]
        return matmul(rows, X.T)

    @jax.custom_batching.custom_vmap
    def matvec(X: Array, v: Array) -> Array:
        out_shape = v.shape[:-1] + X.shape[:1]
        if v.size == v.shape[-1]:
            # A single vector: XLA's matrix-vector kernel on X as it lies. The row form (1, D) @ X^T measured
            # 4x slower on a wide X (1600 x 9216), and from D = 4096 on XLA's CPU backend transposes X into
            # a copy at every such product: one more layer in memory, 6x slower (8192 x 4096); elsewhere
            # the two forms tie within noise (RESULTS.md, "Streamed fits' peak memory").
            return matmul(X, v.reshape(-1)).reshape(out_shape)
        return rows_times_transpose(_rows(v), X).reshape(out_shape)

    @jax.custom_batching.custom_vmap
    def rmatvec(X: Array, u: Array) -> Array:
        return matmul(_rows(u), X).reshape(u.shape[:-1] + X.shape[1:])

    @matvec.def_vmap
    def _matvec_vmap(axis_size: int, in_batched: list[bool], X: Array, v: Array) -> tuple[Array, bool]:
        x_batched, v_batched = in_batched
        if x_batched:  # one X per batch entry (layers vmapped): a batched product, axis 0 first.
            v = v if v_batched else jnp.broadcast_to(v, (axis_size,) + v.shape)
            return einsum("bnd,b...d->b...n", X, v), True
        return matvec(X, v), True  # the batch axis is just another leading axis of v

    @rmatvec.def_vmap
    def _rmatvec_vmap(axis_size: int, in_batched: list[bool], X: Array, u: Array) -> tuple[Array, bool]:
        x_batched, u_batched = in_batched
        if x_batched:
            u = u if u_batched else jnp.broadcast_to(u, (axis_size,) + u.shape)
            return einsum("bnd,b...n->b...d", X, u), True
        return rmatvec(X, u), True

    return Products(matvec, rmatvec)


def matvec(X: Array, v: Array) -> Array:
    """``X @ v`` for ``X`` ``(N, D)`` and ``v`` ``(..., D)`` in the default policy's form; returns ``(..., N)``."""
    return products(default_policy().fused_max_rows).matvec(X, v)


def rmatvec(X: Array, u: Array) -> Array:
    """``X^T @ u`` for ``X`` ``(N, D)`` and ``u`` ``(..., N)``; returns ``(..., D)``."""
    return products(default_policy().fused_max_rows).rmatvec(X, u)
