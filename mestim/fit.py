"""``fit`` and ``sandwich``: from estimating functions and a table to a :class:`~mestim.results.Result`.

Steps: (1) turn the estimator into blocks and let each prepare its columns; (2) trace every ψ once on abstract
values to learn which columns it reads and check it returns one value per parameter; (3) validate exactly those
columns (present, numeric, finite); (4) solve Σ w ψ = 0 group by group in dependency order (jointly for blocks
that read each other, or when ``solve="joint"``); (5) one more pass over the rows for the bread and meat of
the whole stack, and the sandwich. The Newton loop runs on the host (:func:`mestim.solve.newton_host`) around
two compiled sums per group; the compiled functions take the stack description as a static argument, so
refitting the same estimator on data of the same shapes does not recompile.
"""

from __future__ import annotations

import dataclasses
import warnings as _warnings
import difflib
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import data as datamod
from .blocks import Block, BlockSpec, StackSpec, solve_groups, solve_levels
from .errors import ConvergenceError, DataError, MestimWarning, SingularBreadError, SpecificationError
from .results import Result
from .sandwich import WARN_COND, bread_condition, covariance, fay_meat
from .solve import CONVERGED, SINGULAR, STATUS_TEXT, SolverOptions, newton_host
from .sums import DEFAULT_CHUNK, moments

CORRECTIONS = (None, "df", "fay")


@dataclasses.dataclass
class Problem:
    """A stack ready for the compiled functions: spec, device data, weights, clusters, starting values."""

    spec: StackSpec
    blocks: list[Block]
    labels: tuple[str, ...]
    init: np.ndarray
    columns: dict  # host columns (raw + prepared), for blocks' post-fit checks
    data: dict  # device arrays of the columns ψ reads
    w: jax.Array
    cluster: jax.Array | None
    n_clusters: int
    notes: list[str]
    mesh: object = None  # jax.sharding.Mesh the rows are sharded over (None: one device)
    n_rows: int | None = None  # rows before padding to a multiple of the device count


def fit(estimator, data, init=None, *, names: Sequence[str] | None = None, weights=None,
        weight_type: str = "frequency", cluster=None, correction: str | None = None, solve: str = "blockwise",
        chunk_size: int = DEFAULT_CHUNK, max_iter: int = 100, xtol: float = 1e-10, gtol: float = 1e-12,
        devices=None, data_dtype=None) -> Result:
    """Solve Σ_i w_i ψ(θ; row_i) = 0 and return θ̂ with its sandwich covariance.

    Args:
        estimator: ``psi(theta, row) -> array`` (one block), a :class:`~mestim.Block`, or a sequence of blocks.
        data: dict of equal-length arrays, or a pandas/polars DataFrame. ``row`` maps column name → value.
        init: starting θ for a single ψ (blocks carry their own).
        names: parameter names for a single ψ.
        weights: column name or array of row weights.
        weight_type: ``"frequency"`` (a row of weight w counts as w rows: same answer as expanded rows) or
            ``"sampling"`` (inverse-probability weights: meat Σ w² ψψᵀ, n = number of rows).
        cluster: column name or array of cluster labels: meat Σ_g U_g U_gᵀ over cluster totals U_g = Σ_{i∈g} w ψ.
        correction: None, ``"df"`` (n/(n−p)) or ``"fay"`` (Fay's bias-corrected meat, b = 0.75).
        solve: ``"blockwise"`` (one Newton per dependency level, see :mod:`mestim.blocks`) or ``"joint"`` (one
            Newton on the whole stack).
        chunk_size: rows per chunk in every sum over rows (memory is O(chunk · p²)).
        max_iter, xtol, gtol: solver limits (see :mod:`mestim.solve`).
        devices: shard the rows over devices (:mod:`mestim.scale`): an int (the first k devices), a list of
            devices, a :class:`jax.sharding.Mesh`, or ``"all"``; every sum becomes a cross-device reduction.
        data_dtype: ``"float32"`` stores the columns ψ reads in float32 on the device (half the memory and
            bandwidth); ψ, θ and every sum stay float64. Default float64.
    """
    if solve not in ("blockwise", "joint"):
        raise SpecificationError(f"solve={solve!r}: use 'blockwise' or 'joint'")
    problem = prepare(estimator, data, init, names=names, weights=weights, cluster=cluster, devices=devices,
                      data_dtype=data_dtype)
    opts = SolverOptions(max_iter=max_iter, xtol=xtol, gtol=gtol)
    groups = solve_levels(problem.spec.blocks) if solve == "blockwise" else [tuple(b.name for b in problem.spec.blocks)]
    theta = jnp.asarray(problem.init)
    iterations = 0
    scale = float(problem.w.sum())
    for group in groups:
        idx = _group_index(problem.spec, group)
        out = newton_host(*_group_evaluators(problem, group, theta, chunk_size), np.asarray(theta)[idx], scale, opts)
        iterations += out.iterations
        if out.status != CONVERGED:
            _raise_failure(problem, group, out, theta, chunk_size)
        theta = theta.at[idx].set(out.theta)
    return _sandwich_result(problem, theta, weight_type, correction, chunk_size, iterations=iterations)


