"""Products with a design matrix ``X`` (``(N, D)``) that stay matrix-matrix under ``vmap``.

A one-problem solver computes ``X @ v`` and ``X^T @ u``. When it is vmapped over problems that share
``X`` (a ``C`` grid, CV folds), JAX's default batching rule places the new axis last and computes
``X^T @ U`` with ``U`` of shape ``(N, B)``; on the CPU, XLA then transposes ``X`` on every call, which
measured 20x slower than the row form ``U @ X`` with ``U`` ``(B, N)`` (3000 x 768, one core: 4.3 ms vs
0.19 ms for a pair of products). These products carry a custom vmap rule that keeps every batch axis
in front and calls the row form, so a batch of ``B`` problems costs one ``(B, N) @ (N, D)`` product.

The batched ``X @ v`` contracts ``X``'s rows (``(B, D) x (N, D)^T``), which XLA's CPU dot runs ~2.5x
slower than with a row-major copy of ``X^T`` at ``B = 5`` in isolation; keeping such a copy next to ``X``
measured *slower* inside the solver loop (3000 x 768, 12 layers, one core: CV 1.42 s -> 1.76 s, C grid
1.36 s -> 1.94 s), as two 9 MB matrices per layer no longer share the last-level cache. So ``X`` alone,
and on the CPU, for 2 to 16 rows, the product is written as an elementwise product summed over ``D``,
which XLA fuses into one pass over ``X`` computing every row's dot at once (rows padded to 4, or from 5
rows on to a multiple of 8: the widths it handled best). Inside the solvers, one core, against the dot
(same process, medians of 5): CV folds (``B = 5``) 1.20 -> 1.03 s on 12 x 3000 x 768 (8 C) and 0.236 ->
0.200 s on 30 x 600 x 576 (4 C); a 5-class softmax fit (``B = K = 5``) on 4 x 3000 x 768 1.19 -> 0.77 s;
10 classes 2.21 -> 2.03 s. For 2-4 rows, padding to 4 rather than 8: 3 CV folds 1.10 -> 0.92 s
(12 x 3000 x 768) and 0.174 -> 0.156 s (30 x 600 x 576), a 3-class softmax fit 0.130 -> 0.111 s. At 50
rows it was slower (0.53 -> 0.72 s), and for one row XLA's matrix-vector kernel is far faster than the
fused form (0.09 vs 20 ms), so both keep the dot. Other backends keep it
too (not measured there). ``python benchmarks/solver_choices.py products`` reruns the comparison.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from ._precision import einsum, matmul

# Most rows of v for which the CPU product is the fused elementwise form (see the module docstring).
_FUSED_MAX_ROWS = 16


def _rows(v: Array) -> Array:
    return v.reshape(-1, v.shape[-1])


def _rows_times_transpose(rows: Array, X: Array) -> Array:
    """``rows @ X.T`` (``(B, D)``, ``(N, D)`` -> ``(B, N)``), in the form XLA's CPU backend runs fastest."""
    n_rows = rows.shape[0]
    if 2 <= n_rows <= _FUSED_MAX_ROWS and jax.default_backend() == "cpu":
        padded = jnp.pad(rows, ((0, (4 - n_rows) if n_rows <= 4 else -n_rows % 8), (0, 0)))
        return jnp.sum(X[None] * padded[:, None, :], axis=-1)[:n_rows]
    return matmul(rows, X.T)


@jax.custom_batching.custom_vmap
def matvec(X: Array, v: Array) -> Array:
    """``X @ v`` for ``X`` ``(N, D)`` and ``v`` ``(..., D)``; returns ``(..., N)``."""
    out_shape = v.shape[:-1] + X.shape[:1]
    if v.size == v.shape[-1]:
        # A single vector: XLA's matrix-vector kernel on X as it lies. The row form (1, D) @ X^T measured
        # 4x slower on a wide X (1600 x 9216), and from D = 4096 on XLA's CPU backend transposes X into a
        # copy at every such product: one more layer in memory, 6x slower (8192 x 4096); elsewhere the
        # two forms tie within noise (RESULTS.md, "Streamed fits' peak memory").
        return matmul(X, v.reshape(-1)).reshape(out_shape)
    return _rows_times_transpose(_rows(v), X).reshape(out_shape)


@jax.custom_batching.custom_vmap
def rmatvec(X: Array, u: Array) -> Array:
    """``X^T @ u`` for ``X`` ``(N, D)`` and ``u`` ``(..., N)``; returns ``(..., D)``."""
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
