"""Every layer, weight set (CV fold) and ``C`` of a GLM fit in one compiled call, and the choices behind it.

:func:`solver_options` turns the public settings and a :class:`~._policy.SolverPolicy` into the static
options of :func:`solve_layers` for one problem shape (which preconditioner, whether the in-solve
inverse fits in memory, ...): the only place where shape decides a part.

:func:`solve_layers` solves a ``C`` grid as a path: ``C`` in increasing order (``lax.scan``), each solve
warm-started from the previous ``C``'s solution (extrapolated along the path from the third value on)
and its L-BFGS pairs (moved to the new penalty: :func:`._lbfgs.reweight_penalty`), with the weight sets
batched (``vmap``) at every step. Small ``C`` are the easy, nearly quadratic problems; starting the
hard, large-``C`` ones near their optimum beats solving all from zero in lock-step (where every batched
step waits for the slowest problem). When layers are solved one at a
time (the CPU default), a binary path builds the exact inverse Hessian at a solution once its CG work
justifies it (:mod:`._hessian_inverse`); with ``policy.layer_warm_start`` each layer's first ``C`` also
starts from the best multiple of the previous layer's solution (off by default: a layer's fit then
depends on its own data only).

With an intercept and layers solved one at a time (``policy.centre_features``), each layer is solved on
its features centred at their weighted mean (:func:`feature_shift`): the same problem (the intercept is
not penalised; it absorbs the shift), better conditioned where features share an offset (raw
activations) and with less float32 cancellation in the predictor; solutions come back in the caller's
coordinates.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import Array

from ._batching import any_across_batch, default_layer_batch_size, over_layers
from ._checks import as_compute, bucket_rows, check_positive_int, compute_dtype
from ._glm import GLM, MIN_BLOCK_ROWS, GLMLoss, Params, block_rows, rounded_operands
from ._hessian_inverse import (
    LaggedHessianInverse,
    lagged_build_threshold,
    lagged_hessian_inverse,
    no_lagged_inverse,
)
from ._lbfgs import LBFGSMemory, empty_memory, reweight_penalty
from ._newton_cg import Settings, SolveResult, minimise, warm_start
from ._nystrom import NystromApprox
from ._policy import SolverPolicy, default_policy
from ._precision import matmul
from ._preconditioners import Preconditioner, identity, lagged, layer_nystrom, nystrom, refreshed, woodbury
from ._products import products
from ._woodbury import layer_kernel, use_woodbury

# Device memory assumed where the backend does not report its limit.
_ASSUMED_DEVICE_BYTES = 16 * 2**30


def default_precondition_rank(n_features: int, rank: int | None, policy: SolverPolicy | None = None) -> int:
    """``rank`` if given (0 disables), else the policy's: ``nystrom_rank``, raised to ``D /
    nystrom_features_per_rank`` for wide layers but not past ``nystrom_max_rank``, and at most ``D``."""
    if rank is None:
        policy = policy or default_policy()
        rank = policy.nystrom_rank
        if rank and policy.nystrom_features_per_rank:
            rank = max(rank, min(n_features // policy.nystrom_features_per_rank, policy.nystrom_max_rank))
        return min(rank, n_features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= n_features:
        raise ValueError(f"precondition_rank must be an integer in [0, D={n_features}] or None; got {rank!r}.")
    return rank


def default_max_cg_iter(n_coef: int) -> int:
    """CG solves the Newton system exactly in ``n_coef + 1`` steps in exact arithmetic; with the forcing
    sequence it needs far fewer. The cap only guards against a stalled inner loop."""
    return min(n_coef + 1, 250)


def _inverse_fits(n_features: int, layers_at_once: int) -> bool:
    """Whether ``layers_at_once`` layers' ``(D+1)^2`` float32 inverses, four times over (room for a
    build's Gram matrix, Cholesky factor and triangular inverse beside the inverse in use), take at most a
    quarter of the device's memory (32 layers of 4096 features: 8.6 GB of an H100's 80)."""
    stats = jax.devices()[0].memory_stats() or {}
    budget = stats.get("bytes_limit", _ASSUMED_DEVICE_BYTES) / 4
    return 4 * layers_at_once * (n_features + 1) ** 2 * 4 <= budget


def hessian_block_rows(n_samples: int, n_features: int, policy: SolverPolicy) -> int:
    """The rows of the blocks CG's Hessian products take on a layer of ``(n_samples, n_features)`` (0: none):
    a power of two dividing ``n_samples`` (bucketed row counts of 1024 or more are multiples of 64), about
    ``policy.hessian_block_bytes`` at 4 bytes a value but at least 8 rows, for layers of at least
    ``policy.hessian_blocks_from`` bytes."""
    if not policy.hessian_block_bytes or n_samples * n_features * 4 < policy.hessian_blocks_from:
        return 0
    rows = max(MIN_BLOCK_ROWS, 1 << max(0, (policy.hessian_block_bytes // (4 * n_features)).bit_length() - 1))
    return block_rows(rows, n_samples)


def solver_options(
    shape: tuple[int, int, int],
    n_outputs: int | None,
    *,
    fit_intercept: bool,
    max_iter: int,
    max_cg_iter: int | None,
    precondition_rank: int | None,
    layer_batch_size: int | None,
    policy: SolverPolicy | None = None,
) -> dict:
    """Validate the public solver settings for ``X`` of ``shape`` ``(L, N, D)``, fill in defaults, and
    resolve ``policy`` (default :func:`~._policy.default_policy`) for this shape.

    Returns the static keyword arguments of :func:`solve_layers` other than ``tol``: the policy comes back
    with ``nystrom_rank`` set to the rank used, ``woodbury`` to whether this shape takes the kernel
    inverse (wide binary layers, ``N^2 <= 16 D``; they skip the quasi-Newton phase, as their Newton steps
    take one CG step), ``quasi_newton_memory``, ``nystrom_decay``, ``gap_bound`` and ``switch_progress`` to
    the softmax ones for softmax, ``hessian_refresh_cg`` to 0 where the in-solve inverses would not fit, and
    ``hessian_block_rows`` to :func:`hessian_block_rows` of ``N`` padded to :func:`._checks.bucket_rows`, as
    the public functions pad ``X`` (:meth:`._glm.GLM.hvp` cuts the rows for any other ``N``), for binary
    layers solved one at a time (under a vmap over layers, a scan over blocks of rows would copy ``X`` to
    put the layer axis inside it).
    """
    if policy is None:
        policy = default_policy()
    if not isinstance(policy, SolverPolicy):
        raise TypeError(f"policy must be a SolverPolicy or None; got {type(policy).__name__}.")
    n_layers, n_samples, n_features = shape
    n_coef = n_features * (n_outputs or 1)
    rank = default_precondition_rank(n_features, precondition_rank, policy)
    wide = n_outputs is None and use_woodbury(n_samples, n_features, policy.woodbury_ratio)
    batch = default_layer_batch_size(n_layers, layer_batch_size)
    refresh = policy.hessian_refresh_cg
    if n_outputs is not None or wide or (refresh and not _inverse_fits(n_features, min(batch, n_layers))):
        refresh = 0
    softmax = n_outputs is not None
    blocked = not (softmax or wide or batch != 1)
    blocks = hessian_block_rows(bucket_rows(n_samples), n_features, policy) if blocked else 0
    resolved = dataclasses.replace(
        policy, nystrom_rank=0 if wide else rank, woodbury=wide, hessian_refresh_cg=refresh,
        hessian_block_rows=blocks,
        quasi_newton_memory=0 if wide else (
            policy.softmax_quasi_newton_memory if softmax else policy.quasi_newton_memory),
        nystrom_decay=policy.softmax_nystrom_decay if softmax else policy.nystrom_decay,
        gap_bound=policy.softmax_gap_bound if softmax else policy.gap_bound,
        switch_progress=policy.softmax_switch_progress if softmax else policy.switch_progress,
        centre_features=policy.centre_features and batch == 1,
        continuation_factor=policy.continuation_factor if batch == 1 and not (softmax or wide) else 0.0,
    )
    return {
        "n_outputs": n_outputs,
        "fit_intercept": bool(fit_intercept),
        "max_iter": check_positive_int(max_iter, "max_iter"),
        "max_cg_iter": default_max_cg_iter(n_coef) if max_cg_iter is None else check_positive_int(
            max_cg_iter, "max_cg_iter"),
        "layer_batch_size": batch,
        "policy": resolved,
    }


@functools.partial(jax.jit, static_argnames=("fit_intercept", "layer_batch_size", "policy"))
def layer_preconditioners(X: Array, sample_weight: Array, *, fit_intercept: bool, layer_batch_size: int,
                          policy: SolverPolicy) -> NystromApprox:
    """Every layer's Nystrom approximation for :func:`solve_layers`'s ``precond`` (fields with a leading
    ``L`` axis; rank ``policy.nystrom_rank``, skipped where the spectrum is flat: :func:`layer_nystrom`), of
    the features as :func:`solve_layers` sees them (centred by :func:`feature_shift` of ``sample_weight``
    ``(W, N)`` when ``fit_intercept`` and ``policy.centre_features``).

    Computed apart so that several solves on the same ``X`` share it (a cross-validation's folds and its
    refit): each solve then neither recomputes it nor compiles its QR, Cholesky and SVD again.
    """
    dtype = compute_dtype(X.dtype)
    weights = sample_weight.astype(dtype)

    def one(x: Array) -> NystromApprox:
        x = as_compute(x, dtype)
        return _nystrom_of(solver_features(x, weights, fit_intercept=fit_intercept, policy=policy)[0],
                           fit_intercept, policy)

    return over_layers(one, X, layer_batch_size=layer_batch_size)


def feature_shift(x: Array, sample_weight: Array) -> Array:
    r"""``(D,)``: the column mean of ``x`` ``(N, D)`` under the samples' total weight over the weight sets
    ``sample_weight`` ``(W, N)``, ``mu = sum_i t_i x_i / sum_i t_i`` with ``t = sum_w s_w`` (one pass).

    With an unpenalised intercept, ``(w, b)`` on ``x`` and ``(w, b + mu . w)`` on ``x - mu`` are the same
    fit. CV folds' training weights count every sample in ``F - 1`` folds, so their shift is the full data's.
    """
    total = jnp.sum(sample_weight, axis=0)
    return matmul(total, x) / jnp.sum(total)


def solver_features(x: Array, sample_weight: Array, *, fit_intercept: bool,
                    policy: SolverPolicy) -> tuple[Array, Array | None]:
    """``(features, mu)``: the layer ``x`` as the solver and its preconditioner see it, ``x - mu`` with
    :func:`feature_shift`'s ``mu`` where ``fit_intercept`` and ``policy.centre_features`` (else ``x`` and
    None). Rows of no weight in any set (the bucket's padding) stay zero, so the unweighted sketches and
    norms see only the samples."""
    if not _centres(fit_intercept, policy):
        return x, None
    shift = feature_shift(x, sample_weight)
    return jnp.where(jnp.any(sample_weight > 0, axis=0)[:, None], x - shift, 0), shift


def _centres(fit_intercept: bool, policy: SolverPolicy) -> bool:
    """Whether the solver sees each layer centred (:func:`solver_features`): the one place that decides."""
    return fit_intercept and policy.centre_features


def _nystrom_of(x: Array, fit_intercept: bool, policy: SolverPolicy) -> NystromApprox:
    return layer_nystrom(x, policy.nystrom_rank, fit_intercept=fit_intercept, probe_rank=policy.nystrom_probe_rank,
                         decay=policy.nystrom_decay, centred=_centres(fit_intercept, policy))


@functools.partial(
    jax.jit,
    static_argnames=("loss", "n_outputs", "fit_intercept", "max_cg_iter", "layer_batch_size", "policy"),
)
def solve_layers(
    loss: GLMLoss,
    X: Array,
    y: Array,
    sample_weight: Array,
    Cs: Array,
    *,
    n_outputs: int | None,
    fit_intercept: bool,
    tol: float,
    max_iter: int,
    max_cg_iter: int,
    layer_batch_size: int,
    policy: SolverPolicy,
    gap_tol: float | None = None,
    precond: NystromApprox | None = None,
    init: tuple[Array, Array] | None = None,
) -> SolveResult:
    """Every (layer, weight set, C) problem in one compiled call (see the module docstring).

    Args:
      loss: the per-sample loss (static; hashable).
      X: ``(L, N, D)`` in any float storage, or ``uint16`` holding bfloat16's bits
        (:func:`._checks.solver_view`); computed in :func:`compute_dtype` of it.
      y: ``(N,)`` labels as ``loss`` expects them.
      sample_weight: ``(W, N)``; one row per weight set (CV folds are weight sets sharing ``X``).
      Cs: ``(G,)`` shared by all layers, or ``(L, G)``, one grid per layer.
      n_outputs: None for a scalar predictor (``coef`` ``(D,)``), ``K`` for a vector one (``(K, D)``).
      tol, max_iter: the stopping test's tolerance and the most iterations (traced: a new value does not
        recompile).
      policy: the solver's parts, resolved for this shape by :func:`solver_options`.
      gap_tol: bound on the relative objective-gap estimate (traced; default ``tol``; ``inf`` keeps
        scikit-learn's gradient criterion alone, as cross-validation folds do).
      precond: the Nystrom approximations from :func:`layer_preconditioners` (same ``X`` and policy), or
        None to compute them here.
      init: ``(coef (L, W, [K,] D), intercept (L, W, [K]))`` where the first (smallest) ``C`` of each
        path starts (its best multiple), or None (zeros, or the previous layer's solution under
        ``policy.layer_warm_start``).

    Returns:
      :class:`~._newton_cg.SolveResult` with leading axes ``(L, W, G)``. No validation: callers check inputs.
    """
    dtype = compute_dtype(X.dtype)
    weights = sample_weight.astype(dtype)
    Cs = jnp.broadcast_to(Cs.astype(dtype), X.shape[:1] + Cs.shape[-1:])
    lead = () if n_outputs is None else (n_outputs,)
    glm = GLM(loss, bool(fit_intercept), products(policy.fused_max_rows), policy.hessian_block_rows)
    settings = Settings(tol, tol if gap_tol is None else gap_tol, max_iter, max_cg_iter, policy.quasi_newton_memory,
                        policy.switch_window, policy.switch_progress, policy.switch_after,
                        policy.line_search_refine, policy.gap_bound)
    n_samples, n_features = X.shape[1:]
    n_w, n_c = weights.shape[0], Cs.shape[-1]
    n_intercept = n_outputs or 1
    n_coef = n_intercept * n_features
    scalar = n_outputs is None
    # The in-solve inverse for one weight set only (it would be one (D+1)^2 matrix per fold otherwise).
    refresh = policy.hessian_refresh_cg if scalar and n_w == 1 else 0
    # The path's lagged inverse needs layers solved one at a time: under a vmap over layers its build
    # decision would be one for all of them. A path of two or fewer C never gets one (nor its compile).
    use_lagged = (scalar and layer_batch_size == 1 and n_c > 2 and policy.lagged_build_factor > 0
                  and not policy.woodbury and not refresh)
    threshold = lagged_build_threshold(n_samples, n_features, n_w, policy.lagged_build_factor)
    lead_ins = bool(policy.continuation_factor) and n_c == 1 and init is None

    def layer_preconditioner(x: Array, approx: NystromApprox | None) -> tuple[Preconditioner, Array]:
        """The layer's preconditioner, and whether its spectrum was found ill-conditioned (the Nystrom
        approximation was built, not skipped as flat): its solves then take Newton steps from the start."""
        if policy.woodbury:
            kernel = layer_kernel(x, fit_intercept=fit_intercept)
            return woodbury(glm, x, kernel, halve=policy.halve_builds), jnp.bool_(True)
        if policy.nystrom_rank:
            approx = _nystrom_of(x, fit_intercept, policy) if approx is None else approx
            base, steep = nystrom(glm, approx), approx.built
        else:
            base, steep = identity(), jnp.bool_(False)
        return (refreshed(glm, base, refresh, halve=policy.halve_builds) if refresh else base), steep

    def layer(x: Array, cs: Array, approx: NystromApprox | None, start: tuple[Array, Array]) -> SolveResult:
        # Converted a layer at a time: X as a whole in the compute dtype would be a second copy of it.
        x, shift = solver_features(as_compute(x, dtype), weights, fit_intercept=fit_intercept, policy=policy)
        rounded = None  # float32 solves only: a float64 one is asked for float64's accuracy throughout
        if not scalar and 0 < policy.softmax_hessian_bfloat16_from <= n_outputs and dtype == jnp.float32:
            rounded = rounded_operands(x)
        if shift is not None:
            start = (start[0], start[1] + matmul(start[0], shift))  # the same fit on the centred features
        base, steep = layer_preconditioner(x, approx)

        def one(inverse: LaggedHessianInverse | None, c: Array, c_last: Array, settings: Settings, s: Array,
                coef0: Array, intercept0: Array, memory: LBFGSMemory | None) -> tuple[SolveResult, LBFGSMemory | None]:
            data = glm.data(x, y, s, c, rounded)
            begin, z0 = warm_start(glm, data, glm.null_point(data, n_outputs), Params(coef0, intercept0))
            precond_c = base if inverse is None else lagged(glm, inverse, base)
            if memory is not None:
                # The last C's curvature pairs, moved to this C's penalty (lambda = 1 / (C sum s)).
                memory = reweight_penalty(memory, data.penalty * (1 - c / c_last), coef0.size)
            return minimise(glm, data, begin, z0, jnp.int32(1), precond=precond_c, settings=settings,
                            newton_first=steep, memory=memory)

        def update_lagged(inverse: LaggedHessianInverse, res: SolveResult, c_next: Array, n_done: Array):
            """(Re)build the inverse Hessian at these solutions (curvatures averaged over the weight sets,
            for the next ``C``) when this ``C``'s CG work says the one in use no longer pays."""
            # Not after the first C: its solve starts cold, so its CG count says little about the path's.
            due = (n_done >= 1) & (jnp.max(res.n_cg) * (n_c - 1 - n_done) >= threshold)

            def build() -> LaggedHessianInverse:
                totals = jnp.sum(weights, axis=1, keepdims=True)  # (W, 1)
                z = glm.predictor(x, Params(res.coef, res.intercept))  # (W, N)
                curvature = jnp.mean(weights / totals * loss.curvature(loss.evaluate(z, y)[2]), axis=0)
                penalty = jnp.mean(1.0 / (c_next * totals))
                return lagged_hessian_inverse(x, curvature, penalty, fit_intercept=fit_intercept,
                                              halve=policy.halve_builds)

            # Under a vmap of the caller's (say over label sets), one decision for the whole batch:
            # a batched predicate would make the cond a select that builds at every C.
            return jax.lax.cond(any_across_batch(due), build, lambda: inverse)

        def step(carry: tuple, cs_here: tuple[Array, Array, Array]) -> tuple[tuple, SolveResult]:
            # Secant predictor along the path: the last solution moved on by the last change, scaled to
            # this log-C step (at most 1x, so an uneven grid cannot throw the start far off). No pass over X.
            last, before, log_last, log_before, n_done, inverse, memory, pending = carry
            c, c_next, lead_in = cs_here
            log_c = jnp.log(c)
            ratio = jnp.clip((log_c - log_last) / jnp.maximum(log_last - log_before, jnp.finfo(dtype).tiny), 0, 1)
            ratio = jnp.where(n_done >= 2, ratio, 0)
            begin = jax.tree.map(lambda a, b: a + ratio * (a - b), last, before)
            c_last = jnp.where(n_done >= 1, jnp.exp(log_last), c)
            # A lead-in (see below) stops on the gradient test alone, at the looser continuation_tol.
            here = settings._replace(tol=jnp.where(lead_in, jnp.maximum(policy.continuation_tol, settings.tol), settings.tol),
                                     gap_tol=jnp.where(lead_in, jnp.inf, settings.gap_tol))
            solve = lambda: jax.vmap(functools.partial(one, inverse, c, c_last, here))(weights, *begin, memory)
            skipped = lead_in & ~steep  # a lead-in runs on steep layers only
            if lead_ins:
                def idle() -> tuple[SolveResult, LBFGSMemory | None]:  # a skipped lead-in: its result is dropped
                    count = jnp.zeros(n_w, jnp.int32)
                    return SolveResult(*begin, count, jnp.zeros(n_w, bool), jnp.zeros(n_w, dtype), count, count), memory

                res, memory = jax.lax.cond(any_across_batch(skipped), idle, solve)
            else:
                res, memory = solve()
            if inverse is not None:
                inverse = update_lagged(inverse, res, c_next, n_done)
            # A lead-in's work counts to its C; its iterations do not (n_iter stays within max_iter).
            work = jax.tree.map(lambda a: jnp.where(lead_in, a, 0), (res.n_cg, res.n_passes))
            res = res._replace(n_cg=res.n_cg + pending[0], n_passes=res.n_passes + pending[1])
            new = ((res.coef, res.intercept), last, log_c, log_last, n_done + 1, inverse, memory, work)
            if lead_ins:  # a skipped lead-in leaves the carry as it was
                new = jax.tree.map(lambda a, b: jnp.where(skipped, b, a), new, carry)
            return new, res

        order = jnp.argsort(cs)
        log0 = jnp.zeros((), dtype)
        inverse0 = no_lagged_inverse(n_features, dtype) if use_lagged else None
        # Each C's solve starts from the last one's L-BFGS pairs: nearby C share most of their curvature.
        memory0 = jax.vmap(lambda _: empty_memory(settings.memory, n_coef + n_intercept, dtype))(
            weights) if settings.memory else None
        ascending = cs[order]
        # Each step also sees the next C (the lagged inverse is built for it; the last step's is unused).
        steps = (ascending, jnp.roll(ascending, -1), jnp.zeros(n_c, bool))
        if lead_ins:
            # Continuation for a single C (a grid is its own): a steep layer is first solved at
            # C / continuation_factor, loosely, and its C from there. A cold Newton solve of a nearly separable,
            # ill-conditioned layer takes many short steps to grow its coefficients.
            steps = tuple(jnp.concatenate([first, rest]) for first, rest in zip(
                (ascending[:1] / policy.continuation_factor, ascending[:1], jnp.ones(1, bool)), steps))
        no_work = (jnp.zeros(n_w, jnp.int32),) * 2
        _, path = jax.lax.scan(step, (start, start, log0, log0, jnp.int32(0), inverse0, memory0, no_work),
                               steps)  # fields (G, W, ...), a lead-in first
        path = jax.tree.map(lambda a: a[-n_c:], path)
        unsorted = jnp.argsort(order)
        res = SolveResult(*(jnp.swapaxes(a[unsorted], 0, 1) for a in path))
        if shift is None:
            return res
        return res._replace(intercept=res.intercept - matmul(res.coef, shift))  # back to the caller's features

    zeros = (jnp.zeros((n_w,) + lead + (n_features,), dtype), jnp.zeros((n_w,) + lead, dtype))
    if init is not None:
        init = tuple(a.astype(dtype) for a in init)
    if layer_batch_size == 1 and policy.layer_warm_start and init is None:
        def next_layer(previous: tuple[Array, Array], per_layer: tuple) -> tuple[tuple[Array, Array], SolveResult]:
            x, cs, approx = per_layer
            res = layer(x, cs, approx, previous)
            first = jnp.argmin(cs)
            return (res.coef[:, first], res.intercept[:, first]), res

        return jax.lax.scan(next_layer, zeros, (X, Cs, precond))[1]

    def each_layer(per_layer: tuple) -> SolveResult:
        x, cs, approx, start = per_layer
        return layer(x, cs, approx, zeros if start is None else start)

    return over_layers(each_layer, (X, Cs, precond, init), layer_batch_size=layer_batch_size)
