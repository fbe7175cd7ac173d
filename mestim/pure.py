"""A fit as a pure function of the data arrays: jit it, vmap it over data sets or over row weights.

``fit`` validates on the host and raises; a simulation study or a bootstrap instead wants the same solver
applied to many data sets of one shape at once. :func:`fit_function` prepares an estimator on an example table
and returns ``(columns, f, problem)``: ``columns`` are the arrays ψ reads (:func:`prepare_columns` gives them for
other tables of the same layout) and ``f(columns, w) -> PureFit`` runs the same solver rules as ``fit``
(:func:`mestim.solve.solve_traced`, one ``lax.while_loop`` per dependency level) over the same row sums
(:class:`mestim.sums.Kernel`) and forms the sandwich, with no host round trip, so ``jax.vmap(f)`` fits a whole
batch of replicates in one compiled call. Failures are reported in ``converged``/``status`` (and a NaN
``vcov``), never raised: count them, do not drop them silently.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import covariance, linalg
from .blocks import solve_levels
from .covariance import SINGULAR_COND, equilibration
from .errors import SpecificationError
from .estimate import kernel_for
from .options import FitOptions
from .problem import prepare
from .solve import CONVERGED, SINGULAR, SolverOptions, solve_traced
from .sums import Moments, plan


class PureFit(NamedTuple):
    theta: jax.Array  # (p,)
    vcov: jax.Array  # (p, p) sandwich A⁻¹MA⁻ᵀ as fit() forms it; NaN when the bread is singular
    converged: jax.Array  # bool: every level converged and the bread is invertible
    iterations: jax.Array
    status: jax.Array  # the first failing level's status code (mestim.solve.STATUS), else CONVERGED


def fit_function(estimator, data, init=None, *, names=None, weight_type: str = "frequency", cluster=None,
                 correction: str | None = None, solve: str = "blockwise", chunk_size: int | None = None,
                 max_iter: int = 100, xtol: float = 1e-10, gtol: float = 1e-12):
    """``(columns, f, problem)`` for ``estimator`` prepared on ``data``; ``f(columns, w, theta0=None)`` is pure.

    ``w`` are the row weights, of ``weight_type`` (as in :func:`mestim.fit`); ``cluster`` (a column name or array
    of labels of ``data``'s rows) and ``correction`` (None, ``"df"``, ``"fay"``) give the covariance ``fit`` gives
    with them (:mod:`mestim.covariance`): every data set passed to ``f`` shares ``data``'s clusters, row by row.
    Columns may be float32 (read in float64). ``problem.labels`` names the parameters; ``problem.init`` is the
    default start.

    Example (the fit as a pure function of the columns, vmapped over two sets of weights)::

        >>> import jax, jax.numpy as jnp, numpy as np, mestim
        >>> from mestim.pure import fit_function
        >>> mean = mestim.Block("m", lambda t, row: row["y"] - t, init=[0.0])
        >>> y = np.arange(1.0, 7.0)
        >>> columns, f, problem = fit_function(mean, {"y": y})
        >>> w = np.array([np.ones(6), [1, 1, 1, 0, 0, 0.]])
        >>> np.round(jax.vmap(lambda wi: f(columns, wi).theta)(w), 6)
        Array([[3.5],
               [2. ]], dtype=float64)
    """
    options = FitOptions(weight_type, correction, solve=solve, chunk_size=chunk_size, max_iter=max_iter, xtol=xtol,
                         gtol=gtol)
    problem = prepare(estimator, data, init, names=names, cluster=cluster)
    kernel = kernel_for(problem, options)
    spec, chunk = problem.spec, kernel.chunk
    every = tuple(b.name for b in spec.blocks)
    levels = solve_levels(spec.blocks) if solve == "blockwise" else [every]
    offsets, equations = spec.offsets(), spec.equation_offsets()
    solver = SolverOptions(max_iter, xtol, gtol)
    start = jnp.asarray(problem.init)
    sandwich_plan = plan(spec, values=every, jacobian=every, meat=True, sampling=options.sampling)
    clustered, fay = problem.cluster is not None, options.correction == "fay"

    def f(columns, w, theta0=None) -> PureFit:
        n = w.shape[0]
        extra = -n % chunk  # pad to whole chunks with weight-0 copies of row 0
        rows = {k: jnp.concatenate([v, jnp.repeat(v[:1], extra, axis=0)]) for k, v in columns.items()}
        w = jnp.concatenate([jnp.asarray(w, float), jnp.zeros(extra)])
        codes = jnp.concatenate([jnp.asarray(problem.cluster), jnp.zeros(extra, int)]) if clustered else None

        def sums(theta, what):
            zeros = Moments(*(jnp.asarray(z) for z in kernel.zeros()))
            return kernel.slab_sums(zeros, theta, rows, w, (n + extra) // chunk, what)

        theta = start if theta0 is None else jnp.asarray(theta0, float)
        status, iterations = jnp.asarray(CONVERGED), jnp.asarray(0)
        for level in levels:
            idx = np.concatenate([np.arange(offsets[b].start, offsets[b].stop) for b in level])
            eqs = np.concatenate([np.arange(equations[b].start, equations[b].stop) for b in level])
            with_jac = plan(spec, values=level, jacobian=level)

            def evaluate(t, theta=theta, idx=idx, eqs=eqs, with_jac=with_jac):
                m = sums(theta.at[idx].set(t), with_jac)
                return m.psi[eqs], m.jac[eqs][:, idx]

            out = solve_traced(evaluate, theta[idx], w.sum(), solver)
            theta = theta.at[idx].set(out.theta)
            status = jnp.where(status == CONVERGED, out.status, status)
            iterations = iterations + out.iterations
        final = sums(theta, sandwich_plan)
        bread = -final.jac
        scale = equilibration(bread, jnp)
        equilibrated = bread / scale[:, None] / scale[None, :]
        inv_eq = linalg.inv(equilibrated)  # no LAPACK under vmap (mestim.linalg)
        singular = linalg.condition(equilibrated, inv_eq) > SINGULAR_COND
        inv = inv_eq / scale[:, None] / scale[None, :]
        if clustered or fay:  # the same units as fit (mestim.covariance), from the rows' ψ and leverages
            units = covariance.units(kernel.row_values(theta, rows), w, sampling=options.sampling, codes=codes,
                                     n_clusters=problem.n_clusters, xp=jnp,
                                     leverages=kernel.row_leverages(theta, rows, -inv) if fay else None)
            meat = covariance.meat(units, xp=jnp)
        else:
            meat = final.meat
        df_units = covariance.n_units(options.weight_type, w.sum(), n, problem.n_clusters)
        vcov = covariance.covariance(inv, meat, df_units if options.correction == "df" else None, xp=jnp)
        vcov = jnp.where(singular, jnp.nan, vcov)
        status = jnp.where((status == CONVERGED) & singular, SINGULAR, status)
        return PureFit(theta, vcov, status == CONVERGED, iterations, status)

    return problem.used, f, problem


def prepare_columns(problem, data) -> dict:
    """The columns of ``problem``'s estimator prepared on another table of the same layout."""
    other = prepare(list(problem.blocks), data)
    if other.spec.dim != problem.spec.dim or set(other.used) != set(problem.used):
        raise SpecificationError("this table does not give the same parameters/columns as the one the function was "
                                 "built on")
    return other.used


def stack_columns(columns: list[dict]) -> dict:
    """Stack prepared columns of equally shaped data sets along a new leading axis (for ``jax.vmap``)."""
    return {k: np.stack([c[k] for c in columns]) for k in columns[0]}


def coverage(estimates: np.ndarray, vcovs: np.ndarray, truth: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Share of replicates whose Wald CI θ̂ ± z·SE covers ``truth``, per parameter."""
    from .results import z_crit

    se = np.sqrt(np.diagonal(vcovs, axis1=-2, axis2=-1))
    return np.mean(np.abs(estimates - truth) <= z_crit(level) * se, axis=0)
