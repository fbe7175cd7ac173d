"""Scale: rows sharded over devices, and fits streamed from host memory or Parquet/Arrow files.

Both reuse the one kernel of :mod:`mestim.sums` (:func:`~mestim.sums.moments` over row chunks), so an
in-memory, a sharded and a streamed fit compute the same sums and agree to rounding (tested to 1e-10).

**Sharding** (``fit(..., devices=...)``): the rows are padded with zero-weight rows to a multiple of the device
count and split over a one-axis :class:`jax.sharding.Mesh` (axis ``"rows"``); inside the compiled solver each
device sums its own rows chunk by chunk (``shard_map``) and the per-device sums are added with ``psum``. θ and
the (p × p) sums are replicated; the data never moves between devices. The same code runs on one CPU, one GPU
or several GPUs; to test on a CPU, set ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX is
imported. Multi-host: call ``jax.distributed.initialize()`` in every process, give each process its own
rows (the same number on every process after padding) and ``devices="all"``; each process's rows become its
devices' shards of one global array (``jax.make_array_from_process_local_data``). Untested without a cluster;
cluster-robust variances are not supported across hosts (cluster codes are assigned per process).

**Streaming** (:func:`fit_stream`): for data larger than device (or host) memory. The source is read in host
batches of ``batch_rows`` rows (a pandas DataFrame or dict of arrays held in host memory, a Parquet file or
directory read with pyarrow, a pyarrow Table, or a function returning a fresh iterator of chunks). Each batch
is prepared on the host (the blocks' ``prepare`` runs per batch), padded with zero-weight rows to the fixed
``batch_rows`` (so every batch has the same shapes: one compilation for the whole fit) and summed on the device
by the same compiled kernel, in ``chunk_size`` sub-chunks. JAX dispatch is asynchronous, so the host prepares
batch b+1 while the device sums batch b. A Newton iteration costs one pass over the source when the full step
is accepted (each trial point is evaluated with its Jacobian); the bread and meat take one more pass.

What differs from :func:`mestim.fit` in a streamed fit:

- starting values that a block computes in ``prepare`` come from the **first batch** (labels too);
- a block's ``prepare`` must give the same columns on every batch: a formula with ``C(site)`` on a batch
  missing a level raises (code categories as indicator columns instead), and a masked block whose mask
  selects no row of a batch raises (shuffle the rows, or use larger batches);
- post-fit block checks (e.g. the separation check of logistic blocks) are skipped; influence functions are
  not kept (they have one row per data row); ``cluster=`` and ``correction="fay"`` are not supported.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import data as datamod
from .blocks import Block, solve_levels
from .errors import ConvergenceError, DataError, SingularBreadError, SpecificationError
from .fit import _group_sums
from .solve import CONVERGED, SINGULAR, STATUS_TEXT, SolverOptions, newton_host
from .sums import DEFAULT_CHUNK

DEFAULT_BATCH = 1 << 18  # host rows per streamed batch (262,144: ~60 MB for a 30-column float64 design)


# ---------------------------------------------------------------------------------------------- sharding
def device_mesh(devices="all") -> Mesh:
    """A one-axis mesh (axis ``"rows"``) from ``"all"``, a device count, a list of devices, or a Mesh."""
    if isinstance(devices, Mesh):
        return devices
    available = jax.devices()
    if isinstance(devices, str):
        if devices != "all":
            raise SpecificationError(f"devices={devices!r}: use 'all', a count, a list of devices or a Mesh")
        chosen = available
    elif isinstance(devices, (int, np.integer)):
        if not 1 <= devices <= len(available):
            raise SpecificationError(f"devices={devices}: {len(available)} device(s) are available "
                                     f"({available[0].platform})")
        chosen = available[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise SpecificationError("devices=[]: give at least one device")
    return Mesh(np.array(chosen), ("rows",))


def pad_rows(tree, multiple: int, w_index=None):
    """Pad every array of ``tree`` (leading row axis) to a multiple of ``multiple`` rows by repeating row 0.

    Repeating a real row keeps ψ finite on the padding (a zero row could give log(0) or 0/0, and 0·NaN is NaN);
    the caller gives the padding rows weight 0.
    """
    n = jax.tree.leaves(tree)[0].shape[0]
    extra = -n % multiple
    if not extra:
        return tree
    return jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[:1], extra, axis=0)]), tree)


def shard_rows(devices, tree):
    """``(mesh, tree)`` with ``tree = (columns, weights, cluster codes or None)`` padded with zero-weight rows
    to a multiple of the device count and placed row-sharded on the mesh's devices."""
    mesh = device_mesh(devices)
    cols, w, codes = tree
    n = w.shape[0]
    local = mesh.local_mesh.size if jax.process_count() > 1 else mesh.size
    cols, codes = pad_rows((cols, codes), local)
    w = np.concatenate([np.asarray(w, float), np.zeros(-n % local)])
    sharding = NamedSharding(mesh, PartitionSpec("rows"))
    if jax.process_count() > 1:  # each process holds its own rows: together they form the global array
        put = lambda a: jax.make_array_from_process_local_data(sharding, a)  # noqa: E731
    else:
        put = lambda a: jax.device_put(a, sharding)  # noqa: E731
    return mesh, jax.tree.map(put, (cols, w, codes))