def _group_evaluators(problem: Problem, group, theta, chunk_size):
    """(r, J) and r of one group's Σwψ as host arrays, other blocks held at ``theta`` (one pass each)."""
    idx = _group_index(problem.spec, group)
    full = np.asarray(theta, float)

    def at(tg):
        t = full.copy()
        t[idx] = tg
        return jnp.asarray(t)

    def residual_and_jacobian(tg):
        m = _group_sums(problem.spec, group, at(tg), problem.data, problem.w, True, False, False, chunk_size,
                        problem.mesh)
        return np.asarray(m.psi), np.asarray(m.jac)

    def residual(tg):  # backtracking is rare: reuse the compiled (r, J) program rather than compile another
        return residual_and_jacobian(tg)[0]

    return residual_and_jacobian, residual


def sandwich(estimator, data, theta, *, names=None, weights=None, weight_type="frequency", cluster=None,
             correction=None, chunk_size=DEFAULT_CHUNK) -> Result:
    """The sandwich covariance at a given θ, without solving (θ in the same form as ``init``; for a stack, the
    flat concatenation of the blocks' parameters or a dict of them)."""
    problem = prepare(estimator, data, theta, names=names, weights=weights, cluster=cluster)
    if isinstance(theta, Mapping):
        theta = np.concatenate([np.atleast_1d(np.asarray(theta[b.name], float)) for b in problem.spec.blocks])
    theta = np.asarray(theta, float).ravel()
    if theta.size != problem.spec.dim:
        raise SpecificationError(f"theta has {theta.size} values; the stack has {problem.spec.dim} parameters")
    result = _sandwich_result(problem, jnp.asarray(theta), weight_type, correction, chunk_size, iterations=0)
    result.status, result.converged = "not solved (sandwich at the given θ)", False
    return result


# ---------------------------------------------------------------------------------------------- preparation
def as_blocks(estimator, init=None, names=None) -> list[Block]:
    if isinstance(estimator, Block):
        return [estimator]
    if callable(estimator):
        if init is None:
            raise SpecificationError("init= is required: give starting values, one per parameter")
        return [Block("theta", estimator, init=init,
                      labels=tuple(names) if names is not None else None)]
    blocks = list(estimator)
    if not blocks or not all(isinstance(b, Block) for b in blocks):
        raise SpecificationError("the estimator must be a function psi(theta, row), a Block, or a list of Blocks")
    seen = [b.name for b in blocks]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise SpecificationError(f"block names must be unique; repeated: {dup}")
    return blocks


