"""Federated fits: every site keeps its rows; the coordinator solves the stack from the sites' sums.

M-estimation decomposes exactly over disjoint sets of rows: a Newton step needs only each site's Σ w ψ (K numbers)
and Σ w ∂ψ/∂θ (K × P), the sandwich only each site's meat Σ a ψψᵀ (K × K), or, where the sites are the clusters,
each site's total U_s = Σ w ψ at θ̂ (meat Σ_s U_s U_sᵀ). So a site is a row source (:mod:`mestim.sources`) that
lives in another organisation: the coordinator's :class:`Sites` source sends (θ, plan) to every site, each site sums
its own rows with the stack's compiled program, and the coordinator adds the replies in site order. The one solve
loop (:func:`mestim.driver.solve_stack`) and :func:`mestim.estimate.assemble` do the rest, so a federated fit
returns the same :class:`~mestim.Result` as the pooled in-memory fit (to rounding; tested to 1e-10 in θ and 1e-8
in the standard errors).

**The protocol** (messages are a small JSON header and named float64 arrays; :mod:`mestim.federated.flower`
carries them in Flower RecordDicts, :func:`simulate` in one process):

1. ``levels``: the request names the estimator (below); each site gives the values of the low-cardinality
   columns it allows (as the estimator derives them, where it does), but only for columns where every value rests
   on at least ``min_rows`` rows (no small count is revealed, not even as a value's existence); the
   coordinator takes their union, and every site codes its categories with it (as :mod:`mestim.processes` does).
2. ``prepare``: every request names the estimator (name, version and identity: its blocks, what they read and their
   ψ); a site runs only an estimator it allowed (:class:`Estimator`), on the columns it allowed, and refuses a
   request whose identity differs from its own copy, naming what differs. It prepares its rows as ``fit`` does and
   returns its stack's signature (:func:`mestim.processes.signature`), its row count and weight total, and starting
   values of the blocks it has rows for. The coordinator checks that every site prepared the same stack. Constants
   the blocks learn from the rows (``center(x)``, ``poly``, a robust κ) are learnt as a stream learns them: each
   site's reply carries its sums of those the request's totals lack, the coordinator adds them and asks again with
   the totals (one more round per level of dependence; none when no block learns one).
3. ``sums`` (one per pass): θ and the plan in; Σψ, ΣJ, the meat and Σw out, tagged with the pass number.

A :class:`Counts` (a table of counts, DataSHIELD's ``ds.table``: what a meta-analysis of 2×2 tables needs) is one
request instead, ``counts`` (:func:`tabulate`): per group of rows (each combination of the values of its ``by``
columns, e.g. study and arm) the rows, Σw and Σw·y of its 0/1 ``events`` columns; a site refuses it when a group
rests on fewer than ``min_rows`` rows, naming the group.

**Disclosure controls** (DataSHIELD's are the anchor): no per-row value leaves a site (no influence functions,
residuals or fitted values: ``Result.influence()`` is unavailable); a site refuses to prepare when an aggregate
would rest on fewer than ``min_rows`` rows (default 10): the site's rows, every block's mask, and each value of
every 0/1 column ψ reads (arms, trials, category indicators, a block's rows; a 0/1 outcome) has zero or at
least ``min_rows`` ones (and zeros, for a column of the site's table); every released aggregate is logged at the
site (what, to whom, when, rows behind it: :class:`AuditLog`).

**Deployment**: each site runs its own process over its table and configuration (:func:`serve`, ``python -m
mestim.federated site.toml``) next to a Flower SuperNode whose ClientApp relays the messages; the coordinator
runs the ServerApp (:mod:`mestim.federated.flower`) through a SuperLink. :func:`simulate` runs the same sites and
messages in one process.

**Faults**: a site that does not answer within ``timeout`` seconds (:data:`DEFAULT_TIMEOUT`), refuses, or fails
ends the fit with a :class:`FederatedError` naming the site and the pass; a reply for another pass is refused
(nothing mixes passes); a site re-reads its table on every pass and refuses the pass when it differs from the table
it prepared (its row count, or the sum of any column, the weights included: as streams check their batches).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import io
import json
import textwrap
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .. import processes
from ..blocks import Block, BlockSpec, StackSpec
from ..constants import Constants, Summed, learn
from ..driver import solve_stack
from ..errors import DataError, MestimError, SpecificationError
from ..estimate import assemble, kernel_for
from ..options import FitOptions
from ..problem import MASK_PREFIX, Problem, as_blocks, prepare
from ..scale import changed
from ..sources import InMemory
from ..sums import Moments, plan

__all__ = ["fit", "simulate", "tabulate", "Site", "Estimator", "Counts", "AuditLog", "FederatedError", "Loopback",
           "DEFAULT_MIN_ROWS",
           "DEFAULT_TIMEOUT"]

DEFAULT_MIN_ROWS = 10  # DataSHIELD's default minimum count behind a released aggregate
DEFAULT_TIMEOUT = 120.0  # seconds the coordinator waits for every site's reply to one request
PROTOCOL = 1  # the message format; a site refuses another


class FederatedError(MestimError):
    """A federated fit that cannot go on: a site refused, failed, was too slow, or answered out of turn."""


# ---------------------------------------------------------------------------------------------- messages
def encode(header: dict, arrays: Mapping[str, np.ndarray]) -> bytes:
    """One message as bytes: a JSON header, then the arrays as an uncompressed ``.npz`` (no pickles)."""
    head = json.dumps(header, sort_keys=True).encode()
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, float) for k, v in arrays.items()})
    return len(head).to_bytes(8, "little") + head + buf.getvalue()


def decode(blob: bytes) -> tuple[dict, dict]:
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    with np.load(io.BytesIO(blob[8 + size:]), allow_pickle=False) as z:
        return header, {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------------------- estimators
@dataclasses.dataclass(frozen=True)
class Estimator:
    """An estimator a site may agree to run: a name and version, and the blocks (or one ψ with ``init``).

    A registered estimator's blocks come from code the site installed (the library's ``estimators/``); a user ψ
    travels as its source text (``source``), which a site runs only when it allowed that source's SHA-256
    (:attr:`digest`) after reviewing it. ``derive(columns) -> columns``: the columns the blocks read, computed
    from the site's own table row by row (installed code too, e.g. the transport stack's derived columns).

    Example (a named, versioned mean that both sites allow: the mean of their 30 rows)::

        >>> import numpy as np, mestim
        >>> from mestim import federated
        >>> model = federated.Estimator("mean", "1", [mestim.Block("m", lambda t, row: row["y"] - t, init=[0.0])])
        >>> federated.simulate(model, {"a": {"y": np.arange(10.0)}, "b": {"y": np.arange(10.0, 30.0)}}).theta
        array([14.5])
    """

    name: str
    version: str
    estimator: object
    init: object = None
    names: object = None
    source: str | None = None
    derive: Callable[[dict], dict] | None = None

    @classmethod
    def user_psi(cls, psi: Callable, init, names=None, name: str | None = None, version: str = "1") -> "Estimator":
        """A user ψ given by its function: its source is what travels and what a site allows."""
        source = textwrap.dedent(inspect.getsource(psi))
        return cls(name or psi.__name__, version, psi, init, names, source)

    @classmethod
    def from_source(cls, source: str, function: str, init, names=None, version: str = "1") -> "Estimator":
        """A user ψ from reviewed source text defining ``function(theta, row)`` (``jnp`` and ``np`` in scope)."""
        import jax.numpy as jnp

        scope = {"jnp": jnp, "np": np}
        exec(compile(source, f"<reviewed source of {function}>", "exec"), scope)  # noqa: S102 (allowed by digest)
        if not callable(scope.get(function)):
            raise SpecificationError(f"the reviewed source defines no function '{function}'")
        return cls(function, version, scope[function], init, names, source)

    @property
    def digest(self) -> str | None:
        return None if self.source is None else hashlib.sha256(self.source.encode()).hexdigest()

    def blocks(self) -> list[Block]:
        return as_blocks(self.estimator, self.init, self.names)

    def identity(self) -> dict:
        """What a site compares with its own copy: name, version, and per block its name, the blocks it reads,
        its mask and its ψ (a registered ψ by its class and parameters, a user ψ by its source's digest)."""
        blocks = [[b.name, list(b.reads), b.mask if isinstance(b.mask, str) else None,
                   self.digest or (_named(b.psi) if b.psi is not None else None)] for b in self.blocks()]
        derive = None if self.derive is None else _named(self.derive)
        return {"name": self.name, "version": self.version, "blocks": blocks, "derive": derive}

    def request(self) -> dict:
        """The estimator as a request carries it (a user ψ with its source, init and names)."""
        out = {"identity": self.identity()}
        if self.source is not None:
            out.update(source=self.source, function=self.estimator.__name__,
                       init=np.asarray(self.init, float).tolist(),
                       names=None if self.names is None else list(self.names))
        return out


def _named(function) -> str:
    """A registered function by its class and parameters (a dataclass), else by its qualified name."""
    return repr(function) if hasattr(function, "__dataclass_fields__") else getattr(
        function, "__qualname__", type(function).__name__)


@dataclasses.dataclass(frozen=True)
class Counts:
    """A table of counts a site may agree to release (DataSHIELD's ``ds.table``), named and versioned like an
    :class:`Estimator`: per group of rows, each combination of the values of the ``by`` columns (e.g. study and
    arm), its rows, Σw (``weights``: a column of the site's table, else 1 per row) and Σw·y for each 0/1 column y
    of ``events``. A group is released only if it rests on at least ``min_rows`` rows; its events are an aggregate
    of those rows, released whatever their number (zero included). :func:`tabulate` asks the sites for it."""

    name: str
    version: str
    by: tuple
    events: tuple
    weights: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "by", tuple(self.by))
        object.__setattr__(self, "events", tuple(self.events))
        named = [*self.by, *self.events] + ([self.weights] if self.weights else [])
        clash = sorted({c for c in named if named.count(c) > 1} | (set(named) & set(COUNT_FIELDS)))
        if not self.by or not self.events or clash:
            raise SpecificationError(f"Counts '{self.name}': give by= and events= columns, each named once and none "
                                     f"named {list(COUNT_FIELDS)}" + (f" (named twice or reserved: {clash})"
                                                                      if clash else ""))

    @property
    def columns(self) -> list[str]:
        return [*self.by, *self.events] + ([self.weights] if self.weights else [])

    def identity(self) -> dict:
        return {"name": self.name, "version": self.version,
                "counts": {"by": list(self.by), "events": list(self.events), "weights": self.weights}}

    def request(self) -> dict:
        return {"identity": self.identity()}


