"""From the user's table to the columns the transport stacks read (validated, NaN-free where used).

Rows: S = target label (the target sample, S=0 in the paper) or a trial label (S ∈ 𝒮 = {1..m}). Derived
columns (all float, finite on every row; values the estimators must not use are set to 0 *before* fitting
— masked, never multiplied by NaN):

    tr.X      (n, k)   design row x = [1, covariates]            (all rows: covariates must be complete)
    tr.S0     (n,)     I(S = target)
    tr.R      (n,)     I(S ∈ 𝒮)
    tr.Shot   (n, m)   I(S = s_j), j = 1..m
    tr.D      (n, m−1) trial dummies I(S = s_j), j = 2..m (trial main effects; 0 on target rows)
    tr.Zhot   (n, C)   I(Z = z_c) on trial rows (0 on target rows)
    tr.Zcode  (n,)     arm index 0..C−1 on trial rows (0 on target rows)
    tr.Y      (n,)     Y on trial rows (0 on target rows)
    tr.T0hot  (n, C)   I(Z = z_c) on target rows with Z and Y observed (trial emulation), else 0
    tr.Y0     (n,)     Y on those target rows, else 0
    tr.Scode  (n,)     0 for the target, j for trial s_j (multinomial participation model)

plus one 1-D column per covariate (named by its label) and per arm/trial indicator used by the working
models' designs (``[Z=z]``, ``[Z=z]*X1``, ``[S=s]``), so that the models' coefficient labels are readable.

Covariates are numeric columns, text (or categorical) columns, or a formula. A text covariate given by name is
coded as treatment-contrast indicators against its first level in sorted order (``sex[T.male]``; the coding is
reported in ``notes``); a formula (``~ X1 + C(sex)``) is built by formulaic on the whole table, text columns
included. Treatment arms may be numbers or text labels (arms in sorted order; the first is the reference).

The target sample's treatment and outcome are used only by the target-only comparison (trial emulation), and
only when they can identify it: :attr:`TransportData.target_only_problem` says why not (no rows with Z and Y, an
arm absent — placeholders such as Z = 0 on every target row — or an outcome that never varies).
"""

from __future__ import annotations

import dataclasses
import difflib

import numpy as np
import pandas as pd

from mestim.errors import DataError, SpecificationError

MAX_LEVELS_BY_NAME = 50  # a text covariate given by name with more levels is likely an identifier or a typo'd number
SHOWN = 12  # column names or values listed in a message before "… and N more"


@dataclasses.dataclass
class TransportData:
    """The validated analysis data: derived columns and what they mean."""

    columns: dict
    trials: list  # trial labels s_1..s_m (sorted)
    arms: list  # treatment levels z_0..z_{C−1} (sorted; z_0 the reference)
    covariates: list  # covariate labels (columns of tr.X after the intercept)
    target: object
    n_target: int
    n_trial: dict  # label -> rows
    binary_outcome: bool  # Y ∈ {0, 1} on trial rows
    target_outcome_rows: int  # target rows with Z and Y observed
    frame: pd.DataFrame  # the covariates as a DataFrame (design columns, then text covariates; for bias functions)
    study: str
    treatment: str
    outcome: str
    target_only_problem: str | None = None  # why the target-only comparison cannot run (None: it can)
    target_only_identified: bool = False  # target rows with Z and Y in every arm (the outcome may still be constant)
    notes: list = dataclasses.field(default_factory=list)  # how the data were coded (text covariates, …)

    @property
    def m(self) -> int:
        return len(self.trials)

    @property
    def n_arms(self) -> int:
        return len(self.arms)

    @property
    def k(self) -> int:
        return len(self.covariates) + 1


