"""Fits across processes: every process holds its own rows, and each pass's sums are added across processes.

The contract: every process calls ``jax.distributed.initialize(...)``, then ``mestim.fit(estimator, its_rows,
devices="all")`` (or :func:`mestim.scale.fit_stream` on its own files), and every process returns the Result of
one fit on all rows. How:

- **Agreement before any pass.** Each process prepares its own rows, then the processes exchange a signature of
  what they prepared (blocks, parameter labels, the columns ψ reads and their shapes) and stop with an error
  naming the processes that differ; the levels of categorical columns are agreed from every process's values
  before the blocks prepare (:func:`agree_levels`), and the starting values are process 0's (a registered
  block's start is computed from its own rows), so every process walks the same Newton path.
- **Each pass** sums the process's rows on its own devices with the stack's compiled program; the host sums
  (K, K×P and K×K numbers) go through the distributed runtime's key-value store and are added in process order,
  so every process holds the same totals, bit for bit. Row counts and weight totals are global and checked on
  every pass.
- **A lost process** ends the fit with a :class:`~mestim.errors.MestimError` once ``$MESTIM_PROCESS_TIMEOUT``
  seconds (default 300) pass without its sums; the process then exits after JAX's own heartbeat timeout
  (``jax.distributed.initialize(heartbeat_timeout_seconds=...)``, 100 s by default).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time

import jax
import numpy as np

from .data import missing_values
from .errors import DataError, MestimError, SpecificationError
from .sums import Moments

TIMEOUT_ENV = "MESTIM_PROCESS_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
MAX_LEVELS = 256  # columns with at most this many distinct values per process have their levels agreed
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
                out.append(data if rank == self.rank else self.client.blocking_key_value_get_bytes(f"{key}/{rank}",
                                                                                                      left))
            except Exception as e:  # DEADLINE_EXCEEDED, or the coordination service itself is gone
                raise MestimError(
                    f"process {rank} of {self.size} did not send {what} within {self.timeout:g} s (this is process "
                    f"{self.rank}): a process was lost or stopped; the fit cannot go on ({type(e).__name__}). "
                    f"Set ${TIMEOUT_ENV} to wait longer for slow processes") from None
        while len(self._mine) > 2:
            self.client.key_value_delete(self._mine.pop(0))
        return out

    def barrier(self, what: str) -> None:
        """Wait (bounded) until every process gets here: no process leaves a fit while others still read its sums
        (process 0 serves the key-value store)."""
        key = f"{self.prefix}/{self._step}"
        self._step += 1
        try:
            self.client.wait_at_barrier(key, int(self.timeout * 1000))
        except Exception as e:
            raise MestimError(f"not every process reached {what} within {self.timeout:g} s (this is process "
                              f"{self.rank}): a process was lost or stopped ({type(e).__name__})") from None

    def allgather_json(self, obj, what: str) -> list:
        return [json.loads(b) for b in self.allgather(json.dumps(obj, sort_keys=True).encode(), what)]

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
    """What every process must have prepared identically."""
    blocks = [[b.name, b.dim, b.equations, list(b.reads), b.mask, _psi_name(b.psi)] for b in problem.spec.blocks]
    columns = {k: list(v.shape[1:]) for k, v in problem.used.items()}
    return {"blocks": blocks, "labels": list(problem.labels), "columns": columns, "clustered": problem.cluster is not None}


def _psi_name(psi) -> str:
    return repr(psi) if hasattr(psi, "__dataclass_fields__") else getattr(psi, "__qualname__", type(psi).__name__)


def agree(group: Group, problem):
    """Check that every process prepared the same stack; return process 0's starting values and the global row
    count and weight total."""
    mine = signature(problem)
    everyone = group.allgather_json(
        {"signature": hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest(), "detail": mine,
         "init": problem.init.tolist(), "n_rows": problem.n_rows, "sum_w": float(problem.w.sum())},
        "what it prepared")
    differ = [i for i, p in enumerate(everyone) if p["signature"] != everyone[0]["signature"]]
    if differ:
        first = everyone[differ[0]]["detail"]
        what = next(k for k in ("labels", "columns", "blocks", "clustered") if first[k] != everyone[0]["detail"][k])
        name = {"labels": "parameter labels", "columns": "columns ψ reads", "blocks": "blocks",
                "clustered": "clustering"}[what]
        raise DataError(
            f"the processes prepared different stacks: process(es) {differ} differ from process 0 in their {name} "
            f"({_short(first[what])} against {_short(everyone[0]['detail'][what])}); every process must fit the "
            "same estimator on rows with the same columns and categories (give each process rows of every "
            "category, or code categories as indicator columns)")
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
