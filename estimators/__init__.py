"""The library of registered estimators: blocks of estimating functions for mestim's engine.

- Working models (:mod:`estimators.regression`): ``linear``, ``logistic``, ``multinomial``, ``poisson``, ``glm``,
  ``mean``; each returns a :class:`mestim.Block` to stack with others. GLM families and links:
  :mod:`estimators.generalized_linear`; separation checks: :mod:`estimators.separation`.
- Causal effects of a binary treatment, stacked on those models (:mod:`estimators.causal`): ``ipw``, ``aipw``,
  ``gformula``. Instrumental variables (:mod:`estimators.instrumental`): ``iv``.
- Robust (Huber, Tukey) regression (:mod:`estimators.robust`): ``robust_regression``.
- A fitted statsmodels model as a block (:mod:`estimators.fitted_model`): ``from_statsmodels``.
- Transport from a collection of trials to a target population (Dahabreh et al.):
  ``from estimators.transport import transport``.
- Meta-analysis of 2×2 tables: causal aggregation (Berenfeld et al.) and classical methods:
  :func:`meta_analysis`, :func:`meta_analyses` (batch), :func:`fit_causal_meta`, :func:`classical_meta`;
  ``estimators.causal_meta.causal_meta`` for the causal estimate alone.
- The catalogue, one module per idea (docs/architecture.md gives the form each follows): survival
  (:mod:`estimators.survival`: ``parametric_survival``, ``aft``, ``survival_predictions``); dose–response
  (:mod:`estimators.dose_response`: ``emax``, ``log_logistic``, ``effective_dose``); measurement error
  (:mod:`estimators.measurement`: ``rogan_gladen``, ``rogan_gladen_extended``, ``regression_calibration``);
  descriptive (:mod:`estimators.descriptive`: ``geometric_mean``, ``percentile``, ``positive_mean_deviation``);
  limited outcomes (:mod:`estimators.limited_outcome`: ``beta_regression``, ``tobit``); penalized regression
  (:mod:`estimators.penalized`: ``ridge_regression``, ``bridge_regression``, ``elastic_net_regression``,
  ``additive_regression``); ``quantile_regression`` (:mod:`estimators.quantile`); structural models
  (:mod:`estimators.structural`: ``ipw_msm``, ``g_estimation``); ``mean_sensitivity_analysis``
  (:mod:`estimators.missing`); ``meta_regression`` (:mod:`estimators.mixed_effects_meta`).

Functions named like a submodule (``transport``, ``causal_meta``) are not re-exported here: that would hide the
submodule behind the function.
"""

import mestim  # noqa: F401  (enables float64 before anything below is traced)

if getattr(mestim, "__file__", None) is None:  # a folder named mestim without __init__.py: a namespace package
    raise ImportError(f"the folder {list(mestim.__path__)[0]!r} (a clone of the repository, run from its parent "
                      "folder?) shadows the installed mestim package: Python imports it first from the working "
                      "directory. cd into the clone (or anywhere else) and run again")

from .causal import aipw, gformula, ipw
from .causal_meta import fit_causal_meta
from .dose_response import effective_dose, emax, log_logistic
from .descriptive import geometric_mean, percentile, positive_mean_deviation
from .design import design_matrix, row_mask
from .fitted_model import from_statsmodels
from .instrumental import iv
from .limited_outcome import beta_regression, tobit
from .measurement import regression_calibration, rogan_gladen, rogan_gladen_extended
from .meta_batch import meta_analyses, meta_analysis
from .meta_classical import classical_meta
from .mixed_effects_meta import meta_regression
from .missing import mean_sensitivity_analysis
from .penalized import Spline, additive_regression, bridge_regression, elastic_net_regression, ridge_regression
from .quantile import quantile_regression
from .regression import glm, linear, logistic, mean, multinomial, poisson
from .robust import robust_regression
from .structural import g_estimation, ipw_msm
from .survival import aft, parametric_survival, survival_predictions

__all__ = ["design_matrix", "row_mask", "glm", "linear", "logistic", "mean", "multinomial", "poisson",
           "ipw", "aipw", "gformula", "iv", "robust_regression",
           "from_statsmodels",
           "fit_causal_meta", "classical_meta", "meta_analysis", "meta_analyses",
           "parametric_survival", "aft", "survival_predictions",
           "emax", "log_logistic", "effective_dose",
           "rogan_gladen", "rogan_gladen_extended", "regression_calibration",
           "geometric_mean", "percentile", "positive_mean_deviation",
           "beta_regression", "tobit", "ridge_regression", "bridge_regression", "elastic_net_regression",
           "quantile_regression", "additive_regression", "Spline", "ipw_msm", "g_estimation",
           "mean_sensitivity_analysis", "meta_regression"]
