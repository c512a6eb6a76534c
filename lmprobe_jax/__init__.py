"""lmprobe-jax: linear probes for every layer of a language model at once.

:mod:`lmprobe_jax.functional` holds the batched, jit-compiled solvers (logistic, multinomial, ridge,
mass-mean), cross-validation, metrics and prediction.
"""

from . import functional

__version__ = "0.1.0"

__all__ = ["functional", "__version__"]
