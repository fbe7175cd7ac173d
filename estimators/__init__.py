"""The library of registered estimators: blocks of estimating functions for mestim's engine.

Working models (:mod:`estimators.regression`): ``linear``, ``logistic``, ``multinomial``, ``poisson``,
``glm``, ``mean``; each returns a :class:`mestim.Block` to stack with others.
"""

import mestim  # noqa: F401  (enables float64 before anything below is traced)

from .design import design_matrix, row_mask
from .regression import glm, linear, logistic, mean, multinomial, poisson

__all__ = ["design_matrix", "row_mask", "glm", "linear", "logistic", "mean", "multinomial", "poisson"]
