"""Design matrices and row masks for registered blocks.

A design is built from a list of column names (an intercept first unless ``intercept=False``) or a Wilkinson
formula (``"~ x1 + C(site) + x1:x2"``, parsed by formulaic, which handles categorical coding and interactions
exactly as R/patsy users expect). A mask restricts a block to a subset of rows; values outside the mask may be
NaN (a target sample has no outcome): they are replaced by 0 *before* anything is traced, because
``mask * NaN`` is NaN and ``where(mask, f(NaN), 0)`` has a NaN gradient.
"""

from __future__ import annotations

import ast
import re

import numpy as np

from mestim.constants import partial, require_all_rows, total
from mestim.data import aligned_empty, check_finite, missing_values, require_numeric, row_mask
from mestim.errors import DataError, MestimError

# formulaic's stateful transforms whose state is a mean and a standard deviation (sums over rows), and the
# position and keyword of their arguments that fix those constants (a value given, not learnt)
SCALING = {"center": {}, "scale": {"center": 1, "scale": 2}, "standardize": {"center": 1, "rescale": 2}}
_KNOTS = ("give the knots and bounds explicitly (the ones a fit on all rows notes in its model spec), e.g. "
          "{}(x, knots=[…], lower_bound=…, upper_bound=…), or fit all rows in memory")
EXPLICIT = {name: _KNOTS.format(name) for name in ("bs", "cr", "cs", "cc")}  # how to give what is not a sum


def design_matrix(cols, X=None, formula: str | None = None, intercept: bool = True, reference=None):
    """(matrix (n, k), column labels) from column names or a formula's right-hand side.

    ``reference``: columns a formula's coding is learnt from (categorical levels), when ``cols`` is the same table
    with some values changed (a treatment set to one level for g-computation): the columns stay the same.

    Example (an intercept and two named columns)::

        >>> import numpy as np, mestim
        >>> from estimators import design_matrix
        >>> X, labels = design_matrix({"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}, ["a", "b"])
        >>> X, labels
        (array([[1., 1., 3.],
               [1., 2., 4.]]), ['(Intercept)', 'a', 'b'])
    """
    if formula is not None:
        return _formula_matrix(cols, formula, reference)
    names = [] if X is None else ([X] if isinstance(X, str) else list(X))
    parts, labels = [], []
    n = next(iter(cols.values())).shape[0]
    if intercept:
        parts.append(np.ones((n, 1)))
        labels.append("(Intercept)")
    for name in names:
        col = require_numeric(cols, name, what="covariate")
        parts.append(col.reshape(n, -1))
        labels += [name] if col.ndim == 1 else [f"{name}[{j}]" for j in range(col.shape[1])]
    if not parts:
        raise DataError("the design has no columns: give covariates or keep the intercept")
    return _side_by_side(parts, n), labels


DESIGN_ROWS = 8192  # rows of the design filled at a time: every column's slice of them stays in cache


def _side_by_side(parts, n: int) -> np.ndarray:
    """``np.concatenate(parts, axis=1)`` filled a block of rows at a time: writing whole columns of a 10⁶ × 11
    design strides across memory and takes 2–3× longer (50–75 ms against 24–36 ms). Aligned, so that the device
    shares it rather than copying it (:func:`mestim.data.aligned_empty`)."""
    out = aligned_empty((n, sum(part.shape[1] for part in parts)))
    for start in range(0, n, DESIGN_ROWS):
        rows, j = slice(start, start + DESIGN_ROWS), 0
        for part in parts:
            out[rows, j:j + part.shape[1]] = part[rows]
            j += part.shape[1]
    return out


PRODUCT_ROWS = 65_536  # rows of a design multiplied at a time (their slice stays in cache)