# ---------------------------------------------------------------------------------------------- sources
def batches(source, batch_rows: int = DEFAULT_BATCH, columns=None) -> Iterator[dict]:
    """Host batches ``{name: np.ndarray}`` of exactly ``batch_rows`` rows (the last may be shorter) from
    ``source`` (see :func:`fit_stream`). Reading a Parquet source holds one batch (plus one row group) in memory."""
    return _rebatch(_open(source, batch_rows, columns), batch_rows)


def _open(source, batch_rows, columns) -> Iterable:
    if isinstance(source, (str, os.PathLike)):
        import pyarrow.dataset as ds

        path = os.fspath(source)
        if not os.path.exists(path):
            raise DataError(f"Parquet source '{path}' does not exist")
        return ds.dataset(path, format="parquet").to_batches(columns=columns, batch_size=batch_rows)
    if type(source).__module__.startswith("pyarrow") and hasattr(source, "to_batches"):  # Table, Dataset
        return source.select(columns).to_batches(batch_rows) if columns else source.to_batches(batch_rows)
    if callable(source):
        it = source()
        if not isinstance(it, Iterable):
            raise SpecificationError("a callable source must return an iterator of chunks (dicts of arrays, "
                                     "DataFrames or Arrow record batches)")
        return it
    if isinstance(source, Iterator):
        raise SpecificationError("a streamed fit reads the source once per Newton iteration: pass a function "
                                 "returning a fresh iterator (e.g. lambda: my_chunks()), not a one-shot iterator")
    if hasattr(source, "columns") or isinstance(source, Mapping):  # in host memory: a DataFrame or dict of arrays
        cols = _host_columns(source, columns)
        n = datamod.n_rows(cols)
        return ({k: v[i:i + batch_rows] for k, v in cols.items()} for i in range(0, n, batch_rows))
    raise DataError(f"cannot stream from a {type(source).__name__}: give a DataFrame, a dict of arrays, a Parquet "
                    "path, a pyarrow Table, or a function returning an iterator of chunks")


def _host_columns(chunk, columns=None) -> dict:
    if hasattr(chunk, "schema") and hasattr(chunk, "column_names"):  # pyarrow RecordBatch / Table
        names = columns or chunk.column_names
        return {n: np.asarray(chunk.column(n).to_numpy(zero_copy_only=False)) for n in names}
    if hasattr(chunk, "columns") and not isinstance(chunk, Mapping):  # pandas / polars
        names = columns or [str(c) for c in chunk.columns]
        return {n: np.asarray(chunk[n].to_numpy()) for n in names}
    if isinstance(chunk, Mapping):
        names = columns or list(chunk)
        return {str(n): np.asarray(chunk[n]) for n in names}
    raise DataError(f"a chunk of type {type(chunk).__name__} is not a table: yield dicts of arrays, DataFrames or "
                    "Arrow record batches")


def _rebatch(chunks: Iterable, size: int) -> Iterator[dict]:
    buf, have = [], 0
    for chunk in chunks:
        cols = _host_columns(chunk)
        if not cols:
            continue
        buf.append(cols)
        have += datamod.n_rows(cols)
        while have >= size:
            joined = buf[0] if len(buf) == 1 else {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}
            yield {k: v[:size] for k, v in joined.items()}
            have -= size
            buf = [{k: v[size:] for k, v in joined.items()}] if have else []
    if have:
        yield buf[0] if len(buf) == 1 else {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}


