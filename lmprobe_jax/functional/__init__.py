"""Pure, jit-compiled, layer-batched probe solvers.

Arrays put the layer axis first: activations ``(L, N, D)`` (a single layer ``(N, D)`` also works), and a
grid of regularisation values adds an axis right after it: ``coef`` ``(L, G, D)``. Every solver returns
a NamedTuple of arrays and matches the scikit-learn estimator named in its docstring number for number.
"""

from . import _aot, _checks, _cv, _mass_mean, _metrics, _newton_cg, _nystrom, _path, _ridge
from ._cv import CVResult, cross_validate_group_lasso, cross_validate_logistic, cross_validate_ridge
from ._folds import HeldOut, held_out_rows, stratified_folds
from ._group_lasso import GroupLassoFit, fit_group_lasso, group_lasso_alpha_max
from ._logistic import LogisticFit, fit_logistic
from ._mass_mean import MassMeanFit, fit_mass_mean
from ._metrics import (
    binary_accuracy,
    binary_log_loss,
    fold_scores,
    multiclass_accuracy,
    multiclass_log_loss,
    roc_auc,
)
from ._multinomial import MultinomialFit, fit_multinomial
from ._policy import SolverPolicy, default_policy
from ._predict import decision_function, predict, predict_proba
from ._programs import register as _register
from ._ridge import MulticlassRidgeFit, RidgeFit, RidgeLOO, fit_ridge, ridge_loo
from ._selection import (
    FastAutoResult,
    alpha_for_k_layers,
    concatenate_layers,
    fast_auto,
    layer_importance,
    layers_kept,
    resolve_candidates,
)

_aot.register_types(_newton_cg.SolveResult, _nystrom.NystromApprox, HeldOut, LogisticFit, MultinomialFit)
_register(_path.solve_layers, _path.layer_preconditioners, _ridge.ridge_solve, _mass_mean.mass_mean_solve,
          _cv._score_fold_fits, _cv._fold_mean_at, _cv._with_refit, _metrics._fold_scores, _checks._sum_is_finite)

__all__ = [
    "CVResult",
    "FastAutoResult",
    "GroupLassoFit",
    "HeldOut",
    "LogisticFit",
    "MassMeanFit",
    "MulticlassRidgeFit",
    "MultinomialFit",
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
    "fit_ridge",
    "fold_scores",
    "group_lasso_alpha_max",
    "held_out_rows",
    "layer_importance",
    "layers_kept",
    "multiclass_accuracy",
    "multiclass_log_loss",
    "predict",
    "predict_proba",
    "resolve_candidates",
    "ridge_loo",
    "roc_auc",
    "stratified_folds",
]