def label(v) -> str:
    """A level as text: 1.0 → '1', 'a' → 'a'."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def listing(items, shown: int = SHOWN) -> str:
    """``a, b, c`` — or the first ``shown`` and "… and N more": a message stays one readable line."""
    items = [str(x) for x in items]
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f", … and {more} more" if more > 0 else "")


def missing_column(name: str, columns, what: str = "column") -> DataError:
    """DataError for a column that is not in the data: close matches (case-insensitive) or the available ones."""
    return DataError(f"{what} '{name}' is not in the data; {column_hint(name, columns)}")


def column_hint(name: str, columns) -> str:
    """"did you mean 'Age'?" (close matches, case-insensitive) or "available columns: …" (summarised)."""
    names = [str(c) for c in columns]
    by_lower = {c.lower(): c for c in names}
    close = [by_lower[c] for c in difflib.get_close_matches(str(name).lower(), list(by_lower), n=3, cutoff=0.7)]
    return f"did you mean {close[0]!r}?" if close else f"available columns: {listing(sorted(names))}"


def arm_codes(values, arms: list) -> np.ndarray:
    """Index of each value among ``arms``, NaN where it is none of them: a value names an arm as text ("drug") or
    as a number (1, 1.0 and "1" name the same arm). Vectorised over rows; one pass per arm."""
    series = pd.Series(np.asarray(values), dtype=object)
    text = series.astype(str).to_numpy()
    numeric = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    codes = np.full(len(series), np.nan)
    for c, arm in enumerate(arms):
        as_number = pd.to_numeric(pd.Series([label(arm)]), errors="coerce").iloc[0]
        hit = (text == label(arm)) | (numeric == as_number)
        codes[hit & np.isnan(codes)] = c
    codes[series.isna().to_numpy()] = np.nan
    return codes


def as_frame(df) -> pd.DataFrame:
    """The user's table as a pandas DataFrame (pandas, polars or pyarrow tables, dicts of columns)."""
    if isinstance(df, pd.DataFrame):
        return df
    if hasattr(df, "to_pandas"):  # polars, pyarrow
        return df.to_pandas()
    try:
        return pd.DataFrame(df)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"data must be a table (a pandas DataFrame or a dict of columns): {e}") from None


def _find_level(values: np.ndarray, wanted, what: str, column: str):
    """The element of ``values`` equal to ``wanted`` (compared as numbers or as text)."""
    for v in values:
        if v == wanted or label(v) == label(wanted):
            return v
    raise DataError(f"{what} {label(wanted)!r} does not occur in column '{column}' "
                    f"(values: {listing(label(v) for v in values)})")