def prepare(estimator, data, init=None, *, names=None, weights=None, cluster=None, devices=None,
            data_dtype=None) -> Problem:
    """Blocks prepared, ψ traced and checked, used columns validated and moved to the device."""
    single = callable(estimator) and not isinstance(estimator, Block)
    blocks = as_blocks(estimator, init if single else None, names)
    cols = datamod.as_columns(data)
    n = datamod.n_rows(cols)
    specs, labels, inits, notes = [], [], [], []
    all_cols = dict(cols)
    for b in blocks:
        prep = b.prepare(all_cols) if b.prepare is not None else None
        if prep is not None:
            all_cols.update(prep.columns)
            notes += [f"{b.name}: {t}" for t in prep.notes]
        start = b.init if b.init is not None else (prep.init if prep is not None else None)
        if start is None:
            raise SpecificationError(f"block '{b.name}' has no starting values: give init=")
        start = np.asarray(start, float)
        if start.ndim != 1 or start.size == 0:
            raise SpecificationError(f"init of block '{b.name}' has shape {start.shape}; expected a 1-D array "
                                     "with one value per parameter")
        blabels = b.labels or (prep.labels if prep is not None else None) or tuple(str(i) for i in range(start.size))
        if len(blabels) != start.size:
            raise SpecificationError(f"block '{b.name}' has {len(blabels)} labels for {start.size} parameters")
        psi = prep.psi if prep is not None and prep.psi is not None else b.psi
        if psi is None:
            raise SpecificationError(f"block '{b.name}' has no estimating function psi")
        specs.append(BlockSpec(b.name, psi, b.reads, start.size))
        inits.append(start)
        labels += [lab if len(blocks) == 1 else f"{b.name}:{lab}" for lab in blabels]
    spec = StackSpec(tuple(specs))
    solve_groups(spec.blocks)  # validates 'reads'
    used = _trace_columns(spec, all_cols, n)
    for name in sorted(used):
        datamod.require_numeric(all_cols, name)
        datamod.check_finite(all_cols[name], name)
    w = datamod.row_weights(all_cols, weights, n)
    codes, n_clusters = (None, 0) if cluster is None else datamod.cluster_codes(all_cols, cluster, n)
    host = {name: all_cols[name].astype(data_dtype or np.float64, copy=False) for name in sorted(used)}
    if devices is not None:
        from .scale import shard_rows

        mesh, (host, w, codes) = shard_rows(devices, (host, w, codes))
        return Problem(spec, blocks, tuple(labels), np.concatenate(inits), all_cols, host, w, codes, n_clusters,
                       notes, mesh, n)
    return Problem(spec, blocks, tuple(labels), np.concatenate(inits), all_cols, jax.tree.map(jnp.asarray, host),
                   jnp.asarray(w), None if codes is None else jnp.asarray(codes), n_clusters, notes)


class _RecordingRow(Mapping):
    """A row that remembers which columns ψ reads and names a missing one clearly."""

    def __init__(self, row, used, block, unusable):
        self._row, self._used, self._block, self._unusable = row, used, block, unusable

    def __getitem__(self, key):
        if key in self._row:
            self._used.add(key)
            return self._row[key]
        if key in self._unusable:
            raise DataError(f"block '{self._block}' reads column '{key}', which is not numeric; recode it as numbers")
        close = difflib.get_close_matches(str(key), list(self._row), n=3)
        hint = f"; did you mean {close}?" if close else f"; available columns: {sorted(self._row)}"
        raise DataError(f"block '{self._block}' reads column '{key}', which is not in the data{hint}")

    def __iter__(self):
        return iter(self._row)

    def __len__(self):
        return len(self._row)


def _trace_columns(spec: StackSpec, cols, n) -> frozenset[str]:
    """The columns ψ reads, found by tracing ψ once on abstract rows; cached per (stack, column layout)."""
    return _traced_columns(spec, tuple(sorted((k, v.shape[1:], v.dtype.kind == "f") for k, v in cols.items())))


@functools.lru_cache(maxsize=256)
def _traced_columns(spec: StackSpec, layout) -> frozenset[str]:
    unusable = {k for k, _, numeric in layout if not numeric}
    row = {k: jax.ShapeDtypeStruct(shape, jnp.float64) for k, shape, numeric in layout if numeric}
    params = {b.name: jax.ShapeDtypeStruct((b.dim,), jnp.float64) for b in spec.blocks}
    used: set[str] = set()
    for b in spec.blocks:
        call = lambda p, r, b=b: b.psi(p[b.name], _RecordingRow(r, used, b.name, unusable),  # noqa: E731
                                       **{name: p[name] for name in b.reads})
        try:
            out = jax.eval_shape(call, params, row)
        except KeyError as e:  # ψ read an upstream block it did not declare, or similar
            raise SpecificationError(f"block '{b.name}': ψ failed with KeyError {e}") from None
        shape = getattr(out, "shape", None)
        size = int(np.prod(shape)) if shape is not None else -1
        if shape is None or len(shape) > 1 or size != b.dim:
            raise SpecificationError(
                f"ψ of block '{b.name}' returns shape {shape} but the block has {b.dim} parameter(s): "
                "ψ must return one value per parameter (a 1-D array of the same length as init)")
    return frozenset(used)


