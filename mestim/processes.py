"""Fits across processes: every process holds its own rows, and each pass's sums are added across processes.

The contract: every process calls ``jax.distributed.initialize(...)``, then ``mestim.fit(estimator, its_rows,
devices="all")`` (or :func:`mestim.scale.fit_stream` on its own files), and every process returns the Result of
one fit on all rows. How:

- **Agreement before any pass.** First the processes compare the call (:func:`agree_call`: the entry point, every
  fit option, how weights and clusters are given); then each prepares its own rows and they compare what they
  prepared (:func:`signature`: blocks, parameter labels, the columns ψ reads and their shapes, and each block's
  traced computation, its jaxpr and constants, hashed: two ψ that compute different things differ whatever their
  names). Any difference stops every process with an error naming the field and the processes. The levels of
  categorical columns are agreed from every process's values before the blocks prepare (:func:`agree_levels`),
  and so are the constants the blocks learn from the data (:class:`mestim.constants.AcrossProcesses`: sums over
  every process's rows). The starting values are process 0's (a registered block's start is computed from its
  own rows), so every process walks the same Newton path.
- **A single-process fit inside a multi-process job is an error** unless asked for: ``devices=None`` there raises
  (the process would fit its own rows only); ``devices="all"`` fits every process's rows together,
  ``devices="local"`` this process's rows alone (:func:`placement`).
- **A process that fails** (a ``DataError`` on its rows, an error in ψ) posts its error where the others wait: the
  key of the next exchange (:meth:`Group.reporting`); they raise at once, naming it, and every process leaves
  the fit, so none waits in JAX's shutdown for another still in the fit.
- **Each pass** sums the process's rows on its own devices with the stack's compiled program; the host sums
  (K, K×P and K×K numbers) go through the distributed runtime's key-value store and are added in process order,
  so every process holds the same totals, bit for bit. Row counts and weight totals are global and checked on
  every pass.
- **A lost process** ends the fit with a :class:`~mestim.errors.MestimError` once ``$MESTIM_PROCESS_TIMEOUT``
  seconds (default 300) pass without its sums; the process then exits after JAX's own heartbeat timeout
  (``jax.distributed.initialize(heartbeat_timeout_seconds=...)``, 100 s by default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import time

import jax
import numpy as np

from . import errors
from .data import missing_values
from .errors import DataError, MestimError, SpecificationError
from .sums import Moments

TIMEOUT_ENV = "MESTIM_PROCESS_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
MAX_LEVELS = 256  # columns with at most this many distinct values per process have their levels agreed
FAILED = b"\0mestim: failed\0"  # what a failing process posts in place of its data
_fits = itertools.count()


def several() -> bool:
    """Is this one of several processes of a ``jax.distributed`` job?"""
    return jax.process_count() > 1


class Group:
    """The processes of one fit, exchanging host values through the coordination service's key-value store.

    Every process makes the same exchanges in the same order (they run the same fit), so exchange k of fit f has
    the same key everywhere; a process deletes its own keys two exchanges later, when every process has read them.
    """

    def __init__(self):
        from jax._src import distributed  # the runtime client: the one JAX object with timeouts on exchanges

        self.client = distributed.global_state.client
        if self.client is None:
            raise SpecificationError("several JAX processes but no distributed client: call "
                                     "jax.distributed.initialize(...) in every process before mestim.fit")
        self.rank, self.size = jax.process_index(), jax.process_count()
        self.prefix = f"mestim/fit{next(_fits)}"
        self.timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        self._step, self._mine = 0, []

    def allgather(self, data: bytes, what: str) -> list[bytes]:
        """Every process's ``data`` for this exchange, in process order."""
        key = f"{self.prefix}/{self._step}"
        self._step += 1
        self.client.key_value_set_bytes(f"{key}/{self.rank}", data)
        self._mine.append(f"{key}/{self.rank}")
        out, deadline = [], time.monotonic() + self.timeout
        for rank in range(self.size):
            try:
                left = max(1, int((deadline - time.monotonic()) * 1000))
                got = data if rank == self.rank else self.client.blocking_key_value_get_bytes(f"{key}/{rank}", left)
            except Exception as e:  # DEADLINE_EXCEEDED, or the coordination service itself is gone
                raise MestimError(
                    f"process {rank} of {self.size} did not send {what} within {self.timeout:g} s (this is process "
                    f"{self.rank}): a process was lost or stopped; the fit cannot go on ({type(e).__name__}). "
                    f"Set ${TIMEOUT_ENV} to wait longer for slow processes") from None
            if got.startswith(FAILED):
                self._raise_posted(rank, got[len(FAILED):])
            out.append(got)
        while len(self._mine) > 2:
            self.client.key_value_delete(self._mine.pop(0))
        return out

    def barrier(self, what: str) -> None:
        """Wait (bounded) until every process gets here: no process leaves a fit while others still read its sums
        (process 0 serves the key-value store). An exchange, so that an error posted by a process reaches it."""
        self.allgather(b"", what)

    @contextlib.contextmanager
    def reporting(self):
        """Run a fit's steps; an error raised here is posted for the other processes (in place of this process's
        data for the next exchange, where they wait) and raised."""
        try:
            yield self
        except _Posted:
            raise
        except BaseException as e:
            self.post(e)
            raise

    def post(self, e: BaseException) -> None:
        """Post ``e`` in place of this process's data of the next exchange (every other process reaches it)."""
        message = json.dumps({"type": type(e).__name__, "message": str(e)}).encode()
        with contextlib.suppress(Exception):  # the service gone: the others learn of it from their own timeout
            self.client.key_value_set_bytes(f"{self.prefix}/{self._step}/{self.rank}", FAILED + message)

    def _raise_posted(self, rank: int, blob: bytes):
        posted = json.loads(blob)
        cls = getattr(errors, posted["type"], None)
        cls = cls if isinstance(cls, type) and issubclass(cls, MestimError) else MestimError
        raise type("Posted" + cls.__name__, (cls, _Posted), {})(
            f"process {rank} of {self.size} stopped the fit (this is process {self.rank}) with "
            f"{posted['type']}: {posted['message']}") from None

    def allgather_json(self, obj, what: str) -> list:
        """Every process's ``obj`` (JSON), each tagged with ``what`` it is: processes at different steps of
        different fits (a constant on one, none on another) stop with an error naming both steps."""
        sent = self.allgather(json.dumps({"exchange": what, "value": obj}, sort_keys=True).encode(), what)
        got = []
        for data in sent:
            try:
                got.append(json.loads(data))
            except ValueError:  # raw sums: that process is summing a pass
                got.append({"exchange": "the sums of a pass"})
        differ = [i for i, p in enumerate(got) if p.get("exchange") != what]
        if differ:
            raise SpecificationError(
                f"the processes are not making the same fit: process(es) {differ} sent "
                f"{_short(got[differ[0]].get('exchange'))} where this process ({self.rank}) sent {_short(what)}; "
                "every process must call the same fit with the same estimator")
        return [p["value"] for p in got]

    def allsum(self, m: Moments, what: str) -> Moments:
        """The sums of every process, added in process order (the same bits on every process)."""
        parts = [np.asarray(a, float) for a in m]
        blob = b"".join(a.tobytes() for a in parts)
        total = None
        for data in self.allgather(blob, what):
            flat = np.frombuffer(data, float)
            if flat.size != sum(a.size for a in parts):
                raise SpecificationError(f"the processes' sums have different shapes ({what}): the processes are "
                                         "not fitting the same stack")
            arrays, at = [], 0
            for a in parts:
                arrays.append(flat[at:at + a.size].reshape(a.shape))
                at += a.size
            total = arrays if total is None else [t + a for t, a in zip(total, arrays)]
        return Moments(*total)


