"""From an estimator and a table to a :class:`Problem`: blocks prepared, ψ traced, the columns it reads validated.

Steps, all on the host: (1) turn the estimator into blocks and let each registered block prepare its columns
and starting values; (2) trace every ψ once on abstract values (``jax.eval_shape``: nothing is compiled) to learn
which columns it reads and check that it returns one value per parameter; (3) validate exactly those columns
(present, numeric, finite in the rows the blocks use).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import data as datamod
from . import smooth
from .blocks import Block, BlockSpec, StackSpec, solve_groups
from .constants import ALL_ROWS
from .errors import DataError, SpecificationError, untraceable

MASK_PREFIX = "mask:"  # device column holding a user block's row mask
WEIGHTS = "(weights)"  # the row weights' key in Problem.sums


@dataclasses.dataclass(frozen=True)
class Problem:
    """A stack ready to be summed over rows: its spec, starting values and the host columns ψ reads."""

    spec: StackSpec
    blocks: tuple[Block, ...]
    labels: tuple[str, ...]
    init: np.ndarray
    columns: dict  # every host column (raw + prepared), for the blocks' post-fit checks
    used: dict  # the columns ψ reads (float64 host arrays), masks of user blocks included
    w: np.ndarray
    cluster: np.ndarray | None  # cluster code of each row
    cluster_labels: np.ndarray | None  # the label each code stands for
    notes: tuple[str, ...]
    instruments: dict = dataclasses.field(default_factory=dict)  # block name → its instruments' column (GMM)
    rows: dict = dataclasses.field(default_factory=dict)  # block name → the rows a masked block uses
    # Σ of each column ψ reads and of the weights at the fit: ``used`` holds views of the user's float64 arrays (no
    # copy), so a Result's influence functions check that those arrays were not edited since
    sums: dict = dataclasses.field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return 0 if self.cluster_labels is None else int(self.cluster_labels.size)

    @property
    def n_rows(self) -> int:
        return int(self.w.shape[0])

    def check_unchanged(self) -> None:
        """Raise if a column ψ reads, or the weights, no longer sum as at the fit (the user edited the array)."""
        now = {name: float(np.sum(self.w if name == WEIGHTS else self.used[name])) for name in self.sums}
        edited = sorted("weights" if name == WEIGHTS else name for name, total in self.sums.items() if now[name] != total)
        if edited:
            raise DataError(f"column(s) {edited} changed after the fit (the fit reads the arrays given, without a "
                            "copy): refit on the edited data, or copy the data before the fit to edit it afterwards")

    def check_rows(self) -> None:
        """Refuse a block fitted to no more rows (of positive weight, in its mask) than it has parameters: at θ̂ its
        ψ sums to 0 over those rows, so its meat has rank below p (a zero SE), or its bread is singular. A block
        that reads others (a prediction at one covariate profile) takes its variance from them: not refused."""
        used = self.w > 0
        weighted = " with positive weight" if not used.all() else ""
        for b in self.spec.blocks:
            rows = int((used & self.rows.get(b.name, True)).sum())
            if not b.reads and rows <= b.dim:
                raise DataError(
                    f"block '{b.name}' has {rows} row{'s' * (rows != 1)}{weighted} for its {b.dim} parameters: a "
                    "model fitted to no more rows than parameters fits them exactly (standard errors 0) or is not "
                    "identified; give it more rows than parameters (a wider mask, fewer covariates or levels) or "
                    "leave the block out")

    @property
    def single(self) -> bool:
        """One block: ``delta`` and labels use a flat θ."""
        return len(self.blocks) == 1

    @property
    def equation_labels(self) -> tuple[str, ...]:
        """One label per estimating equation: the parameter's, or ``moment j`` in an over-identified block."""
        out, offsets = [], self.spec.offsets()
        for b in self.spec.blocks:
            if b.equations == b.dim:
                out += self.labels[offsets[b.name]]
            else:
                out += [f"moment {j}" if self.single else f"{b.name}:moment {j}" for j in range(b.equations)]
        return tuple(out)


def as_blocks(estimator, init=None, names=None) -> list[Block]:
    """The estimator as a list of blocks: ``psi(theta, row)`` (with ``init``), a Block, or a list of Blocks."""
    if init is not None and not (callable(estimator) and not isinstance(estimator, Block)):
        raise SpecificationError("init= is for a single ψ; blocks carry their own starting values")
    if isinstance(estimator, Block):
        return [estimator]
    if callable(estimator):
        if init is None:
            raise SpecificationError("init= is required: give starting values, one per parameter")
        return [Block("theta", estimator, init=init, labels=tuple(names) if names is not None else None)]
    try:
        blocks = list(estimator)
    except TypeError:
        blocks = []
    if not blocks or not all(isinstance(b, Block) for b in blocks):
        raise SpecificationError("the estimator must be a function psi(theta, row), a Block, or a list of Blocks")
    seen = [b.name for b in blocks]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise SpecificationError(f"block names must be unique; repeated: {dup}")
    return blocks


