r"""Solvers for a layer whose rows do not fit in memory: every product with ``X`` is a sum over row blocks.

Three of the package's solvers are streamed over rows (the layer is read from its memory map a block
at a time, on a reader thread one block ahead; see :mod:`._streaming` for when this is used):

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
  from an evenly spaced subsample of the rows (:func:`._nystrom.nystrom_gram`, its eigenvalues scaled by
  ``N / n_sub``). Stopping rule as :func:`fit_logistic`: the scaled gradient's max-abs entry ``<= tol``
  and the last Newton decrement's relative gap estimate ``<= tol``, or the float floor. A ``C`` grid is
  solved as a warm-started path in increasing ``C``.
* **binary logistic cross-validation** (:func:`logistic_cv_rows`, what :func:`cross_validate_logistic`
  solves for two classes): the in-memory CV's folds, scores, choice of ``C`` and refit
  (:mod:`._cv`), each fold a :func:`logistic_rows` path whose sample weights are zero on its held-out
  rows, its held-out decision values one more pass. Softmax CV does not stream rows.

Memory: two row blocks in float32 (``2 r D 4`` bytes for ``r`` rows a block; each block is dropped
before the next is read), ``O(N)`` vectors (``z``, ``X d``, one CG product; for the CV also its
``F`` folds' weights and ``F G`` held-out decision values), the Nyström sketch's subsample (at most
``min(8192, r)`` rows of the layer) and ``O(D^2)`` for ridge's Gram matrix (float64). As a multiple of
the input ``N D b`` bytes (``b = 2`` for float16): ``8 r / (b N)`` for the blocks, plus about
``4 (F G + 2 F + 10) / (b D)`` for the vectors -- for 80000 x 4096 float16 in 2000-row blocks, 0.1
plus 0.02 of the layer (measured: benchmarks/streamed_memory.py, RESULTS.md). Time: ridge reads the
layer twice; logistic reads it once per Newton step and once per CG step (the in-memory solver's passes
over ``X``, from disk); the CV does so for each of its ``F + 1`` problems, folds one after another.
"""

from __future__ import annotations

import functools
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
from ._nystrom import apply_preconditioner, nystrom_gram
from ._path import default_max_cg_iter, default_precondition_rank
from ._policy import default_policy
from ._precision import vdot
from ._products import matvec, products, rmatvec
from ._ridge import MulticlassRidgeFit, RidgeFit, ridge_targets
from ._sources import LayerSource, prefetched, read_chunk

_ARMIJO_C1 = 1e-4
_MAX_HALVINGS = 30
#: Most rows of the subsample the Nyström preconditioner is built from.
_SKETCH_ROWS = 8192


def _blocks(source: LayerSource, layer: int, row_block: int) -> Iterator[tuple[slice, Array]]:
    """``(rows, X[rows])`` of one layer, block by block, each read on the reader thread."""
    n = source.shape[1]
    slices = [slice(a, min(a + row_block, n)) for a in range(0, n, row_block)]
    jobs = (functools.partial(read_chunk, source, range(layer, layer + 1), rows, np.float32) for rows in slices)
    chunks = prefetched(jobs)
    for rows in slices:  # not zip: its reused result tuple would hold the last block through the next read
        x = jax.device_put(next(chunks)[0])  # read-only and page-aligned: used in place on the CPU
        yield rows, x
        del x


# -- ridge ------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("fit_intercept",))
def _block_moments(x: Array, Y: Array, s: Array, *, fit_intercept: bool) -> tuple[Array, ...]:
    """One block's weight, weighted means and centred cross-products ``(sum s, xbar, ybar, M, P)``."""
    total = jnp.sum(s)
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


@jax.jit
def _block_gradient(x: Array, y: Array, s: Array, z: Array, C: Array) -> tuple[Array, Array]:
    dz = C * s * BINARY_LOGISTIC.evaluate(z, y)[1]
    return rmatvec(x, dz), jnp.sum(dz)


@jax.jit
def _block_hvp(x: Array, y: Array, s: Array, z: Array, C: Array, p_coef: Array, p_int: Array):
    u = matvec(x, p_coef) + p_int
    hu = C * s * BINARY_LOGISTIC.hvp(BINARY_LOGISTIC.evaluate(z, y)[2], u)
    return u, rmatvec(x, hu), jnp.sum(hu)


@jax.jit
def _block_predictor(x: Array, coef: Array, intercept: Array) -> Array:
    return matvec(x, coef) + intercept[..., None]


