"""A fit as a pure function of the data arrays: jit it, vmap it over data sets or over row weights.

``fit`` validates on the host and raises; a simulation study or a bootstrap instead wants the same compiled
solver applied to many data sets of one shape at once. :func:`fit_function` prepares an estimator on an example
table and returns ``(columns, f)``: ``columns`` are the arrays ψ reads (from :func:`prepare_columns` for other
tables of the same layout) and ``f(columns, w) -> PureFit`` solves every dependency group and forms the sandwich
with no host round trip, so ``jax.vmap(f)`` fits a whole batch of replicates in one call. Failures are reported
in ``converged`` (and a non-finite ``vcov``), never raised: count them, do not drop them silently.
"""

from __future__ import annotations

from typing import NamedTuple

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .blocks import solve_levels
from .fit import _bread_meat, _group_index, prepare
from .solve import CONVERGED, SolverOptions, newton
from .sums import DEFAULT_CHUNK, moments


class PureFit(NamedTuple):
    theta: jax.Array  # (p,)
    vcov: jax.Array  # (p, p) sandwich A⁻¹MA⁻ᵀ (frequency weights)
    converged: jax.Array  # bool: every group converged
    iterations: jax.Array


def fit_function(estimator, data, init=None, *, names=None, solve: str = "blockwise",
                 chunk_size: int = DEFAULT_CHUNK, max_iter: int = 100, xtol: float = 1e-10, gtol: float = 1e-12):
    """``(columns, f, problem)`` for ``estimator`` prepared on ``data``; ``f(columns, w, theta0=None)`` is pure.

    ``problem.labels`` names the parameters; ``problem.init`` is the default start.
    """
    problem = prepare(estimator, data, init, names=names)
    spec = problem.spec
    groups = solve_levels(spec.blocks) if solve == "blockwise" else [tuple(b.name for b in spec.blocks)]
    opts = SolverOptions(max_iter=max_iter, xtol=xtol, gtol=gtol)
    start = jnp.asarray(problem.init)

    def f(columns, w, theta0=None) -> PureFit:
        theta = start if theta0 is None else theta0
        ok, iterations = jnp.asarray(True), jnp.asarray(0)
        for group in groups:
            out = _solve_group(spec, group, columns, w, theta, opts, chunk_size)
            theta = theta.at[_group_index(spec, group)].set(out.theta)
            ok = ok & (out.status == CONVERGED)
            iterations = iterations + out.iterations
        _, jac, meat = _bread_meat(spec, columns, w, theta, None, False, 0, chunk_size)
        inv = jnp.linalg.inv(-jac)
        return PureFit(theta, inv @ meat @ inv.T, ok, iterations)

    return problem.data, f, problem


def prepare_columns(problem, data) -> dict:
    """The device columns of ``problem``'s estimator prepared on another table of the same layout."""
    other = prepare(problem.blocks, data)
    if other.spec.dim != problem.spec.dim or set(other.data) != set(problem.data):
        raise ValueError("this table does not give the same parameters/columns as the one the function was built on")
    return other.data


def stack_columns(columns: list[dict]) -> dict:
    """Stack prepared columns of equally shaped data sets along a new leading axis (for ``jax.vmap``)."""
    return {k: jnp.stack([c[k] for c in columns]) for k in columns[0]}


@functools.partial(jax.jit, static_argnames=("spec", "group", "opts", "chunk_size", "mesh"))
def _solve_group(spec, group, data, w, theta, opts, chunk_size, mesh=None):
    """One dependency group solved by the traced Newton (vmappable), other blocks held at ``theta``."""
    idx = _group_index(spec, group)
    f = spec.block_parts(group, positions=idx)

    def residual_and_jacobian(tg):
        m = moments(f, tg, data, w, chunk_size=chunk_size, meat=False, mesh=mesh, args=(theta,))
        return m.psi, m.jac

    def residual(tg):
        return moments(f, tg, data, w, chunk_size=chunk_size, jac=False, meat=False, mesh=mesh, args=(theta,)).psi

    return newton(residual_and_jacobian, residual, theta[idx], w.sum(), opts)


def coverage(estimates: np.ndarray, vcovs: np.ndarray, truth: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Share of replicates whose Wald CI θ̂ ± z·SE covers ``truth``, per parameter."""
    from scipy import stats

    z = stats.norm.ppf(0.5 + level / 2)
    se = np.sqrt(np.diagonal(vcovs, axis1=-2, axis2=-1))
    return np.mean(np.abs(estimates - truth) <= z * se, axis=0)
