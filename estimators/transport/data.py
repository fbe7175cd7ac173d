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
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from mestim.errors import DataError, SpecificationError


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
    frame: pd.DataFrame  # the covariates as a DataFrame (for user bias functions)
    study: str
    treatment: str
    outcome: str

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


def _find_level(values: np.ndarray, wanted, what: str, column: str):
    """The element of ``values`` equal to ``wanted`` (compared as numbers or as text)."""
    for v in values:
        if v == wanted or label(v) == label(wanted):
            return v
    shown = ", ".join(label(v) for v in values[:20])
    raise DataError(f"{what} {label(wanted)!r} does not occur in column '{column}' (values: {shown})")


def prepare_data(df, *, study: str, treatment: str, outcome: str, covariates=None, formula: str | None = None,
                 target=0, outcome_family: str = "auto", extra_trial_columns=()) -> TransportData:
    """Validate the table and build the derived columns (see the module docstring)."""
    if not isinstance(df, pd.DataFrame):
        try:
            df = pd.DataFrame(df)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"data must be a table (a pandas DataFrame or a dict of columns): {e}") from None
    if len(df) == 0:
        raise DataError("the data has no rows")
    for role, col in (("study", study), ("treatment", treatment), ("outcome", outcome)):
        if col not in df.columns:
            raise DataError(f"{role} column '{col}' is not in the data; available columns: {sorted(map(str, df.columns))}")
    s_raw = df[study].to_numpy()
    if pd.isna(s_raw).any():
        raise DataError(f"study column '{study}' has {int(pd.isna(s_raw).sum())} missing value(s); every row needs a study label")
    levels = np.array(sorted(pd.unique(s_raw), key=lambda v: (isinstance(v, str), v)), dtype=object)
    target_level = _find_level(levels, target, "target label", study)
    trials = [v for v in levels if not (v == target_level)]
    if not trials:
        raise DataError(f"column '{study}' has only the target label {label(target_level)!r}: no trial rows to transport from")
    is_target = np.array([v == target_level for v in s_raw])
    n = len(df)
    R = ~is_target
    # covariates
    if formula is None and covariates is None:
        raise SpecificationError("give covariates=[...] or formula='~ ...'")
    if formula is not None:
        from estimators.design import design_matrix

        frame_cols = {str(c): df[c].to_numpy(dtype=float) for c in df.columns
                      if pd.api.types.is_numeric_dtype(df[c]) and str(c) not in (study,)}
        xmat, labels = design_matrix(frame_cols, formula=formula)
        keep = [j for j, lab in enumerate(labels) if lab not in ("Intercept", "(Intercept)")]
        xmat, labels = xmat[:, keep], [labels[j] for j in keep]
        if np.isnan(xmat).any():
            _raise_missing_covariate(pd.DataFrame(xmat, columns=labels), labels, is_target)
    else:
        covs = [covariates] if isinstance(covariates, str) else list(covariates)
        missing = [c for c in covs if c not in df.columns]
        if missing:
            raise DataError(f"covariate(s) {missing} are not in the data; available columns: {sorted(map(str, df.columns))}")
        bad = [c for c in covs if not pd.api.types.is_numeric_dtype(df[c])]
        if bad:
            raise DataError(f"covariate(s) {bad} are not numeric; recode them as numbers or use formula='~ C(...)'")
        _raise_missing_covariate(df, covs, is_target)
        xmat = df[covs].to_numpy(dtype=float)
        labels = [str(c) for c in covs]
    if not np.all(np.isfinite(xmat)):
        raise DataError("covariates have infinite values; drop or recode those rows")
    # treatment and outcome on trial rows
    z_raw = pd.to_numeric(df[treatment], errors="coerce").to_numpy(dtype=float)
    y_raw = pd.to_numeric(df[outcome], errors="coerce").to_numpy(dtype=float)
    for name, vals in ((treatment, z_raw), (outcome, y_raw)):
        nonnum = R & pd.isna(vals) & ~pd.isna(df[name].to_numpy())
        if nonnum.any():
            raise DataError(f"column '{name}' has non-numeric values in trial rows (e.g. {df[name].to_numpy()[nonnum][0]!r})")
        if (R & ~np.isfinite(vals)).any():
            rows = np.flatnonzero(R & ~np.isfinite(vals))
            raise DataError(f"column '{name}' has {rows.size} NaN/missing value(s) in trial rows (first at row {rows[0]}, "
                            f"{study}={label(s_raw[rows[0]])}); only target rows ({study}={label(target_level)}) may lack "
                            "treatment and outcome")
    for col in extra_trial_columns:
        if col not in df.columns:
            raise DataError(f"column '{col}' is not in the data; available columns: {sorted(map(str, df.columns))}")
        vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        if (R & ~np.isfinite(vals)).any():
            raise DataError(f"column '{col}' has {int((R & ~np.isfinite(vals)).sum())} NaN/missing value(s) in trial rows")
    arms = sorted(np.unique(z_raw[R]).tolist())
    if len(arms) < 2:
        raise DataError(f"treatment '{treatment}' takes the single value {label(arms[0])} in the trials: nothing to compare")
    trial_idx = np.zeros(n, int)
    n_trial = {}
    for j, s in enumerate(trials, start=1):
        rows = np.array([v == s for v in s_raw])
        trial_idx[rows] = j
        n_trial[s] = int(rows.sum())
        present = np.unique(z_raw[rows])
        if present.size < 2:
            raise DataError(f"trial {study}={label(s)} has one arm only ({treatment}={label(present[0])}, {rows.sum()} rows): "
                            "a trial must randomise between at least two arms; drop it or merge it")
        absent = [label(a) for a in arms if a not in present]
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
    shot = np.stack([(trial_idx == j) for j in range(1, m + 1)], axis=1).astype(float)
    cols["tr.Shot"] = shot
    cols["tr.D"] = shot[:, 1:] if m > 1 else np.zeros((n, 0))
    cols["tr.Scode"] = trial_idx.astype(float)
    zclean = np.where(R, z_raw, np.nan)
    zhot = np.stack([(zclean == a) for a in arms], axis=1).astype(float)
    cols["tr.Zhot"] = zhot
    cols["tr.Zcode"] = np.where(R, np.searchsorted(np.asarray(arms), np.where(R, z_raw, arms[0])), 0).astype(float)
    cols["tr.Y"] = np.where(R, y_raw, 0.0)
    t_obs = is_target & np.isfinite(z_raw) & np.isfinite(y_raw) & np.isin(z_raw, arms)
    cols["tr.T0hot"] = np.stack([t_obs & (z_raw == a) for a in arms], axis=1).astype(float)
    cols["tr.Y0"] = np.where(t_obs, y_raw, 0.0)
    for j, s in enumerate(trials, start=1):
        cols[f"[{study}={label(s)}]"] = shot[:, j - 1]
    for c, a in enumerate(arms):
        cols[f"[{treatment}={label(a)}]"] = zhot[:, c]
        for lab in labels:
            cols[f"[{treatment}={label(a)}]*{lab}"] = zhot[:, c] * cols[lab]
    frame = pd.DataFrame(xmat, columns=labels)
    return TransportData(cols, trials, arms, labels, target_level, int(is_target.sum()), n_trial, ybin,
                         int(t_obs.sum()), frame, study, treatment, outcome)


def _raise_missing_covariate(df, covs, is_target):
    for c in covs:
        vals = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(vals)
        if bad.any():
            where_t = int((bad & is_target).sum())
            where_r = int((bad & ~is_target).sum())
            parts = []
            if where_t:
                parts.append(f"{where_t} row(s) of the target sample")
            if where_r:
                parts.append(f"{where_r} trial row(s)")
            raise DataError(f"covariate '{c}' is missing (NaN) in {' and '.join(parts)}; the transport estimators need "
                            "every covariate in the target sample and the trials: drop or impute those rows")
