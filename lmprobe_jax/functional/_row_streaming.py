r"""Solvers for a layer whose rows do not fit in memory: every product with ``X`` is a sum over row blocks.

Three of the package's solvers are streamed over rows (see :mod:`._streaming` for when this is used).
Each block of rows is handed to JAX as it lies in the store's memory map, in its stored dtype (no copy
on the host; each program widens its block to float32), the kernel reading the next block ahead, and
its pages are let go from the process once the pass moves on:

* **ridge** (:func:`ridge_rows`, what :func:`fit_ridge` solves): one pass accumulates the weighted,
  centred Gram matrix ``Xs^T Xs`` and ``Xs^T ys`` (each block's moments merged by Chan, Golub and
  LeVeque's pairwise update, in float64 on the host, so no block's mean is subtracted from another's
  sums); each ``alpha`` is then a float64 Cholesky solve of ``(Xs^T Xs + alpha I) w = Xs^T ys``, and a
  second pass computes the residual ``Xs^T (ys - Xs w) - alpha w`` from the data for one step of
  iterative refinement (as the in-memory solver does), which removes the float32 rounding of the blocks'
  Gram products.
* **binary logistic** (:func:`logistic_rows`, what :func:`fit_logistic` solves): truncated Newton on
  ``C sum_i s_i log(1 + exp(-m_i)) + ||w||^2 / 2``. The gradient is one pass (``C X^T (s * dl/dz) + w``),
  each conjugate-gradient step one pass (the Hessian-vector product ``C X^T (s * d2l/dz2 * X p) + p``),
  and the line search none: it moves the stored predictor ``z`` along ``X d``, which CG accumulates from
  its own products. CG is preconditioned with a randomized Nyström approximation of ``[X, 1]^T [X, 1]``
  (rank 256 by default) from an evenly spaced subsample of the rows (:func:`._nystrom.nystrom_gram`, its
  eigenvalues scaled by ``N / n_sub``), and stops as the in-memory solver's does: at its forcing term, or
  once every entry of its residual is within ``tol / 2`` (scaled). Stopping rule as :func:`fit_logistic`:
  the scaled gradient's max-abs entry ``<= tol`` and the last Newton decrement's relative gap estimate
  ``<= tol``, or the float floor. A ``C`` grid is solved as a warm-started path in increasing ``C``.
* **binary logistic cross-validation** (:func:`logistic_cv_rows`, what :func:`cross_validate_logistic`
  solves for two classes): the in-memory CV's folds, scores, choice of ``C`` and refit
  (:mod:`._cv`), the ``F`` folds' paths solved together as one batch of problems whose sample weights
  are zero on each fold's held-out rows: every pass over a block gives all ``F`` gradients or
  Hessian-vector products (one ``(F, r) x (r, D)`` product), a fold that has converged stops stepping
  while the others go on; the held-out decision values are one more pass. Softmax CV does not stream rows.

Memory: one row block as stored (its mapped pages) and its float32 widening inside each program
(``r D 4`` bytes for ``r`` rows a block; logistic passes hand a block to their programs in pieces of at
most 8 MB widened, which costs less at every call), ``O(N)`` vectors per problem (``z``, ``X d``, the curvature
weights, a CG product, the line search's trial; ``P = 1`` for a fit, ``F`` for the CV's folds, plus its
``F G`` held-out decision values), the Nyström sketch's subsample (at most ``min(8192, r)`` rows of the
layer) and ``O(D^2)`` for ridge's Gram matrix (float64). As a multiple of the input ``N D b`` bytes
(``b = 2`` for float16): ``(b + 4) r / (b N)`` for the block, plus about ``4 (F G + 6 F + 10) / (b D)``
for the vectors -- for 80000 x 4096 float16 in 2000-row blocks, 0.08 plus 0.03 of the layer for a 5-fold
CV over 3 values of ``C`` (the planner,
:func:`._budget.plan_chunks`, counts two float32 blocks and the in-memory solver's copies per row: an
upper bound). Time: ridge reads the layer twice; logistic reads it once per Newton step and once per CG
step (the in-memory solver's passes over ``X``, from the page cache once the first pass has read it); the
CV once per step of the fold that needs the most, for all folds, plus its refit's steps.
"""

from __future__ import annotations

import functools
import mmap
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import Array

from . import _checks, _metrics
from ._cv import CVResult, chosen_value, logistic_cv_setup, scored_held_out, training_weights
from ._glm import DEFAULT_TOL
from ._logistic import BINARY_LOGISTIC, LogisticFit
from ._newton_cg import _MAX_FORCING
from ._nystrom import apply_preconditioner, nystrom_gram
from ._path import default_max_cg_iter, default_precondition_rank
from ._precision import row_sums
from ._products import matvec, rmatvec
from ._ridge import MulticlassRidgeFit, RidgeFit, ridge_targets
from ._sources import LayerSource, advise_pages