def prepare_data(df, *, study: str, treatment: str, outcome: str, covariates=None, formula: str | None = None,
                 target=0, outcome_family: str = "auto", extra_trial_columns=()) -> TransportData:
    """Validate the table and build the derived columns (see the module docstring)."""
    df = as_frame(df)
    if len(df) == 0:
        raise DataError("the data has no rows")
    for role, col in (("study", study), ("treatment", treatment), ("outcome", outcome)):
        if col not in df.columns:
            raise missing_column(col, df.columns, f"{role} column")
    s_raw = df[study].to_numpy()
    if pd.isna(s_raw).any():
        raise DataError(f"study column '{study}' has {int(pd.isna(s_raw).sum())} missing value(s); every row needs a study label")
    levels = sorted(pd.unique(s_raw), key=lambda v: (isinstance(v, str), v))
    target_level = _find_level(levels, target, "target label", study)
    trials = [v for v in levels if not (v == target_level)]
    if not trials:
        raise DataError(f"column '{study}' has only the target label {label(target_level)!r}: no trial rows to transport from")
    source = pd.Categorical(s_raw, categories=[target_level, *trials]).codes.astype(int)  # 0 target, j trial s_j
    is_target = source == 0
    n = len(df)
    R = ~is_target
    xmat, labels, frame, notes = _covariates(df, covariates, formula, is_target, source)
    # treatment (numbers or text labels) and outcome on trial rows
    z_vals = df[treatment].to_numpy()
    y_raw = pd.to_numeric(df[outcome], errors="coerce").to_numpy(dtype=float)
    nonnum = R & pd.isna(y_raw) & ~pd.isna(df[outcome].to_numpy())
    if nonnum.any():
        raise DataError(f"outcome column '{outcome}' has non-numeric values in trial rows (e.g. "
                        f"{df[outcome].to_numpy()[nonnum][0]!r}); recode it as numbers (0/1 for a binary outcome)")
    for name, vals in ((treatment, pd.isna(z_vals)), (outcome, ~np.isfinite(y_raw))):
        if (R & vals).any():
            rows = np.flatnonzero(R & vals)
            raise DataError(f"column '{name}' has {rows.size} NaN/missing value(s) in trial rows (first at row {rows[0]}, "
                            f"{study}={label(s_raw[rows[0]])}); only target rows ({study}={label(target_level)}) may lack "
                            "treatment and outcome")
    for col in extra_trial_columns:
        if col not in df.columns:
            raise missing_column(col, df.columns)
        if (R & pd.isna(df[col].to_numpy())).any():
            raise DataError(f"column '{col}' has {int((R & pd.isna(df[col].to_numpy())).sum())} NaN/missing value(s) "
                            "in trial rows")
    arms = _arms(z_vals[R], treatment)
    z_code = arm_codes(z_vals, arms)  # arm index, NaN off the arms (target placeholders outside the arms)
    n_trial = {}
    for j, s in enumerate(trials, start=1):
        rows = source == j
        n_trial[s] = int(rows.sum())
        present = np.unique(z_code[rows])
        if present.size < 2:
            raise DataError(f"trial {study}={label(s)} has one arm only ({treatment}={label(arms[int(present[0])])}, "
                            f"{rows.sum()} rows): a trial must randomise between at least two arms; drop it or merge it")
        absent = [label(a) for c, a in enumerate(arms) if c not in present]
        if absent:
            raise DataError(f"trial {study}={label(s)} has no rows in arm(s) {treatment}={absent}; every trial must include "
                            f"every arm compared ({[label(a) for a in arms]}); subset the arms or the trials")
    ybin = bool(np.isin(np.unique(y_raw[R]), [0.0, 1.0]).all())
    if outcome_family == "logistic" and not ybin:
        vals = np.setdiff1d(np.unique(y_raw[R]), [0.0, 1.0])[:5]
        raise DataError(f"a logistic outcome model was asked for, but outcome '{outcome}' takes values {vals.tolist()} "
                        "besides 0/1 in the trials; use outcome_model='linear' or recode the outcome as 0/1")
    m = len(trials)
    cols: dict[str, np.ndarray] = {}
    for j, lab in enumerate(labels):
        cols[lab] = xmat[:, j]
    X = np.column_stack([np.ones(n), xmat])
    cols["tr.X"] = X
    cols["tr.S0"] = is_target.astype(float)
    cols["tr.R"] = R.astype(float)
    shot = (source[:, None] == np.arange(1, m + 1)[None, :]).astype(float)
    cols["tr.Shot"] = shot
    cols["tr.D"] = shot[:, 1:] if m > 1 else np.zeros((n, 0))
    cols["tr.Scode"] = source.astype(float)
    zhot = (R[:, None] & (z_code[:, None] == np.arange(len(arms))[None, :])).astype(float)
    cols["tr.Zhot"] = zhot
    cols["tr.Zcode"] = np.where(R, z_code, 0.0)
    cols["tr.Y"] = np.where(R, y_raw, 0.0)
    t_obs = is_target & np.isfinite(z_code) & np.isfinite(y_raw)
    cols["tr.T0hot"] = (t_obs[:, None] & (z_code[:, None] == np.arange(len(arms))[None, :])).astype(float)
    cols["tr.Y0"] = np.where(t_obs, y_raw, 0.0)
    for j, s in enumerate(trials, start=1):
        cols[f"[{study}={label(s)}]"] = shot[:, j - 1]
    for c, a in enumerate(arms):
        cols[f"[{treatment}={label(a)}]"] = zhot[:, c]
        for lab in labels:
            cols[f"[{treatment}={label(a)}]*{lab}"] = zhot[:, c] * cols[lab]
    problem, identified = _target_only_problem(t_obs, cols["tr.T0hot"], y_raw, arms, treatment, outcome)
    return TransportData(cols, trials, arms, labels, target_level, int(is_target.sum()), n_trial, ybin,
                         int(t_obs.sum()), frame, study, treatment, outcome, problem, identified, notes)


