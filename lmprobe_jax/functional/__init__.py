"""Pure, jit-compiled, layer-batched probe solvers.

Arrays put the layer axis first: activations ``(L, N, D)`` (a single layer ``(N, D)`` also works), and a
grid of regularisation values adds an axis right after it: ``coef`` ``(L, G, D)``. Every solver returns
a NamedTuple of arrays and matches the scikit-learn estimator named in its docstring number for number.

The per-layer solvers also take an activation store, a :class:`LayerSource`, an iterator of layer chunks
or an array larger than ``memory_budget``, and stream it from disk a chunk of layers at a time
(:mod:`._streaming`); ``fit_logistic``, ``fit_ridge`` and the binary ``cross_validate_logistic`` also
stream the rows of a layer too large to hold. The group-lasso solvers couple every layer in one model
and take in-memory ``(L, N, D)`` only. :func:`fit_pca` gives every layer's principal components (the
sample scan's lens).
"""

from . import (
    _aot,
    _checks,
    _cv,
    _logistic,
    _mass_mean,
    _metrics,
    _multinomial,
    _newton_cg,
    _nystrom,
    _path,
    _ridge,
)
from ._cv import CVResult, cross_validate_group_lasso
from ._folds import HeldOut, held_out_rows, stratified_folds
from ._group_lasso import GroupLassoFit, fit_group_lasso, group_lasso_alpha_max
from ._logistic import LogisticFit
from ._mass_mean import MassMeanFit
from ._mesh import layer_mesh
from ._metrics import (
    binary_accuracy,
    binary_log_loss,
    fold_scores,
    multiclass_accuracy,
    multiclass_log_loss,
    roc_auc,
)
from ._multinomial import MultinomialFit
from ._pca import PCAFit, fit_pca, max_component_auroc, pca_project
from ._policy import SolverPolicy, default_policy
from ._predict import decision_function, predict, predict_proba
from ._programs import register as _register
from ._ridge import MulticlassRidgeFit, RidgeFit, RidgeLOO
from ._row_streaming import logistic_cv_rows as _logistic_cv_rows
from ._row_streaming import logistic_rows as _logistic_rows
from ._row_streaming import ridge_rows as _ridge_rows
from ._selection import (
    FastAutoResult,
    alpha_for_k_layers,
    concatenate_layers,
    fast_auto,
    layer_importance,
    layers_kept,
    resolve_candidates,
)
from ._sources import LayerSource, layer_source
from ._streaming import streams_layers

# The per-layer solvers, taking stores, layer iterators and arrays larger than memory (see _streaming).
# ``copies``: float32 copies of the layer being solved that each holds beyond X at its peak, measured
# (peak RSS growth, 6 x 8000 x 512 float16 memory map, chunks of 2 layers, one core; RESULTS.md) and
# rounded up: logistic 0.1, softmax (3 classes) 2.4, ridge 1.0, its LOO 2.4, mass-mean 1.9 (5.4 with
# iid), the logistic CV (5 folds) 3.6, the ridge CV 2.6. The plan counts apart the loop's copy of the
# layer a chunk of two or more takes (_budget.chunk_bytes); those figures, from two-layer chunks, may
# include it (not remeasured). Logistic, remeasured with one- and two-layer chunks up to 40000 x 4096:
# 0.03-0.22 beyond the chunks and that copy (benchmarks/streamed_memory.py; RESULTS.md, "Streamed fits'
# peak memory"). The logistic and softmax solvers (CV included) then took one more: the centred copy of the
# layer being solved (SolverPolicy.centre_features).
# ``workspace``: the bytes a solve holds besides those copies, from the call's arguments: softmax's grow with
# the classes (and with the CV's folds), past a layer's size from a few hundred classes on.
# ``padded_reads``: the solvers without per-row results read chunks padded to the compile bucket with
# zero-weight rows (no padded copy); logistic only when N and the bucket choose the same preconditioner.
# ``rows``: the row-streamed solver for a layer whose rows do not fit (_row_streaming); its blocks are
# planned with the in-memory ``copies`` per row, though it copies none (smaller blocks, not more memory).
fit_logistic = streams_layers(copies=1.5, rows=_logistic_rows, padded_reads=_logistic.same_settings_padded)(
    _logistic.fit_logistic)
fit_multinomial = streams_layers(copies=5, workspace=_multinomial.fit_multinomial_workspace)(
    _multinomial.fit_multinomial)
fit_ridge = streams_layers(copies=1.5, rows=_ridge_rows, padded_reads=lambda n_rows, n_features: True)(
    _ridge.fit_ridge)
ridge_loo = streams_layers(copies=3)(_ridge.ridge_loo)
fit_mass_mean = streams_layers(copies=6)(_mass_mean.fit_mass_mean)
cross_validate_logistic = streams_layers(
    copies=5, workspace=_cv.logistic_cv_workspace, rows=_logistic_cv_rows, keeps_layer_axis=True,
)(_cv.cross_validate_logistic)
cross_validate_ridge = streams_layers(copies=3, keeps_layer_axis=True)(_cv.cross_validate_ridge)

_register(_path.solve_layers, _path.layer_preconditioners, _ridge.ridge_solve, _mass_mean.mass_mean_solve,
          _cv._scored_folds, _cv._with_refit, _metrics._fold_scores, _checks._sum_is_finite)

__all__ = [
    "CVResult",
    "FastAutoResult",
    "GroupLassoFit",
    "HeldOut",
    "LayerSource",
    "LogisticFit",
    "MassMeanFit",
    "MulticlassRidgeFit",
    "MultinomialFit",
    "PCAFit",
    "RidgeFit",
    "RidgeLOO",
    "SolverPolicy",
    "alpha_for_k_layers",
    "binary_accuracy",
    "binary_log_loss",
    "concatenate_layers",
    "cross_validate_group_lasso",
    "cross_validate_logistic",
    "cross_validate_ridge",
    "decision_function",
    "default_policy",
    "fast_auto",
    "fit_group_lasso",
    "fit_logistic",
    "fit_mass_mean",
    "fit_multinomial",
    "fit_pca",
    "fit_ridge",
    "fold_scores",
    "group_lasso_alpha_max",
    "held_out_rows",
    "layer_importance",
    "layer_mesh",
    "layer_source",
    "layers_kept",
    "max_component_auroc",
    "multiclass_accuracy",
    "multiclass_log_loss",
    "pca_project",
    "predict",
    "predict_proba",
    "resolve_candidates",
    "ridge_loo",
    "roc_auc",
    "stratified_folds",
    "streams_layers",
]