def prepare(estimator, data, init=None, *, names=None, weights=None, cluster=None, levels=None, constants=None,
            over_identified: bool = False, empty_masks: bool = False) -> Problem:
    """Blocks prepared, ψ traced and checked, the columns it reads validated (host arrays only).

    ``levels(columns) -> {name: values}`` gives categorical columns their levels before the blocks prepare (the
    levels several processes agreed on, :mod:`mestim.processes`); ``constants``: where the blocks' data-dependent
    constants come from when ``data`` is part of the rows (:mod:`mestim.constants`; default: these rows are all
    rows); ``over_identified``: a block's ψ may return more values than it has parameters (GMM);
    ``empty_masks``: a block's mask may select no row (a federated site holding none of the block's rows adds zero
    to its sums)."""
    blocks = as_blocks(estimator, init, names)
    cols = datamod.as_columns(data)
    n = datamod.n_rows(cols)
    all_cols = datamod.Columns(cols)
    all_cols.levels = levels(cols) if levels is not None else {}
    all_cols.constants = constants if constants is not None else ALL_ROWS
    all_cols.empty_masks = empty_masks
    specs, labels, inits, notes, masks, instruments, used_rows = [], [], [], [], {}, {}, {}
    for b in blocks:
        prep = b.prepare(all_cols) if b.prepare is not None else None
        if prep is not None:
            all_cols.update(prep.columns)
            notes += [f"{b.name}: {t}" for t in prep.notes]
        start = _start(b, prep)
        if prep is not None and prep.instruments is not None:
            instruments[b.name] = prep.instruments
        if prep is not None and prep.rows is not None:
            used_rows[b.name] = np.asarray(prep.rows, bool)
        blabels = b.labels or (prep.labels if prep is not None else None) or tuple(str(i) for i in range(start.size))
        if len(blabels) != start.size:
            raise SpecificationError(f"block '{b.name}' has {len(blabels)} labels for {start.size} parameters")
        psi = prep.psi if prep is not None and prep.psi is not None else b.psi
        if psi is None:
            raise SpecificationError(f"block '{b.name}' has no estimating function psi")
        mask = None
        if b.mask is not None:
            mask = MASK_PREFIX + b.name
            masks[mask] = datamod.row_mask(all_cols, b.mask, n)
            used_rows[b.name] = masks[mask]
            if not (empty_masks or masks[mask].any()):
                raise DataError(f"block '{b.name}' has no rows: its mask selects none of the {n} rows")
        if b.smooth is not None:  # indicators and signs in ψ replaced by their Gaussian smoothing
            psi, note = smooth.smoothed(b, psi, start, {s.name: i for s, i in zip(specs, inits)}, all_cols,
                                        masks.get(mask))
            notes.append(f"{b.name}: {note}")
        specs.append(BlockSpec(b.name, psi, b.reads, start.size, mask=mask))
        inits.append(start)
        labels += [lab if len(blocks) == 1 else f"{b.name}:{lab}" for lab in blabels]
    spec = StackSpec(tuple(specs))
    solve_groups(spec.blocks)  # validates 'reads'
    reads, sizes = traced_columns(spec, all_cols)
    for b, size in zip(spec.blocks, sizes):
        if size > b.dim and not over_identified:
            raise SpecificationError(
                f"ψ of block '{b.name}' returns shape ({size},) but the block has {b.dim} parameter(s): ψ must "
                "return one value per parameter; for over-identified estimating equations (more moment conditions "
                "than parameters) pass gmm='two-step' or gmm='iterated'")
    spec = StackSpec(tuple(dataclasses.replace(b, equations=size) for b, size in zip(spec.blocks, sizes)))
    used, sums = {}, {}
    for name in sorted(set().union(*reads) - set(masks)):
        values = datamod.require_numeric(all_cols, name)
        # NaN is allowed where every block that reads the column has masked the row out
        rows = [None if b.mask is None else masks[b.mask] for b, r in zip(spec.blocks, reads) if name in r]
        where = None if any(m is None for m in rows) else np.logical_or.reduce(rows)
        total = datamod.check_finite(values, name, where=where)
        used[name] = values if where is None else _zero_outside(values, where)
        if used[name] is values and np.isfinite(total):
            sums[name] = total
    used.update({k: m.astype(float) for k, m in masks.items()})
    w = datamod.row_weights(cols, weights, n)  # the user's own columns (not the blocks' prepared ones)
    sums[WEIGHTS] = float(np.sum(w))
    codes, cluster_labels = (None, None) if cluster is None else datamod.cluster_labels(cols, cluster, n)
    return Problem(spec, tuple(blocks), tuple(labels), np.concatenate(inits), all_cols, used, w, codes,
                   cluster_labels, tuple(notes), instruments, used_rows, sums)


