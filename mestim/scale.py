"""Scale: rows sharded over devices, and fits streamed from host memory or Parquet/Arrow files.

Both are row sources for the one solve loop (:mod:`mestim.driver`) and run the stack's one compiled program
(:mod:`mestim.sums`), so an in-memory, a sharded and a streamed fit compute the same sums and agree to rounding
(tested to 1e-10).

**Sharding** (``fit(..., devices=...)``, :func:`device_mesh`): the rows are split into one contiguous part per
device (:mod:`mestim.sources`); each device sums its own part and ``psum`` adds the parts. θ and the (p × p)
sums are replicated; the data never move between devices. To try it on a CPU, set
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX is imported.

**Streaming** (:func:`fit_stream`): for data larger than device (or host) memory. The source is read in host
batches of ``batch_rows`` rows (a pandas DataFrame or dict of arrays held in host memory, a Parquet file or
directory read with pyarrow, a pyarrow Table, or a function returning a fresh iterator of chunks). Each batch is
prepared and validated on the host exactly as ``fit`` prepares a table (:func:`mestim.problem.prepare`), cut into
slabs of the largest fixed shape and summed on the device by the same compiled program; at most two slabs are in
flight, so host memory stays bounded while the host prepares the next batch. A Newton iteration costs one pass
over the source when the full step is accepted; the last pass of the solve also gives the bread and meat.
Every pass checks that it saw the same number of rows and the same total weight as the first.

What differs from :func:`mestim.fit` in a streamed fit:

- starting values that a block computes in ``prepare`` come from the **first batch** (labels too);
- a block's ``prepare`` must give the same columns on every batch: a formula with ``C(site)`` on a batch
  missing a level raises (code categories as indicator columns instead), and a masked block whose mask
  selects no row of a batch raises (shuffle the rows, or use larger batches);
- post-fit block checks (e.g. the separation check of logistic blocks) are skipped; influence functions are
  not kept (they have one row per data row); ``cluster=`` and ``correction="fay"`` are not supported.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import jax
import numpy as np

from . import data as datamod
from .blocks import Block
from .driver import solve_stack
from .errors import DataError, SpecificationError
from .estimate import assemble, kernel_for
from .options import FitOptions
from .problem import as_blocks, prepare
from .sources import device_mesh, layout, place, run_slabs
from .sums import SLAB_CHUNKS, Moments

__all__ = ["fit_stream", "batches", "device_mesh", "Streamed"]

DEFAULT_BATCH = 1 << 18  # host rows per streamed batch (262,144: ~60 MB for a 30-column float64 design)
IN_FLIGHT = 2  # slabs dispatched to the device ahead of the host


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
        return source.to_batches(columns=columns, batch_size=batch_rows) if hasattr(source, "files") else (
            source.select(columns) if columns else source).to_batches(batch_rows)
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


# ---------------------------------------------------------------------------------------------- streamed source
class Streamed:
    """A row source read anew on every pass: batches prepared like ``fit``'s table, summed slab by slab."""

    def __init__(self, kernel, blocks, first, source, *, weights, batch_rows, columns, dtype, progress):
        self.kernel, self.blocks, self.first, self.source = kernel, blocks, first, source
        self.weights, self.batch_rows, self.columns = weights, batch_rows, columns
        self.dtype, self.progress = dtype or np.float64, progress
        self.n_rows, self.sum_w, self.passes = None, None, 0

    def _batches(self):
        for b, raw in enumerate(batches(self.source, self.batch_rows, self.columns)):
            try:
                problem = prepare(self.blocks, raw, weights=self.weights)
            except DataError as e:
                raise DataError(f"batch {b} of the streamed source: {e}") from None
            if problem.spec != self.first.spec:
                raise DataError(f"batch {b} of the streamed source: its blocks prepared different estimating "
                                "functions or columns than the first batch (e.g. a category missing from this "
                                "batch): use larger or shuffled batches, or code categories as indicator columns")
            yield problem

    def sums(self, theta, plan) -> Moments:
        start, n_rows, sum_w = time.perf_counter(), 0, 0.0
        parts = 1 if self.kernel.mesh is None else self.kernel.mesh.size
        acc, theta, pending = self.kernel.zeros(), jax.device_put(np.asarray(theta, float)), []
        for problem in self._batches():
            used = {k: v.astype(self.dtype, copy=False) for k, v in problem.used.items()}
            host, _ = layout(used, problem.w, self.kernel.chunk, parts, SLAB_CHUNKS[-1])
            for slab in place(self.kernel, host):
                acc = run_slabs(self.kernel, [slab], theta, plan, acc)
                pending.append(acc)
                if len(pending) > IN_FLIGHT:  # bound the host memory held by queued transfers
                    pending.pop(0).psi.block_until_ready()
            n_rows += problem.n_rows
            sum_w += float(problem.w.sum())
        if not n_rows:
            raise DataError("the streamed source has no rows")
        self.passes += 1
        if self.n_rows is None:
            self.n_rows, self.sum_w = n_rows, sum_w
        elif n_rows != self.n_rows or not np.isclose(sum_w, self.sum_w, rtol=1e-12, atol=0):
            raise DataError(f"the streamed source changed between passes: pass {self.passes} read {n_rows:,} rows "
                            f"(total weight {sum_w:.17g}), pass 1 read {self.n_rows:,} rows (total weight "
                            f"{self.sum_w:.17g}); a source must give the same rows on every pass")
        out = Moments(*jax.device_get(acc))
        self._report(start, n_rows, out)
        return out

    def _report(self, start, n_rows, out):
        if not self.progress:
            return
        info = dict(passes=self.passes, rows=n_rows, seconds=time.perf_counter() - start,
                    residual=float(np.max(np.abs(out.psi))) / self.sum_w)
        if callable(self.progress):
            self.progress(info)
        else:
            print(f"mestim stream: pass {info['passes']}: {n_rows:,} rows in {info['seconds']:.2f} s, "
                  f"max|Σψ|/Σw = {info['residual']:.3g}", file=sys.stderr, flush=True)