# ---------------------------------------------------------------------------------------------- streamed fit
class _Stream:
    """One pass over the source = prepared, padded device batches; counts rows and Σw on the first pass."""

    def __init__(self, problem, source, weights, batch_rows, columns, mesh, data_dtype, progress):
        self.problem, self.source, self.weights, self.columns = problem, source, weights, columns
        self.mesh, self.dtype, self.progress = mesh, data_dtype or np.float64, progress
        self.batch_rows = batch_rows + (-batch_rows % (mesh.size if mesh is not None else 1))
        self.used = sorted(problem.data)
        self.shapes = {k: v.shape[1:] for k, v in problem.data.items()}
        self.n_rows, self.sum_w, self.passes = None, None, 0

    def device_batches(self):
        for b, raw in enumerate(batches(self.source, self.batch_rows, self.columns)):
            try:
                cols, w = self._prepare_batch(raw, b)
            except DataError as e:
                raise DataError(f"batch {b} of the streamed source: {e}") from None
            n = w.shape[0]
            cols = pad_rows(cols, self.batch_rows)
            w = np.concatenate([w, np.zeros(self.batch_rows - n)])
            if self.mesh is not None:
                cols, w = jax.device_put((cols, w), NamedSharding(self.mesh, PartitionSpec("rows")))
            yield n, w, cols

    def _prepare_batch(self, raw, b):
        """The columns ψ reads (after the blocks' ``prepare``) and the weights of one host batch."""
        cols = datamod.as_columns(raw)
        all_cols = dict(cols)
        for blk, ref in zip(self.problem.blocks, self.problem.spec.blocks):
            if blk.prepare is None:
                continue
            prep = blk.prepare(all_cols)
            if prep is None:
                continue
            all_cols.update(prep.columns)
            if prep.psi is not None and prep.psi != ref.psi:
                raise DataError(f"block '{blk.name}' prepared a different estimating function than on the first "
                                "batch (e.g. a class missing from this batch): use larger or shuffled batches")
        out = {}
        for k in self.used:
            v = datamod.require_numeric(all_cols, k)
            datamod.check_finite(v, k)
            if v.shape[1:] != self.shapes[k]:
                raise DataError(f"column '{k}' has shape {v.shape[1:]} per row, {self.shapes[k]} on the first "
                                "batch: the design must not depend on the batch (code categories as indicator "
                                "columns)")
            out[k] = v.astype(self.dtype, copy=False)
        return out, datamod.row_weights(all_cols, self.weights, datamod.n_rows(cols))

    def sums(self, group, theta, *, jac=True, meat=False, sampling=False, chunk_size=DEFAULT_CHUNK, label=""):
        start, total, n_rows, sum_w = time.perf_counter(), None, 0, 0.0
        theta = jnp.asarray(theta)
        for n, w, cols in self.device_batches():
            m = _group_sums(self.problem.spec, group, theta, cols, w, jac, meat, sampling, chunk_size, self.mesh)
            total = m if total is None else jax.tree.map(jnp.add, total, m)
            n_rows += n
            if self.sum_w is None:
                sum_w += float(np.sum(w))
        if total is None:
            raise DataError("the streamed source has no rows")
        if self.sum_w is None:
            self.n_rows, self.sum_w = n_rows, sum_w
        self.passes += 1
        total = jax.tree.map(lambda a: None if a is None else np.asarray(a), total)
        if self.progress:
            info = dict(label=label, passes=self.passes, rows=n_rows, seconds=time.perf_counter() - start,
                        residual=float(np.max(np.abs(total.psi))) / self.sum_w)
            if callable(self.progress):
                self.progress(info)
            else:
                print(f"mestim stream: pass {info['passes']} ({label}): {n_rows:,} rows in {info['seconds']:.2f} s, "
                      f"max|Σψ|/Σw = {info['residual']:.3g}", file=sys.stderr, flush=True)
        return total