def reporting(group: Group | None):
    """:meth:`Group.reporting` of ``group`` (nothing to report without one)."""
    return contextlib.nullcontext() if group is None else group.reporting()


class _Posted(Exception):
    """Marks an error another process posted (it is not posted again)."""


def placement(devices):
    """(mesh of this process's devices or None, :class:`Group` or None) for ``devices=`` of a fit.

    In a job of several processes (``jax.distributed``): ``"all"`` (or any mesh) fits every process's rows
    together; ``"local"`` fits this process's rows alone; None is an error, since a process that forgot
    ``devices="all"`` would fit its own rows only (the error, as a bad ``devices=``, is posted for the others,
    who wait for this process in the same fit). In one process ``"local"`` is ``"all"``."""
    from .sources import device_mesh

    if devices == "local":
        return local_mesh(device_mesh("all")), None
    if not several():
        return (None if devices is None else device_mesh(devices)), None
    group = Group()
    with group.reporting():  # a mistake here reaches the processes waiting for this one in the same fit
        if devices is None:
            raise SpecificationError(
                f"this is process {group.rank} of {group.size} of a jax.distributed job, but the fit was given no "
                "devices=: give devices='all' to fit the rows of every process together (every process calls the "
                "same fit on its own rows), or devices='local' to fit this process's rows alone")
        return local_mesh(device_mesh(devices)), group