def fit_stream(estimator, source, init=None, *, names=None, columns=None, weights=None,
               weight_type: str = "frequency", correction: str | None = None, solve: str = "blockwise",
               batch_rows: int = DEFAULT_BATCH, chunk_size: int | None = None, devices=None, data_dtype=None,
               max_iter: int = 100, xtol: float = 1e-10, gtol: float = 1e-12,
               progress: bool | Callable[[dict], None] = False):
    """:func:`mestim.fit` on data read in batches from ``source``; the same :class:`~mestim.Result`.

    Args:
        source: a pandas DataFrame or dict of arrays (host memory), a Parquet file or directory path, a pyarrow
            Table, or a function returning a fresh iterator of chunks (dicts of arrays, DataFrames or Arrow record
            batches of any sizes; the fit calls it once per pass).
        columns: the raw columns to read (default all; reading fewer is faster for wide Parquet files).
        batch_rows: rows per host batch (host memory: O(batch_rows · columns)).
        chunk_size: rows per chunk inside the compiled program (memory: O(chunk · p²)), as in ``fit``.
        devices: also shard each batch over devices (see :func:`device_mesh`).
        progress: True prints one line per pass to stderr; a function receives a dict per pass
            (passes, rows, seconds, residual).
        Other arguments as :func:`mestim.fit` (``weights`` must be a column name).
    """
    options = FitOptions(weight_type, correction, solve, chunk_size, max_iter, xtol, gtol, data_dtype)
    if correction == "fay":
        raise SpecificationError("correction='fay' is not available for streamed fits; use None or 'df'")
    if weights is not None and not isinstance(weights, str):
        raise SpecificationError("weights= of a streamed fit must be a column name of the source")
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise SpecificationError(f"batch_rows={batch_rows!r}: give a positive whole number")
    mesh = None if devices is None else device_mesh(devices)
    if init is not None and not (callable(estimator) and not isinstance(estimator, Block)):
        raise SpecificationError("init= is for a single ψ; blocks carry their own starting values")
    blocks = as_blocks(estimator, init, names)
    first_batch = next(iter(batches(source, batch_rows, columns)), None)
    if first_batch is None:
        raise DataError("the streamed source has no rows")
    first = prepare(blocks, first_batch, weights=weights)  # spec, labels, starting values: from the first batch
    stream = Streamed(kernel_for(first, options, mesh), blocks, first, source, weights=weights,
                      batch_rows=batch_rows, columns=columns, dtype=options.data_dtype, progress=progress)
    theta, moments, iterations = solve_stack(stream, first.init, first.labels, options)
    note = (f"streamed: {stream.n_rows:,} rows in batches of {batch_rows:,}, {stream.passes} passes over the "
            "source; starting values from the first batch")
    first = dataclasses.replace(first, notes=tuple(f"{n} (first batch)" for n in first.notes))
    return assemble(first, stream, theta, moments, options, iterations=iterations, notes=(note,), checks=False)