def _start(block: Block, prep) -> np.ndarray:
    start = block.init if block.init is not None else (prep.init if prep is not None else None)
    if start is None:
        raise SpecificationError(f"block '{block.name}' has no starting values: give init=")
    try:
        start = np.asarray(start, float)
    except (TypeError, ValueError):
        raise SpecificationError(f"init of block '{block.name}' is not an array of numbers") from None
    if start.ndim != 1 or start.size == 0:
        raise SpecificationError(f"init of block '{block.name}' has shape {start.shape}; expected a 1-D array "
                                 "with one value per parameter")
    if not np.all(np.isfinite(start)):
        raise SpecificationError(f"init of block '{block.name}' has non-finite values: give finite starting values")
    return start


def _zero_outside(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """NaN outside the rows that use a column becomes 0: a masked ψ multiplies it by 0, and 0·NaN is NaN."""
    if np.all(np.isfinite(values)):
        return values
    return np.where(where.reshape((-1,) + (1,) * (values.ndim - 1)), values, 0.0)


# ---------------------------------------------------------------------------------------------- tracing
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
        names = [k for k in self._row if not k.startswith(MASK_PREFIX)]
        close = difflib.get_close_matches(str(key), names, n=3) or [k for k in names if k.lower() == str(key).lower()]
        hint = f"; did you mean {close}?" if close else f"; available columns: {sorted(names)}"
        raise DataError(f"block '{self._block}' reads column '{key}', which is not in the data{hint}")

    def __iter__(self):
        return iter(self._row)

    def __len__(self):
        return len(self._row)


def traced_columns(spec: StackSpec, cols) -> tuple[tuple[frozenset[str], ...], tuple[int, ...]]:
    """The columns each block's ψ reads and how many values it returns, found by tracing ψ once on abstract rows
    (cached per column layout)."""
    layout = tuple(sorted((k, v.shape[1:], v.dtype.kind in "biuf") for k, v in cols.items()))
    return _traced_columns(spec, layout)


@functools.lru_cache(maxsize=256)
def _traced_columns(spec: StackSpec, layout):
    unusable = {k for k, _, numeric in layout if not numeric}
    row = {k: jax.ShapeDtypeStruct(shape, jnp.float64) for k, shape, numeric in layout if numeric}
    row.update({b.mask: jax.ShapeDtypeStruct((), jnp.float64) for b in spec.blocks if b.mask is not None})
    params = {b.name: jax.ShapeDtypeStruct((b.dim,), jnp.float64) for b in spec.blocks}
    reads, sizes = [], []
    for b in spec.blocks:
        used: set[str] = set()
        call = lambda p, r, b=b: b.psi(p[b.name], _RecordingRow(r, used, b.name, unusable),  # noqa: E731
                                       **{name: p[name] for name in b.reads})
        try:
            out = jax.eval_shape(call, params, row)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
                jax.errors.TracerArrayConversionError) as e:  # TracerBoolConversionError is a ConcretizationTypeError
            raise untraceable(b.name, e) from None
        except KeyError as e:
            raise SpecificationError(f"block '{b.name}': ψ failed with KeyError {e} (does it read a block it does "
                                     "not declare in reads=?)") from None
        if b.mask is not None:
            used.add(b.mask)
        reads.append(frozenset(used))
        sizes.append(_output_size(b, out))
    return tuple(reads), tuple(sizes)


def _output_size(b: BlockSpec, out) -> int:
    if isinstance(out, (list, tuple)):
        raise SpecificationError(f"ψ of block '{b.name}' returns a Python {type(out).__name__}; return one array: "
                                 "jnp.array([...]) or jnp.stack([...])")
    shape = getattr(out, "shape", None)
    if shape is None:
        raise SpecificationError(f"ψ of block '{b.name}' returns a {type(out).__name__}, not an array; return "
                                 "jnp.array([...]) with one value per parameter")
    size = int(np.prod(shape))
    if len(shape) > 1 or size < b.dim:
        raise SpecificationError(
            f"ψ of block '{b.name}' returns shape {shape} but the block has {b.dim} parameter(s): "
            "ψ must return one value per parameter (a 1-D array of the same length as init)")
    return size