def _arms(values: np.ndarray, treatment: str) -> list:
    """Sorted treatment levels seen in the trials: numbers, or text labels when the column holds text."""
    numeric = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    if np.isfinite(numeric).all():
        arms = sorted(np.unique(numeric).tolist())
    else:
        arms = sorted({label(v) for v in pd.unique(values)})
    if len(arms) < 2:
        raise DataError(f"treatment '{treatment}' takes the single value {label(arms[0])} in the trials: nothing to compare")
    return arms


def _target_only_problem(t_obs, t0hot, y, arms, treatment, outcome) -> tuple[str | None, bool]:
    """(why the target-only comparison should not run, or None; whether its arm means are identified at all)."""
    if not t_obs.any():
        return "no target row has both treatment and outcome", False
    present = [label(a) for c, a in enumerate(arms) if t0hot[:, c].any()]
    constant = np.unique(y[t_obs]).size == 1
    if len(present) < len(arms):
        absent = [label(a) for a in arms if label(a) not in present]
        seen = f"every target row has {treatment}={present[0]}" if len(present) == 1 else f"arms {present} only"
        return (f"the target sample has no rows in arm(s) {treatment}={absent} ({seen}"
                f"{'; placeholders?' if constant else ''}), so its arm means are not identified"), False
    if constant:
        return f"the outcome '{outcome}' takes the single value {label(y[t_obs][0])} in every target row (placeholders?)", True
    return None, True


def _covariates(df, covariates, formula, is_target, source):
    """(design matrix without intercept (n, k−1), labels, covariate frame, notes on the coding)."""
    from estimators.design import formula_design

    if formula is None and covariates is None:
        raise SpecificationError("give covariates=[...] or formula='~ ...'")
    notes = []
    if formula is None:
        covs = [covariates] if isinstance(covariates, str) else list(covariates)
        missing = [c for c in covs if c not in df.columns]
        if missing:
            raise DataError(f"covariate(s) {missing} are not in the data; {column_hint(missing[0], df.columns)}")
        text = [c for c in covs if not pd.api.types.is_numeric_dtype(df[c])]
        if not text:
            _raise_missing(df, covs, is_target)
            xmat = df[covs].to_numpy(dtype=float)
            return _finite(xmat), [str(c) for c in covs], pd.DataFrame(xmat, columns=[str(c) for c in covs]), notes
        for c in text:
            _refuse_stray_text(df[c], c)
        formula = "~ " + " + ".join(f"`{c}`" for c in covs)
    xmat, labels, variables = formula_design(df, formula)
    keep = [j for j, lab in enumerate(labels) if lab not in ("Intercept", "(Intercept)")]
    xmat, labels = xmat[:, keep], [labels[j] for j in keep]
    _raise_missing(df, variables, is_target)
    if np.isnan(xmat).any():  # a NaN made by the formula itself (log of a negative, …)
        _raise_missing(pd.DataFrame(xmat, columns=labels), labels, is_target)
    frame = pd.DataFrame(xmat, columns=labels)
    categorical = [v for v in variables if not pd.api.types.is_numeric_dtype(df[v])]
    for v in categorical:
        _check_level_support(df[v], v, source)
        frame[v] = df[v].to_numpy()
        if covariates is not None:
            levels = pd.Categorical(df[v].dropna()).categories
            cols = [lab for lab in labels if lab.startswith(f"{v}[")]
            notes.append(f"text covariate '{v}' coded as {len(cols)} indicator(s) {cols} against the reference "
                         f"level {label(levels[0])!r} (first in sorted order; another coding: --formula '~ C({v}, "
                         f"contr.treatment(\"…\"))')")
    return _finite(xmat), labels, frame, notes