_ARMIJO_C1 = 1e-4
_MAX_HALVINGS = 30
#: Most rows of the subsample the Nyström preconditioner is built from.
_SKETCH_ROWS = 8192
#: Default Nyström rank here (in memory: 64 up to D = 1024, then D / 16): a pass over the rows costs far
#: more than a rank-256 apply, and at 256 CG took 2-2.5x fewer passes than at 64 (512 and up: more again).
_ROW_NYSTROM_RANK = 256
#: Most bytes of a block's float32 widening in one program: XLA's CPU backend allocates that buffer at
#: every call, and above the C library's mmap threshold (at most 32 MB) each call faults its pages in
#: afresh; 80000 x 4096 float16, one pass: 641 ms in 5417-row pieces, 142 ms in 512-row ones (RESULTS.md).
_PIECE_BYTES = 8 << 20


def _blocks(source: LayerSource, layer: int, row_block: int, piece_rows: int | None = None,
            ) -> Iterator[tuple[slice, Array]]:
    """``(rows, X[rows])`` of one layer, in the stored dtype: read ``row_block`` rows at a time, handed to
    JAX ``piece_rows`` rows at a time (default: whole blocks) as they lie in the store's memory map (no
    copy on the CPU; the solvers' programs widen each piece to float32). The kernel reads the next block
    ahead meanwhile, and a block's pages are let go once the caller has moved past its last piece."""
    data = source.layer(layer)
    piece_rows = piece_rows or row_block
    for a in range(0, data.shape[0], row_block):
        block = slice(a, min(a + row_block, data.shape[0]))
        advise_pages(data[block.stop:block.stop + row_block], mmap.MADV_WILLNEED)
        for b in range(block.start, block.stop, piece_rows):
            rows = slice(b, min(b + piece_rows, block.stop))
            x = jax.device_put(data[rows])
            yield rows, x
            del x
        advise_pages(data[block], mmap.MADV_DONTNEED)


