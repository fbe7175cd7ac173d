"""Scale: rows sharded over devices, and fits streamed from sources larger than memory.

Both are row sources for the one solve loop (:mod:`mestim.driver`) and run the stack's one compiled program
(:mod:`mestim.sums`), so an in-memory, a sharded and a streamed fit compute the same sums and agree to rounding
(tested to 1e-10).

**Sharding** (``fit(..., devices=...)``, :func:`device_mesh`): the rows are split into one contiguous part per
device (:mod:`mestim.sources`); each device sums its own part and ``psum`` adds the parts. θ and the (p × p)
sums are replicated; the data never move between devices. To try it on a CPU, set
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX is imported.

**Streaming** (:func:`fit_stream`): for data larger than device (or host) memory. The source (a Parquet file or
directory, a pyarrow Table or Dataset, a polars LazyFrame, a DataFrame or dict in host memory, a function
returning a fresh iterator of chunks: :mod:`mestim.readers`) is read anew on every pass, in host batches of
``batch_rows`` rows. Each batch is prepared and validated on the host exactly as ``fit`` prepares a table
(:func:`mestim.problem.prepare`), then cut into slabs of one fixed shape that go to the device one at a time and
are summed by the same compiled program; at most ``IN_FLIGHT`` slabs wait on the device while the host prepares
the next. Host memory is O(batch_rows × columns), whatever the number of rows. A Newton iteration costs one pass
over the source when the full step is accepted; the last pass of the solve also gives the bread and meat.

A **Dask DataFrame** is summed where it lives (:class:`DaskRows`): on every pass each Dask worker prepares its
own partitions and sums them with the same compiled program, and the client adds one small set of sums per
partition. The stack is sent to the workers once per fit.

**Integrity, on every pass.** Each chunk is checked where it arrives (:mod:`mestim.readers`); each batch is
checked against the same batch of pass 1 (its row count, total weight and the sums of every column ψ reads), so a
source that changes between passes fails at the batch that changed; every pass must read the same number of rows
and the same total weight. Each fault is a :class:`~mestim.errors.DataError` naming the pass, the chunk (or Dask
partition) and the rows of the source, counted from 0 over the whole source; so is every exception a reader or a
Dask worker raises (a file deleted, rewritten or truncated mid-fit, workers lost). A batch or partition with no
rows, or whose weights are all zero, adds nothing, as such rows add nothing to ``fit``'s sums; the whole source
must have rows and a positive total weight.

What differs from :func:`mestim.fit` in a streamed fit:

- starting values that a block computes in ``prepare`` come from the **first batch** (labels too);
- constants a block learns from the data (a formula's ``center``, ``scale``, ``standardize``, ``poly``; a robust
  regression's κ) are learnt from **every batch** by a learning pass before the fit (:mod:`mestim.constants`;
  one more pass where a constant is computed from another: a scale from its mean, each degree of ``poly`` from
  the ones below); those that are not sums over rows (``bs`` and spline knots, ``scale="mad"``,
  ``smooth="auto"``) are refused when the first batch is prepared, with the way to give them explicitly;
- a block's ``prepare`` must give the same columns on every batch: a formula with ``C(site)`` on a batch
  missing a level raises (code categories as indicator columns instead), and a masked block whose mask
  selects no row of a batch raises (shuffle the rows, or use larger batches);
- post-fit block checks (e.g. the separation check of logistic blocks) are skipped; influence functions are
  not kept (they have one row per data row);
- ``cluster=`` and ``correction="fay"`` read the source once more after the solve: each batch's (or
  partition's) covariance units are formed as ``fit`` forms them (:mod:`mestim.covariance`), the meats of row
  units added up and cluster totals merged by label (a cluster may span batches); host memory O(clusters × K).
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from . import covariance, processes
from . import data as datamod
from .driver import solve_stack
from .constants import Summed, learn
from .errors import DataError, MestimError, SpecificationError
from .estimate import assemble, kernel_for
from .options import FitOptions
from .problem import Problem, as_blocks, prepare
from .readers import (Batch, Layout, chunk_reader, host_columns, read_batches, source_error, source_errors,
                      source_kind)
from .sources import InMemory, centres, device_mesh, layout, place, run_slabs, store
from .sums import Kernel, Moments, batch_slab_chunks

__all__ = ["fit_stream", "batches", "device_mesh", "Streamed", "DaskRows"]

DEFAULT_BATCH = 1 << 16  # host rows per streamed batch (65,536: ~2.4 KB a row while prepared for W2, ~160 MB)
IN_FLIGHT = 2  # slabs dispatched to the device ahead of the host


def batches(source, batch_rows: int = DEFAULT_BATCH, columns=None) -> Iterator[dict]:
    """Host batches ``{name: np.ndarray}`` of exactly ``batch_rows`` rows (the last may be shorter) from
    ``source`` (see :func:`fit_stream`), each chunk checked as in a fit. Reading holds one batch in memory."""
    return (b.columns for b in read_batches(chunk_reader(source, batch_rows, columns), batch_rows, Layout(columns)))


# ---------------------------------------------------------------------------------------------- one batch
def prepared(blocks, batch: Batch, weights, spec, label: str, constants: Summed,
             cluster: str | None = None) -> Problem:
    """``batch`` prepared as ``fit`` prepares a table, its errors naming ``label`` (the pass), the chunk and the
    row of the source; ``spec``: the stack every batch must prepare (None for the first batch); ``constants``: the
    blocks' data-dependent constants, learnt from all rows (:mod:`mestim.constants`)."""
    weightless = _all_zero(batch.columns, weights)  # allowed in a part of the rows, as fit allows such rows
    with datamod.rows_numbered_from(batch.start):
        try:
            problem = prepare(blocks, batch.columns, weights=None if weightless else weights, constants=constants,
                              cluster=cluster)
        except DataError as e:
            raise DataError(f"{label}, {batch.where(getattr(e, 'row', None))}: {e}") from None
    if weightless:
        problem = dataclasses.replace(problem, w=np.zeros(problem.n_rows))
    if spec is not None and problem.spec != spec:
        raise DataError(f"{label}, {batch.where()}: its blocks prepared different estimating functions or columns "
                        "than the first batch (e.g. a category missing from this batch): use larger or shuffled "
                        "batches, or code categories as indicator columns")
    return problem