COUNT_FIELDS = ("site", "rows", "sum_w")  # the columns of tabulate()'s table besides a Counts' own


def _differs(mine: dict, theirs: dict) -> str:
    """What differs between two identities, in words."""
    if mine["name"] != theirs["name"]:
        return f"the estimator is '{theirs['name']}', this site runs '{mine['name']}'"
    if mine["version"] != theirs["version"]:
        return f"'{mine['name']}' version {theirs['version']} was asked for; this site allows version {mine['version']}"
    if "counts" in mine or "counts" in theirs:
        return (f"'{mine['name']}' counts {_short(theirs.get('counts', 'an estimator fit'))} in the request, "
                f"{_short(mine.get('counts', 'an estimator fit'))} here")
    a, b = {x[0]: x for x in mine["blocks"]}, {x[0]: x for x in theirs["blocks"]}
    if list(a) != list(b):
        return f"the blocks {list(b)} were asked for; this site's '{mine['name']}' has {list(a)}"
    if mine.get("derive") != theirs.get("derive"):
        return f"its columns are derived by {theirs.get('derive')} in the request, by {mine.get('derive')} here"
    for name in a:
        for i, what in ((1, "blocks read"), (2, "mask"), (3, "estimating function")):
            if a[name][i] != b[name][i]:
                return f"block '{name}': its {what} is {_short(b[name][i])} in the request, {_short(a[name][i])} here"
    return "nothing"


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) < 160 else text[:160] + "…"