def _pieces(row_block: int, n_features: int) -> tuple[int, int]:
    """``(row_block, piece_rows)`` for a logistic pass: pieces whose float32 widening is at most
    :data:`_PIECE_BYTES`, the block a whole number of them (so only the layer's last piece has another
    shape to compile)."""
    piece = min(row_block, max(1, _PIECE_BYTES // (4 * n_features)))
    return row_block // piece * piece, piece


def _widened(x: Array) -> Array:
    """A block in float32, inside the program that uses it (half-precision stores stay half on the host)."""
    return x.astype(jnp.float32)


# -- ridge ------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("fit_intercept",))
def _block_moments(x: Array, Y: Array, s: Array, *, fit_intercept: bool) -> tuple[Array, ...]:
    """One block's weight, weighted means and centred cross-products ``(sum s, xbar, ybar, M, P)``."""
    x, total = _widened(x), jnp.sum(s)
    if fit_intercept:
        xbar = jnp.matmul(s, x, precision="highest") / total
        ybar = jnp.matmul(Y, s, precision="highest") / total
        x, Y = x - xbar, Y - ybar[:, None]
    else:
        xbar, ybar = jnp.zeros(x.shape[1]), jnp.zeros(Y.shape[0])
    xs = x * s[:, None]
    return total, xbar, ybar, jnp.matmul(xs.T, x, precision="highest"), jnp.matmul(Y, xs, precision="highest")


@functools.partial(jax.jit, static_argnames=("fit_intercept",))
def _block_residual(x: Array, Y: Array, s: Array, xbar: Array, ybar: Array, coef: Array, *,
                    fit_intercept: bool) -> Array:
    """``(G, T, D)``: the block's part of ``Xs^T (ys - Xs w)`` for each alpha's ``w`` ``(G, T, D)``."""
    x = _widened(x)
    if fit_intercept:
        x, Y = x - xbar, Y - ybar[:, None]
    residual = Y[None] - jnp.einsum("nd,gtd->gtn", x, coef, precision="highest")
    return jnp.einsum("gtn,nd->gtd", residual * s, x, precision="highest")


def ridge_rows(
    source: LayerSource, layer: int, row_block: int, y: Any, alpha: Any = 1.0, *, sample_weight: Any = None,
    fit_intercept: bool = True, layer_batch_size: int | None = None,
) -> RidgeFit | MulticlassRidgeFit:
    """:func:`fit_ridge` on layer ``layer`` of ``source``, reading ``row_block`` rows at a time.

    Returns the fit of that one layer (no layer axis), ``coef`` ``([G,] [K,] D)``.
    """
    del layer_batch_size  # one layer at a time
    n, d = source.shape[1:]
    Y, _ = ridge_targets(y, n)
    s = _checks.check_sample_weight(sample_weight, n)
    alphas, is_grid = _checks.check_grid(alpha, "alpha")
    total, xbar, ybar = 0.0, np.zeros(d), np.zeros(Y.shape[0])
    gram, cross = np.zeros((d, d)), np.zeros((Y.shape[0], d))
    for rows, x in _blocks(source, layer, row_block):
        w_b, xbar_b, ybar_b, gram_b, cross_b = (np.asarray(a, np.float64) for a in _block_moments(
            x, jnp.asarray(Y[:, rows]), jnp.asarray(s[rows]), fit_intercept=bool(fit_intercept)))
        if w_b == 0:
            continue
        # Chan et al.'s pairwise update: the two parts' centred sums plus the outer product of the mean shift.
        dx, dy, joined = xbar_b - xbar, ybar_b - ybar, total + w_b
        shift = total * w_b / joined
        gram += gram_b + shift * np.outer(dx, dx)
        cross += cross_b + shift * np.outer(dy, dx)
        xbar, ybar, total = xbar + dx * w_b / joined, ybar + dy * w_b / joined, joined

    factors = [scipy.linalg.cho_factor(gram + a * np.eye(d)) for a in alphas]
    coef = np.stack([scipy.linalg.cho_solve(f, cross.T).T for f in factors])  # (G, T, D)
    residual = np.zeros_like(coef)
    centre = (jnp.asarray(xbar, jnp.float32), jnp.asarray(ybar, jnp.float32))
    for rows, x in _blocks(source, layer, row_block):
        residual += np.asarray(_block_residual(
            x, jnp.asarray(Y[:, rows]), jnp.asarray(s[rows]), *centre, jnp.asarray(coef, jnp.float32),
            fit_intercept=bool(fit_intercept)), np.float64)
    residual -= alphas[:, None, None] * coef
    coef = coef + np.stack([scipy.linalg.cho_solve(f, r.T).T for f, r in zip(factors, residual)])
    intercept = ybar - coef @ xbar  # (G, T)
    squeeze = tuple(i for i, drop in ((0, not is_grid), (1, Y.shape[0] == 1)) if drop)
    fit_type = RidgeFit if Y.shape[0] == 1 else MulticlassRidgeFit
    return fit_type(jnp.asarray(np.squeeze(coef, squeeze), jnp.float32),
                    jnp.asarray(np.squeeze(intercept, squeeze), jnp.float32))


# -- binary logistic ---------------------------------------------------------------------------------
# A batch of P problems shares the layer and its labels and differs in its sample weights (the CV's
# folds): every pass over a block serves all P, so folds cost one read per step, not one each.


def _piece(a: Array, start: Array, size: int) -> Array:
    """Entries ``start:start + size`` of ``a``'s last axis, inside the program (no dispatch of its own)."""
    return jax.lax.dynamic_slice_in_dim(a, start, size, axis=-1)


@jax.jit
def _block_gradient(x: Array, y: Array, s: Array, z: Array, C: Array, start: Array, g_coef: Array,
                    g_int: Array) -> tuple[tuple[()], tuple[Array, Array]]:
    r = x.shape[0]
    dz = C * _piece(s, start, r) * BINARY_LOGISTIC.evaluate(_piece(z, start, r), _piece(y, start, r))[1]  # (P, r)
    return (), (g_coef + rmatvec(_widened(x), dz), g_int + row_sums(dz))


@jax.jit
def _block_hvp(x: Array, w: Array, start: Array, p_coef: Array, p_int: Array, h_coef: Array,
               h_int: Array) -> tuple[Array, tuple[Array, Array]]:
    x = _widened(x)
    u = matvec(x, p_coef) + p_int[:, None]  # (P, r)
    hu = _piece(w, start, x.shape[0]) * u
    return u, (h_coef + rmatvec(x, hu), h_int + row_sums(hu))


@jax.jit
def _block_predictor(x: Array, coef: Array, intercept: Array) -> Array:
    return matvec(_widened(x), coef) + intercept[..., None]


class _LayerRows:
    """One layer's labels ``(N,)``, the ``P`` problems' sample weights ``(P, N)`` and the layer's row
    blocks: the passes a batch of streamed Newton solves makes over it."""

    def __init__(self, source: LayerSource, layer: int, row_block: int, y: np.ndarray, s: np.ndarray,
                 fit_intercept: bool):
        self.source, self.layer = source, layer
        self.row_block, self.piece_rows = _pieces(row_block, source.shape[2])
        self.y, self.s = jnp.asarray(y, jnp.float32), jnp.asarray(np.atleast_2d(s), jnp.float32)
        self.fit_intercept = fit_intercept
        self.passes = 0

    def _map(self, fn: Callable[[slice, Array, Any], tuple[Any, Any]], carry: Any = None) -> tuple[list[Any], Any]:
        """``out, carry = fn(rows, X[rows], carry)`` over every piece, in order: one pass. Returns the
        pieces' outputs and the last carry; each program is one dispatch (the sums run inside them)."""
        self.passes += 1
        n, outs, queued = self.source.shape[1], [], []
        for rows, x in _blocks(self.source, self.layer, self.row_block, self.piece_rows):
            out, carry = fn(rows, x, carry)
            outs.append(out)
            queued.append((out, carry))
            if rows.stop % self.row_block == 0 or rows.stop == n:
                # Finished before the block's pages are let go: a computation still queued would map them back.
                jax.block_until_ready(queued)
                queued = []
            del x
        return outs, carry

    def predictor(self, coef: Array, intercept: Array) -> Array:
        """``X coef + intercept``, ``(..., N)`` for ``coef`` ``(..., D)``: one pass."""
        outs, _ = self._map(lambda rows, x, carry: (_block_predictor(x, coef, intercept), carry))
        return jnp.concatenate(outs, axis=-1)

    def gradient(self, z: Array, coef: Array, C: Array) -> tuple[Array, Array]:
        """``C X^T (s * dl/dz) + coef`` and its intercept part, ``(P, D)`` and ``(P,)``: one pass."""
        _, (g_coef, g_int) = self._map(
            lambda rows, x, carry: _block_gradient(x, self.y, self.s, z, C, rows.start, *carry),
            (coef, jnp.zeros(coef.shape[0], jnp.float32)))
        return g_coef, g_int * self.fit_intercept

    def curvature(self, z: Array, C: Array) -> Array:
        """``C s d2l/dz2`` at ``z``, ``(P, N)``: the Hessian's weights for a Newton step (no pass)."""
        return C * self.s * BINARY_LOGISTIC.curvature(BINARY_LOGISTIC.evaluate(z, self.y)[2])

    def hvp(self, w: Array, p_coef: Array, p_int: Array) -> tuple[Array, Array, Array]:
        """``(X p, H p)`` for the weights ``w`` ``(P, N)``: ``(P, N)``, ``(P, D)``, ``(P,)``; one pass."""
        outs, (h_coef, h_int) = self._map(
            lambda rows, x, carry: _block_hvp(x, w, rows.start, p_coef, p_int, *carry),
            (p_coef, jnp.zeros(p_coef.shape[0], jnp.float32)))
        return jnp.concatenate(outs, axis=-1), h_coef, h_int * self.fit_intercept

    def sketch(self, rank: int) -> Any:
        """Nyström approximation of ``[X, 1]^T [X, 1]`` from evenly spaced rows, scaled to all ``N``."""
        n = self.source.shape[1]
        step = max(1, -(-n // min(_SKETCH_ROWS, self.row_block)))
        sub = np.asarray(self.source.layer(self.layer)[::step], np.float32)
        approx = nystrom_gram(jnp.asarray(sub), rank, fit_intercept=self.fit_intercept)
        return approx._replace(eig=approx.eig * (n / sub.shape[0]))


def _precondition(precond: Any, mu: Array, fit_intercept: bool, v_coef: Array, v_int: Array) -> tuple[Array, Array]:
    if precond is None:
        return v_coef, v_int
    m_coef, m_int = apply_preconditioner(precond, mu, v_coef, v_int)
    return m_coef, m_int * fit_intercept


def _dot(a_coef: Array, a_int: Array, b_coef: Array, b_int: Array) -> Array:
    """Each problem's inner product of two ``(coef, intercept)`` vectors, ``(P,)``."""
    return jnp.sum(a_coef * b_coef, axis=-1) + a_int * b_int


class _CG(NamedTuple):
    """Batched preconditioned CG on ``H d = -g``: each problem's iterate, residual, search direction and
    scalars; ``running`` ``(P,)`` marks the problems still stepping."""

    d_coef: Array
    d_int: Array
    xd: Array
    r_coef: Array
    r_int: Array
    p_coef: Array
    p_int: Array
    rz: Array
    rr: Array
    running: Array


class _CGStop(NamedTuple):
    """Where each problem's CG stops, ``(P,)`` each: once ``|r| <= tol``, or once every entry of ``r`` is
    within ``reach`` and ``|r| <= loose`` (the next gradient is, to first order, CG's residual, and the
    stopping test reads its max-abs entry; as the in-memory solver's CG)."""

    tol: Array
    reach: Array
    loose: Array


def _unsolved(r_coef: Array, r_int: Array, rr: Array, rz: Array, stop: _CGStop) -> Array:
    """``(P,)``: the problems whose CG goes on (``rz > 0`` fails only where rounding broke ``M``)."""
    worst = jnp.maximum(jnp.max(jnp.abs(r_coef), axis=-1), jnp.abs(r_int))
    solved = (rr <= stop.tol**2) | ((rr <= stop.loose**2) & (worst <= stop.reach))
    return ~solved & (rz > 0)


@functools.partial(jax.jit, static_argnames=("n", "fit_intercept"))
def _cg_start(g_coef: Array, g_int: Array, n: int, precond: Any, mu: Array, stop: _CGStop, *,
              fit_intercept: bool) -> _CG:
    r_coef, r_int = -g_coef, -g_int
    p_coef, p_int = _precondition(precond, mu, fit_intercept, r_coef, r_int)
    rz, rr = _dot(r_coef, r_int, p_coef, p_int), _dot(r_coef, r_int, r_coef, r_int)
    return _CG(jnp.zeros_like(g_coef), jnp.zeros_like(g_int), jnp.zeros(g_int.shape + (n,)), r_coef, r_int, p_coef,
               p_int, rz, rr, _unsolved(r_coef, r_int, rr, rz, stop))


@functools.partial(jax.jit, static_argnames="fit_intercept")
def _cg_step(cg: _CG, u: Array, h_coef: Array, h_int: Array, precond: Any, mu: Array, stop: _CGStop, *,
             fit_intercept: bool) -> _CG:
    """One CG step of the running problems from the products ``u = X p`` and ``H p``; the others keep theirs."""
    step = jnp.where(cg.running, cg.rz / jnp.maximum(_dot(cg.p_coef, cg.p_int, h_coef, h_int), 1e-30), 0.0)
    r_coef, r_int = cg.r_coef - step[:, None] * h_coef, cg.r_int - step * h_int
    m_coef, m_int = _precondition(precond, mu, fit_intercept, r_coef, r_int)
    rz = jnp.where(cg.running, _dot(r_coef, r_int, m_coef, m_int), cg.rz)
    beta = jnp.where(cg.running, rz / jnp.where(cg.running, cg.rz, 1.0), 0.0)
    rr = jnp.where(cg.running, _dot(r_coef, r_int, r_coef, r_int), cg.rr)
    return _CG(cg.d_coef + step[:, None] * cg.p_coef, cg.d_int + step * cg.p_int, cg.xd + step[:, None] * u,
               r_coef, r_int, jnp.where(cg.running[:, None], m_coef + beta[:, None] * cg.p_coef, cg.p_coef),
               jnp.where(cg.running, m_int + beta * cg.p_int, cg.p_int), rz, rr,
               cg.running & _unsolved(r_coef, r_int, rr, rz, stop))


def _newton_direction(rows: _LayerRows, w: Array, g_coef: Array, g_int: Array, precond: Any, stop: _CGStop,
                      max_cg_iter: int) -> tuple[Array, Array, Array]:
    """Conjugate gradients on ``H d = -g`` for every problem at once, one pass over the rows per step (for
    all problems); each stops where its own ``stop`` says (``tol`` ``inf``: no step). ``(d_coef, d_int, X d)``."""
    # H ~ a (A + I / a), a = C * mean curvature (as in-memory)
    mu = 1.0 / jnp.maximum(jnp.sum(w, axis=-1) / w.shape[-1], 1e-30)
    stop = _CGStop(*(jnp.asarray(v, jnp.float32) for v in stop))
    cg = _cg_start(g_coef, g_int, w.shape[-1], precond, mu, stop, fit_intercept=rows.fit_intercept)
    for _ in range(max_cg_iter):
        if not bool(jnp.any(cg.running)):
            break
        cg = _cg_step(cg, *rows.hvp(w, cg.p_coef, cg.p_int), precond, mu, stop, fit_intercept=rows.fit_intercept)
    return cg.d_coef, cg.d_int, cg.xd


@jax.jit
def _decrease(y: Array, s: Array, z: Array, base: Array, xd: Array, t: Array, C: Array) -> Array:
    """``C sum_i s_i (l(z_i + t (X d)_i) - l(z_i))`` per problem, ``(P,)``, summed per sample (no pass);
    ``base`` holds the losses ``l(z_i)``."""
    return C * jnp.sum(s * (BINARY_LOGISTIC.evaluate(z + t[:, None] * xd, y)[0] - base), axis=-1)


def _armijo_steps(rows: _LayerRows, z: Array, base: Array, xd: Array, C: Array, coef: Array, d_coef: Array,
                  slope: np.ndarray, todo: np.ndarray) -> np.ndarray:
    """Per problem in ``todo``, the largest ``t`` in ``1, 1/2, ...`` meeting Armijo's condition along
    ``z + t X d`` (no pass over the rows; ``base``: the losses at ``z``); ``nan`` where none does (and
    outside ``todo``)."""
    wd, dd = np.asarray(jnp.sum(coef * d_coef, axis=-1)), np.asarray(jnp.sum(d_coef * d_coef, axis=-1))
    t, found = np.ones(slope.shape), np.full(slope.shape, np.nan)
    for _ in range(_MAX_HALVINGS + 1):
        pending = todo & np.isnan(found)
        if not pending.any():
            break
        data = np.asarray(_decrease(rows.y, rows.s, z, base, xd, jnp.asarray(t, jnp.float32), C))
        ok = pending & (slope < 0) & (data + t * wd + 0.5 * t * t * dd <= _ARMIJO_C1 * t * slope)
        found[ok] = t[ok]
        t = np.where(pending, 0.5 * t, t)
    return found


def _per_problem(keep: np.ndarray, new: tuple[Array, ...], old: tuple[Array, ...]) -> tuple[Array, ...]:
    """Each array of ``new`` where ``keep`` ``(P,)`` holds, of ``old`` elsewhere (arrays ``(P, ...)``)."""
    keep = jnp.asarray(keep)
    return tuple(jnp.where(keep.reshape((-1,) + (1,) * (a.ndim - 1)), a, b) for a, b in zip(new, old))


class _Solved(NamedTuple):
    """A batch of ``P`` streamed solves: ``coef`` ``(P, D)``, ``intercept`` ``(P,)``, predictor
    ``z = X coef + intercept`` ``(P, N)`` over every row (held-out ones included), Newton steps,
    convergence and the scaled gradient's max-abs entry, each ``(P,)``."""

    coef: Array
    intercept: Array
    z: Array
    n_iter: np.ndarray
    converged: np.ndarray
    optimality: np.ndarray


def _newton(rows: _LayerRows, C: float, start: tuple[Array, Array, Array], precond: Any, *, tol: float,
            gap_tol: float, max_iter: int, max_cg_iter: int) -> _Solved:
    """Truncated Newton for one ``C``, every problem of ``rows`` at once, from ``start = (coef, intercept,
    z)``. A problem has converged when its scaled gradient's max-abs entry is ``<= tol`` and its relative
    gap estimate ``<= gap_tol`` (``inf``: the gradient test alone, as the CV's fold problems); it then
    stops stepping while the others go on, and each pass over the rows serves those still running."""
    eps = float(jnp.finfo(jnp.float32).eps)
    C = jnp.float32(C)
    coef, intercept, z = start
    scale = np.asarray(C * jnp.sum(rows.s, axis=-1), np.float64)

    def optimality(g: tuple[Array, Array]) -> np.ndarray:
        return np.asarray(jnp.maximum(jnp.max(jnp.abs(g[0]), axis=-1), jnp.abs(g[1])), np.float64) / scale

    g = rows.gradient(z, coef, C)
    opt = opt0 = optimality(g)
    n_iter = np.zeros(opt.shape, np.int32)
    converged, done = np.zeros(opt.shape, bool), np.zeros(opt.shape, bool)
    while True:
        active = ~done & (n_iter < max_iter)
        if not active.any():
            break
        g_norm = np.sqrt(np.asarray(_dot(*g, *g), np.float64))
        # Inexact Newton forcing term, as the in-memory solver's (loose far from the optimum, tight near it),
        # and its stop once the residual's every entry is within half the (unscaled) gradient tolerance.
        forcing = np.minimum(0.1, np.sqrt(opt / np.maximum(opt0, 1e-300)))
        stop = _CGStop(np.where(active, forcing * g_norm, np.inf), 0.5 * tol * scale, _MAX_FORCING * g_norm)
        d_coef, d_int, xd = _newton_direction(rows, rows.curvature(z, C), *g, precond, stop, max_cg_iter)
        slope = np.asarray(_dot(*g, d_coef, d_int), np.float64)
        losses = BINARY_LOGISTIC.evaluate(z, rows.y)[0]  # (P, N), for the objective and the line search
        objective = np.asarray(C * jnp.sum(rows.s * losses, axis=-1) + 0.5 * jnp.sum(coef * coef, axis=-1),
                               np.float64)
        # Below the float resolution of F the line search cannot measure progress: take the full step.
        at_precision = -slope <= eps * objective
        t = np.where(at_precision, 1.0,
                     _armijo_steps(rows, z, losses, xd, C, coef, d_coef, slope, active & ~at_precision))
        n_iter += active
        stalled = active & np.isnan(t)  # no decrease found: stopped, unconverged
        moving = active & ~stalled
        step = jnp.asarray(np.where(moving, t, 0.0), jnp.float32)
        new = (coef + step[:, None] * d_coef, intercept + step * d_int, z + step[:, None] * xd)
        g_new = rows.gradient(new[2], new[0], C)
        opt_new = optimality(g_new)
        floor = moving & at_precision & (opt_new >= opt)  # the float floor: keep the better iterate
        accept = moving & ~floor
        coef, intercept, z = _per_problem(accept, new, (coef, intercept, z))
        g = _per_problem(accept, g_new, g)
        opt = np.where(accept, opt_new, opt)
        now = floor | (accept & (opt <= tol) & (-slope / (2 * objective) <= gap_tol))
        converged |= now
        done |= now | stalled
    return _Solved(coef, intercept, z, n_iter, converged, opt)


def _path(rows: _LayerRows, Cs: np.ndarray, precond: Any, start: tuple[Array, Array, Array], *, tol: float,
          gap_tol: float, max_iter: int, max_cg_iter: int) -> list[_Solved]:
    """Each ``C`` of the grid ``(G,)`` solved from the previous one's solutions, in increasing ``C`` from
    ``start = (coef, intercept, z)``; the ``G`` batches of solves in the grid's order."""
    out: list[Any] = [None] * Cs.size
    state = start
    for g in np.argsort(Cs, kind="stable"):
        out[g] = _newton(rows, float(Cs[g]), state, precond, tol=tol, gap_tol=gap_tol, max_iter=max_iter,
                         max_cg_iter=max_cg_iter)
        state = out[g][:3]
    return out


def _origin(p: int, n: int, d: int) -> tuple[Array, Array, Array]:
    return jnp.zeros((p, d)), jnp.zeros(p), jnp.zeros((p, n))


def _as_fit(path: list[_Solved]) -> LogisticFit:
    """The solves of a grid as a :class:`LogisticFit` with fields ``(P, G, ...)``."""
    columns = [np.stack([np.asarray(solved[i]) for solved in path], axis=1) for i in (0, 1, 3, 4, 5)]
    return LogisticFit(*(jnp.asarray(a, t) for a, t in zip(columns, (jnp.float32, jnp.float32, jnp.int32, bool,
                                                                      jnp.float32))))


class _NewtonSettings(NamedTuple):
    tol: float
    max_iter: int
    max_cg_iter: int
    precondition_rank: int


def _settings(d: int, tol: float, max_iter: int, max_cg_iter: int | None, precondition_rank: int | None) -> _NewtonSettings:
    """The checked solver settings, with ``fit_logistic``'s defaults for ``D`` features but a rank-256
    preconditioner (:data:`_ROW_NYSTROM_RANK`) unless ``precondition_rank`` is given."""
    max_cg = default_max_cg_iter(d) if max_cg_iter is None else _checks.check_positive_int(max_cg_iter, "max_cg_iter")
    rank = min(_ROW_NYSTROM_RANK, d) if precondition_rank is None else precondition_rank
    return _NewtonSettings(_checks.check_tol(tol), _checks.check_positive_int(max_iter, "max_iter"), max_cg,
                           default_precondition_rank(d, rank))


def logistic_rows(
    source: LayerSource, layer: int, row_block: int, y: Any, C: Any = 1.0, *, sample_weight: Any = None,
    fit_intercept: bool = True, tol: float = 1e-7, max_iter: int = 100, max_cg_iter: int | None = None,
    precondition_rank: int | None = None, layer_batch_size: int | None = None,
) -> LogisticFit:
    """:func:`fit_logistic` on layer ``layer`` of ``source``, reading ``row_block`` rows at a time.

    Returns the fit of that one layer (no layer axis), fields ``([G,] ...)``.
    """
    del layer_batch_size  # one layer at a time
    n, d = source.shape[1:]
    y01, _ = _checks.check_binary_labels(y, n)
    s = _checks.check_sample_weight(sample_weight, n)
    Cs, is_grid = _checks.check_grid(C, "C")
    opts = _settings(d, tol, max_iter, max_cg_iter, precondition_rank)
    rows = _LayerRows(source, layer, row_block, y01, s, bool(fit_intercept))
    precond = rows.sketch(opts.precondition_rank) if opts.precondition_rank else None
    path = _path(rows, Cs, precond, _origin(1, n, d), tol=opts.tol, gap_tol=opts.tol, max_iter=opts.max_iter,
                 max_cg_iter=opts.max_cg_iter)
    fit = LogisticFit(*(a[0] for a in _as_fit(path)))
    return fit if is_grid else LogisticFit(*(a[0] for a in fit))


def logistic_cv_rows(
    source: LayerSource, layer: int, row_block: int, y: Any, C: Any = (0.01, 0.1, 1.0, 10.0), *, folds: Any = 5,
    groups: Any = None, random_state: int | None = 0, scoring: str = "accuracy", multinomial: bool | None = None,
    sample_weight: Any = None, fit_intercept: bool = True, tol: float = DEFAULT_TOL, cv_tol: float = 1e-4,
    max_iter: int = 100, max_cg_iter: int | None = None, precondition_rank: int | None = None,
    layer_batch_size: int | None = None, n_classes: int | None = None, policy: Any = None,
) -> CVResult:
    """:func:`cross_validate_logistic` (binary) on layer ``layer`` of ``source``, reading ``row_block`` rows
    at a time: the same folds, scores, choice of ``C`` and refit, for one layer (no layer axis: scores
    ``(G, F)``, ``best_index`` ``()``, ``fit.coef`` ``(D,)``, ``n_iter`` ``(G, F + 1)``).

    Fold ``f`` is the streamed Newton path over the grid with sample weights ``s * [fold_id != f]``,
    stopped at ``cv_tol`` by the gradient test alone (as in memory); the ``F`` folds are solved together,
    each pass over a block giving every fold's product. Their held-out decision values
    ``X coef + intercept`` for the ``F G`` solutions take one more pass. The refit on all rows at the best
    ``C`` starts from the folds' mean solution there, stopped at ``tol``. One Nyström preconditioner for
    all. Passes over the layer: per ``C``, one per Newton and CG step of the fold that needs the most;
    then one for the scores, one for the refit's start, and one per Newton and CG step of the refit.
    ``policy`` and ``layer_batch_size`` choose the in-memory engine's parts: unused here.
    """
    del layer_batch_size, policy  # one layer, one streamed engine
    n, d = source.shape[1:]
    codes, _, softmax, sw, Cs, fold_ids = logistic_cv_setup(
        y, n, C, folds=folds, groups=groups, random_state=random_state, scoring=scoring, multinomial=multinomial,
        sample_weight=sample_weight, n_classes=n_classes)
    if softmax:
        raise ValueError(
            "cross_validate_logistic streams the rows of a layer for two classes only; these labels ask for a "
            "softmax fit. Give a memory_budget that holds one whole layer, or fewer rows."
        )
    opts = _settings(d, tol, max_iter, max_cg_iter, precondition_rank)
    cv_tol = _checks.check_tol(cv_tol)
    fold_rows = _LayerRows(source, layer, row_block, codes, np.stack(training_weights(fold_ids, sw)),
                           bool(fit_intercept))
    precond = fold_rows.sketch(opts.precondition_rank) if opts.precondition_rank else None
    n_folds = fold_rows.s.shape[0]
    paths = _as_fit(_path(fold_rows, Cs, precond, _origin(n_folds, n, d), tol=cv_tol, gap_tol=float("inf"),
                          max_iter=opts.max_iter, max_cg_iter=opts.max_cg_iter))  # fields (F, G, ...)
    # Decision values afresh (one pass for all folds), not the predictors the solves accumulated step by step.
    z = fold_rows.predictor(paths.coef, paths.intercept)  # (F, G, N)
    acc, ll, auc = (a.T for a in _metrics.fold_scores(z, jnp.asarray(codes), scored_held_out(fold_ids, sw)))  # (G, F)
    best, best_value = chosen_value({"accuracy": acc, "log_loss": ll, "roc_auc": auc}[scoring][None], scoring, Cs)
    b = int(best[0])
    start = jnp.mean(paths.coef[:, b], axis=0, keepdims=True), jnp.mean(paths.intercept[:, b], keepdims=True)
    rows = _LayerRows(source, layer, row_block, codes, sw, bool(fit_intercept))
    refit = _as_fit(_path(rows, Cs[b:b + 1], precond, (*start, rows.predictor(*start)), tol=opts.tol,
                          gap_tol=opts.tol, max_iter=opts.max_iter, max_cg_iter=opts.max_cg_iter))

    def per_problem(field: Array, refit_field: Array) -> Array:  # (G, F + 1): the folds', then the refit's
        return jnp.concatenate([field.T, jnp.broadcast_to(refit_field[0], (Cs.size, 1))], axis=1)

    return CVResult(
        grid=Cs, accuracy=acc, log_loss=ll, roc_auc=auc, mse=jnp.full_like(acc, jnp.nan), best_index=jnp.asarray(b),
        best_value=best_value[0], fit=LogisticFit(*(a[0, 0] for a in refit)), fold_ids=fold_ids,
        n_iter=per_problem(paths.n_iter, refit.n_iter), converged=per_problem(paths.converged, refit.converged),
    )
