"""One process of a multi-process (jax.distributed) fit, for tests/test_scale.py.

Usage: python distributed_worker.py COORDINATOR N_PROCESSES PROCESS_ID STORE OUT.npz

Every process joins the same run, reads only the layers its devices hold from STORE, and receives every
layer's result; process 0 saves them to OUT.npz. XLA_FLAGS sets the CPU devices per process.
"""

import sys

import jax

coordinator, n_processes, process_id, store_path, out = sys.argv[1:]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator, num_processes=int(n_processes), process_id=int(process_id))

import numpy as np

import lmprobe_jax.functional as F
from lmprobe_jax_store import ActivationStore

store = ActivationStore(store_path)
y = store.labels
mesh = F.layer_mesh()
fit = F.fit_logistic(store, y, C=[0.1, 1.0], mesh=mesh)
cv = F.cross_validate_logistic(store, y, C=[0.1, 1.0], folds=3, mesh=mesh)
ridge = F.fit_ridge(store, y, alpha=[1.0, 10.0], mesh=mesh)
if jax.process_index() == 0:
    np.savez(out, logistic_coef=fit.coef, logistic_intercept=fit.intercept, cv_accuracy=cv.accuracy,
             cv_best=cv.best_value, cv_coef=cv.fit.coef, ridge_coef=ridge.coef, devices=len(jax.devices()),
             processes=jax.process_count())