def local_mesh(mesh):
    """The devices of ``mesh`` that belong to this process (None: one device), when processes fit together."""
    from .sources import device_mesh

    mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return None if len(mine) <= 1 else device_mesh(mine)


def agree_call(group: Group, entry: str, options, weights, cluster) -> None:
    """The first exchange of every fit: the processes made the same call (entry point, every fit option, how
    weights and clusters are given), else every process stops naming what differs."""
    call = {"entry point": entry, "weights": _given(weights), "cluster": _given(cluster)}
    call.update({f"option {f.name}": _option(getattr(options, f.name)) for f in dataclasses.fields(options)})
    _same(group, call, ("its call", "made different calls"), SpecificationError,
          "every process must call the same fit (mestim.fit or fit_stream) with the same options, weights and "
          "clusters")


def _given(value) -> str:
    if value is None:
        return "not given"
    return f"column '{value}'" if isinstance(value, str) else "an array"


def _option(value):
    return value if value is None or isinstance(value, (str, int, float)) else getattr(
        value, "__qualname__", type(value).__qualname__)


def _same(group: Group, fields: dict, what: tuple[str, str], error, fix: str) -> None:
    """Every process's ``fields``, compared: an ``error`` naming each field that differs and the processes that
    differ from process 0. ``what``: (what is exchanged, what the processes did when they differ)."""
    everyone = group.allgather_json({"hash": _digest(fields), "fields": fields}, what[0])
    if all(p["hash"] == everyone[0]["hash"] for p in everyone):
        return
    lines = []
    for name, mine in everyone[0]["fields"].items():
        differ = [i for i, p in enumerate(everyone) if p["fields"].get(name) != mine]
        if differ:
            theirs = everyone[differ[0]]["fields"].get(name)
            lines.append(f"{name}: process(es) {differ} have {_short(theirs)}, process 0 has {_short(mine)}")
    raise error(f"the processes {what[1]} ({'; '.join(lines)}): {fix}")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def add_learnt(group: Group, sums: dict, unsure: set, asked: set):
    """A stream's learning pass over every process's rows (:func:`mestim.constants.learn`): each constant's sums
    added in process order, and the constants any process was unsure of or asked for."""
    everyone = group.allgather_json({"sums": {k: {n: v.tolist() for n, v in s.items()} for k, s in sums.items()},
                                     "unsure": sorted(unsure), "asked": sorted(asked)}, "its learnt constants")
    keys = set().union(*(p["sums"] for p in everyone))
    added = {k: {n: sum(np.asarray(p["sums"][k][n], float) for p in everyone if k in p["sums"])
                 for n in next(p["sums"][k] for p in everyone if k in p["sums"])} for k in keys}
    return (added, set().union(*(p["unsure"] for p in everyone)), set().union(*(p["asked"] for p in everyone)))


def agree_levels(group: Group, cols: dict) -> dict:
    """The union over processes of each low-cardinality column's values (None for a column with more than
    ``MAX_LEVELS`` values somewhere): categories and classes then code the same way on every process."""
    return union_levels(group.allgather_json(local_levels(cols), "the levels of its categorical columns"))


def local_levels(cols: dict, counts: bool = False) -> dict:
    """Each 1-D column's distinct values (None past ``MAX_LEVELS``); with ``counts``, ``{value: rows}``."""
    local = {}
    for name, values in cols.items():
        if values.ndim != 1:
            continue
        kept = values[~missing_values(values)]
        if kept.dtype.kind == "O":  # the values themselves (1 stays 1, not '1'): designs match categories to them
            import pandas as pd

            codes, uniq = pd.factorize(kept)
            n, uniq = np.bincount(codes, minlength=len(uniq)), [v.item() if hasattr(v, "item") else v for v in uniq]
            if not all(isinstance(v, (str, int, float, bool)) for v in uniq):
                continue  # values JSON cannot carry: no agreed levels for this column
        else:
            uniq, n = np.unique(kept, return_counts=True)
            uniq = [v.item() for v in uniq]
        local[name] = None if len(uniq) > MAX_LEVELS else (dict(zip(uniq, n.tolist())) if counts else uniq)
    return local


