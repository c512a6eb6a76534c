"""lmprobe-jax: linear probes for every layer of a language model at once.

* :mod:`lmprobe_jax.functional` — batched, jit-compiled solvers (logistic, multinomial, ridge,
  mass-mean, group lasso over layers), cross-validation, layer selection, metrics and prediction.
* :mod:`lmprobe_jax.sklearn` — scikit-learn estimators over those solvers (needs scikit-learn; imported
  on demand, not here).
"""

from . import functional

__version__ = "0.1.0"

__all__ = ["functional", "__version__"]
