"""mestim: M-estimation in JAX — stacked estimating equations, solved jointly, with sandwich variances.

Importing mestim turns on JAX's float64 mode (``jax_enable_x64``): every estimate and covariance is float64.
"""

import jax

jax.config.update("jax_enable_x64", True)

from .blocks import Block, Prepared  # noqa: E402
from .errors import (  # noqa: E402
    ConvergenceError, DataError, MestimError, MestimWarning, SeparationError, SingularBreadError,
    SpecificationError)
from .fit import fit, sandwich  # noqa: E402
from .results import Estimates, Result, WaldTest  # noqa: E402

__all__ = ["Block", "Prepared", "fit", "sandwich", "Estimates", "Result", "WaldTest", "MestimError",
           "DataError", "SpecificationError", "ConvergenceError", "SingularBreadError", "SeparationError",
           "MestimWarning"]
__version__ = "0.1.0"