def _all_zero(columns: dict, weights: str | None) -> bool:
    """Whether the weight column of a batch is numeric and all zero (which ``prepare`` refuses for a whole table:
    the source's total weight is checked at the end of pass 1 instead)."""
    w = columns.get(weights) if weights is not None else None
    return w is not None and w.dtype.kind in "biuf" and not np.any(w != 0)


def fingerprint(problem: Problem) -> dict:
    """What a later pass must reproduce for this batch: its row count, total weight and the sum of every column ψ
    reads (cheap beside ψ; equal sums of equal rows are bit-identical)."""
    out = {"row count": np.array([problem.n_rows]), "total weight": np.array([problem.w.sum()])}
    out.update({f"column '{k}'": np.asarray(v.sum(axis=0)).ravel() for k, v in problem.used.items()})
    return out


def changed(before: dict, now: dict) -> str | None:
    """What differs between two fingerprints of a batch (None: nothing)."""
    return next((k for k in before if not np.array_equal(before[k], now.get(k), equal_nan=True)), None)


def add_rows(kernel: Kernel, capacity: int, problem: Problem, theta, plan, acc, dtype, centre, pending=None):
    """``acc`` plus the row sums of a prepared batch, sent to the device one slab (``capacity`` chunks per
    device) at a time: the host holds one slab's copy, and at most ``IN_FLIGHT`` slabs wait on the device
    (``pending``: the slabs in flight, kept across the batches of a pass).
    ``dtype``, ``centre``: how the columns are stored (:func:`mestim.sources.store`)."""
    parts = 1 if kernel.mesh is None else kernel.mesh.size
    step = capacity * kernel.chunk * parts
    pending = collections.deque() if pending is None else pending
    for a in range(0, problem.n_rows, step):
        used = store({k: v[a:a + step] for k, v in problem.used.items()}, dtype, centre)
        host, _ = layout(used, problem.w[a:a + step], kernel.chunk, parts, capacity)
        acc = run_slabs(kernel, place(kernel, host), theta, plan, acc, centre)
        pending.append(acc)
        if len(pending) > IN_FLIGHT:
            pending.popleft().psi.block_until_ready()
    return acc