def fit_stream(estimator, source, init=None, *, names=None, columns=None, weights=None,
               weight_type: str = "frequency", correction: str | None = None, solve: str = "blockwise",
               batch_rows: int = DEFAULT_BATCH, chunk_size: int = DEFAULT_CHUNK, devices=None, data_dtype=None,
               max_iter: int = 100, xtol: float = 1e-10, gtol: float = 1e-12,
               progress: bool | Callable[[dict], None] = False):
    """:func:`mestim.fit` on data read in batches from ``source``; the same :class:`~mestim.Result`.

    Args:
        source: a pandas DataFrame or dict of arrays (host memory), a Parquet file or directory path, a pyarrow
            Table, or a function returning a fresh iterator of chunks (dicts of arrays, DataFrames or Arrow record
            batches of any sizes; the fit calls it once per pass).
        columns: the raw columns to read (default all; reading fewer is faster for wide Parquet files).
        batch_rows: rows per host batch moved to the device (memory on the device: O(batch_rows · columns)).
        chunk_size: rows per sub-chunk inside the compiled kernel (memory: O(chunk · p²)), as in ``fit``.
        devices: also shard each batch over devices (see :func:`device_mesh`).
        progress: True prints one line per pass to stderr; a function receives a dict per pass
            (label, passes, rows, seconds, residual).
        Other arguments as :func:`mestim.fit` (``weights`` must be a column name).
    """
    from .fit import _finish, _group_index, as_blocks, prepare

    if solve not in ("blockwise", "joint"):
        raise SpecificationError(f"solve={solve!r}: use 'blockwise' or 'joint'")
    if correction == "fay":
        raise SpecificationError("correction='fay' is not available for streamed fits; use None or 'df'")
    if weights is not None and not isinstance(weights, str):
        raise SpecificationError("weights= of a streamed fit must be a column name of the source")
    single = callable(estimator) and not isinstance(estimator, Block)
    if init is not None and not single:
        raise SpecificationError("init= is for a single ψ; blocks carry their own starting values")
    blocks = as_blocks(estimator, init if single else None, names)
    first = next(iter(batches(source, batch_rows, columns)), None)
    if first is None:
        raise DataError("the streamed source has no rows")
    problem = prepare(blocks, first, weights=weights)  # spec, labels, starting values: from the first batch
    mesh = device_mesh(devices) if devices is not None else None
    stream = _Stream(problem, source, weights, batch_rows, columns, mesh, data_dtype, progress)
    opts = SolverOptions(max_iter=max_iter, xtol=xtol, gtol=gtol)
    spec = problem.spec
    groups = solve_levels(spec.blocks) if solve == "blockwise" else [tuple(b.name for b in spec.blocks)]
    theta = np.array(problem.init, float)
    iterations = 0
    for group in groups:
        idx = _group_index(spec, group)
        theta, it = _solve_stream(stream, group, theta, idx, opts, chunk_size, problem.labels)
        iterations += it
    m = stream.sums(None, theta, meat=True, sampling=weight_type == "sampling", chunk_size=chunk_size,
                    label="bread and meat")

    def no_fay(jac):
        raise SpecificationError("correction='fay' is not available for streamed fits")

    def no_influence(bread_inv):
        raise SpecificationError("influence functions are not kept for streamed fits (one row per data row); "
                                 "refit in memory with mestim.fit to get them")

    if weight_type not in ("frequency", "sampling"):
        raise SpecificationError(f"weight_type={weight_type!r}: use 'frequency' or 'sampling'")
    result = _finish(problem, jnp.asarray(theta), m.psi, m.jac, m.meat, weight_type=weight_type,
                     correction=correction, iterations=iterations, n=stream.sum_w, n_rows=stream.n_rows,
                     cluster_sizes=None, fay=no_fay, influence=no_influence, run_checks=False, stacklevel=3)
    result.notes = [f"{note} (first batch)" for note in result.notes] + [f"streamed: {stream.n_rows:,} rows in batches of {stream.batch_rows:,}, "
                                         f"{stream.passes} passes over the source; starting values from the first "
                                         "batch"]
    return result


def _solve_stream(stream: _Stream, group, theta, idx, opts: SolverOptions, chunk_size, labels):
    """One group of a streamed fit: :func:`mestim.solve.newton_host`, one pass over the source per evaluation."""
    names = ", ".join(f"'{g}'" for g in group)
    calls = iter(range(1 << 30))

    def at(tg):
        full = theta.copy()
        full[idx] = tg
        return full

    def residual_and_jacobian(tg):
        m = stream.sums(group, at(tg), chunk_size=chunk_size, label=f"{names} evaluation {next(calls)}")
        return m.psi, m.jac

    def residual(tg):
        return stream.sums(group, at(tg), jac=False, chunk_size=chunk_size, label=f"{names} line search").psi

    out = newton_host(residual_and_jacobian, residual, theta[idx], lambda: stream.sum_w, opts)
    if out.status != CONVERGED:
        error = SingularBreadError if out.status == SINGULAR else ConvergenceError
        raise error(f"block(s) {names} did not converge: {STATUS_TEXT[out.status]} after {out.iterations} "
                    f"iteration(s); max|Σψ|/Σw = {out.residual / stream.sum_w:.3g}; try better init= values, a "
                    "larger max_iter=, or check that the model is identified")
    return at(out.theta), out.iterations