def design_times(x: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """x @ β on the host, a block of rows at a time by einsum: OpenBLAS' threaded matrix–vector product took 2–4×
    longer on a loaded 2-core machine (10⁶ × 11: 15 ms against 6.5 ms; 10⁵: 3.3 against 0.6 ms), and einsum on
    the whole matrix leaves the cache (14 ms)."""
    out = np.empty(x.shape[0])
    for start in range(0, x.shape[0], PRODUCT_ROWS):
        np.einsum("ij,j->i", x[start:start + PRODUCT_ROWS], beta, out=out[start:start + PRODUCT_ROWS])
    return out


def _formula_matrix(cols, formula: str, reference=None):
    matrix, labels, _ = formula_design(cols, formula, reference)
    return matrix, labels


def formula_design(frame, formula: str, reference=None):
    """(matrix (n, k), column labels, variables the formula reads) from a formula's right-hand side.

    ``frame`` is a pandas DataFrame (text and categorical columns keep their levels) or a dict of 1-D columns
    (text columns get the levels several processes agreed on, :func:`mestim.data.levels`, when they fit
    together). A row where a variable the formula reads is missing gets NaN in every column but the intercept:
    formulaic codes a missing level of a categorical variable as the reference level (all indicators 0), which
    would let it pass as data; as NaN it meets the same missing-value checks as a missing number.
    ``reference``: as in :func:`design_matrix`.
    """
    import warnings

    from formulaic import model_matrix
    from formulaic.errors import DataMismatchWarning

    rhs = formula.split("~", 1)[1] if "~" in formula else formula
    learnt_from = frame if reference is None else reference
    frame = _frame(frame)
    try:
        if reference is not None or partial(learnt_from):
            spec = _learnt_state(model_matrix(rhs, _frame(learnt_from), na_action="ignore").model_spec, learnt_from,
                                 formula)
            with warnings.catch_warnings():
                # a value outside the levels learnt from the reference would be coded as the reference level
                warnings.simplefilter("error", DataMismatchWarning)
                mm = spec.get_model_matrix(frame, na_action="ignore")
        else:
            mm = model_matrix(rhs, frame, na_action="ignore")
    except MestimError:
        raise
    except Exception as e:  # formulaic reports unknown names, syntax errors and unseen levels with its own types
        raise DataError(f"formula '{formula}' could not be built on this data: {e}") from None
    matrix, labels = np.asarray(mm, dtype=float), list(mm.columns)
    variables = sorted(v for v in mm.model_spec.required_variables if v in frame.columns)
    missing = frame[variables].isna().to_numpy().any(axis=1) if variables else np.zeros(len(frame), bool)
    if missing.any():
        matrix[np.ix_(missing, [j for j, lab in enumerate(labels) if lab not in ("Intercept", "(Intercept)")])] = np.nan
    return matrix, labels, variables


def _learnt_state(spec, cols, formula: str):
    """The formula's spec with its stateful transforms' constants learnt from all rows of the fit
    (:mod:`mestim.constants`): ``center``, ``scale``, ``standardize`` from the sums Σ1, Σx and Σ(x − x̄)²,
    ``poly`` from its recurrence's sums; any other (``bs`` and splines: knots at quantiles) is refused where the
    rows are only part of the fit."""
    state = dict(spec.transform_state)
    if not state or not partial(cols):
        return spec
    frame = _frame(cols)
    for key in sorted(state, key=len):  # a transform inside another (its key is shorter) first
        call = ast.parse(key, mode="eval").body
        name = call.func.id if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) else None
        if name == "poly":
            state[key] = _poly_state(frame, cols, formula, key, call, state)
            continue
        if name not in SCALING:
            require_all_rows(cols, f"the term {key} of formula '{formula}'",
                             EXPLICIT.get(name, "fit all rows in memory, or compute the term as columns of the data"))
        state[key] = _scaling_state(frame, cols, formula, key, call, state)
    return spec.update(transform_state=state)


def _scaling_state(frame, cols, formula, key, call, state) -> dict:
    """center/scale/standardize's state (mean, sd with its ddof) from the sums over all rows of its argument."""
    own = dict(state[key])
    given = {k for k, at in SCALING[call.func.id].items()
             if any(kw.arg == k and not _is_bool(kw.value) for kw in call.keywords)
             or (len(call.args) > at and not _is_bool(call.args[at]))}
    x = _evaluated(frame, key, dict(state, **{key: dict(own, center=None, scale=None)}))  # the term unscaled
    where, inner = f"formula '{formula}': {key}", _inner(formula, key, state)
    if own["center"] is not None and "center" not in given:
        sums = total(cols, f"{where} (mean)", after=inner, n=x.shape[0], x=x.sum(axis=0))
        own["center"] = sums["x"] / sums["n"]
    if own["scale"] is not None and not given & {"scale", "rescale"}:
        c = 0.0 if own["center"] is None else own["center"]
        sums = total(cols, f"{where} (sd)", after=inner + (f"{where} (mean)",), n=x.shape[0],
                     ss=((x - c) ** 2).sum(axis=0))
        own["scale"] = np.sqrt(sums["ss"] / (sums["n"] - own["ddof"]))
    for k in ("center", "scale"):
        if own[k] is not None and np.ndim(own[k]) == 1 and np.size(own[k]) == 1:
            own[k] = own[k][0]  # formulaic's state of a single column is a scalar
    return own