def batch_units(kernel: Kernel, problem: Problem, theta, j_inv, sampling: bool, dtype, centre):
    """A prepared batch's share of the meat (:mod:`mestim.covariance`, as ``fit`` forms it): the meat of its row
    units, or ``(labels, Units)`` of its clusters; ``j_inv`` = J⁻¹ for Fay's leverages (None: no Fay)."""
    rows = InMemory(kernel, problem.used, problem.w, dtype=dtype, centre=centre)
    u = covariance.units(rows.row_values(theta), problem.w, sampling=sampling, codes=problem.cluster,
                         n_clusters=problem.n_clusters, leverages=None if j_inv is None else rows.row_leverages(
                             theta, j_inv))
    return covariance.meat(u) if problem.cluster is None else (problem.cluster_labels, u)


# ---------------------------------------------------------------------------------------------- row sources
class _Checked:
    """Pass bookkeeping shared by the streamed sources: every pass must reproduce pass 1, piece by piece."""

    def __init__(self, progress):
        self.progress, self.passes, self.n_rows, self.sum_w = progress, 0, None, None
        self._prints: list[dict] = []

    @property
    def label(self) -> str:
        return f"pass {self.passes + 1}"

    def check_piece(self, i: int, print_: dict, where: str):
        """Piece ``i`` of this pass (a batch, or a Dask partition; its :func:`fingerprint`) against piece ``i`` of
        pass 1."""
        if self.passes == 0:
            self._prints.append(print_)
            return
        if i >= len(self._prints):
            raise DataError(f"{self.label}, {where}: the source has more rows than on pass 1, which read "
                            f"{self.n_rows:,} rows; a source must give the same rows on every pass")
        what = changed(self._prints[i], print_)
        if what is not None:
            raise DataError(f"{self.label}, {where}: the source changed since pass 1 (the {what} of these rows "
                            "differs); a source must give the same rows, in the same order, on every pass")

    @staticmethod
    def combine(total, share):
        """Two pieces' :func:`batch_units` as one: row units' meats added, cluster units merged by label (as they
        come: memory O(clusters))."""
        if total is None or share is None:
            return share if total is None else total
        return covariance.merge_clusters([total, share]) if isinstance(share, tuple) else total + share

    @staticmethod
    def finish(total) -> tuple[np.ndarray, int | None]:
        """(the meat, the number of clusters or None) from every piece's combined :func:`batch_units`."""
        return (total, None) if not isinstance(total, tuple) else covariance.cluster_meat(total[1])

    def end_pass(self, n_rows: int, sum_w: float, start: float, out: Moments) -> Moments:
        """Pass 1 learns the row count and total weight; later passes matched pass 1 piece by piece
        (:meth:`check_piece`), so what is left to catch is a pass that ends early."""
        if self.n_rows is None:
            if not n_rows:
                raise DataError("the streamed source has no rows")
            if not sum_w > 0:
                raise DataError(f"the weights are all zero over the {n_rows:,} rows of the source: no row carries "
                                "information")
            self.n_rows, self.sum_w = n_rows, sum_w
        elif n_rows != self.n_rows:
            raise DataError(f"the streamed source changed between passes: {self.label} read {n_rows:,} rows where "
                            f"pass 1 read {self.n_rows:,} rows; a source must give the same rows on every pass")
        self.passes += 1
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


