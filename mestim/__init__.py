"""mestim: M-estimation in JAX — stacked estimating equations, solved jointly, with sandwich variances.

Importing mestim turns on JAX's float64 mode (``jax_enable_x64``): every estimate and covariance is float64;
and JAX's persistent compilation cache (:mod:`mestim.compile_cache`; ``MESTIM_CACHE_DIR=off`` turns it off).
"""

import jax

jax.config.update("jax_enable_x64", True)

from .compile_cache import enable_compilation_cache, enable_default_cache  # noqa: E402

enable_default_cache()

import importlib  # noqa: E402

from .blocks import Block, Prepared  # noqa: E402
from .compilation_count import compilations  # noqa: E402
from .errors import (  # noqa: E402
    ConvergenceError, DataError, MestimError, MestimWarning, SeparationError, SingularBreadError,
    SpecificationError)

# imported on first use (PEP 562): the solver's modules take ≈ 0.1 s to import, which a command that builds blocks
# but fits nothing (`mestim meta` checks its closed form in NumPy) need not pay
_LAZY = {"fit": "estimate", "sandwich": "estimate", "Estimates": "results", "Result": "results",
         "WaldTest": "results", "Smoothed": "smooth"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'mestim' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Block", "Prepared", "fit", "sandwich", "Estimates", "Result", "WaldTest", "MestimError",
           "DataError", "SpecificationError", "ConvergenceError", "SingularBreadError", "SeparationError",
           "MestimWarning", "enable_compilation_cache", "compilations", "Smoothed"]
__version__ = "0.1.0"
