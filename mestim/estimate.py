"""``fit`` and ``sandwich``: from estimating functions and a table to a :class:`~mestim.results.Result`.

Each is four steps: options checked (:class:`~mestim.options.FitOptions`, before any work) → the problem prepared
on the host (:func:`mestim.problem.prepare`) → a row source on the device (:class:`~mestim.sources.InMemory`) →
the one solve loop (:func:`mestim.driver.solve_stack`) → :func:`assemble` (the sandwich and the Result).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings as _warnings
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from . import processes
from . import covariance
from .constants import AcrossProcesses
from .covariance import WARN_COND, BreadFactor
from .driver import solve_stack
from .errors import DataError, MestimWarning, SpecificationError
from .gmm import solve_gmm
from .options import FitOptions
from .problem import Problem, prepare
from .results import Result, WaldTest
from .sources import InMemory
from .sums import Kernel, Moments, chunk_rows, plan, quick_compile

EXTREME_WEIGHT = 1e6  # a row weighing this many times the median row: almost surely a data error
DOMINANT_SHARE = 0.5  # one row carrying this share of the total weight, among ≥ 10 rows
RUN_OFF = 1e6  # θ̂ this many times farther from 0 than the start, with an ill-conditioned bread: a root at infinity


def fit(estimator, data, init=None, *, names: Sequence[str] | None = None, weights=None,
        weight_type: str = "frequency", cluster=None, correction: str | None = None, solve: str | None = None,
        chunk_size: int | None = None, max_iter: int = 100, xtol: float = 1e-10, gtol: float = 1e-12,
        devices=None, data_dtype=None, root_finder="auto", gmm: str | None = None) -> Result:
    """Solve Σ_i w_i ψ(θ; row_i) = 0 and return θ̂ with its sandwich covariance.

    Args:
        estimator: ``psi(theta, row) -> array`` (one block), a :class:`~mestim.Block`, or a sequence of blocks.
        data: dict of equal-length arrays, or a pandas/polars DataFrame. ``row`` maps column name → value.
        init: starting θ for a single ψ (blocks carry their own).
        names: parameter names for a single ψ.
        weights: column name or array of row weights.
        weight_type: ``"frequency"`` (a row of weight w counts as w rows: same answer as expanded rows) or
            ``"sampling"`` (inverse-probability weights: meat Σ w² ψψᵀ, n = number of rows; the unweighted fit of
            w written inside ψ, clusters and corrections included: :mod:`mestim.covariance`).
        cluster: column name or array of cluster labels: meat Σ_g U_g U_gᵀ over cluster totals U_g = Σ_{i∈g} w ψ.
        correction: None, ``"df"`` (n/(n−p)) or ``"fay"`` (Fay's bias-corrected meat, b = 0.75).
        solve: ``"blockwise"`` (one solve per dependency level, see :mod:`mestim.blocks`) or ``"joint"``; default
            blockwise, joint with ``gmm=`` (``"blockwise"`` with ``gmm=`` is refused).
        chunk_size: rows per chunk in every sum over rows (memory is O(chunk · p²)); default: chosen from the
            stack's size and the device (:func:`mestim.sums.chunk_rows`).
        max_iter, xtol, gtol: solver limits (see :mod:`mestim.solve`).
        devices: shard the rows over devices (:mod:`mestim.scale`): an int (the first k devices), a list of
            devices, a :class:`jax.sharding.Mesh`, or ``"all"``; every sum becomes a cross-device reduction. In a
            job of several processes (:mod:`mestim.processes`) it must be given: ``"all"`` fits every process's
            rows together, ``"local"`` this process's rows alone.
        data_dtype: ``"float32"`` stores the columns ψ reads in float32 on the device (half the memory and
            bandwidth); ψ, θ and every sum stay float64. Default float64.
        root_finder: ``"auto"`` (Newton; Levenberg–Marquardt where Newton cannot go on), ``"newton"``, ``"lm"``, or
            a function ``root_finder(fun, jac, x0) -> x`` (e.g. wrapping ``scipy.optimize.root``); see
            :mod:`mestim.solve`.
        gmm: ``"two-step"`` or ``"iterated"``: over-identified estimating equations (more moment conditions than
            parameters) by the generalized method of moments, with Hansen's J test (:mod:`mestim.gmm`).

    Example (the mean as the root of Σ (y_i − μ) = 0: the sample mean, with SE s/√n)::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> y = np.random.default_rng(0).normal(2.0, 1.0, 200)
        >>> res = mestim.fit(lambda theta, row: jnp.atleast_1d(row["y"] - theta[0]), {"y": y}, init=[0.0])
        >>> bool(np.isclose(res.theta[0], y.mean())), bool(np.isclose(res.se[0], y.std() / np.sqrt(200)))
        (True, True)
    """
    mesh, group = processes.placement(devices)
    with processes.reporting(group):
        options = FitOptions(weight_type, correction, solve, chunk_size, max_iter, xtol, gtol, data_dtype,
                             root_finder, gmm)
        return _fit(estimator, data, init, names, weights, cluster, options, mesh, group)


def _fit(estimator, data, init, names, weights, cluster, options: FitOptions, mesh, group) -> Result:
    """:func:`fit` with its devices placed: ``mesh`` (this process's devices, or None), ``group`` (the processes
    fitting together, or None)."""
    if group is not None:
        processes.agree_call(group, "mestim.fit", options, weights, cluster)
        _check_across_processes(options)
    problem = prepare(estimator, data, init, names=names, weights=weights, cluster=cluster,
                      levels=None if group is None else (lambda cols: processes.agree_levels(group, cols)),
                      constants=None if group is None else AcrossProcesses(group),
                      over_identified=options.gmm is not None)
    if group is None:  # across processes each holds a part of the rows
        problem.check_rows()
    source = InMemory(kernel_for(problem, options, mesh), problem.used, problem.w, dtype=options.data_dtype)
    notes = ()
    if group is not None:
        start, n_rows, sum_w = processes.agree(group, problem)
        problem = dataclasses.replace(problem, init=start)
        source = processes.Distributed(source, group, n_rows, sum_w)
        notes = (f"fitted across {group.size} processes (this is process {group.rank}, holding {problem.n_rows:,} "
                 "of the rows; influence functions are of its own rows; post-fit block checks skipped)",)
    if options.gmm is None:
        theta, moments, iterations = solve_stack(source, problem.init, problem.labels, options)
        weight = None
    else:
        clustered = None if problem.cluster is None else (  # clusters weight the moments by their totals' covariance
            lambda theta, _: unit_meat(problem, source, theta, options)[0])
        theta, moments, iterations, weight, gmm_notes = solve_gmm(source, problem, options, meat=clustered)
        notes = notes + gmm_notes
    result = assemble(problem, source, theta, moments, options, iterations=iterations, notes=notes,
                      checks=group is None, weight=weight)
    source.release()
    if group is not None:
        group.barrier("the end of the fit")
    return result


def _check_across_processes(options: FitOptions) -> None:
    if options.correction == "fay":
        raise SpecificationError("correction='fay' is not available across processes (it needs every row's "
                                 "leverage in one place); use None or 'df'")


def sandwich(estimator, data, theta, *, names=None, weights=None, weight_type="frequency", cluster=None,
             correction=None, chunk_size=None, data_dtype=None) -> Result:
    """The sandwich covariance at a given θ, without solving (θ in the same form as ``init``; for a stack, the
    flat concatenation of the blocks' parameters or a dict of them); options as :func:`fit`.

    Example (the sandwich at a given θ, without solving: the mean's SE s/√n)::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> y = np.random.default_rng(0).normal(2.0, 1.0, 200)
        >>> res = mestim.sandwich(lambda theta, row: jnp.atleast_1d(row["y"] - theta[0]), {"y": y}, [y.mean()])
        >>> bool(np.isclose(res.se[0], y.std() / np.sqrt(200)))
        True
    """
    options = FitOptions(weight_type, correction, chunk_size=chunk_size, data_dtype=data_dtype)
    problem = prepare(estimator, data, theta if _single(estimator) else None, names=names, weights=weights,
                      cluster=cluster)
    problem.check_rows()
    if isinstance(theta, Mapping):
        theta = np.concatenate([np.atleast_1d(np.asarray(theta[b.name], float)) for b in problem.spec.blocks])
    theta = np.asarray(theta, float).ravel()
    if theta.size != problem.spec.dim:
        raise SpecificationError(f"theta has {theta.size} values; the stack has {problem.spec.dim} parameters")
    source = InMemory(kernel_for(problem, options, None), problem.used, problem.w, dtype=options.data_dtype)
    every = tuple(b.name for b in problem.spec.blocks)
    moments = source.sums(theta, plan(problem.spec, values=every, jacobian=every, meat=True,
                                      sampling=options.sampling))
    result = assemble(problem, source, theta, moments, options, iterations=0,
                      status="not solved (sandwich at the given θ)")
    source.release()
    return result


def kernel_for(problem: Problem, options: FitOptions, mesh=None, streamed: bool = False,
               batch_rows: int | None = None) -> Kernel:
    """The stack's kernel: chunks of ``options.chunk_size`` rows, or chosen by :func:`mestim.sums.chunk_rows` from
    the stack, the device and the rows per device (a stream's rows are many: ``problem`` is its first batch; a
    chunk holds no more than a batch of ``batch_rows``, which would only pad it)."""
    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    devices = 1 if mesh is None else mesh.size
    if streamed:
        rows = None if batch_rows is None else -(-batch_rows // devices)
        return Kernel(problem.spec, options.chunk_size or chunk_rows(problem.spec, platform, rows, one_chunk=False),
                      mesh)
    rows = -(-problem.n_rows // devices)
    quick = quick_compile(problem.spec, platform, rows)
    return Kernel(problem.spec, options.chunk_size or chunk_rows(problem.spec, platform, rows), mesh, quick,
                  hoist=not quick and platform == "cpu")


def assemble(problem: Problem, source, theta, moments: Moments, options: FitOptions, *, iterations: int,
             status: str = "converged", notes=(), checks: bool = True, weight=None, totals=None) -> Result:
    """The Result from the row sums at θ̂ (shared by in-memory, sharded and streamed fits).

    ``checks=False`` (a stream, which never holds all rows) skips the blocks' post-fit checks and the weight
    diagnostics, which need every row. ``weight``: GMM's weight matrix W (over-identified stacks). ``totals``: the
    cluster totals U_g (G, K) when the source gives them (federated sites as clusters, :mod:`mestim.federated`)."""
    labels, spec = problem.labels, problem.spec
    if not np.all(np.isfinite(moments.psi)):
        bad = [problem.equation_labels[i] for i in np.flatnonzero(~np.isfinite(moments.psi))]
        raise DataError(f"ψ is not finite at θ̂ for parameter(s) {bad}: check the data and ψ for log(0), 1/0, …")
    bread = -np.asarray(moments.jac)
    if weight is None:  # θ̂ − θ ≈ A⁻¹ Σψ
        factor = BreadFactor.of(bread, labels)
        factor.check()
        bread_inv = factor.inverse()
    else:  # GMM: θ̂ − θ ≈ (AᵀWA)⁻¹AᵀW Σψ
        factor = BreadFactor.of(bread.T @ weight @ bread, labels)
        factor.check()
        bread_inv = factor.inverse() @ bread.T @ weight
    if totals is not None:  # the source gave its cluster totals (federated sites as clusters)
        meat, n_clusters = covariance.cluster_meat(covariance.Units(np.asarray(totals, float), None, np.ones(len(totals))))
    else:
        meat, n_clusters = unit_meat(problem, source, theta, options, moments,
                                     j_inv=-bread_inv if options.correction == "fay" else None)
    n = source.sum_w if options.weight_type == "frequency" else float(source.n_rows)
    df_units = covariance.n_units(options.weight_type, source.sum_w, source.n_rows, n_clusters)
    vcov = covariance.covariance(bread_inv, meat, df_units if options.correction == "df" else None)
    warnings = warnings_for(problem, factor, theta, checks) + _zero_variance(labels, theta, vcov)
    for message in warnings:
        _warnings.warn(message, MestimWarning, stacklevel=3)
    kernel = source.kernel
    j_test = None
    if weight is not None and spec.equations > spec.dim:
        g = np.asarray(moments.psi)
        j_test = WaldTest.of(float(g @ weight @ g), spec.equations - spec.dim)
    return Result(np.asarray(theta, float), vcov, labels, blocks=spec.offsets(), n=n, n_rows=source.n_rows,
                  n_clusters=n_clusters, correction=options.correction,
                  converged=status == "converged", status=status, iterations=iterations,
                  residual_norm=float(np.max(np.abs(moments.psi))), bread_cond=factor.condition,
                  warnings=tuple(warnings), notes=tuple(problem.notes) + tuple(notes), bread=bread, meat=meat,
                  flat_theta=problem.single, j_test=j_test,
                  _influence=functools.partial(_influence, kernel, problem, options, theta, n * bread_inv))


def unit_meat(problem: Problem, source, theta, options: FitOptions, moments: Moments | None = None, j_inv=None):
    """(the meat M = Σ_u c_u H_u U_u U_uᵀ H_u at θ̂, the number of clusters or None): :mod:`mestim.covariance`'s
    one rule for every source. Rows with no Fay correction: the pass's own Σ a ψψᵀ (``moments``); otherwise from
    the rows' ψ (and leverages diag(J_i J⁻¹), ``j_inv`` = J⁻¹ given: Fay), cluster totals merged by label across
    processes. A source that cannot hold every row (a stream) forms the same units batch by batch
    (``source.unit_meat``)."""
    if problem.cluster is None and j_inv is None and moments is not None:
        return np.asarray(moments.meat), None
    if hasattr(source, "unit_meat"):
        return source.unit_meat(theta, j_inv, options, moments)
    values = source.row_values(theta)
    leverages = None if j_inv is None else source.row_leverages(theta, j_inv)
    u = covariance.units(values, problem.w, sampling=options.sampling, codes=problem.cluster,
                         n_clusters=problem.n_clusters, leverages=leverages)
    if problem.cluster is None:
        return covariance.meat(u), None
    if isinstance(source, processes.Distributed):  # one cluster may hold rows of several processes
        everyone = source.group.allgather_json({"labels": [str(v) for v in problem.cluster_labels],
                                                "totals": u.totals.tolist()}, "its cluster totals")
        _, u = covariance.merge_clusters([(np.array(part["labels"], dtype=str),
                                           covariance.Units(np.asarray(part["totals"], float).reshape(
                                               len(part["labels"]), -1), None, None)) for part in everyone])
    return covariance.cluster_meat(u)


def _influence(kernel: Kernel, problem: Problem, options: FitOptions, theta, scaled_inv) -> np.ndarray:
    """φ_i = B⁻¹ψ_i with B = A/n, from the problem's host columns (a Result holds no device data; it holds the
    host data through this closure)."""
    problem.check_unchanged()
    source = InMemory(kernel, problem.used, problem.w, dtype=options.data_dtype)
    return source.row_values(theta) @ scaled_inv.T


def warnings_for(problem: Problem, factor: BreadFactor, theta, checks: bool) -> list[str]:
    out = []
    if factor.condition > WARN_COND:
        out.append(f"the bread is ill-conditioned (condition number {factor.condition:.3g}); parameters "
                   f"{factor.involved} are nearly collinear or weakly identified, so their SEs are unreliable")
        far, start = float(np.max(np.abs(theta))), float(np.max(np.abs(problem.init)))
        if far > RUN_OFF * (1 + start):  # Σψ small only because every ψ_i vanishes as θ → ∞
            out.append(f"θ ran off to |θ̂| = {far:.3g} from a start of size {start:.3g}: ψ vanishes as θ grows (a "
                       "root at infinity, not a solution: a parameter on the wrong scale or with the wrong sign, such "
                       "as σ = exp(θ) for exp(−θ)); check ψ and start closer to the solution")
    if problem.cluster is not None and problem.n_clusters == problem.n_rows:
        out.append("every cluster has one row: the clustered sandwich equals the unclustered one")
    if checks:
        out += _weight_warnings(problem.w, factor)
        offs = problem.spec.offsets()
        for b in problem.blocks:
            if b.check is not None:
                out += list(b.check(np.asarray(theta)[offs[b.name]], problem.columns) or [])
    return out


def _zero_variance(labels, theta, vcov) -> list[str]:
    """A standard error of 0 to rounding (SE ≤ 10⁻¹⁰|θ̂|): ψ does not vary between rows in that direction."""
    variance = np.diag(vcov)
    zero = [lab for lab, v, t in zip(labels, variance, np.asarray(theta)) if not v > (1e-10 * t) ** 2]
    if not zero:
        return []
    return [f"the standard error of {zero[:8]}{'…' if len(zero) > 8 else ''} is zero (to rounding) or not a number: "
            "ψ does not vary between rows in that direction at θ̂ (a constant outcome, a model that fits every row "
            "exactly, a subgroup with no more rows than parameters), so their CIs and tests mean nothing; check the "
            "data the block uses"]


def _weight_warnings(w: np.ndarray, factor: BreadFactor) -> list[str]:
    """One row carrying the fit: a weight far above the median, or most of the total weight among many rows."""
    top = int(np.argmax(w))
    if w[top] == np.min(w):  # equal weights (none given): no row stands out, and no median of 10⁶ rows to take
        return []
    positive = w[w > 0]
    share, ratio = w[top] / w.sum(), w[top] / np.median(positive)
    if ratio > EXTREME_WEIGHT or (share > DOMINANT_SHARE and positive.size >= 10):
        return [f"extreme weight: row {top} has weight {w[top]:.3g}, {ratio:.3g} times the median weight, and "
                f"carries {share:.1%} of the total weight, so the estimates rest on that row (bread condition "
                f"number {factor.condition:.3g}): check the weights column (units, an id column given as weights)"]
    return []


def _single(estimator) -> bool:
    from .blocks import Block

    return callable(estimator) and not isinstance(estimator, Block)