def union_levels(everyone: list[dict]) -> dict:
    """The union of every party's levels, per column that every party gave levels for (sorted, numbers first)."""
    out = {}
    for name in everyone[0]:
        sets = [p.get(name) for p in everyone]
        if all(s is not None for s in sets):
            out[name] = sorted(set().union(*map(set, sets)), key=lambda v: (isinstance(v, str), v))
    return out


def signature(problem) -> dict:
    """What every process must have prepared identically: the blocks, labels, columns ψ reads, clustering, and
    each block's traced computation (:func:`traced`)."""
    out = {"parameter labels": list(problem.labels),
           "columns ψ reads": {k: list(v.shape[1:]) for k, v in problem.used.items()},
           "clustering": problem.cluster is not None}
    for b in problem.spec.blocks:
        out[f"block '{b.name}'"] = {"parameters": b.dim, "equations": b.equations, "reads": list(b.reads),
                                    "mask": b.mask}
    out.update({f"ψ of block '{b.name}' (its traced computation)": traced(problem, b) for b in problem.spec.blocks})
    return out


def traced(problem, block) -> str:
    """A hash of ``block``'s ψ as JAX traces it on the problem's columns (its jaxpr, memory addresses removed, and
    the values of the arrays it closes over): equal for the same computation, whatever the function's name."""
    row = {k: jax.ShapeDtypeStruct(v.shape[1:], np.float64) for k, v in problem.used.items()}
    params = {b.name: jax.ShapeDtypeStruct((b.dim,), np.float64) for b in problem.spec.blocks}
    closed = jax.make_jaxpr(lambda p, r: block(p[block.name], r, {n: p[n] for n in block.reads}))(params, row)
    digest = hashlib.sha256(re.sub(r" at 0x[0-9a-f]+", "", str(closed.jaxpr)).encode())
    for const in closed.consts:
        digest.update(np.asarray(const).tobytes())
    return digest.hexdigest()


def agree(group: Group, problem):
    """Check that every process prepared the same stack (:func:`signature`); return process 0's starting values
    and the global row count and weight total."""
    _same(group, signature(problem), ("what it prepared", "prepared different stacks"), DataError,
          "every process must fit the same estimator (the same ψ, not only the same names) on rows with the same "
          "columns and categories (give each process rows of every category, or code categories as indicator "
          "columns)")
    everyone = group.allgather_json({"init": problem.init.tolist(), "n_rows": problem.n_rows,
                                     "sum_w": float(problem.w.sum())}, "its starting values and row count")
    return (np.asarray(everyone[0]["init"], float), sum(p["n_rows"] for p in everyone),
            float(sum(p["sum_w"] for p in everyone)))


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) < 200 else text[:200] + "…"


class Distributed:
    """A row source over every process: the local source's sums added across processes on every pass. The global
    row count and weight total are given (in-memory rows) or learnt on the first pass (streams)."""

    def __init__(self, local, group: Group, n_rows: int | None = None, sum_w: float | None = None):
        self.local, self.group, self.kernel = local, group, local.kernel
        self.n_rows, self.sum_w, self.passes = n_rows, sum_w, 0

    def sums(self, theta, plan) -> Moments:
        local = self.local.sums(theta, plan)
        total = self.group.allsum(local, f"its sums of pass {self.passes + 1}")
        self.passes += 1
        if self.n_rows is None:
            self.n_rows = sum(self.group.allgather_json(self.local.n_rows, "its row count"))
            self.sum_w = float(total.sum_w)
        elif not np.isclose(float(total.sum_w), self.sum_w, rtol=1e-12, atol=0):
            raise DataError(f"pass {self.passes} summed a total weight of {float(total.sum_w):.17g} over all processes, "
                            f"not the {self.sum_w:.17g} they agreed on: a process's rows changed during the fit")
        return total

    def row_values(self, theta) -> np.ndarray:
        return self.local.row_values(theta)

    def nonfinite_rows(self, theta):
        return self.local.nonfinite_rows(theta)

    def release(self) -> None:
        self.local.release()