def _poly_state(frame, cols, formula, key, call, state) -> dict:
    """poly's state from all rows: its three-term recurrence (formulaic's, R's ``poly``) on the non-missing x,

        P₀ = 1,  P₁ = (x − α₀)P₀,  P_k = (x − α_{k−1})P_{k−1} − (‖P_{k−1}‖²/‖P_{k−2}‖²) P_{k−2},
        α_k = Σ x P_k² / Σ P_k²,  ‖P_k‖² = Σ P_k²,

    whose sums are learnt one degree at a time (P_k is built from the constants of the degrees below)."""
    own = state[key]
    if "alpha" not in own:  # raw=True: powers of x, nothing learnt
        return own
    degree = len(own["norms2"]) - 1
    x = _evaluated(frame, ast.get_source_segment(key, call.args[0]), state).ravel()
    x = x[~np.isnan(x)]
    where, inner = f"formula '{formula}': {key}", _inner(formula, key, state)
    alpha, norms2, p, before = {}, {}, np.ones_like(x), np.zeros_like(x)
    for k in range(degree + 1):
        if k:
            step = norms2[k - 1] / norms2[k - 2] if k >= 2 else 0.0
            p, before = (x - alpha[k - 1]) * p - step * before, p
        sums = total(cols, f"{where} (degree {k})", after=inner + ((f"{where} (degree {k - 1})",) if k else ()),
                     pp=np.sum(p * p), xpp=np.sum(x * p * p))
        norms2[k] = float(sums["pp"])
        if k < degree:
            alpha[k] = float(sums["xpp"]) / norms2[k]
    return {"alpha": alpha, "norms2": norms2}


def _evaluated(frame, term: str, state) -> np.ndarray:
    """``term`` (a formula's term or expression) on ``frame``, with the transforms' ``state`` learnt so far."""
    from formulaic import model_matrix

    spec = model_matrix(f"0 + {term}", frame, na_action="ignore").model_spec
    return np.asarray(spec.update(transform_state=dict(state)).get_model_matrix(frame, na_action="ignore"), float)


def _inner(formula, key, state) -> tuple:
    """The (key prefixes of the) constants of the transforms inside ``key``, which its constants are computed from."""
    return tuple(f"formula '{formula}': {k} (" for k in state if k != key and k in key)


def _is_bool(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, bool)


def _frame(cols):
    """A pandas DataFrame of the 1-D columns; text columns become categoricals with the levels several processes
    agreed on (``cols.levels``), so every process codes them alike."""
    import pandas as pd

    if isinstance(cols, pd.DataFrame):
        return cols
    agreed = getattr(cols, "levels", {})
    return pd.DataFrame({k: pd.Categorical(v, categories=agreed[k]) if k in agreed and v.dtype.kind in "OUS" else v
                         for k, v in cols.items() if np.ndim(v) == 1})


def block_rows(cols, mask, block: str) -> np.ndarray:
    """The rows a block uses (:func:`mestim.data.row_mask`), or a DataError naming the block when there are none."""
    m = row_mask(cols, mask)
    if not m.any() and not getattr(cols, "empty_masks", False):  # a federated site may hold none of its rows
        raise DataError(f"block '{block}' has no rows: its mask selects none of the {m.size} rows")
    return m


def level_label(value) -> str:
    """A level as a label: 1.0 → '1', 'f' → 'f' (treatment values, classes)."""
    return str(int(value)) if isinstance(value, (int, float, np.number)) and float(value).is_integer() else str(value)


def clean_in_mask(values: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    """``values`` with rows outside ``mask`` set to 0 (a new array), after checking rows inside are finite."""
    check_finite(values, name, where=mask)
    out = aligned(values, values.shape[0])
    out[~mask] = 0.0
    return out


def aligned(values, n: int) -> np.ndarray:
    """A new float64 array of ``n`` rows filled with ``values`` (broadcast), aligned so that the device shares it
    rather than copying it (:func:`mestim.data.aligned_empty`)."""
    values = np.asarray(values)
    out = aligned_empty((n,) + values.shape[1:])
    out[...] = values
    return out


def clean_design(cols, x: np.ndarray, labels, mask: np.ndarray) -> np.ndarray:
    """A design matrix with rows outside ``mask`` set to 0, after checking rows inside are finite.

    A non-finite entry is reported by the data column it comes from (a column the design's labels name that is
    missing or non-finite at the first bad row: ``age`` for ``age`` or ``np.log(age)``), else by the design's
    label, so a user reads the name of their own column rather than the block's internal matrix. Every row in the
    mask and x of floats: x itself (the design is 88 MB at 10⁶ rows × 11; a copy is a fifth of a fit)."""
    bad = mask & ~np.isfinite(x).all(axis=1) if not np.isfinite(np.sum(x)) else None  # one pass when all finite
    if bad is not None and bad.any():
        row = int(np.flatnonzero(bad)[0])
        for name, col in cols.items():
            col = np.asarray(col)
            if col.ndim != 1 or not any(re.search(rf"(?<![\w.]){re.escape(str(name))}(?!\w)", lab) for lab in labels):
                continue
            missing = missing_values(col)
            if missing[row]:
                check_finite(np.where(missing, np.nan, 0.0), name, where=mask)
        j = int(np.flatnonzero(~np.isfinite(x[row]))[0])
        check_finite(x[:, j], labels[j], where=mask)
    if mask.all():
        return x.astype(float, copy=False)
    return np.where(mask[:, None], x, 0.0).astype(float, copy=False)
