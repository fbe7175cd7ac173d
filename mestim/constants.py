"""Constants a block's prepare learns from the data, learnt once from all rows.

A prepare may need numbers computed from its rows that are not parameters: the mean and standard deviation of a
formula's ``center(x)`` or ``scale(x)``, the recurrence constants of ``poly(x, k)``, the row count in a robust
regression's κ. ``fit`` prepares every row at once, but a stream batch or one process's rows are only part of the
rows, and constants learnt from a part give another estimator (a different centring, a different κ) with no sign
of it. So a prepare writes each constant from **sums over rows**, ``total(cols, key, local sums) -> sums over all
rows``, which add across parts:

- in memory (:data:`ALL_ROWS`) the rows are all rows: the local sums are returned;
- across processes (:class:`AcrossProcesses`) every process's sums are exchanged and added in process order (the
  processes prepare the same blocks, so they ask for the same keys in the same order);
- in a stream (:class:`Summed`, :func:`learn`) a learning pass before the fit prepares every batch and adds each
  key's sums; every batch of the fit is then prepared with the totals. A constant computed from others (a scale
  from the agreed mean) names them (``after=``) and needs them first: its sums computed while one of them was not
  yet known are not kept, and learning passes repeat until every sum was computed from known constants (one
  pass per level of dependence).

A constant that is not a sum (a median or quantiles: a MAD, ``bs()`` knots, a bandwidth) cannot be learnt in
parts: :func:`require_all_rows` refuses it in those modes, when the first rows are prepared (before any pass),
naming the term and the fix (give the constant explicitly).
"""

from __future__ import annotations

import numpy as np

from .errors import DataError, SpecificationError

MAX_LEVELS = 16  # learning passes at most (constants computed from constants …: poly(x, 15))


class Constants:
    """All rows at once (``fit`` in one process): a constant's sums are the rows' own."""

    partial = False  # do the rows a prepare sees hold only part of the data?
    where = "in memory"

    def total(self, key: str, local: dict, after: tuple = ()) -> dict:
        return local


ALL_ROWS = Constants()


def total(cols, key: str, *, after: tuple = (), **local) -> dict:
    """The sums over all rows of a fit (``{name: array}``) from this table's ``local`` sums, for constant ``key``
    (unique to the block and term); ``after``: the keys (or key prefixes) of the constants these sums were
    computed from."""
    sums = {k: np.asarray(v, float) for k, v in local.items()}
    return getattr(cols, "constants", ALL_ROWS).total(key, sums, tuple(after))


def partial(cols) -> str | None:
    """Where ``cols`` are part of the rows of a fit ("across processes", "in a streamed fit"); None: all rows."""
    constants = getattr(cols, "constants", ALL_ROWS)
    return constants.where if constants.partial else None


def require_all_rows(cols, what: str, fix: str) -> None:
    """Refuse a constant that is not a sum over rows where the prepare sees part of the rows."""
    constants = getattr(cols, "constants", ALL_ROWS)
    if constants.partial:
        raise SpecificationError(f"{what} is learnt from the data and is not a sum over rows, so {constants.where} "
                                 f"it would be learnt from part of the rows only: {fix}")


class AcrossProcesses(Constants):
    """Every process's sums, exchanged and added in process order (the same bits on every process)."""

    partial = True
    where = "across processes"

    def __init__(self, group):
        self.group = group

    def total(self, key, local, after=()):
        parts = self.group.allgather_json({k: v.tolist() for k, v in local.items()}, f"the sums of the constant {key}")
        return {k: sum(np.asarray(p[k], float) for p in parts) for k in local}


class Summed(Constants):
    """Constants from totals learnt before the fit (a stream, Dask partitions). While learning
    (``learning=True``), each piece's sums are recorded and a key not yet known is answered with the piece's own
    sums; a sum computed from such a provisional answer (``after``) is *unsure* and not kept."""

    partial = True
    where = "in a streamed fit"

    def __init__(self, totals=None, learning: bool = False):
        self.totals, self.learning = dict(totals or {}), learning
        self.sums, self.unsure, self.asked = {}, set(), set()
        self._provisional, self._in_piece = set(), set()

    def piece(self) -> Summed:
        """Start the next piece (a batch, a partition): a constant it computes depends on its own answers only."""
        self._provisional, self._in_piece = set(), set()
        return self

    def total(self, key, local, after=()):
        self.asked.add(key)
        if self.learning:
            if key in self._in_piece:  # the same constant asked again in this piece (a formula built twice)
                self.sums[key][-1] = local
            else:
                self.sums.setdefault(key, []).append(local)
                self._in_piece.add(key)
            if any(k.startswith(after) for k in self._provisional):
                self.unsure.add(key)
            if key not in self.totals:
                self._provisional.add(key)
                return local
        if key not in self.totals:
            raise DataError(f"a batch needs the constant {key}, which the learning pass before the fit did not see: "
                            "every batch must prepare the same blocks")
        return self.totals[key]

    def merge(self, other: Summed) -> None:
        """Add a piece learnt elsewhere (a Dask partition), after the pieces already here."""
        for key, parts in other.sums.items():
            self.sums.setdefault(key, []).extend(parts)
        self.unsure |= other.unsure
        self.asked |= other.asked

    def added(self) -> dict:
        """Each key's sums added over the pieces, in piece order."""
        return {k: {name: sum(p[name] for p in parts) for name in parts[0]} for k, parts in self.sums.items()}


def learn(run_pass, combine=None) -> Summed:
    """The constants of a stream: ``run_pass(constants)`` prepares every piece of the rows once with
    ``constants`` (calling ``constants.piece()`` before each); passes repeat until every key's sums were
    computed from known constants. ``combine(sums, unsure, asked)`` adds other processes' (identity: one process).
    No pass is run when the first piece asks for no constant (the caller checks)."""
    totals = {}
    for _ in range(MAX_LEVELS):
        recorder = Summed(totals, learning=True)
        run_pass(recorder)
        sums, unsure, asked = recorder.added(), recorder.unsure, recorder.asked
        if combine is not None:
            sums, unsure, asked = combine(sums, unsure, asked)
        totals.update({k: v for k, v in sums.items() if k not in unsure and k not in totals})
        if asked <= set(totals):
            return Summed(totals)
    raise SpecificationError(f"the constants {sorted(asked - set(totals))} depend on each other more than "
                             f"{MAX_LEVELS} levels deep: give them explicitly")
