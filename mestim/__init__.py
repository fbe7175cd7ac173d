"""mestim: M-estimation in JAX — stacked estimating equations, solved jointly, with sandwich variances.

Importing mestim turns on JAX's float64 mode (``jax_enable_x64``): every estimate and covariance is float64;
JAX's persistent compilation cache (:mod:`mestim.compile_cache`; ``MESTIM_CACHE_DIR=off`` turns it off); and, on
fewer than 8 cores, a one-thread XLA CPU pool, so that vmapped fits cannot hang in jaxlib's batched LAPACK kernels
(import mestim before JAX first runs anything for this to apply; ``NPROC`` set by the user wins).
"""

import os


def _single_threaded_lapack_on_small_cpus():
    """jaxlib 0.10's CPU LAPACK kernels split a batched factorisation over XLA's intra-op thread pool and block
    the pool thread that called them until the parts are done. When as many batched factorisations run at once as
    the pool has threads (vmapped fits: the Newton and Levenberg–Marquardt solves of every replicate), every thread
    waits and the process hangs at 0% CPU. The pool has one thread per core; mestim's programs run at most a few
    factorisations at once, so on fewer than 8 cores the pool is set to one thread (``NPROC``, read when JAX
    creates its CPU client), which runs each factorisation inline. Set ``NPROC`` yourself to choose otherwise."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 8:
        os.environ.setdefault("NPROC", "1")


_single_threaded_lapack_on_small_cpus()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from .compile_cache import enable_compilation_cache, enable_default_cache  # noqa: E402

enable_default_cache()

from .blocks import Block, Prepared  # noqa: E402
from .compilations import compilations  # noqa: E402
from .errors import (  # noqa: E402
    ConvergenceError, DataError, MestimError, MestimWarning, SeparationError, SingularBreadError,
    SpecificationError)
from .estimate import fit, sandwich  # noqa: E402
from .results import Estimates, Result, WaldTest  # noqa: E402
from .smooth import Smoothed  # noqa: E402

__all__ = ["Block", "Prepared", "fit", "sandwich", "Estimates", "Result", "WaldTest", "MestimError",
           "DataError", "SpecificationError", "ConvergenceError", "SingularBreadError", "SeparationError",
           "MestimWarning", "enable_compilation_cache", "compilations", "Smoothed"]
__version__ = "0.1.0"
