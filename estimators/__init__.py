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

from mestim.lazy import lazy_attributes  # noqa: E402

# name → the module defining it, imported on first use (PEP 562): `mestim meta` needs four of these modules, and
# importing all twenty took ≈ 0.1 s of its cold start
_EXPORTS = {name: module for module, names in {
    "causal": ("aipw", "gformula", "ipw"),
    "causal_meta": ("fit_causal_meta",),
    "dose_response": ("effective_dose", "emax", "log_logistic"),
    "descriptive": ("geometric_mean", "percentile", "positive_mean_deviation"),
    "design": ("design_matrix", "row_mask"),
    "fitted_model": ("from_statsmodels",),
    "instrumental": ("iv",),
    "limited_outcome": ("beta_regression", "tobit"),
    "measurement": ("regression_calibration", "rogan_gladen", "rogan_gladen_extended"),
    "meta_batch": ("meta_analyses", "meta_analysis"),
    "meta_classical": ("classical_meta",),
    "mixed_effects_meta": ("meta_regression",),
    "missing": ("mean_sensitivity_analysis",),
    "penalized": ("Spline", "additive_regression", "bridge_regression", "elastic_net_regression",
                  "ridge_regression"),
    "quantile": ("quantile_regression",),
    "regression": ("glm", "linear", "logistic", "mean", "multinomial", "poisson"),
    "robust": ("robust_regression",),
    "structural": ("g_estimation", "ipw_msm"),
    "survival": ("aft", "parametric_survival", "survival_predictions"),
}.items() for name in names}
__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS)

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
