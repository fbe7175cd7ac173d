"""mestim: M-estimation in JAX — stacked estimating equations, solved jointly, with sandwich variances.

Importing mestim turns on JAX's float64 mode (``jax_enable_x64``): every estimate and covariance is float64;
and JAX's persistent compilation cache (:mod:`mestim.compile_cache`; ``MESTIM_CACHE_DIR=off`` turns it off).
"""

import jax

jax.config.update("jax_enable_x64", True)

from .compile_cache import enable_compilation_cache, enable_default_cache  # noqa: E402

enable_default_cache()

from .blocks import Block, Prepared  # noqa: E402
from .compilation_count import compilations  # noqa: E402
from .errors import (  # noqa: E402
    ConvergenceError, DataError, MestimError, MestimWarning, SeparationError, SingularBreadError,
    SpecificationError)

from .lazy import lazy_attributes  # noqa: E402

# imported on first use: the solver's modules take ≈ 0.1 s to import, which a command that builds blocks but fits
# nothing (`mestim meta` checks its closed form in NumPy) need not pay
__getattr__, __dir__ = lazy_attributes(__name__, globals(), {
    "fit": "estimate", "sandwich": "estimate", "Estimates": "results", "Result": "results", "WaldTest": "results",
    "Smoothed": "smooth"})

__all__ = ["Block", "Prepared", "fit", "sandwich", "Estimates", "Result", "WaldTest", "MestimError",
           "DataError", "SpecificationError", "ConvergenceError", "SingularBreadError", "SeparationError",
           "MestimWarning", "enable_compilation_cache", "compilations", "Smoothed"]
__version__ = "0.1.0"
