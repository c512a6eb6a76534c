"""Matrix products at full float32 precision on every backend.

JAX's default precision for float32 matrix products is the backend's fastest: full float32 on the CPU,
but TF32 (operands rounded to a 10-bit mantissa) on NVIDIA GPUs from Ampere on and bfloat16 passes on
TPUs. Products rounded to ~1e-3 cannot carry a solver to a relative gradient of 1e-7 or a ridge
solution to float64 agreement, and they gain nothing in the solvers' loops, whose products with ``X``
are bound by memory, not arithmetic. Measured on an H100 (32 layers x 6144 x 4096, C = 1, tol 1e-7,
``python benchmarks/gpu_sweep.py``): with JAX's default, the objective gap to the float64 optimum was
7.1e-7 and the coefficient error 8.7e-4 after 897 lock-step CG steps (3.38 s); with every product at
full float32 (``--matmul-precision highest``), 4.2e-9 and 6.1e-5 after 702 (2.80 s).

Every product in :mod:`lmprobe_jax.functional` goes through these wrappers; on the CPU they compile to
the same code as the plain operators.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

HIGHEST = jax.lax.Precision.HIGHEST


def matmul(a: Array, b: Array) -> Array:
    """``a @ b`` at full precision."""
    return jnp.matmul(a, b, precision=HIGHEST)


def einsum(subscripts: str, *operands: Array) -> Array:
    """``jnp.einsum`` at full precision."""
    return jnp.einsum(subscripts, *operands, precision=HIGHEST)


def row_sums(a: Array) -> Array:
    """``a.sum(-1)`` as a product with ones, at full precision. XLA:CPU (jaxlib 0.10) fuses the elementwise
    products that make ``a`` into a reduction that YNNPACK runs 10-40x slower than this matrix-vector product
    (a softmax curvature's 300 x 8192 row sums: 30 ms against 1 ms; ``benchmarks/RESULTS.md``)."""
    return matmul(a, jnp.ones(a.shape[-1], a.dtype))


def rounded_matmul(a: Array, b: Array) -> Array:
    """``a @ b`` with ``a`` rounded to bfloat16 (``b`` already is), the products summed in float32: each
    entry within ``2^-7 (|a| @ |b|)`` of the product of the unrounded operands (each rounded by at most
    ``2^-8``, relative), plus float32's rounding of the sum. On CPUs with bfloat16 dot instructions
    (AVX512-BF16) XLA runs a Hessian product of two such products 1.6-1.9x faster than two float32 ones
    (``benchmarks/RESULTS.md``). For Hessian products only, never a gradient."""
    return jnp.matmul(a.astype(jnp.bfloat16), b, precision=HIGHEST, preferred_element_type=jnp.float32)


def vdot(a: Array, b: Array) -> Array:
    """``jnp.vdot`` (flattened inner product) at full precision."""
    return jnp.vdot(a, b, precision=HIGHEST)
