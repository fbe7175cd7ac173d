"""From a user's table to the column arrays the engine sums over.

Accepted tables: a dict of equal-length arrays, a pandas DataFrame, a polars DataFrame, or anything with
``.to_dict()``/``.columns``. Columns are float64 NumPy arrays of shape (n,) or (n, k); the engine only ever sees
the columns an estimator actually reads (found by tracing ψ once, see :mod:`mestim.fit`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping

import numpy as np

from .errors import DataError

class Columns(dict):
    """``{name: array}`` of one table; ``levels`` holds the agreed values of categorical columns when several
    processes fit together (:func:`levels`)."""

    levels: dict = {}


def levels(cols, name: str, values: np.ndarray) -> np.ndarray:
    """The distinct values of a categorical column: agreed across processes when they fit together, else
    those of ``values`` (the rows a block uses)."""
    agreed = getattr(cols, "levels", {}).get(name)
    return np.asarray(agreed, dtype=values.dtype if values.dtype.kind in "biuf" else object) if agreed is not None \
        else np.unique(values)


def missing_values(values: np.ndarray) -> np.ndarray:
    """Rows where a column is missing: NaN/inf in numbers; None, NaN, pd.NA or NaT in text and objects."""
    if values.dtype.kind in "fc":
        return ~np.isfinite(values)
    if values.dtype.kind == "O":
        import pandas as pd

        return np.asarray(pd.isna(values), bool)
    return np.zeros(values.shape, bool)


_FIRST_ROW = contextvars.ContextVar("first_row", default=0)


@contextlib.contextmanager
def rows_numbered_from(first_row: int):
    """Row numbers in the errors raised inside count from ``first_row``: a streamed batch is a window of a larger
    source, and a user looks for the row in the source, not in the batch."""
    token = _FIRST_ROW.set(int(first_row))
    try:
        yield
    finally:
        _FIRST_ROW.reset(token)


def as_columns(data) -> Columns:
    """Return :class:`Columns` with equal leading lengths; raise :class:`DataError` naming what is wrong."""
    if data is None:
        raise DataError("no data given: pass a dict of arrays or a pandas/polars DataFrame")
    if hasattr(data, "columns") and not isinstance(data, Mapping):
        names = [str(c) for c in data.columns]
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise DataError(f"duplicated column name(s) {dup}: rename them so each column is unique")
        cols = Columns((str(c), _column_values(data[c], str(c))) for c in data.columns)
    elif isinstance(data, Mapping):
        cols = Columns((str(k), _column_values(v, str(k))) for k, v in data.items())
    else:
        raise DataError(f"data of type {type(data).__name__} is not a table: pass a dict of arrays or a DataFrame")
    lengths = {k: v.shape[0] for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"columns have different numbers of rows: {lengths}")
    if cols and next(iter(lengths.values())) == 0:
        raise DataError("the data has no rows")
    return cols


def _column_values(values, name: str) -> np.ndarray:
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    arr = np.asarray(values)
    if arr.ndim == 0:
        raise DataError(f"column '{name}' is a scalar, not a column of values")
    if arr.dtype.kind in "biuf":
        return _read_only(arr.astype(np.float64, copy=False))
    if arr.dtype == object:  # pandas nullable / mixed columns: numeric if every entry converts
        try:
            return _read_only(arr.astype(np.float64))
        except (TypeError, ValueError):
            pass
    return _read_only(arr)  # kept as is: text columns may serve as labels (study, cluster); used numerically they fail below


def _read_only(arr: np.ndarray) -> np.ndarray:
    """A read-only view: a float64 column is the user's own memory (copying 10⁶ rows × 20 columns cost 0.13 s of a
    0.4 s fit), so nothing downstream may write into it."""
    view = arr.view()
    view.flags.writeable = False
    return view


ALIGN = 64  # bytes: XLA's CPU client places a host array this aligned on the device without copying it


def aligned_empty(shape, dtype=np.float64, zeros: bool = False) -> np.ndarray:
    """``np.empty(shape, dtype)`` starting on an :data:`ALIGN`-byte boundary (NumPy's large arrays start 16 bytes
    past one). ``jax.device_put`` on a CPU then shares the array's memory instead of copying it: placing a 10⁶ × 11
    design and its columns cost 40–50 ms of a 0.36 s logistic fit. The array must not be written while a device
    array shares it (the engine never writes the columns it placed). ``zeros``: filled with zeros, as
    ``np.zeros`` does (pages the system zeroes when first read: nothing written)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.ndim(shape) == 0 else tuple(shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = (np.zeros if zeros else np.empty)(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def n_rows(cols: Columns) -> int:
    return next(iter(cols.values())).shape[0]


def require_numeric(cols: Columns, name: str, *, what: str = "column") -> np.ndarray:
    """The float64 column ``name``, or a :class:`DataError` saying it is missing or not numeric."""
    if name not in cols:
        raise DataError(f"{what} '{name}' is not in the data; available columns: {sorted(cols)}")
    arr = cols[name]
    if arr.dtype.kind != "f":
        bad = next((v for v in arr.ravel() if not is_number(v)), None)
        raise DataError(f"{what} '{name}' is not numeric (found value {bad!r}); convert or recode it")
    return arr


def is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def check_finite(arr: np.ndarray, name: str, where: np.ndarray | None = None) -> float:
    """Raise if ``arr`` has NaN/inf in the rows that are used (``where``: boolean mask of used rows); return the sum
    of ``arr`` (NaN where rows outside ``where`` are not finite), which fingerprints the column."""
    total = float(np.sum(arr))
    if np.isfinite(total):  # one summing pass: NaN/inf propagate (an overflowing sum goes on to the rows)
        return total
    bad = ~np.isfinite(arr)
    if bad.ndim > 1:
        bad = bad.reshape(bad.shape[0], -1).any(axis=1)
    if where is not None:
        bad &= where
    if bad.any():
        rows = np.flatnonzero(bad)
        kind = "NaN" if np.isnan(arr.reshape(arr.shape[0], -1)[rows[0]]).any() else "inf"
        first = _FIRST_ROW.get() + int(rows[0])
        error = DataError(
            f"column '{name}' has {rows.size} non-finite value(s) ({kind} first at row {first:,}) in rows "
            "the estimator uses; drop or impute those rows, or restrict the block with a mask"
        )
        error.row = first  # the row a stream names the source's chunk by
        raise error
    return total


def row_mask(cols: Columns, mask, n: int | None = None) -> np.ndarray:
    """Boolean mask of rows a block uses: None (all), a column name (non-zero = used), an array, or a callable.

    Example (rows of a column that is non-zero)::

        >>> import numpy as np, mestim
        >>> from mestim.data import row_mask
        >>> row_mask({"s": np.array([0.0, 1.0, 2.0])}, "s")
        array([False,  True,  True])
    """
    n = n if n is not None else n_rows(cols)
    if mask is None:
        return np.ones(n, bool)
    if callable(mask):
        mask = mask(cols)
    elif isinstance(mask, str):
        col = require_numeric(cols, mask, what="mask column")
        check_finite(col, mask)
        mask = col != 0
    mask = np.asarray(mask)
    if mask.shape != (n,):
        raise DataError(f"row mask has shape {mask.shape}; expected ({n},)")
    return mask.astype(bool)


def row_weights(cols: Columns, weights, n: int) -> np.ndarray:
    """Row weights as float64 (n,): a column name, an array, or None (all ones); must be finite and ≥ 0."""
    if weights is None:
        w = aligned_empty(n)  # the device shares it (aligned_empty)
        w.fill(1.0)
        return w
    name = weights if isinstance(weights, str) else "weights"
    w = require_numeric(cols, weights, what="weight column") if isinstance(weights, str) else np.asarray(weights, float)
    if w.shape != (n,):
        raise DataError(f"{name} has shape {w.shape}; expected one weight per row ({n},)")
    check_finite(w, name)
    if (w < 0).any():
        raise DataError(f"{name} has {int((w < 0).sum())} negative value(s); weights must be ≥ 0")
    if not (w > 0).any():
        raise DataError(f"{name} are all zero: no row carries information")
    return w


def cluster_codes(cols: Columns, cluster, n: int) -> tuple[np.ndarray, int]:
    """Cluster labels recoded to 0..G-1, and G. Accepts a column name or an array of labels."""
    codes, labels = cluster_labels(cols, cluster, n)
    return codes, labels.size


def cluster_labels(cols: Columns, cluster, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster codes 0..G-1 of the rows and the G distinct labels they code."""
    labels = cols[cluster] if isinstance(cluster, str) and cluster in cols else cluster
    if isinstance(cluster, str) and cluster not in cols:
        raise DataError(f"cluster column '{cluster}' is not in the data; available columns: {sorted(cols)}")
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DataError(f"cluster labels have shape {labels.shape}; expected ({n},)")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise DataError(f"cluster column has {int(np.isnan(labels).sum())} NaN label(s)")
    uniq, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int32), uniq
