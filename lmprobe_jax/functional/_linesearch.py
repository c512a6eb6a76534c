r"""The line search: a Newton step in the step length, then Armijo halving, all without a pass over ``X``.

Along a direction ``d`` with ``a = X d`` known, the objective ``phi(t) = F(p + t d)`` and its first two
derivatives need only ``z + t a`` (``O(N K)`` work). The search starts at the minimiser of ``phi``'s
quadratic model at 0, ``t_0 = -phi'(0) / phi''(0)``: exactly 1 for a conjugate-gradient direction
(CG's iterate minimises the quadratic model along itself), and the right scale for a quasi-Newton one
whatever its length. ``refine`` more Newton steps in ``t`` follow (an almost exact line search, which
quasi-Newton directions profit from), then the step is halved until Armijo's condition holds.

The decrease ``phi(t) - phi(0)`` is summed from per-sample differences ``l(z + t a) - l(z)`` rather than
as a difference of two totals: in float32 the totals carry rounding of order ``1e-7 phi``, which would
hide the small decreases of the last steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ._glm import GLM, Evaluation, GLMData, Params, guard
from ._precision import vdot

# The Armijo constant and the most halvings tried before the step is declared impossible.
_ARMIJO_C1 = 1e-4
_MAX_HALVINGS = 30


def _armijo(t: Array, change: Array, slope: Array) -> Array:
    return (slope < 0) & (change <= _ARMIJO_C1 * t * slope)


class LineSearchInfo(NamedTuple):
    """The outcome of one line search.

    Attributes:
      step: ``()`` the step length ``t``; 0 when no decreasing step was found.
      at_precision: bool ``()``, the predicted decrease ``-phi'(0)`` is below the float resolution of
        ``F``: the search can no longer measure progress and takes ``t_0`` untested (0 if ``d`` does not
        descend).
      gap: ``()`` ``-phi'(0) / (2 F)``, the direction's estimate of the relative objective gap (the
        Newton decrement's, for a Newton direction).
      unresolved: bool ``()``, ``F``'s decrease at ``step`` is below its float resolution.
    """

    step: Array
    at_precision: Array
    gap: Array
    unresolved: Array


def line_search(glm: GLM, data: GLMData, p: Params, z: Array, ev: Evaluation, slope: Array, d: Params, a: Array, *,
                refine: int, first: Array | float | None = None) -> tuple[LineSearchInfo, Evaluation]:
    """Search along ``d`` (``a = X d_coef + d_intercept``) from ``p`` (predictor ``z``, evaluation ``ev``),
    where the objective's slope is ``slope = g.d``. The ``refine`` Newton steps in ``t`` start from
    ``first`` (default: the quadratic model's minimiser ``t_0``). Returns the outcome and the evaluation
    at the step taken (``ev`` itself when no step is)."""
    dtype = z.dtype
    wd = vdot(p.coef, d.coef)
    dd = vdot(d.coef, d.coef)

    def trial(t: Array) -> tuple[Evaluation, Array]:
        """The evaluation at ``p + t d`` and the objective's change there."""
        e = glm.evaluate(data, z + t * a)
        return e, jnp.sum(e.losses - ev.losses) + data.penalty * (t * wd + 0.5 * t * t * dd)

    def curvature(e: Evaluation) -> Array:
        return vdot(glm.weighted_hvp(data, e.aux, a), a) + data.penalty * dd

    def newton_in_t(_: int, t: Array) -> Array:
        e, _ = trial(t)
        d1 = vdot(e.residual, a) + data.penalty * (wd + t * dd)
        return jnp.maximum(t - d1 / guard(curvature(e)), 0.5 * t)  # a safeguard; the halving below takes over

    t0 = jax.lax.fori_loop(0, refine, newton_in_t, -slope / guard(curvature(ev)) if first is None else first)

    def cond(carry: tuple[Array, Array, Evaluation, Array]) -> Array:
        t, k, _, change = carry
        return ~_armijo(t, change, slope) & (k < _MAX_HALVINGS)

    def body(carry: tuple[Array, Array, Evaluation, Array]) -> tuple[Array, Array, Evaluation, Array]:
        t, k, _, _ = carry
        return (t * 0.5, k + 1, *trial(t * 0.5))

    e0, change0 = trial(t0)
    t, _, e, change = jax.lax.while_loop(cond, body, (t0, jnp.int32(0), e0, change0))
    ok = _armijo(t, change, slope)
    objective = glm.objective(data, p, ev)
    resolution = jnp.finfo(dtype).eps * objective
    at_precision = -slope <= resolution
    taken = at_precision & (slope < 0)
    step = jnp.where(at_precision, jnp.where(slope < 0, t0, 0.0), jnp.where(ok, t, 0.0))
    unresolved = at_precision | ~ok | (-change <= resolution)
    moved = jax.tree.map(lambda a_, b_: jnp.where(taken, a_, b_), e0, e)
    after = jax.tree.map(lambda a_, b_: jnp.where(taken | (~at_precision & ok), a_, b_), moved, ev)
    return LineSearchInfo(step, at_precision, -slope / (2 * guard(objective)), unresolved), after
