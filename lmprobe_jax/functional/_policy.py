"""How the solvers solve: a static, hashable policy object, and the one place that picks its defaults.

A :class:`SolverPolicy` chooses the solver's parts (products with ``X``, preconditioners, the
quasi-Newton phase, the builds of exact inverses) and the numbers that tune them. It never changes
*what* is solved: every policy reaches the same optimum, to the same ``tol``. It is passed to the
solvers as a static argument (a new policy compiles a new program), so an alternative is compared by
passing another policy, never by flipping a module-level switch. ``benchmarks/solver_choices.py`` does
exactly that; the measurements behind each default are in ``benchmarks/RESULTS.md``.

:func:`default_policy` is the only function in the solvers that looks at the backend.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import jax


@dataclasses.dataclass(frozen=True)
class SolverPolicy:
    """The solver's parts and their settings (frozen, hashable: a static argument of the solvers).

    Each field is checked where a policy is made (``TypeError`` / ``ValueError`` naming the field), so a
    setting no solve could use never reaches a traced program.

    Attributes:
      quasi_newton_memory: pairs kept by the L-BFGS phase that starts a solve on a layer whose spectrum
        the Nystrom sketch finds flat (0: Newton-CG from the first step everywhere; a steep layer always
        starts with Newton-CG).
      softmax_quasi_newton_memory: the same for softmax solves, on the layers ``softmax_nystrom_decay``
        finds flat.
      switch_window: quasi-Newton iterations over which progress is judged.
      switch_progress: the phase hands over to Newton-CG once the best scaled gradient of the last
        ``switch_window`` iterations is above this fraction of the best before them (the quasi-Newton
        steps stopped paying: each costs two passes over ``X``, a Newton step one plus two per CG step).
        0.1 rather than 0.5 since CG stops on the gradient test's own norm: imbalanced layers 7-20% fewer
        passes, the rest within 2.5% (RESULTS.md).
      softmax_switch_progress: the same for softmax solves. At 0.1 softmax-300 took 12% fewer passes but
        stopped at a 130x larger gap (1.6e-8 against 1.2e-10), and softmax-10 took 21% more (RESULTS.md).
      switch_after: quasi-Newton iterations before that rule applies (L-BFGS's first iterations, while
        its memory fills, gain least).
      gap_bound: a solve may end on the strong-convexity bound of its objective gap
        (:meth:`._glm.GLM.gap_bound`) instead of taking a Newton step to certify it (False: only a Newton
        decrement passes the gap test). It saved 4-21% of the passes where it passes on the binary panel.
      softmax_gap_bound: the same for softmax solves. Off: on 300 Zipf classes the bound ended the solve 8%
        sooner but at a 20x larger gap (2.9e-9 against 1.3e-10), which the last Newton step's quadratic
        convergence buys cheaply (RESULTS.md).
      line_search_refine: Newton steps in the step length after the quadratic model's (each costs
        ``O(N K)`` elementwise work, no pass over ``X``; :mod:`._linesearch`).
      nystrom_rank: rank of the per-layer Nystrom preconditioner of the Gram matrix (0: none); the
        public ``precondition_rank`` overrides it.
      nystrom_features_per_rank: wider layers get a higher rank, ``D`` / this, from ``nystrom_rank`` up to
        ``nystrom_max_rank`` (0: ``nystrom_rank`` at every width). Raw-like layers of 2048 and 4096
        features took 1.1-2.7x less CPU time at rank 128 and 256 than at 64 (RESULTS.md).
      nystrom_max_rank: the most rank that rule gives.
      nystrom_decay: the rank-``nystrom_rank`` preconditioner is built only where the layer's spectrum is
        not flat: when the largest eigenvalue of a rank-``nystrom_probe_rank`` sketch is at least this
        times its smallest (0: always build).
      nystrom_probe_rank: rank of that sketch.
      softmax_nystrom_decay: ``nystrom_decay`` for softmax solves. Softmax layers whose probe ratio is
        below it (standardised activations: 3-70) take the quasi-Newton phase with no preconditioner: there
        the class-scaled Nystrom approximation cost passes both as L-BFGS's initial matrix and in CG.
        Above it (outlier features: 500 to 1e6) they take Newton-CG with it from the first step, without
        which raw multi-class layers stayed unconverged (``benchmarks/softmax_policies.py``).
      lagged_build_factor: a ``C`` path (layers solved one at a time) builds the exact inverse Hessian at a
        solution once the CG work left exceeds this times the build's cost (0: never; see
        :mod:`._hessian_inverse`).
      hessian_refresh_cg: rebuild the exact inverse Newton matrix inside a solve after a Newton step whose
        CG took at least this many steps (0: never; accelerators, where its build is cheap).
      woodbury_ratio: precondition wide binary layers, ``N^2 <= woodbury_ratio * D`` (and ``2 N <= D``),
        with the exact inverse Newton matrix through the ``N x N`` kernel (:mod:`._woodbury`; 0: never).
        Resolved per shape by :func:`._path.solver_options` into ``woodbury``.
      woodbury: whether this shape takes the kernel inverse (set by ``solver_options``).
      fused_max_rows: products ``V @ X^T`` with 2 to this many rows are written as a fused elementwise sum
        (XLA's CPU backend runs it in one pass over ``X``; 0: always the dot; see :mod:`._products`). The
        solver's own products only: the Nystrom sketches always take the dot.
      hessian_block_bytes: CG's Hessian product ``X^T (S X v)`` on a layer of at least ``hessian_blocks_from``
        bytes (larger than a CPU's caches) runs over blocks of rows of about this many bytes, both products
        on a block while it is in cache: one read of ``X`` from memory where two products make two (0:
        never; accelerators, unmeasured). Binary fits with layers solved one at a time
        (:func:`._path.solver_options` resolves the rows into ``hessian_block_rows``).
      hessian_blocks_from: the smallest layer, in bytes at 4 a value, whose Hessian products go by blocks (48
        MiB: at 32 MiB, the last-level cache of the machine measured, blocks lost on some shapes).
      hessian_block_rows: the rows of a block for this shape (0: two whole products), set by
        :func:`._path.solver_options`.
      halve_builds: build exact inverses from half-size blocks (the weighted Gram's symmetric blocks, the
        triangular inverse by halves): fewer flops on the CPU, many more programs to autotune elsewhere.
      centre_features: with an intercept, solve each layer on its features centred at their weighted mean
        (the intercept absorbs the shift; raw activations' common offset then costs no passes). It makes a
        centred copy of the layers solved together, so :func:`._path.solver_options` keeps it only where
        layers are solved one at a time (the CPU's default): one layer's copy, which the streamed solvers'
        memory plans count.
      continuation_factor: a single ``C`` on a layer the sketch finds steep is first solved at ``C`` / this
        to ``continuation_tol``, and solved from there (0: never; a grid of ``C`` is its own continuation).
        A cold Newton solve of a nearly separable, ill-conditioned layer takes many short steps to grow its
        coefficients (SmolLM2's raw residual streams at C = 1: 321 -> 241 passes a layer; RESULTS.md).
        Binary fits with layers solved one at a time (:func:`._path.solver_options` resolves it to 0
        elsewhere: unmeasured there).
      continuation_tol: the scaled-gradient tolerance of that first solve (no gap test).
      softmax_hessian_bfloat16_from: float32 softmax solves of at least this many classes (0: none) take
        their CG steps' Hessian products with both operands rounded to bfloat16 (a copy of each layer as
        ``X^T`` and ``X``, one float32 copy's bytes), summed in float32, until the gradient test is met or a
        step shows the rounding costs progress; the gradient, the line search and the stopping tests stay
        float32, so the optimum and ``tol`` are unchanged (:meth:`._glm.GLM.rounded_hvp`). 32 where the CPU
        has bfloat16 dot instructions (:func:`default_policy`): a product with 3 classes ran 0.88x float32's
        speed, 30 classes 1.14-1.52x, 300 1.94x. 0 elsewhere and on accelerators: unmeasured there.
      layer_warm_start: when layers are solved one at a time, start each layer from the best multiple
        of the previous layer's solution (one pass over ``X``; a multiple of zero is the cold start, so it
        is never worse in objective). Off by default: a layer's fit then depends on its own data only, so
        streamed chunks, layer-sharded meshes and a subset of layers give the whole call's fits.
    """

    quasi_newton_memory: int = 10
    softmax_quasi_newton_memory: int = 10
    switch_window: int = 8
    switch_progress: float = 0.1
    softmax_switch_progress: float = 0.5
    switch_after: int = 10
    gap_bound: bool = True
    softmax_gap_bound: bool = False
    line_search_refine: int = 0
    nystrom_rank: int = 64
    nystrom_features_per_rank: int = 16
    nystrom_max_rank: int = 256
    nystrom_decay: float = 4.0
    nystrom_probe_rank: int = 8
    softmax_nystrom_decay: float = 100.0
    lagged_build_factor: float = 1.5
    hessian_refresh_cg: int = 0
    woodbury_ratio: float = 16.0
    woodbury: bool = False
    fused_max_rows: int = 16
    hessian_block_bytes: int = 2**21
    hessian_blocks_from: int = 48 * 2**20
    hessian_block_rows: int = 0
    halve_builds: bool = True
    centre_features: bool = True
    continuation_factor: float = 10.0
    continuation_tol: float = 1e-2
    softmax_hessian_bfloat16_from: int = 0
    layer_warm_start: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # field.type is the annotation's text: "int", "float" or "bool"
            value = getattr(self, field.name)
            if field.type == "bool":
                ok = isinstance(value, bool)
            elif field.type == "int":
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            else:
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                wanted = {"bool": "True or False", "int": "an int"}.get(field.type, "a finite number")
                raise TypeError(f"SolverPolicy.{field.name} must be {wanted}; got {value!r}.")
            if field.type != "bool" and value < 0:
                raise ValueError(f"SolverPolicy.{field.name} must be >= 0; got {value!r}.")
        for name in ("switch_progress", "softmax_switch_progress"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"SolverPolicy.{name} is a fraction of the scaled gradient that a window of "
                                 f"quasi-Newton steps must beat: 0 < {name} < 1; got {getattr(self, name)!r}.")
        for name in ("switch_window", "nystrom_probe_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"SolverPolicy.{name} must be >= 1; got {getattr(self, name)!r}.")
        if 0.0 < self.continuation_factor <= 1.0:
            raise ValueError("SolverPolicy.continuation_factor divides C for the first solve: 0 (no continuation) "
                             f"or more than 1; got {self.continuation_factor!r}.")
        if not self.continuation_tol > 0.0:
            raise ValueError(f"SolverPolicy.continuation_tol must be > 0; got {self.continuation_tol!r}.")


# The fewest softmax classes whose Hessian products gain from rounding, where the CPU has bfloat16 dots.
_ROUNDED_HESSIAN_CLASSES = 32

# On an accelerator, (re)build the exact inverse Newton matrix after a Newton step whose CG took this many
# steps (H100, 32 x 6144 x 4096, C = 1: never 2.78 s, 10: 1.95 s, 20: 1.55 s, 40: 1.72 s; RESULTS.md).
_ACCELERATOR_REFRESH_CG = 20


@functools.cache
def cpu_has_bfloat16_dots() -> bool:
    """Whether this machine's CPU has bfloat16 dot-product instructions (x86's AVX512-BF16 or AMX-BF16, Arm's
    BF16), read from ``/proc/cpuinfo``; False where that cannot be read (the rounded products would then run
    no faster than float32 ones)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            words = {word for line in f if line.startswith(("flags", "Features")) for word in line.split()}
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def default_policy(backend: str | None = None) -> SolverPolicy:
    """The policy the solvers use unless given one: the CPU's (``backend`` ``"cpu"``) or an accelerator's.

    The CPU keeps the fused products, builds by halves and the path's lagged inverse; accelerators
    (measured on an H100) rebuild the exact inverse Newton matrix inside the solve instead, keep XLA's
    dot and whole products, and always build the Nystrom preconditioner (its products are cheap there), at
    rank ``nystrom_rank`` whatever the width (the rank measured there); softmax solves there keep
    Newton-CG from the first step, as measured before the CPU's rule, and no L-BFGS memory (``2 m K D``
    floats a layer). Softmax solves of 32 classes or more round their CG's Hessian products to bfloat16 on
    CPUs that have bfloat16 dot instructions (:func:`cpu_has_bfloat16_dots`).
    """
    backend = jax.default_backend() if backend is None else backend
    if backend == "cpu":
        rounded = _ROUNDED_HESSIAN_CLASSES if cpu_has_bfloat16_dots() else 0
        return SolverPolicy(softmax_hessian_bfloat16_from=rounded)
    return SolverPolicy(
        nystrom_features_per_rank=0, nystrom_decay=0.0, softmax_nystrom_decay=0.0, softmax_quasi_newton_memory=0,
        lagged_build_factor=0.0, hessian_refresh_cg=_ACCELERATOR_REFRESH_CG, fused_max_rows=0,
        hessian_block_bytes=0, halve_builds=False,
    )