# ---------------------------------------------------------------------------------------------- compiled parts
def _group_index(spec: StackSpec, group) -> np.ndarray:
    offs = spec.offsets()
    return np.concatenate([np.arange(offs[g].start, offs[g].stop) for g in group])


@functools.partial(jax.jit, static_argnames=("spec", "group", "jac", "meat", "sampling", "chunk_size", "mesh"))
def _group_sums(spec, group, theta, data, w, jac, meat, sampling, chunk_size, mesh=None):
    """Σwψ (and Σw∂ψ/∂θ, Σwψψᵀ) of the blocks in ``group`` (None: the whole stack), derivatives with respect to
    the group's own parameters, the other blocks held at ``theta``. Used by in-memory and streamed fits."""
    if group is None:
        return moments(spec.block_parts(), theta, data, w, chunk_size=chunk_size, jac=jac, meat=meat,
                       sampling=sampling, mesh=mesh)
    idx = _group_index(spec, group)
    f = spec.block_parts(group, positions=idx)
    return moments(f, theta[idx], data, w, chunk_size=chunk_size, jac=jac, meat=meat, sampling=sampling, mesh=mesh,
                   args=(theta,))


@functools.partial(jax.jit, static_argnames=("spec", "sampling", "n_clusters", "chunk_size", "mesh"))
def _bread_meat(spec, data, w, theta, cluster, sampling, n_clusters, chunk_size, mesh=None):
    m = moments(spec.block_parts(), theta, data, w, chunk_size=chunk_size, sampling=sampling, cluster=cluster,
                n_clusters=n_clusters, mesh=mesh)
    meat = m.meat if cluster is None else m.cluster.T @ m.cluster
    return m.psi, m.jac, meat


@functools.partial(jax.jit, static_argnames=("spec", "n_clusters", "chunk_size"))
def _fay_meat(spec, data, w, theta, jac, cluster, n_clusters, chunk_size):
    return fay_meat(spec.psi, theta, data, w, jac, cluster=cluster, n_clusters=n_clusters, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("spec", "chunk_size"))
def _influence(spec, data, theta, bread_inv, chunk_size):
    from .sums import row_map

    return row_map(lambda rows: jax.vmap(lambda r: spec.psi(theta, r))(rows) @ bread_inv.T, data,
                   chunk_size=chunk_size)


# ---------------------------------------------------------------------------------------------- results
def _raise_failure(problem: Problem, group, out, theta, chunk_size):
    status, iterations = out.status, out.iterations
    names = ", ".join(f"'{g}'" for g in group)
    idx = _group_index(problem.spec, group)
    labels = [problem.labels[i] for i in idx]
    if status == SINGULAR:
        jac = _group_evaluators(problem, group, theta, chunk_size)[0](out.theta)[1]
        cond, involved = bread_condition(-jac, labels)
        raise SingularBreadError(
            f"block(s) {names}: the Jacobian of Σψ became singular (condition number {cond:.3g}) after "
            f"{iterations} iteration(s); parameters {involved} are not identified: look for a constant or "
            "collinear covariate, an empty subset of rows, or perfect separation")
    raise ConvergenceError(
        f"block(s) {names} did not converge: {STATUS_TEXT[status]} after {iterations} iteration(s); final "
        f"residual ‖Σψ‖∞ = {float(out.residual):.3g} (per unit weight {float(out.residual) / float(problem.w.sum()):.3g}); "
        f"last θ for {labels[:8]}{'…' if len(labels) > 8 else ''} = {np.round(np.asarray(out.theta)[:8], 4).tolist()}; "
        "try better init= values, a larger max_iter=, or check that the model is identified")