class _LayerRows:
    """One layer's labels, weights and row blocks: the passes a streamed Newton solve makes over it."""

    def __init__(self, source: LayerSource, layer: int, row_block: int, y: np.ndarray, s: np.ndarray,
                 fit_intercept: bool):
        self.source, self.layer, self.row_block = source, layer, row_block
        self.y, self.s = jnp.asarray(y, jnp.float32), jnp.asarray(s, jnp.float32)
        self.fit_intercept = fit_intercept
        self.passes = 0

    def _map(self, fn: Callable[[slice, Array], Any]) -> list[Any]:
        """``fn(rows, X[rows])`` of every block, in order: one pass."""
        self.passes += 1
        out = []
        for rows, x in _blocks(self.source, self.layer, self.row_block):
            out.append(fn(rows, x))
            del x  # dropped before the next read, so the reader's collection frees it (no full gc pass)
        return out

    def predictor(self, coef: Array, intercept: Array) -> Array:
        """``X coef + intercept``, ``([G,] N)`` for ``coef`` ``([G,] D)``: one pass."""
        return jnp.concatenate(self._map(lambda rows, x: _block_predictor(x, coef, intercept)), axis=-1)

    def gradient(self, z: Array, coef: Array, C: Array) -> tuple[Array, Array]:
        parts = self._map(lambda rows, x: _block_gradient(x, self.y[rows], self.s[rows], z[rows], C))
        g_coef, g_int = functools.reduce(lambda a, b: (a[0] + b[0], a[1] + b[1]), parts, (coef, jnp.zeros(())))
        return g_coef, g_int * self.fit_intercept

    def hvp(self, z: Array, C: Array, p_coef: Array, p_int: Array) -> tuple[Array, Array, Array]:
        parts = self._map(lambda rows, x: _block_hvp(x, self.y[rows], self.s[rows], z[rows], C, p_coef, p_int))
        h_coef, h_int = functools.reduce(lambda a, b: (a[0] + b[1], a[1] + b[2]), parts, (p_coef, jnp.zeros(())))
        return jnp.concatenate([part[0] for part in parts]), h_coef, h_int * self.fit_intercept

    def sketch(self, rank: int) -> Any:
        """Nyström approximation of ``[X, 1]^T [X, 1]`` from evenly spaced rows, scaled to all ``N``."""
        n = self.source.shape[1]
        step = max(1, -(-n // min(_SKETCH_ROWS, self.row_block)))
        sub = np.asarray(self.source.layer(self.layer)[::step], np.float32)
        approx = nystrom_gram(jnp.asarray(sub), rank, fit_intercept=self.fit_intercept,
                              products=products(default_policy().fused_max_rows))
        return approx._replace(eig=approx.eig * (n / sub.shape[0]))


def _precondition(precond: Any, mu: float, fit_intercept: bool, v_coef: Array, v_int: Array) -> tuple[Array, Array]:
    if precond is None:
        return v_coef, v_int
    m_coef, m_int = apply_preconditioner(precond, mu, v_coef, v_int)
    return m_coef, m_int * fit_intercept


def _newton_direction(rows: _LayerRows, z: Array, C: Array, g_coef: Array, g_int: Array, precond: Any,
                      cg_tol: float, max_cg_iter: int) -> tuple[Array, Array, Array, int]:
    """Conjugate gradients on ``H d = -g``, one pass over the rows per step: ``(d_coef, d_int, X d, steps)``."""
    curvature = C * jnp.sum(rows.s * BINARY_LOGISTIC.curvature(BINARY_LOGISTIC.evaluate(z, rows.y)[2])) / rows.s.shape[0]
    mu = 1.0 / max(float(curvature), 1e-30)  # H ~ a (A + I / a), a = C * mean curvature (as in-memory)
    r_coef, r_int = -g_coef, -g_int
    p_coef, p_int = _precondition(precond, mu, rows.fit_intercept, r_coef, r_int)
    rz = float(vdot(r_coef, p_coef) + r_int * p_int)
    rr = float(vdot(r_coef, r_coef) + r_int**2)
    d_coef, d_int, xd = jnp.zeros_like(g_coef), jnp.zeros(()), jnp.zeros_like(z)
    k = 0
    while k < max_cg_iter and rr > cg_tol**2 and rz > 0:
        u, h_coef, h_int = rows.hvp(z, C, p_coef, p_int)
        step = rz / max(float(vdot(p_coef, h_coef) + p_int * h_int), 1e-30)
        d_coef, d_int, xd = d_coef + step * p_coef, d_int + step * p_int, xd + step * u
        r_coef, r_int = r_coef - step * h_coef, r_int - step * h_int
        m_coef, m_int = _precondition(precond, mu, rows.fit_intercept, r_coef, r_int)
        rz_new = float(vdot(r_coef, m_coef) + r_int * m_int)
        p_coef, p_int = m_coef + (rz_new / rz) * p_coef, m_int + (rz_new / rz) * p_int
        rz, rr, k = rz_new, float(vdot(r_coef, r_coef) + r_int**2), k + 1
    return d_coef, d_int, xd, k


def _armijo_step(rows: _LayerRows, z: Array, xd: Array, C: Array, coef: Array, d_coef: Array, slope: float,
                 objective: float) -> float | None:
    """The largest ``t`` in ``1, 1/2, ...`` meeting Armijo's condition along ``z + t X d`` (no pass over the
    rows; the decrease is summed per sample, as in-memory), or None when none does."""
    base = BINARY_LOGISTIC.evaluate(z, rows.y)[0]
    wd, dd = float(vdot(coef, d_coef)), float(vdot(d_coef, d_coef))
    t = 1.0
    for _ in range(_MAX_HALVINGS + 1):
        data = float(C * jnp.sum(rows.s * (BINARY_LOGISTIC.evaluate(z + t * xd, rows.y)[0] - base)))
        if slope < 0 and data + t * wd + 0.5 * t * t * dd <= _ARMIJO_C1 * t * slope:
            return t
        t *= 0.5
    return None


def _newton(rows: _LayerRows, C: float, coef: Array, intercept: Array, z: Array, precond: Any, *, tol: float,
            gap_tol: float, max_iter: int, max_cg_iter: int) -> tuple[Array, Array, Array, int, bool, float]:
    """Truncated Newton for one ``C`` from ``(coef, intercept)`` with predictor ``z``; returns the solution,
    its predictor ``(N,)``, the Newton steps, whether it converged, and the scaled gradient's max-abs
    entry. Converged: that entry ``<= tol`` and the relative gap estimate ``<= gap_tol`` (``inf``: the
    gradient test alone, as the CV's fold problems)."""
    eps = float(jnp.finfo(jnp.float32).eps)
    C = jnp.float32(C)
    scale = float(C * jnp.sum(rows.s))

    def optimality(g: tuple[Array, Array]) -> float:
        return float(jnp.maximum(jnp.max(jnp.abs(g[0])), jnp.abs(g[1]))) / scale

    g = rows.gradient(z, coef, C)
    opt = opt0 = optimality(g)
    n_iter, converged = 0, False
    while n_iter < max_iter and not converged:
        g_norm = float(jnp.sqrt(vdot(g[0], g[0]) + g[1] ** 2))
        # Inexact Newton forcing term, as the in-memory solver's (loose far from the optimum, tight near it).
        forcing = min(0.3, max(min(0.1, (opt / opt0) ** 0.5), 0.5 * tol * scale / max(g_norm, 1e-30)))
        d_coef, d_int, xd, _ = _newton_direction(rows, z, C, *g, precond, forcing * g_norm, max_cg_iter)
        slope = float(vdot(g[0], d_coef) + g[1] * d_int)
        objective = float(C * jnp.sum(rows.s * BINARY_LOGISTIC.evaluate(z, rows.y)[0]) + 0.5 * vdot(coef, coef))
        # Below the float resolution of F the line search cannot measure progress: take the full step.
        at_precision = -slope <= eps * objective
        t = 1.0 if at_precision else _armijo_step(rows, z, xd, C, coef, d_coef, slope, objective)
        n_iter += 1
        if t is None:  # no decrease found: stalled, unconverged
            return coef, intercept, z, n_iter, False, opt
        new = (coef + t * d_coef, intercept + t * d_int, z + t * xd)
        g_new = rows.gradient(new[2], new[0], C)
        opt_new = optimality(g_new)
        if at_precision and opt_new >= opt:  # the float floor: keep the better iterate
            return coef, intercept, z, n_iter, True, opt
        (coef, intercept, z), g, opt = new, g_new, opt_new
        converged = opt <= tol and -slope / (2 * objective) <= gap_tol
    return coef, intercept, z, n_iter, converged, opt


class _Solved(NamedTuple):
    """One streamed solve: ``coef`` ``(D,)``, ``intercept`` ``()``, predictor ``z = X coef + intercept`` ``(N,)``
    over every row (held-out ones included), Newton steps, convergence, scaled gradient's max-abs entry."""

    coef: Array
    intercept: Array
    z: Array
    n_iter: int
    converged: bool
    optimality: float


def _path(rows: _LayerRows, Cs: np.ndarray, precond: Any, start: tuple[Array, Array, Array], *, tol: float,
          gap_tol: float, max_iter: int, max_cg_iter: int) -> list[_Solved]:
    """Each ``C`` of the grid ``(G,)`` solved from the previous one's solution, in increasing ``C`` from
    ``start = (coef, intercept, z)``; the solves in the grid's order."""
    out: list[Any] = [None] * Cs.size
    state = start
    for g in np.argsort(Cs, kind="stable"):
        out[g] = _Solved(*_newton(rows, float(Cs[g]), *state, precond, tol=tol, gap_tol=gap_tol, max_iter=max_iter,
                                  max_cg_iter=max_cg_iter))
        state = out[g][:3]
    return out


def _origin(n: int, d: int) -> tuple[Array, Array, Array]:
    return jnp.zeros(d), jnp.zeros(()), jnp.zeros(n)


def _as_fit(path: list[_Solved]) -> LogisticFit:
    """The solves of a grid as a :class:`LogisticFit` with fields ``(G, ...)``."""
    columns = [np.stack([np.asarray(solved[i]) for solved in path]) for i in (0, 1, 3, 4, 5)]
    return LogisticFit(*(jnp.asarray(a, t) for a, t in zip(columns, (jnp.float32, jnp.float32, jnp.int32, bool,
                                                                      jnp.float32))))


class _NewtonSettings(NamedTuple):
    tol: float
    max_iter: int
    max_cg_iter: int
    precondition_rank: int


def _settings(d: int, tol: float, max_iter: int, max_cg_iter: int | None, precondition_rank: int | None) -> _NewtonSettings:
    """The checked solver settings, with ``fit_logistic``'s defaults for ``D`` features."""
    max_cg = default_max_cg_iter(d) if max_cg_iter is None else _checks.check_positive_int(max_cg_iter, "max_cg_iter")
    return _NewtonSettings(_checks.check_tol(tol), _checks.check_positive_int(max_iter, "max_iter"), max_cg,
                           default_precondition_rank(d, precondition_rank))


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
    fit = _as_fit(_path(rows, Cs, precond, _origin(n, d), tol=opts.tol, gap_tol=opts.tol, max_iter=opts.max_iter,
                        max_cg_iter=opts.max_cg_iter))
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
    stopped at ``cv_tol`` by the gradient test alone (as in memory); its held-out decision values are
    ``X coef + intercept`` for the ``G`` solutions, one pass. The refit on all rows at the best
    ``C`` starts from the folds' mean solution there, stopped at ``tol``. One Nyström preconditioner for
    all. Passes over the layer: one per Newton and CG step of every problem, ``F + 1`` problems (folds
    solved one after another, each reading the layer itself), plus one per fold for its scores and one
    for the refit's start.
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
    fold_rows = [_LayerRows(source, layer, row_block, codes, w, bool(fit_intercept))
                 for w in training_weights(fold_ids, sw)]
    precond = fold_rows[0].sketch(opts.precondition_rank) if opts.precondition_rank else None
    paths = [_path(rows, Cs, precond, _origin(n, d), tol=cv_tol, gap_tol=float("inf"), max_iter=opts.max_iter,
                   max_cg_iter=opts.max_cg_iter) for rows in fold_rows]  # (F, G) solves
    # Decision values afresh (one pass a fold), not the predictors the solves accumulated step by step.
    z = jnp.stack([rows.predictor(*_as_fit(path)[:2]) for rows, path in zip(fold_rows, paths)])  # (F, G, N)
    acc, ll, auc = (a.T for a in _metrics.fold_scores(z, jnp.asarray(codes), scored_held_out(fold_ids, sw)))  # (G, F)
    best, best_value = chosen_value({"accuracy": acc, "log_loss": ll, "roc_auc": auc}[scoring][None], scoring, Cs)
    b = int(best[0])
    coef0 = jnp.mean(jnp.stack([path[b].coef for path in paths]), axis=0)
    intercept0 = jnp.mean(jnp.stack([path[b].intercept for path in paths]))
    rows = _LayerRows(source, layer, row_block, codes, sw, bool(fit_intercept))
    refit = _path(rows, Cs[b:b + 1], precond, (coef0, intercept0, rows.predictor(coef0, intercept0)), tol=opts.tol,
                  gap_tol=opts.tol, max_iter=opts.max_iter, max_cg_iter=opts.max_cg_iter)

    def per_problem(field: int) -> Array:  # (G, F + 1): the folds', then the refit's (repeated over G)
        return jnp.asarray([[path[g][field] for path in paths] + [refit[0][field]] for g in range(Cs.size)])

    return CVResult(
        grid=Cs, accuracy=acc, log_loss=ll, roc_auc=auc, mse=jnp.full_like(acc, jnp.nan), best_index=jnp.asarray(b),
        best_value=best_value[0], fit=LogisticFit(*(a[0] for a in _as_fit(refit))), fold_ids=fold_ids,
        n_iter=per_problem(3).astype(jnp.int32), converged=per_problem(4).astype(bool),
    )
