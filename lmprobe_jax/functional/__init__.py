"""Pure, jit-compiled, layer-batched probe solvers.

Arrays put the layer axis first: activations ``(L, N, D)`` (a single layer ``(N, D)`` also works), and a
grid of regularisation values adds an axis right after it: ``coef`` ``(L, G, D)``. Every solver returns
a NamedTuple of arrays and matches the scikit-learn estimator named in its docstring number for number.
"""

from ._cv import CVResult, cross_validate_logistic, cross_validate_ridge
from ._folds import stratified_folds
from ._logistic import LogisticFit, fit_logistic
from ._mass_mean import MassMeanFit, fit_mass_mean
from ._metrics import binary_accuracy, binary_log_loss, multiclass_accuracy, multiclass_log_loss, roc_auc
from ._multinomial import MultinomialFit, fit_multinomial
from ._predict import decision_function, predict, predict_proba
from ._ridge import RidgeFit, RidgeLOO, fit_ridge, ridge_loo

__all__ = [
    "CVResult",
    "LogisticFit",
    "MassMeanFit",
    "MultinomialFit",
    "RidgeFit",
    "RidgeLOO",
    "binary_accuracy",
    "binary_log_loss",
    "cross_validate_logistic",
    "cross_validate_ridge",
    "decision_function",
    "fit_logistic",
    "fit_mass_mean",
    "fit_multinomial",
    "fit_ridge",
    "multiclass_accuracy",
    "multiclass_log_loss",
    "predict",
    "predict_proba",
    "ridge_loo",
    "roc_auc",
    "stratified_folds",
]