def _finite(xmat):
    if not np.all(np.isfinite(xmat)):
        raise DataError("covariates have infinite values; drop or recode those rows")
    return xmat


def _refuse_stray_text(col: pd.Series, name: str) -> None:
    """A text covariate given by name: refuse numbers stored as text and identifier-like columns."""
    values = col.dropna()
    as_numbers = pd.to_numeric(values, errors="coerce")
    if as_numbers.notna().mean() >= 0.5:
        bad = values[as_numbers.isna()].unique()
        raise DataError(f"covariate '{name}' is not numeric: {len(bad)} value(s) are text among numbers "
                        f"(e.g. {bad[0]!r}); fix those entries (or mark them missing), or code '{name}' as categories "
                        f"with formula='~ C({name})'")
    n_levels = values.nunique()
    if n_levels > MAX_LEVELS_BY_NAME:
        comma = values.astype(str).str.fullmatch(r"[+-]?\d*,\d+").mean() > 0.5
        raise DataError(f"text covariate '{name}' has {n_levels} distinct values (an identifier?); as a covariate it "
                        f"would add {n_levels - 1} indicator columns: " + (
                            f"they look like numbers with a decimal comma (e.g. {values.iloc[0]!r}): read the file "
                            "with --decimal , (Python: pandas.read_csv(..., decimal=','))" if comma else
                            f"coarsen it, or give formula='~ C({name})' if that is intended"))


def _check_level_support(col: pd.Series, name: str, source) -> None:
    """Every level of a categorical covariate seen in the target must occur in some trial (positivity)."""
    values = col.to_numpy()
    known = pd.notna(values)
    in_target = set(pd.unique(values[known & (source == 0)]))
    in_trials = set(pd.unique(values[known & (source > 0)]))
    orphan = sorted(map(label, in_target - in_trials))
    if orphan:
        raise DataError(f"covariate '{name}' takes level(s) {orphan} in the target sample but in no trial: the trials "
                        "say nothing about those people (positivity fails); merge the level with another, or restrict "
                        "the target population")


def _where(rows: np.ndarray, shown: int = 5) -> str:
    """'rows 3, 7 (from 0, as the data frame's positions; lines 5, 9 of a CSV file)' for a boolean row mask:
    the positions the engine's messages use, and the lines a user finds in the file (the header is line 1)."""
    hit = np.flatnonzero(rows)
    more = f", … ({hit.size - shown} more)" if hit.size > shown else ""
    return (f"rows {', '.join(str(i) for i in hit[:shown])}{more} (from 0, as the data frame's positions; lines "
            f"{', '.join(str(i + 2) for i in hit[:shown])}{more} of a CSV file)")


def _raise_missing(df, covs, is_target):
    """DataError naming the first covariate with missing values and where they are (target sample / trials)."""
    for c in covs:
        col = df[c]
        bad = col.isna().to_numpy() if not pd.api.types.is_numeric_dtype(col) else \
            ~np.isfinite(pd.to_numeric(col, errors="coerce").to_numpy(dtype=float))
        if bad.any():
            where_t = int((bad & is_target).sum())
            where_r = int((bad & ~is_target).sum())
            parts = []
            if where_t:
                parts.append(f"{where_t} row(s) of the target sample ({_where(bad & is_target)})")
            if where_r:
                parts.append(f"{where_r} trial row(s) ({_where(bad & ~is_target)})")
            raise DataError(f"covariate '{c}' is missing (NaN) in {' and '.join(parts)}; the transport estimators need "
                            "every covariate in the target sample and the trials: drop or impute those rows")