class Streamed(_Checked):
    """A row source read anew on every pass: batches prepared like ``fit``'s table, checked against pass 1,
    summed slab by slab on the device."""

    def __init__(self, kernel, blocks, first, open_pass, layout_, *, weights, batch_rows, dtype, progress, constants,
                 cluster=None):
        super().__init__(progress)
        self.kernel, self.blocks, self.first, self.open_pass, self.layout = kernel, blocks, first, open_pass, layout_
        self.constants, self.cluster = constants, cluster
        self.weights, self.batch_rows, self.dtype = weights, batch_rows, dtype or np.float64
        self.centre = centres(first.used) if dtype == "float32" else None  # the first batch's, for every batch
        parts = 1 if kernel.mesh is None else kernel.mesh.size
        self.capacity = batch_slab_chunks(-(-batch_rows // (kernel.chunk * parts)))  # one slab shape for all

    def sums(self, theta, plan) -> Moments:
        start, label, n_rows, sum_w = time.perf_counter(), self.label, 0, 0.0
        acc, theta, pending = self.kernel.zeros(), jax.device_put(np.asarray(theta, float)), collections.deque()
        for i, batch in enumerate(read_batches(self.open_pass, self.batch_rows, self.layout, label)):
            acc, rows, weight = self._add_batch(i, batch, theta, plan, acc, label, pending)
            n_rows, sum_w = n_rows + rows, sum_w + weight
            del batch  # let go of this batch before the reader builds the next: one batch in memory at a time
        return self.end_pass(n_rows, sum_w, start, Moments(*jax.device_get(acc)))

    def unit_meat(self, theta, j_inv, options, at: Moments):
        """The meat of clusters or Fay's correction (:func:`mestim.estimate.unit_meat`): one more pass, batch by
        batch (``at``: the sums at θ̂, for the progress line)."""
        start, label, n_rows, sum_w, total = time.perf_counter(), self.label, 0, 0.0, None
        for i, batch in enumerate(read_batches(self.open_pass, self.batch_rows, self.layout, label)):
            problem = prepared(self.blocks, batch, self.weights, self.first.spec, label, self.constants.piece(),
                               self.cluster)
            self.check_piece(i, fingerprint(problem), batch.where())
            total = self.combine(total, batch_units(self.kernel, problem, theta, j_inv, options.sampling, self.dtype,
                                                    self.centre))
            n_rows, sum_w = n_rows + problem.n_rows, sum_w + float(problem.w.sum())
            del batch
        self.end_pass(n_rows, sum_w, start, at)
        return self.finish(total)

    def _add_batch(self, i, batch, theta, plan, acc, label, pending):
        problem = prepared(self.blocks, batch, self.weights, self.first.spec, label, self.constants.piece())
        self.check_piece(i, fingerprint(problem), batch.where())
        acc = add_rows(self.kernel, self.capacity, problem, theta, plan, acc, self.dtype, self.centre, pending)
        return acc, problem.n_rows, float(problem.w.sum())


@dataclasses.dataclass
class _PartitionJob:
    """What a Dask worker needs to sum a partition; sent to each worker once per fit (scattered): the client's
    kernel, whose compiled program each worker builds once and reuses on every pass."""

    blocks: tuple
    weights: str | None
    kernel: Kernel
    layout: Layout
    capacity: int
    dtype: object
    centre: dict | None
    constants: Summed  # the blocks' constants, learnt from every partition (mestim.constants)
    cluster: str | None = None


EMPTY = {"row count": np.array([0]), "total weight": np.zeros(1)}  # the fingerprint of an empty partition


def _partition_batch(frame, job, label, index, start) -> Batch:
    where = f"{label}, partition {index} (from row {start:,} of the source)"
    return Batch(job.layout.check(host_columns(frame, where), where), start, ((index, start),), "partition")


def _partition_constants(frame, job: _PartitionJob, totals, label: str, index: int, start: int) -> Summed:
    """On a Dask worker: one partition's sums of the constants its blocks learn (a learning pass)."""
    recorder = Summed(totals, learning=True)
    batch = _partition_batch(frame, job, label, index, start)
    if batch.n_rows:  # a filtered frame's empty partition adds nothing
        prepared(job.blocks, batch, job.weights, None, label, recorder)
    return recorder


def _partition_units(frame, job: _PartitionJob, theta, j_inv, sampling: bool, label: str, index: int, start: int):
    """On a Dask worker: one partition's :func:`batch_units` (None: an empty partition) and fingerprint."""
    batch = _partition_batch(frame, job, label, index, start)
    if not batch.n_rows:
        return None, EMPTY
    problem = prepared(job.blocks, batch, job.weights, job.kernel.spec, label, job.constants.piece(), job.cluster)
    return batch_units(job.kernel, problem, theta, j_inv, sampling, job.dtype, job.centre), fingerprint(problem)


def _partition_sums(frame, job: _PartitionJob, theta, plan, label: str, index: int, start: int):
    """On a Dask worker: one partition's row sums and fingerprint (host arrays: a few kB go back)."""
    batch = _partition_batch(frame, job, label, index, start)
    kernel = job.kernel
    if not batch.n_rows:  # a filtered frame's empty partition adds nothing
        return Moments(*jax.device_get(kernel.zeros())), EMPTY
    problem = prepared(job.blocks, batch, job.weights, kernel.spec, label, job.constants.piece())
    acc = add_rows(kernel, job.capacity, problem, jax.device_put(theta), plan, kernel.zeros(), job.dtype,
                   job.centre)
    return Moments(*jax.device_get(acc)), fingerprint(problem)


class DaskRows(_Checked):
    """A Dask DataFrame as a row source, summed where it lives: on every pass each partition is prepared and
    summed on a Dask worker (the client's ``distributed.Client`` when there is one, else Dask's own scheduler) by
    the same compiled program, and the client adds the partitions' sums in partition order. Each partition's
    rows are counted once, before pass 1, so that errors raised on a worker name rows of the whole frame."""

    def __init__(self, kernel, blocks, first, frame, layout_, *, weights, dtype, progress, learns: bool, cluster=None):
        import dask

        super().__init__(progress)
        self.kernel, self.first, self.frame = kernel, first, frame
        with source_errors("pass 1, counting the rows of the partitions"):
            lengths = np.asarray(dask.compute(frame.map_partitions(len))[0], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        capacity = batch_slab_chunks(-(-int(max(lengths.max(), 1)) // kernel.chunk))
        job = _PartitionJob(tuple(blocks), weights, kernel, layout_, capacity, dtype or np.float64,
                            centres(first.used) if dtype == "float32" else None, Summed(), cluster)
        if learns:  # the blocks' constants from every partition, by a learning pass on the workers
            job.constants = learn(lambda recorder: self._learning_pass(job, recorder))
        client = _dask_client()
        self.job = job if client is None else client.scatter(job, broadcast=True, hash=False)

    def _learning_pass(self, job, recorder):
        import dask

        tasks = [dask.delayed(_partition_constants, pure=False)(part, job, recorder.totals, "learning pass", i,
                                                                 int(row))
                 for i, (part, row) in enumerate(zip(self.frame.to_delayed(), self.starts))]
        for part in dask.compute(*tasks):
            recorder.merge(part)

    def sums(self, theta, plan) -> Moments:
        start, label, acc = time.perf_counter(), self.label, self.kernel.zeros()
        for moments in self._on_workers(_partition_sums, np.asarray(theta, float), plan, label=label):
            acc = Moments(*(a + m for a, m in zip(acc, moments)))
        return self.end_pass(self._rows, self._weight, start, acc)

    def unit_meat(self, theta, j_inv, options, at: Moments):
        """As :meth:`Streamed.unit_meat`, each partition's units formed on its worker."""
        start, total = time.perf_counter(), None
        for share in self._on_workers(_partition_units, np.asarray(theta, float), j_inv, options.sampling,
                                      label=self.label):
            total = self.combine(total, share)
        self.end_pass(self._rows, self._weight, start, at)
        return self.finish(total)

    def _on_workers(self, function, *args, label: str):
        """``function(partition, job, *args, label, index, start)`` run on every partition's worker; yields the
        results (their fingerprints checked against pass 1; rows and weight counted in ``_rows``, ``_weight``)."""
        import dask

        parts = self.frame.to_delayed()
        if len(parts) != len(self.starts):
            raise DataError(f"{label}: the Dask frame has {len(parts)} partitions, it had {len(self.starts)} on "
                            "pass 1; a source must give the same rows on every pass")
        tasks = [dask.delayed(function, pure=False)(part, self.job, *args, label, i, int(row))
                 for i, (part, row) in enumerate(zip(parts, self.starts))]
        self._rows, self._weight = 0, 0.0
        for i, (out, print_) in enumerate(self._computed(tasks, label)):
            self.check_piece(i, print_, self._where(i))
            self._rows += int(print_["row count"][0])
            self._weight += float(print_["total weight"][0])
            yield out

    def _where(self, i: int) -> str:
        return f"partition {i} (from row {int(self.starts[i]):,} of the source)"

    def _computed(self, tasks, label: str) -> list:
        """The tasks' results in partition order. An exception other than a MestimError (a file deleted under
        ``dd.read_parquet``, workers lost with the fit's data) is a DataError naming the pass and the partition."""
        import dask

        client = _dask_client()
        if client is None:
            try:
                return list(dask.compute(*tasks))
            except MestimError:
                raise
            except Exception:  # Dask's own scheduler does not say which task failed: find it, in order
                return [self._result(label, i, task.compute) for i, task in enumerate(tasks)]
        futures = client.compute(tasks)
        try:
            return [self._result(label, i, future.result) for i, future in enumerate(futures)]
        finally:
            client.cancel(futures)

    def _result(self, label: str, i: int, get: Callable):
        from concurrent.futures import CancelledError

        try:
            return get()
        except MestimError:
            raise
        except CancelledError as e:  # distributed forgets a pass's tasks and the stack when its workers die
            raise DataError(f"{label}, {self._where(i)}: the Dask workers were lost during the fit (killed or "
                            f"restarted: {type(e).__name__}: {str(e).strip()[:200]}); fit again once the cluster "
                            "is up") from e
        except Exception as e:
            raise source_error(f"{label}, {self._where(i)}", e) from e


def _dask_client():
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client: Dask's own scheduler runs the tasks
        return None


# ---------------------------------------------------------------------------------------------- fit_stream
def fit_stream(estimator, source, init=None, *, names=None, columns=None, weights=None,
               weight_type: str = "frequency", cluster: str | None = None, correction: str | None = None,
               solve: str = "blockwise",
               batch_rows: int = DEFAULT_BATCH, chunk_size: int | None = None, devices=None, data_dtype=None,
               max_iter: int = 100, xtol: float = 1e-10, gtol: float = 1e-12,
               progress: bool | Callable[[dict], None] = False):
    """:func:`mestim.fit` on data read in batches from ``source``; the same :class:`~mestim.Result`.

    Args:
        source: a Parquet file or directory path, a pyarrow Table or Dataset, a polars LazyFrame (collected in
            streaming batches) or DataFrame, a pandas DataFrame or dict of arrays (host memory), a Dask DataFrame
            (summed on the Dask workers, :class:`DaskRows`), or a function returning a fresh iterator of chunks
            (dicts of arrays, DataFrames or Arrow record batches of any sizes; the fit calls it once per pass).
        columns: the raw columns to read (default all; reading fewer is faster for wide Parquet files).
        batch_rows: rows per host batch (host memory: O(batch_rows · columns)); a Dask fit reads partitions.
        chunk_size: rows per chunk inside the compiled program (memory: O(chunk · p²)), as in ``fit``.
        devices: also shard each batch over devices (see :func:`device_mesh`); not with a Dask source. In a job of
            several processes it must be given, as in :func:`mestim.fit`: ``"all"`` (every process streams its own
            rows of one fit) or ``"local"`` (this process's rows alone).
        progress: True prints one line per pass to stderr; a function receives a dict per pass
            (passes, rows, seconds, residual).
        cluster: a column of the source (labels; a cluster may span batches): the clustered sandwich, from one
            more pass over the source after the solve (as ``correction="fay"``).
        Other arguments as :func:`mestim.fit` (``weights`` and ``cluster`` must be column names).

    Example (streamed in batches of 100 rows: the in-memory fit's estimates)::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> from mestim.scale import fit_stream
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> d = {"x": x, "y": 1 + 2 * x + rng.normal(size=300)}
        >>> design = lambda row: jnp.array([1.0, row["x"]])
        >>> ols = mestim.Block("lm", lambda t, row: (row["y"] - t @ design(row)) * design(row), init=[0.0, 0.0])
        >>> streamed, whole = fit_stream(ols, d, batch_rows=100), mestim.fit(ols, d)
        >>> np.allclose(streamed.theta, whole.theta, rtol=1e-10) and np.allclose(streamed.se, whole.se, rtol=1e-8)
        True
    """
    mesh, group = processes.placement(devices)
    with processes.reporting(group):
        options = FitOptions(weight_type, correction, solve, chunk_size, max_iter, xtol, gtol, data_dtype)
        return _fit_stream(estimator, source, init, names, columns, weights, cluster, batch_rows, progress, options,
                           mesh, group)


def _fit_stream(estimator, source, init, names, columns, weights, cluster, batch_rows, progress,
                options: FitOptions, mesh, group):
    """:func:`fit_stream` with its devices placed (as :func:`mestim.estimate._fit`)."""
    if group is not None:
        processes.agree_call(group, "mestim.scale.fit_stream", options, weights, cluster)
    for name, value in (("weights", weights), ("cluster", cluster)):
        if value is not None and not isinstance(value, str):
            raise SpecificationError(f"{name}= of a streamed fit must be a column name of the source")
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise SpecificationError(f"batch_rows={batch_rows!r}: give a positive whole number")
    blocks = as_blocks(estimator, init, names)
    layout_ = Layout(columns)
    dask_frame = source_kind(source) == "dask"
    open_pass = chunk_reader(source, batch_rows, columns)
    if dask_frame:
        if mesh is not None:
            raise SpecificationError("devices= shards a fit within one process; a Dask fit sums on each worker's "
                                     "own device: leave devices=None")
        frame = source[columns] if columns is not None else source
    first_batch = next(read_batches(open_pass, batch_rows, layout_, "pass 1", "partition" if dask_frame else "chunk"),
                       None)
    if first_batch is None:
        raise DataError("the streamed source has no rows")
    if group is not None:
        if dask_frame:
            raise SpecificationError("a Dask DataFrame is already summed on its cluster's workers: fit it from one "
                                     "process, not from several JAX processes")
        if cluster is not None or options.correction == "fay":
            raise SpecificationError("cluster= and correction='fay' are not available for a stream read by several "
                                     "processes (their extra pass is not merged across processes): stream from one "
                                     "process, or fit(..., devices=...) the rows in memory")
    # spec, labels, starting values; does a block learn constants from the data (mestim.constants)?
    probe = Summed(learning=True)
    first = prepared(blocks, first_batch, weights, None, "pass 1", probe.piece(), cluster)
    constants = _learnt_constants(blocks, open_pass, batch_rows, layout_, weights, probe, group, dask_frame)
    if constants.totals:
        first = prepared(blocks, first_batch, weights, None, "pass 1", constants.piece(), cluster)
    notes = ()
    if group is not None:  # every process streams its own rows: agree on the stack and the start
        start, _, _ = processes.agree(group, first)
        first = dataclasses.replace(first, init=start)
        notes = (f"streamed by {group.size} processes (this is process {group.rank}; starting values from process "
                 "0's first batch)",)
    kernel = kernel_for(first, options, mesh, streamed=True, batch_rows=None if dask_frame else batch_rows)
    if dask_frame:
        stream = DaskRows(kernel, blocks, first, frame, layout_, weights=weights, dtype=options.data_dtype,
                          progress=progress, learns=bool(probe.asked), cluster=cluster)
        how = f"{len(stream.starts):,} Dask partitions summed on the workers"
    else:
        stream = Streamed(kernel, blocks, first, open_pass, layout_, weights=weights, batch_rows=batch_rows,
                          dtype=options.data_dtype, progress=progress, constants=constants, cluster=cluster)
        how = f"batches of {batch_rows:,}"
    if group is not None:
        stream = processes.Distributed(stream, group)
    theta, moments, iterations = solve_stack(stream, first.init, first.labels, options)
    note = (f"streamed: {stream.n_rows:,} rows in {how}, {stream.passes} passes over the source; starting values "
            "from the first batch")
    first = dataclasses.replace(first, notes=tuple(f"{n} (first batch)" for n in first.notes))
    result = assemble(first, stream, theta, moments, options, iterations=iterations, notes=(note,) + notes,
                      checks=False)
    if group is not None:
        group.barrier("the end of the fit")
    return result


def _learnt_constants(blocks, open_pass, batch_rows, layout_, weights, probe: Summed, group, dask_frame) -> Summed:
    """The constants the blocks learn from the data (:mod:`mestim.constants`), by learning passes over every
    batch of every process, when the first batch asked for one (``probe``); a Dask frame learns them on its
    workers (:class:`DaskRows`)."""
    learns = bool(probe.asked) if group is None else any(group.allgather_json(bool(probe.asked),
                                                                              "whether it learns constants"))
    if not learns or dask_frame:
        return Summed()

    def learning_pass(recorder):
        for batch in read_batches(open_pass, batch_rows, layout_, "learning pass"):
            prepared(blocks, batch, weights, None, "learning pass", recorder.piece())

    return learn(learning_pass, None if group is None else (lambda *learnt: processes.add_learnt(group, *learnt)))