# ---------------------------------------------------------------------------------------------- the site
class AuditLog:
    """Every aggregate a site released: one JSON line each (``when``, ``to``, ``request``, ``what``, ``rows``), in a
    file when ``path`` is given; :attr:`entries` holds them in memory too."""

    def __init__(self, path=None):
        self.path, self.entries = path, []

    def record(self, to: str, request: str, what: str, rows: int) -> None:
        entry = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                 "to": to, "request": request, "what": what, "rows": int(rows)}
        self.entries.append(entry)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")


class Site:
    """One data owner: its table, what it allows, and the requests it answers (:meth:`handle`).

    Args:
        name: the site's name (as the coordinator names it).
        table: a CSV or Parquet path (read anew for every request, through the readers and checks of
            :func:`mestim.scale.fit_stream`), or a table in memory (DataFrame, dict of arrays, Arrow table).
        estimators: the :class:`Estimator` objects this site runs (registered blocks, named and versioned).
        sources: SHA-256 digests of user ψ sources this site reviewed and allows (default none).
        columns: the columns an estimator may read (default every column of the table).
        min_rows: the fewest rows an aggregate may rest on (:data:`DEFAULT_MIN_ROWS`).
        log: a path for the audit log (JSON lines), or an :class:`AuditLog`.
    """

    def __init__(self, name: str, table, *, estimators: Sequence[Estimator] = (), sources: Sequence[str] = (),
                 columns: Sequence[str] | None = None, min_rows: int = DEFAULT_MIN_ROWS, log=None):
        if not isinstance(min_rows, int) or min_rows < 1:
            raise SpecificationError(f"min_rows={min_rows!r}: give a whole number of rows, at least 1")
        self.name, self.table, self.min_rows = name, table, min_rows
        self.estimators = {e.name: e for e in estimators}
        self.sources, self.columns = set(sources), None if columns is None else list(columns)
        self.log = log if isinstance(log, AuditLog) else AuditLog(log)
        self.state = {}  # the fit being served and its rows' fingerprint (JSON: a Flower ClientApp keeps it in its
        # Context between messages, each answered by a fresh process)
        self._serving = None  # (fit, the InMemory source of its prepared rows)

    # ------------------------------------------------------------------------------------------ requests
    def handle(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        """The reply to one request; a refusal is a reply ``{"refused": why}`` (nothing is released). A check of the
        site's data that fails (a :class:`~mestim.errors.DataError`, whose message may quote rows, values or small
        counts) or an unexpected error is refused without its message, which goes to the site's audit log."""
        kind = header.get("kind")
        try:
            if header.get("protocol") != PROTOCOL:
                raise FederatedError(f"protocol {header.get('protocol')} asked for; this site speaks {PROTOCOL}")
            handler = {"levels": self._levels, "prepare": self._prepare, "sums": self._sums,
                       "counts": self._counts}.get(kind)
            if handler is None:
                raise FederatedError(f"unknown request {kind!r}")
            return handler(header, arrays)
        except (FederatedError, SpecificationError) as e:  # about the request: nothing of the rows in the message
            why = str(e)
        except Exception as e:  # noqa: BLE001 (a site answers every request, whatever fails)
            self.log.record(str(header.get("coordinator")), f"{kind} (refused)", f"{type(e).__name__}: {e}", 0)
            why = (f"its data failed a check ({type(e).__name__}); the message, which may quote its rows, is in the "
                   "site's audit log" if isinstance(e, DataError) else
                   f"an error at the site ({type(e).__name__}); the message is in the site's audit log")
        return {"refused": why, "pass": header.get("pass")}, {}

    def read(self) -> dict:
        """The site's allowed columns, read and checked as a streamed fit reads a source (one batch)."""
        from ..readers import Layout, chunk_reader, read_batches

        table = self.table
        if isinstance(table, str) and table.lower().endswith((".csv", ".csv.gz")):
            import pandas as pd

            table = pd.read_csv(table)
        open_pass = chunk_reader(table, 1 << 62, self.columns)
        batches = list(read_batches(open_pass, 1 << 62, Layout(self.columns), f"site '{self.name}'"))
        if not batches:
            raise DataError(f"site '{self.name}': the table has no rows")
        return batches[0].columns

    def _levels(self, header, arrays):
        """Values of the low-cardinality columns, for columns where every value has at least min_rows rows."""
        estimator = self._estimator(header["estimator"])
        cols = self.read()
        counts = processes.local_levels(cols if estimator.derive is None else estimator.derive(cols), counts=True)
        out = {k: (None if v is None or min(v.values(), default=0) < self.min_rows else list(v)) for k, v in
               counts.items()}
        shown = [k for k, v in out.items() if v is not None]
        self.log.record(header["coordinator"], "levels", f"the values of columns {shown}",
                        min((min(counts[k].values()) for k in shown), default=0))
        return {"levels": out}, {}

    def _estimator(self, request: dict, kind: type = Estimator) -> Estimator | Counts:
        """This site's copy of the estimator (or :class:`Counts`) a request names, or a refusal naming what
        differs."""
        identity = request["identity"]
        if "source" in request:
            digest = hashlib.sha256(request["source"].encode()).hexdigest()
            if digest not in self.sources:
                raise FederatedError(f"user ψ '{identity['name']}' (source SHA-256 {digest[:16]}…) is not allowed "
                                     "at this site: a site runs a user ψ only after reviewing its source and adding "
                                     "its digest to the allowed sources")
            mine = Estimator.from_source(request["source"], request["function"], request["init"], request["names"],
                                         identity["version"])
        elif identity["name"] in self.estimators:
            mine = self.estimators[identity["name"]]
        else:
            raise FederatedError(f"estimator '{identity['name']}' is not allowed at this site (it allows "
                                 f"{sorted(self.estimators)})")
        if mine.identity() != identity:
            raise FederatedError("the request's estimator differs from this site's: "
                                 f"{_differs(mine.identity(), identity)}")
        if not isinstance(mine, kind):
            what = {Counts: "a table of counts", Estimator: "a fit"}
            raise FederatedError(f"'{identity['name']}' is {what[type(mine)]} at this site, not {what[kind]}")
        return mine

    def _counts(self, header, arrays):
        """A :class:`Counts`: per group of rows (the values of its ``by`` columns), the rows, Σw and Σw·y of each
        0/1 ``events`` column y; refused when a group rests on 1 to min_rows − 1 rows (naming the group)."""
        import pandas as pd

        counts = self._estimator(header["estimator"], Counts)
        cols = self.read()
        missing = [c for c in counts.columns if c not in cols]
        if missing:
            raise FederatedError(f"the column(s) {missing} of '{counts.name}' are not in this site's table or not "
                                 f"among the columns it allows ({sorted(cols)}): name the site's columns in the "
                                 "request, or the site adds them")
        frame = pd.DataFrame({c: cols[c] for c in counts.columns})
        blank = [c for c in counts.columns if (frame[c].isna() | frame[c].astype(str).str.strip().eq("")).any()]
        if blank:
            raise FederatedError(f"the column(s) {blank} have missing values at this site: the site fills them or "
                                 "leaves those rows out of its table")
        not01 = [c for c in counts.events if not frame[c].isin([0, 1]).all()]
        if not01:
            raise FederatedError(f"the column(s) {not01} of '{counts.name}' must be 0/1 (an event or not) at every row")
        w = np.ones(len(frame)) if counts.weights is None else frame[counts.weights].to_numpy(float)
        if not np.all(np.isfinite(w) & (w >= 0)):
            raise FederatedError(f"the weights column '{counts.weights}' must be finite and ≥ 0 at every row")
        grouped = frame.groupby(list(counts.by), sort=True)
        code, sizes = grouped.ngroup().to_numpy(), grouped.size()  # sizes: in the groups' order, as their codes
        rows = sizes.to_numpy()
        groups = [[v.item() if isinstance(v, np.generic) else v for v in key]
                  for key in sizes.index.to_frame(index=False).itertuples(index=False)]
        where = [", ".join(f"{c} = {v!r}" for c, v in zip(counts.by, key)) for key in groups]
        small = [g for g, k in zip(where, rows) if k < self.min_rows]
        if small:
            raise FederatedError(
                f"disclosure control: {len(small)} group(s) of '{counts.name}' rest on fewer than min_rows = "
                f"{self.min_rows} rows (the rows where {'; where '.join(small[:6])}{'…' if len(small) > 6 else ''}); "
                "this site releases no count of so few rows: leave those groups out of the analysis (or the site "
                "leaves their rows out of its table, or lowers its min-rows if its governance allows)")
        events = np.stack([np.bincount(code, w * frame[c].to_numpy(float), rows.size) for c in counts.events], 1)
        for g, k in zip(where, rows):
            self.log.record(header["coordinator"], "counts",
                            f"'{counts.name}': rows, Σw and Σw·{', Σw·'.join(counts.events)} where {g}", k)
        return {"groups": groups}, {"rows": rows, "sum_w": np.bincount(code, w, rows.size), "events": events}

    def _problem(self, estimator: Estimator, header: dict, cols: dict, constants: Constants) -> Problem:
        levels = dict(header["levels"])
        cols = cols if estimator.derive is None else estimator.derive(cols)
        weights = header.get("weights")
        if weights is not None and weights not in cols:
            raise FederatedError(f"the weights column '{weights}' is not among the columns this site allows")
        return prepare(estimator.blocks(), cols, weights=weights, levels=lambda _: levels, constants=constants,
                       empty_masks=True)

    def _source(self, problem: Problem, header: dict) -> InMemory:
        return InMemory(kernel_for(problem, FitOptions(chunk_size=header.get("chunk_size"))), problem.used, problem.w)

    def _prepare(self, header, arrays):
        """The prepared stack's description; with the sums of the constants its blocks learn from the rows that
        the request's totals do not hold yet (its prepare then used its own rows' sums: the coordinator asks
        again with the totals, :func:`_learn`)."""
        cols = self.read()
        recorder = AcrossSites(_arrays(header.get("constants")), learning=True)
        problem = self._problem(self._estimator(header["estimator"]), header, cols, recorder.piece())
        rows = self._check_disclosure(problem, set(cols))
        offsets = problem.spec.offsets()
        starts = {b.name: problem.init[offsets[b.name]].tolist() for b in problem.spec.blocks if rows[b.name]}
        self.state = {"fit": header["fit"], "print": {k: v.tolist() for k, v in _fingerprint(cols).items()}}
        self._serving = (header["fit"], self._source(problem, header))
        learnt = {k: v for k, v in recorder.added().items() if k not in recorder.totals}
        self.log.record(header["coordinator"], "prepare", f"signature, row count, weight total, starting values of "
                        f"blocks {sorted(starts)}" + (f", sums of the constants {sorted(learnt)}" if learnt else ""),
                        problem.n_rows)
        blocks = [[b.name, b.dim, b.equations, list(b.reads), b.mask] for b in problem.spec.blocks]
        return {"signature": processes.signature(problem), "blocks": blocks, "labels": list(problem.labels),
                "n_rows": problem.n_rows, "sum_w": float(problem.w.sum()), "starts": starts,
                "constants": {"sums": _listed(learnt), "unsure": sorted(recorder.unsure),
                              "asked": sorted(recorder.asked)}}, {}

    def _check_disclosure(self, problem: Problem, raw) -> dict:
        """Rows behind each block; refuse when an aggregate would rest on 1 to min_rows − 1 rows."""
        small = []
        if problem.n_rows < self.min_rows:
            small.append(f"the site's {problem.n_rows} rows")
        rows = {}
        for b in problem.spec.blocks:
            rows[b.name] = problem.n_rows if b.mask is None else int(np.count_nonzero(problem.used[b.mask]))
            if 0 < rows[b.name] < self.min_rows:
                small.append(f"the rows of block '{b.name}'")
        for name, values in problem.used.items():
            if name.startswith(MASK_PREFIX):
                continue  # a block's mask: its rows were counted above
            flat = values.reshape(values.shape[0], -1)
            for j in range(flat.shape[1]):
                column = flat[:, j]
                if np.all((column == 0) | (column == 1)):  # an indicator: arms, trials, category levels, 0/1 outcome
                    ones = int(column.sum())
                    # a column the blocks derived is 0 outside their rows: only its 1s are rows of a category
                    zeros = column.size - ones if name in raw else 0
                    label = f"'{name}'" + (f"[{j}]" if flat.shape[1] > 1 else "")
                    small += [f"the rows where {label} is {v}" for v, k in ((1, ones), (0, zeros))
                              if 0 < k < self.min_rows]
        if small:
            raise FederatedError(f"disclosure control: an aggregate would rest on fewer than min_rows = "
                                 f"{self.min_rows} rows ({'; '.join(small[:6])}{'…' if len(small) > 6 else ''}); "
                                 "this site releases no aggregate of so few rows")
        return rows

    def _sums(self, header, arrays):
        if self.state.get("fit") != header["fit"]:
            raise FederatedError("a pass of a fit this site has not prepared (send 'prepare' first)")
        cols = self.read()  # the rows as they are now, against those prepared
        what = changed({k: np.asarray(v) for k, v in self.state["print"].items()}, _fingerprint(cols))
        if what is not None:
            raise FederatedError(f"pass {header['pass']}: the site's data changed since the fit was prepared (the "
                                 f"{what} differs); rows must stay the same for the whole fit")
        if self._serving is None or self._serving[0] != header["fit"]:  # a fresh process (a Flower ClientApp)
            problem = self._problem(self._estimator(header["estimator"]), header, cols,
                                    AcrossSites(_arrays(header.get("constants"))))
            self._serving = (header["fit"], self._source(problem, header))
        source = self._serving[1]
        m = source.sums(np.asarray(arrays["theta"], float), np.asarray(arrays["plan"], np.int32))
        self.log.record(header["coordinator"], f"sums of pass {header['pass']}",
                        f"Σψ ({m.psi.size}), ΣJ {m.jac.shape}, meat {m.meat.shape}, Σw", source.n_rows)
        return {"pass": header["pass"]}, {"psi": m.psi, "jac": m.jac, "meat": m.meat, "sum_w": np.asarray(m.sum_w)}


class AcrossSites(Summed):
    """A site's rows are part of the rows: a constant a block learns from the data (``center(x)``, ``poly``, a
    robust κ) is learnt from the sums over every site's rows, as a stream learns it from its batches
    (:class:`mestim.constants.Summed`, :func:`_learn`); one that is not a sum over rows (a median, ``bs()``
    knots) is refused, naming it."""

    where = "at a federated site"


def _listed(sums: Mapping) -> dict:
    """Constants' sums {key: {name: array}} as JSON (Python's float repr: exact)."""
    return {k: {name: np.asarray(v, float).tolist() for name, v in parts.items()} for k, parts in sums.items()}


def _arrays(listed: Mapping | None) -> dict:
    return {k: {name: np.asarray(v, float) for name, v in parts.items()} for k, parts in (listed or {}).items()}


def _fingerprint(cols: dict) -> dict:
    """What every pass must find again in a site's table: its row count and each column's sum (a text column's
    digest), as streams check their batches (:func:`mestim.scale.fingerprint`)."""
    out = {"row count": np.array([len(next(iter(cols.values())))])}
    for name, v in cols.items():
        out[f"column '{name}'"] = (np.asarray(v.sum(axis=0), float).ravel() if v.dtype.kind in "biuf" else
                                   np.frombuffer(hashlib.sha256("\x1f".join(map(str, v)).encode()).digest(), np.uint8))
    return out


def load(reference: str):
    """The object a ``module:attribute`` reference names (an :class:`Estimator` installed at the site)."""
    import importlib

    module, _, attribute = reference.partition(":")
    if not attribute:
        raise SpecificationError(f"'{reference}': give an estimator as module:attribute")
    return getattr(importlib.import_module(module), attribute)


def site_from_config(config: Mapping) -> Site:
    """A site from its configuration (a SuperNode's ``--node-config`` or a site file, :func:`serve`): ``site``,
    ``table``, ``estimators`` (comma-separated ``module:attribute`` references to :class:`Estimator` objects),
    ``sources`` (digests of reviewed user ψ sources), ``columns``, ``min-rows``, ``log``."""
    def listed(key):
        value = config.get(key, "")
        return [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]

    return Site(str(config["site"]), str(config["table"]), estimators=[load(r) for r in listed("estimators")],
                sources=listed("sources"), columns=listed("columns") or None,
                min_rows=int(config.get("min-rows", DEFAULT_MIN_ROWS)), log=config.get("log"))


def serve(site: Site, port: int, authkey: bytes) -> None:
    """Answer requests for ``site`` on 127.0.0.1:``port`` until stopped: the site's long-lived process, which a
    Flower ClientApp relays each message to (``daemon=`` in its node config), so the rows are read, prepared and
    compiled once per fit rather than once per message. Connections must present ``authkey``."""
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Listener

    with Listener(("127.0.0.1", port), authkey=authkey) as listener:
        while True:
            try:
                conn = listener.accept()
            except (AuthenticationError, EOFError, OSError):  # a caller without the key, or gone before asking
                continue
            with conn:
                try:
                    blob = conn.recv_bytes()
                    try:
                        reply = site.handle(*decode(blob))
                    except (ValueError, KeyError, OSError):  # not a message of this protocol
                        reply = ({"refused": "a malformed message"}, {})
                    conn.send_bytes(encode(*reply))
                except (EOFError, OSError):  # the ClientApp gave up waiting (its timeout): the next request follows
                    continue


def relay(port: int, authkey: bytes, blob: bytes, timeout: float) -> bytes:
    """One message to the site's process on 127.0.0.1:``port`` and its reply."""
    from multiprocessing.connection import Client

    with Client(("127.0.0.1", port), authkey=authkey) as conn:
        conn.send_bytes(blob)
        if not conn.poll(timeout):
            raise FederatedError(f"the site's process on port {port} did not answer within {timeout:g} s")
        return conn.recv_bytes()


# ---------------------------------------------------------------------------------------------- networks
class Loopback:
    """Sites in this process, reached through the same encoded messages as over Flower (:func:`simulate`).
    Counts rounds and bytes."""

    def __init__(self, sites: Mapping[str, Site]):
        self.sites, self.rounds, self.bytes = dict(sites), 0, 0

    @property
    def names(self) -> list[str]:
        return sorted(self.sites)

    def exchange(self, requests: Mapping[str, bytes], what: str) -> dict[str, bytes]:
        self.rounds += 1
        out = {}
        for name, blob in requests.items():
            reply = encode(*self.sites[name].handle(*decode(blob)))
            self.bytes += len(blob) + len(reply)
            out[name] = reply
        return out


# ---------------------------------------------------------------------------------------------- the coordinator
class Sites:
    """The sites of one fit as a row source: each pass sends (θ, plan) to every site and adds the replies in site
    order; the replies of a pass must all be of that pass, and their weights must add to the agreed total."""

    def __init__(self, network, fit_id: str, spec: StackSpec, n_rows: int, sum_w: float, common: dict):
        self.network, self.fit_id, self.common = network, fit_id, common
        self.kernel = _Described(spec)
        self.n_rows, self.sum_w, self.passes = n_rows, sum_w, 0
        self.last = None  # (θ, {site: Σψ}) of the last pass

    def sums(self, theta, plan) -> Moments:
        self.passes += 1
        header = dict(self.common, kind="sums", fit=self.fit_id, **{"pass": self.passes})
        replies = ask(self.network, header, {"theta": np.asarray(theta, float), "plan": np.asarray(plan)},
                      f"pass {self.passes}")
        total = None
        for name in sorted(replies):
            head, arrays = replies[name]
            if head.get("pass") != self.passes:
                raise FederatedError(f"site '{name}' answered pass {head.get('pass')} when pass {self.passes} was "
                                     "asked for: replies of different passes are never mixed")
            part = Moments(arrays["psi"], arrays["jac"], arrays["meat"], arrays["sum_w"])
            total = part if total is None else Moments(*(a + b for a, b in zip(total, part)))
        if not np.isclose(float(total.sum_w), self.sum_w, rtol=1e-12, atol=0):
            raise FederatedError(f"pass {self.passes}: the sites' weights add to {float(total.sum_w):.17g}, not the "
                                 f"{self.sum_w:.17g} they prepared: a site's rows changed during the fit")
        self.last = (np.array(theta, float), {name: replies[name][1]["psi"] for name in sorted(replies)})
        return total

    def site_totals(self, theta) -> np.ndarray:
        """(sites, K): each site's Σ w ψ at θ (the cluster totals when the sites are the clusters)."""
        if self.last is None or not np.array_equal(self.last[0], theta):
            every = tuple(b.name for b in self.kernel.spec.blocks)
            self.sums(theta, plan(self.kernel.spec, values=every))
        return np.stack(list(self.last[1].values()))


@dataclasses.dataclass(frozen=True)
class _Described:
    """The coordinator's kernel: the stack as the sites described it (it sums no rows itself)."""

    spec: StackSpec


def ask(network, header: dict, arrays: dict, what: str) -> dict[str, tuple[dict, dict]]:
    """Every site's reply to one request, or a FederatedError naming the site that refused and why."""
    blob = encode(dict(header, protocol=PROTOCOL), arrays)
    replies = network.exchange({name: blob for name in network.names}, what)
    out = {}
    for name in network.names:
        head, arrays_ = decode(replies[name])
        if "refused" in head:
            raise FederatedError(f"site '{name}' refused {what}: {head['refused']}")
        out[name] = (head, arrays_)
    return out


def _check_options(weights, weight_type, cluster, correction, solve) -> None:
    if weights is not None and not isinstance(weights, str):
        raise SpecificationError("weights= of a federated fit must be a column name of the sites' tables")
    if cluster not in (None, "sites"):
        raise SpecificationError(f"cluster={cluster!r}: a federated fit clusters by site (cluster='sites') or not at "
                                 "all; per-row cluster labels would leave the sites")
    if correction == "fay":
        raise SpecificationError("correction='fay' needs every row's leverage; use None or 'df' in a federated fit")
    FitOptions(weight_type, correction, solve)  # checks them


def fit(estimator, sites, *, init=None, names=None, weights=None, weight_type: str = "frequency", cluster=None,
        correction: str | None = None, solve: str = "blockwise", max_iter: int = 100, xtol: float = 1e-10,
        gtol: float = 1e-12, chunk_size: int | None = None, coordinator: str = "coordinator"):
    """:func:`mestim.fit` over rows held by sites: the same :class:`~mestim.Result` as the pooled fit.

    Args:
        estimator: an :class:`Estimator` (named and versioned: what the sites allowed), or blocks / a ψ with
            ``init`` (named "estimator", version "1": for :func:`simulate`, where every site allows it).
        sites: how the coordinator reaches the sites: :class:`Loopback` (one process), or
            :class:`mestim.federated.flower.FlowerSites` (a Flower ServerApp's Grid).
        weights: a column name of the sites' tables.
        cluster: ``"sites"``: the sites are the clusters (meat Σ_s U_s U_sᵀ of the sites' totals).
        coordinator: who is asking (recorded in every site's audit log).
        Other arguments as :func:`mestim.fit`.

    Example (over sites in this process (:class:`Loopback`; Flower carries the same messages))::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> from mestim import federated
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> d = {"x": x, "y": 1 + 2 * x + rng.normal(size=300)}
        >>> design = lambda row: jnp.array([1.0, row["x"]])
        >>> ols = mestim.Block("lm", lambda t, row: (row["y"] - t @ design(row)) * design(row), init=[0.0, 0.0])
        >>> model = federated.Estimator("lm", "1", [ols])
        >>> tables = {"a": {k: v[::2] for k, v in d.items()}, "b": {k: v[1::2] for k, v in d.items()}}
        >>> sites = {s: federated.Site(s, table, estimators=[model]) for s, table in tables.items()}
        >>> res = federated.fit(model, federated.Loopback(sites))
        >>> bool(np.allclose(res.theta, mestim.fit(ols, d).theta, rtol=1e-10))
        True
    """
    _check_options(weights, weight_type, cluster, correction, solve)
    if not isinstance(estimator, Estimator):
        estimator = Estimator("estimator", "1", estimator, init, names)
    auto = [b.name for b in estimator.blocks() if isinstance(b.smooth, str)]
    if auto:
        raise SpecificationError(f"block(s) {auto}: smooth='auto' would choose a bandwidth from each site's own rows; "
                                 "a federated fit needs smooth=h (a number)")
    options = FitOptions(weight_type, correction, solve, chunk_size, max_iter, xtol, gtol)
    fit_id = hashlib.sha256(f"{coordinator}/{datetime.datetime.now().isoformat()}/{id(sites)}".encode()
                            ).hexdigest()[:16]
    common = {"coordinator": coordinator, "fit": fit_id, "weights": weights, "chunk_size": chunk_size,
              "estimator": estimator.request()}
    everyone = ask(sites, dict(common, kind="levels"), {}, "the levels of its categorical columns")
    common["levels"] = processes.union_levels([everyone[n][0]["levels"] for n in sorted(everyone)])
    prepared, common["constants"] = _learn(sites, common)
    spec, labels, init_ = _agree(prepared)
    n_rows = sum(h["n_rows"] for h, _ in prepared.values())
    sum_w = float(sum(h["sum_w"] for h, _ in prepared.values()))
    source = Sites(sites, fit_id, spec, n_rows, sum_w, common)
    theta, moments, iterations = solve_stack(source, init_, labels, options)
    totals = source.site_totals(theta) if cluster == "sites" else None
    if totals is not None and totals.shape[0] < 2:
        raise DataError("cluster='sites' with a single site: the clustered meat needs at least two")
    problem = Problem(spec, (), labels, init_, {}, {}, np.zeros(0), None, None, ())
    note = (f"federated over {len(prepared)} sites ({', '.join(sorted(prepared))}): {source.passes} passes; "
            "no per-row values left the sites (influence functions unavailable)")
    result = assemble(problem, source, theta, moments, options, iterations=iterations, notes=(note,), checks=False,
                      totals=totals)
    return dataclasses.replace(result, _influence=None)


def _learn(sites, common: dict) -> tuple[dict, dict]:
    """(every site's reply to 'prepare', the constants' totals as JSON): prepare rounds until every site prepared
    with the totals of every constant its blocks learn from the rows (:func:`mestim.constants.learn`: one round
    per level of dependence, the sums added in site order); a single round when no block learns one."""
    rounds = []

    def run_pass(recorder: Summed) -> None:
        known = _listed(recorder.totals)
        replies = ask(sites, dict(common, kind="prepare", constants=known), {}, "to prepare the fit")
        for name in sorted(replies):
            learnt = replies[name][0]["constants"]
            for key, sums in _arrays(learnt["sums"]).items():
                recorder.sums.setdefault(key, []).append(sums)
            recorder.unsure |= set(learnt["unsure"])
            recorder.asked |= set(learnt["asked"])
        rounds.append((known, replies, set(recorder.asked) <= set(known)))

    totals = _listed(learn(run_pass).totals)
    _, replies, complete = rounds[-1]
    if not complete:  # the last round learnt a constant: prepare once more with every total
        replies = ask(sites, dict(common, kind="prepare", constants=totals), {}, "to prepare the fit")
    return replies, totals


def _agree(prepared: dict) -> tuple[StackSpec, tuple, np.ndarray]:
    """The stack every site prepared (else an error naming the site and what differs), and starting values: per
    block, those of the first site (in name order) holding rows of it."""
    names = sorted(prepared)
    first = prepared[names[0]][0]
    for name in names[1:]:
        theirs = prepared[name][0]["signature"]
        if theirs != first["signature"]:
            what = next(k for k in first["signature"] if theirs.get(k) != first["signature"][k])
            raise FederatedError(
                f"site '{name}' prepared a different stack from site '{names[0]}': its {what}: "
                f"{_short(theirs.get(what))} against {_short(first['signature'][what])}; every site must code the "
                "same columns and categories (a category missing at a site, or a column with a value on fewer than "
                "min_rows rows, is not agreed)")
    blocks = tuple(BlockSpec(name, None, tuple(reads), dim, equations, mask)
                   for name, dim, equations, reads, mask in first["blocks"])
    spec = StackSpec(blocks)
    starts = []
    for b in blocks:
        given = [prepared[n][0]["starts"][b.name] for n in names if b.name in prepared[n][0]["starts"]]
        if not given:
            raise FederatedError(f"no site holds rows of block '{b.name}': it cannot be estimated")
        starts.append(np.asarray(given[0], float))
    return spec, tuple(first["labels"]), np.concatenate(starts)


def tabulate(counts: Counts, sites, *, coordinator: str = "coordinator"):
    """The :class:`Counts` the sites release: a DataFrame with one row per site and group (the ``by`` columns,
    ``site``, ``rows``, ``sum_w`` and Σw·y for each ``events`` column y, under its name), in site order; one
    round. ``sites`` as :func:`fit`; a refusal ends it with a :class:`FederatedError` naming the site and why."""
    import pandas as pd

    header = {"coordinator": coordinator, "kind": "counts", "estimator": counts.request()}
    parts = []
    for name, (head, arrays) in sorted(ask(sites, header, {}, f"the counts '{counts.name}'").items()):
        groups, rows = head.get("groups"), arrays.get("rows")
        if groups is None or rows is None or not len(groups) == rows.size == arrays["sum_w"].size == len(
                arrays["events"]):
            raise FederatedError(f"site '{name}' answered the counts '{counts.name}' with a malformed reply")
        part = pd.DataFrame(groups, columns=list(counts.by))
        part["site"], part["rows"], part["sum_w"] = name, rows.astype(np.int64), arrays["sum_w"]
        for j, column in enumerate(counts.events):
            part[column] = arrays["events"][:, j]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def simulate(estimator, tables: Mapping, **fit_options):
    """The federated protocol in one process: one :class:`Site` per table (every site allows ``estimator``, a
    user ψ included: whoever simulates holds every table), the same messages as over Flower; returns the
    :class:`~mestim.Result` of :func:`fit`, or for a :class:`Counts` the table of :func:`tabulate`. ``min_rows=``
    sets every site's disclosure threshold.

    Example (a user ψ, the mean and variance, over two sites' rows: the pooled rows' mean and variance)::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> from mestim import federated
        >>> y = np.random.default_rng(0).normal(size=40)
        >>> psi = lambda t, row: jnp.array([row["y"] - t[0], (row["y"] - t[0]) ** 2 - t[1]])
        >>> fed = federated.simulate(psi, {"a": {"y": y[:15]}, "b": {"y": y[15:]}}, init=[0.0, 1.0])
        >>> bool(np.allclose(fed.theta, [y.mean(), y.var()], rtol=1e-10))
        True
    """
    min_rows = fit_options.pop("min_rows", DEFAULT_MIN_ROWS)
    if not isinstance(estimator, (Estimator, Counts)):
        estimator = Estimator("estimator", "1", estimator, fit_options.pop("init", None),
                              fit_options.pop("names", None))
    if not tables:
        raise SpecificationError("simulate() needs at least one site's table: {'site_a': table_a, ...}")
    allowed = [estimator.digest] if isinstance(estimator, Estimator) and estimator.digest else []
    sites = {str(name): Site(str(name), table, estimators=[estimator], sources=allowed, min_rows=min_rows)
             for name, table in tables.items()}
    return coordinate(estimator, Loopback(sites), **fit_options)


def coordinate(estimator, sites, **options):
    """:func:`tabulate` for a :class:`Counts`, else :func:`fit`: what a coordinator runs over ``sites``."""
    return tabulate(estimator, sites, **options) if isinstance(estimator, Counts) else fit(estimator, sites, **options)