def _sandwich_result(problem: Problem, theta, weight_type, correction, chunk_size, *, iterations) -> Result:
    if weight_type not in ("frequency", "sampling"):
        raise SpecificationError(f"weight_type={weight_type!r}: use 'frequency' or 'sampling'")
    if correction not in CORRECTIONS:
        raise SpecificationError(f"correction={correction!r}: use one of {CORRECTIONS}")
    psi_sum, jac, meat = _bread_meat(problem.spec, problem.data, problem.w, theta, problem.cluster,
                                     weight_type == "sampling", problem.n_clusters, chunk_size, problem.mesh)
    n_rows = problem.n_rows if problem.n_rows is not None else int(problem.w.shape[0])
    fay = (lambda jac: np.asarray(_fay_meat(problem.spec, problem.data, problem.w, theta, jnp.asarray(jac),  # noqa: E731
                                            problem.cluster, problem.n_clusters, chunk_size)))
    influence = lambda bread_inv: np.asarray(  # noqa: E731
        _influence(problem.spec, problem.data, theta, jnp.asarray(bread_inv), chunk_size))[:n_rows]
    sizes = None if problem.cluster is None else np.bincount(np.asarray(problem.cluster)[:n_rows],
                                                            minlength=problem.n_clusters)
    return _finish(problem, theta, psi_sum, jac, meat, weight_type=weight_type, correction=correction,
                   iterations=iterations, n=float(problem.w.sum()), n_rows=n_rows, cluster_sizes=sizes, fay=fay,
                   influence=influence)


def _finish(problem: Problem, theta, psi_sum, jac, meat, *, weight_type, correction, iterations, n, n_rows,
            cluster_sizes, fay, influence, run_checks=True, stacklevel=4) -> Result:
    """The Result from the three row sums at θ̂ (shared by in-memory, sharded and streamed fits).

    ``n`` is Σw; ``fay(jac)`` returns Fay's meat, ``influence(bread_inv)`` the (n_rows, p) influence functions.
    """
    spec, labels = problem.spec, problem.labels
    psi_sum, jac, meat = np.asarray(psi_sum), np.asarray(jac), np.asarray(meat)
    if not np.all(np.isfinite(psi_sum)):
        bad = [labels[i] for i in np.flatnonzero(~np.isfinite(psi_sum))]
        raise DataError(f"ψ is not finite at θ̂ for parameter(s) {bad}: check the data and ψ for log(0), 1/0, …")
    bread = -jac
    n = n if weight_type == "frequency" else float(n_rows)
    n_units = problem.n_clusters if problem.cluster is not None else n
    p = theta.size
    if problem.cluster is not None and problem.n_clusters < 2:
        raise DataError("the cluster column has a single cluster: the clustered meat needs at least two")
    if correction == "fay":
        meat = fay(jac)
    cond, involved = bread_condition(bread, labels)
    vcov = covariance(bread, meat, labels, condition=(cond, involved))
    if correction == "df":
        if n_units <= p:
            raise DataError(f"correction='df' needs more units ({n_units:g}) than parameters ({p})")
        vcov = vcov * n_units / (n_units - p)
    warnings = []
    if cond > WARN_COND:
        warnings.append(f"the bread is ill-conditioned (condition number {cond:.3g}); parameters {involved} are "
                        "nearly collinear or weakly identified, so their SEs are unreliable")
    if cluster_sizes is not None:
        if (cluster_sizes == 1).all():
            warnings.append("every cluster has one row: the clustered sandwich equals the unclustered one")
    theta_np = np.asarray(theta)
    offs = spec.offsets()
    for b in problem.blocks if run_checks else ():
        if b.check is not None:
            warnings += list(b.check(theta_np[offs[b.name]], problem.columns) or [])
    bread_inv = np.linalg.inv(bread / n)
    for message in warnings:
        _warnings.warn(message, MestimWarning, stacklevel=stacklevel)
    return Result(theta_np, vcov, labels, blocks=offs, n=n, n_rows=n_rows,
                  n_clusters=problem.n_clusters if problem.cluster is not None else None, correction=correction,
                  converged=True, status="converged", iterations=iterations,
                  residual_norm=float(np.max(np.abs(psi_sum))), bread_cond=cond, warnings=warnings,
                  notes=problem.notes, bread=bread, meat=meat, flat_theta=len(problem.blocks) == 1,
                  _influence=lambda: influence(bread_inv))
