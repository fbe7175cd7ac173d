"""Meta-analysis of 2×2 tables from a DataFrame: one meta-analysis, or thousands at once (batch mode).

Input tables (one row per study; for batch mode also a meta-analysis id column). Accepted column names:

- 2×2 cells (metafor): ``ai``, ``bi`` (treated: events, non-events), ``ci``, ``di`` (control: events, non-events);
- events and totals per arm (R ``meta::metabin``): ``event.e``, ``n.e`` (experimental/treated), ``event.c``,
  ``n.c`` (control); underscores also accepted (``event_e``, ``n_e``, ``event_c``, ``n_c``);
- events and totals per arm (metafor): ``ai``, ``n1i``, ``ci``, ``n2i``.

Other names are mapped with ``columns={"event.e": "my_col", ...}`` (CLI: ``--columns event.e=my_col,...``);
roles are the names above plus ``study`` (study label, optional; default: a ``label`` or ``study`` column).

Validation (nothing is dropped silently; every exclusion is listed in ``report["excluded"]``):

- malformed rows — a count missing or non-numeric, negative, or events > total — raise a
  :class:`~mestim.errors.DataError` listing them (``invalid="exclude"`` excludes them instead, and reports them);
- a study with an empty arm (n₁ = 0 or n₀ = 0) carries no comparison: excluded and reported;
- a meta-analysis with no usable study: reported, no result row;
- zero cells are kept: the classical per-study effect sizes get metafor's continuity correction (0.5 added to
  the four cells of a study with a zero cell), Mantel–Haenszel and the causal estimator use the raw counts; a
  note says how many studies were corrected. A causal ratio whose pooled risks are 0 (or 1) is undefined: NaN,
  with a note.
- a single-study meta-analysis is defined (see :mod:`estimators.meta_classical`).

Batch mode pads the meta-analyses to a common number of studies (a study mask) and fits all of them in one
``jax.jit(jax.vmap(...))`` call: classical FE / DL / REML / PM / Hartung–Knapp / MH and the causal estimate with its
closed-form sandwich SE (equal to the engine's stacked sandwich, see :mod:`estimators.causal_meta`).
"""

from __future__ import annotations

import functools
import math
import os
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from mestim.errors import DataError

from . import causal_meta as cm
from . import meta_classical as mc

ROLES_2X2 = ("ai", "bi", "ci", "di")
ARM_NAME_SETS = (("event.e", "n.e", "event.c", "n.c"), ("event_e", "n_e", "event_c", "n_c"),
                 ("ai", "n1i", "ci", "n2i"))
METHODS = ("causal", "FE", "DL", "REML", "PM", "DL_HK", "REML_HK", "PM_HK", "MH")
CLASSICAL_DEFAULT = "REML"


def load_bcg() -> pd.DataFrame:
    """The BCG vaccine trials (Colditz et al. 1994; metafor's ``dat.bcg``): 13 studies, columns study, label, ai,
    bi, ci, di (arm 1 = vaccinated, events = TB cases). Bundled with the package."""
    with resources.files("estimators").joinpath("data/bcg.csv").open("r") as f:
        return pd.read_csv(f)


# ------------------------------------------------------------------------------------------ input tables
def standardise_tables(df: pd.DataFrame, columns: dict | None = None, by: str | None = None,
                       invalid: str = "raise") -> tuple[pd.DataFrame, dict]:
    """(tables, report): tables with columns meta_id, study, ai, bi, ci, di (floats, one row per usable study) and a
    report {"excluded": [{meta_id, study, row, reason}], "notes": [...], "format": ...}. See the module docstring
    for accepted names and the validation rules. ``invalid``: "raise" (default) or "exclude"."""
    if invalid not in ("raise", "exclude"):
        raise DataError(f"invalid={invalid!r}: use 'raise' or 'exclude'")
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    if len(df) == 0:
        raise DataError("the table has no rows")
    columns = dict(columns or {})
    known = set(ROLES_2X2) | {r for s in ARM_NAME_SETS for r in s} | {"study"}
    bad_roles = sorted(set(columns) - known)
    if bad_roles:
        raise DataError(f"unknown column role(s) {bad_roles}; roles are {sorted(known)}")
    missing_cols = [c for c in columns.values() if c not in df.columns]
    if missing_cols:
        raise DataError(f"mapped column(s) {missing_cols} are not in the table; its columns are {list(df.columns)}")
    name = {**{c: c for c in df.columns}, **{role: col for role, col in columns.items()}}
    have = lambda roles: all(r in columns or r in df.columns for r in roles)  # noqa: E731
    if have(("ai", "bi", "ci", "di")):
        fmt, roles = "2x2", ROLES_2X2
    else:
        found = next((s for s in ARM_NAME_SETS if have(s)), None)
        if found is None:
            raise DataError("cannot find the counts: give columns ai, bi, ci, di (2×2 cells) or event.e, n.e, "
                            f"event.c, n.c (events/totals per arm), or map yours with columns=/--columns; the "
                            f"table has {list(df.columns)}")
        fmt, roles = "arms", found
    if by is not None and by not in df.columns:
        raise DataError(f"meta-analysis id column '{by}' is not in the table; its columns are {list(df.columns)}")
    raw = {r: pd.to_numeric(df[name[r]], errors="coerce").to_numpy(float) for r in roles}
    orig = {r: df[name[r]].to_numpy() for r in roles}
    if fmt == "2x2":
        ai, bi, ci, di = (raw[r] for r in roles)
        e1, t1, e0, t0 = ai, ai + bi, ci, ci + di
    else:
        e1, t1, e0, t0 = (raw[r] for r in roles)
    study_col = columns.get("study", next((c for c in ("label", "study") if c in df.columns), None))
    study = df[study_col].astype(str).to_numpy() if study_col else np.array([str(i + 1) for i in range(len(df))])
    meta_id = df[by].to_numpy() if by is not None else np.array(["all"] * len(df), dtype=object)
    reasons = [[] for _ in range(len(df))]
    for r in roles:
        for i in np.flatnonzero(~np.isfinite(raw[r])):
            v = orig[r][i]
            reasons[i].append(f"{name[r]} is missing" if pd.isna(v) else f"{name[r]}={v!r} is not a number")
        for i in np.flatnonzero(raw[r] < 0):
            reasons[i].append(f"{name[r]}={raw[r][i]:g} is negative")
    if fmt == "arms":
        for (e, t, en, tn) in ((e1, t1, roles[0], roles[1]), (e0, t0, roles[2], roles[3])):
            for i in np.flatnonzero(e > t):
                reasons[i].append(f"{name[en]}={e[i]:g} exceeds {name[tn]}={t[i]:g}")
    bad = np.array([bool(r) for r in reasons])
    excluded = []
    if bad.any():
        listed = [f"row {i + 1} (study {study[i]}): {'; '.join(reasons[i])}" for i in np.flatnonzero(bad)]
        if invalid == "raise":
            more = f" … and {len(listed) - 5} more" if len(listed) > 5 else ""
            raise DataError(f"{len(listed)} malformed row(s): " + " | ".join(listed[:5]) + more
                            + "; fix them, or exclude them with invalid='exclude' (CLI: --drop-invalid)")
        excluded += [{"meta_id": _jsonable(meta_id[i]), "study": study[i], "row": int(i + 1),
                      "reason": "malformed: " + "; ".join(reasons[i])} for i in np.flatnonzero(bad)]
    with np.errstate(invalid="ignore"):
        empty_arm = ~bad & ((t1 == 0) | (t0 == 0))
    for i in np.flatnonzero(empty_arm):
        which = "both arms" if t1[i] == 0 and t0[i] == 0 else ("arm 1 (treated)" if t1[i] == 0 else "arm 0 (control)")
        excluded.append({"meta_id": _jsonable(meta_id[i]), "study": study[i], "row": int(i + 1),
                         "reason": f"{which} has no participants: no comparison (study excluded)"})
    keep = ~bad & ~empty_arm
    out = pd.DataFrame({"meta_id": meta_id[keep], "study": study[keep], "ai": e1[keep], "bi": (t1 - e1)[keep],
                        "ci": e0[keep], "di": (t0 - e0)[keep]})
    notes = []
    all_ids = pd.unique(meta_id)
    kept_ids = set(pd.unique(out["meta_id"])) if len(out) else set()
    empty_metas = [m for m in all_ids if m not in kept_ids]
    for m in empty_metas:
        excluded.append({"meta_id": _jsonable(m), "study": None, "row": None,
                         "reason": "meta-analysis has no usable study: no result"})
    if len(out) == 0:
        raise DataError("no usable study left: " + "; ".join(e["reason"] for e in excluded[:5]))
    zero = (out[list(ROLES_2X2)] == 0).any(axis=1)
    if zero.any():
        notes.append(f"{int(zero.sum())} stud(ies) with a zero cell: classical effect sizes use the continuity "
                     "correction 0.5 on all four cells (MH and causal use the raw counts)")
    dz = (out["ai"] == 0) & (out["ci"] == 0)
    if dz.any():
        notes.append(f"{int(dz.sum())} stud(ies) with no events in either arm are kept (they carry weight in the "
                     "causal target and, corrected, in the classical pooling)")
    return out, {"excluded": excluded, "notes": notes, "format": fmt}


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


# ------------------------------------------------------------------------------------------ one meta-analysis
def meta_analysis(df: pd.DataFrame | None = None, measure: str = "RR", columns: dict | None = None,
                  target_weights=None, invalid: str = "raise", level: float = 0.95) -> tuple[pd.DataFrame, dict]:
    """Classical and causal meta-analysis of one set of 2×2 tables (a DataFrame; BCG if None).

    Returns (results, report): one row per method — causal (engine sandwich SE, with ``se_paper`` and
    ``se_design`` alongside), FE, DL, REML, PM, DL_HK, REML_HK, PM_HK, MH — with estimate, se, ci_low, ci_high
    on the analysis scale (log for RR/OR), tau2, I2, Q, k, prediction interval; and the validation report.
    Formulas and references: :mod:`estimators.meta_classical`, :mod:`estimators.causal_meta`.
    """
    if measure not in mc.MEASURES:
        raise DataError(f"measure={measure!r}: use one of {mc.MEASURES}")
    tables, report = standardise_tables(load_bcg() if df is None else df, columns, None, invalid)
    counts = [tables[c].to_numpy() for c in ROLES_2X2]
    rows = mc.classical_meta(*counts, measure=measure, level=level)
    try:
        causal = cm.causal_meta(*counts, measure=measure, target_weights=target_weights, level=level)
    except DataError as e:
        report["notes"].append(f"causal: {e}")
        causal = {"method": "causal", "measure": measure, "estimate": np.nan, "se": np.nan, "ci_low": np.nan,
                  "ci_high": np.nan, "k": len(tables)}
    causal.update(tau2=np.nan, I2=np.nan, Q=np.nan)
    out = pd.DataFrame([causal] + rows)
    out.insert(0, "meta_id", "all")
    return out, {**report, "studies": tables}


# ------------------------------------------------------------------------------------------ batch
def pad_tables(tables: pd.DataFrame, bucket: bool = True):
    """(ids, counts (4, M, Kmax), mask (M, Kmax)) from standardised tables; Kmax and M rounded up to powers of two
    (``bucket``) so nearby sizes reuse the compiled function."""
    codes, ids = pd.factorize(tables["meta_id"], sort=False)
    m = ids.size
    order = np.argsort(codes, kind="stable")
    codes_sorted = codes[order]
    starts = np.searchsorted(codes_sorted, np.arange(m))
    pos = np.arange(codes_sorted.size) - starts[codes_sorted]
    kmax = int(pos.max()) + 1
    if bucket:
        kmax = 1 << max(0, math.ceil(math.log2(kmax)))
        mpad = max(8, 1 << math.ceil(math.log2(m)))
    else:
        mpad = m
    counts = np.zeros((4, mpad, kmax))
    mask = np.zeros((mpad, kmax))
    for j, c in enumerate(ROLES_2X2):
        counts[j, codes_sorted, pos] = tables[c].to_numpy(float)[order]
    mask[codes_sorted, pos] = 1.0
    mask[m:, 0] = 1.0  # padded meta-analyses: one dummy study (all-zero cells, harmless), results dropped
    counts[:, m:, 0] = 1.0
    return np.asarray(ids), counts, mask, m


@functools.partial(jax.jit, static_argnames=("measure",))
def batch_core(counts, mask, measure: str):
    """All summaries of M padded meta-analyses at once (vmap over meta-analyses): classical (see
    :func:`estimators.meta_classical.pool_inverse_variance`, MH) and causal (closed form, see
    :func:`estimators.causal_meta.causal_closed_form`). ``counts`` (4, M, Kmax), ``mask`` (M, Kmax)."""

    def one(ai, bi, ci, di, m):
        y, v = mc.effect_sizes(ai, bi, ci, di, measure)
        out = mc.pool_inverse_variance(y, v, m)
        out["MH_est"], out["MH_se"] = mc.mantel_haenszel(ai, bi, ci, di, m, measure)
        causal = cm.causal_closed_form(ai, bi, ci, di, m, measure)
        out.update({f"causal_{k}": v for k, v in causal.items()})
        return out

    return jax.vmap(one)(counts[0], counts[1], counts[2], counts[3], mask)


def meta_analyses(df: pd.DataFrame, by: str, measure: str = "RR", columns: dict | None = None,
                  invalid: str = "raise", classical: str = CLASSICAL_DEFAULT, level: float = 0.95):
    """Many meta-analyses at once from one long table (``by`` = meta-analysis id column).

    Returns (long, wide, report): ``long`` has one row per meta-analysis × method (as :func:`meta_analysis`, the
    causal SE from the closed-form sandwich); ``wide`` one row per meta-analysis with the causal and the
    ``classical`` method's estimate, SE, CI and the flags ``sign_differs``, ``significance_differs`` and
    ``conclusion_differs`` (CI excludes the null for one method only, or the signs differ).
    All meta-analyses are fitted in one vectorised call (:func:`batch_core`).
    """
    if measure not in mc.MEASURES:
        raise DataError(f"measure={measure!r}: use one of {mc.MEASURES}")
    if classical not in METHODS[1:]:
        raise DataError(f"classical={classical!r}: use one of {METHODS[1:]}")
    tables, report = standardise_tables(df, columns, by, invalid)
    ids, counts, mask, m = pad_tables(tables)
    core = {k: np.asarray(v)[:m] for k, v in batch_core(jnp.asarray(counts), jnp.asarray(mask), measure).items()}
    z = stats.norm.ppf(0.5 + level / 2)
    per_meta = mc.summary_rows_arrays(core, measure, level)
    ce, cse = core["causal_estimate"], core["causal_se_sandwich"]
    records = []
    for j in range(m):
        causal = {"method": "causal", "measure": measure, "estimate": ce[j], "se": cse[j],
                  "ci_low": ce[j] - z * cse[j], "ci_high": ce[j] + z * cse[j], "tau2": np.nan, "I2": np.nan,
                  "Q": np.nan, "k": int(core["k"][j]), "se_paper": core["causal_se_paper"][j],
                  "se_design": core["causal_se_design"][j], "psi1": core["causal_psi1"][j],
                  "psi0": core["causal_psi0"][j], "n": core["causal_n"][j]}
        for row in [causal] + per_meta[j]:
            records.append({"meta_id": _jsonable(ids[j]), **row})
    long = pd.DataFrame.from_records(records)
    undefined = ~np.isfinite(ce)
    if undefined.any():
        report["notes"].append(f"causal {measure} undefined (a pooled risk is 0 or 1) in {int(undefined.sum())} "
                               f"meta-analys(es): {[_jsonable(i) for i in ids[:m][undefined][:10]]}")
    wide = comparison_table(long, classical)
    return long, wide, report


def comparison_table(long: pd.DataFrame, classical: str = CLASSICAL_DEFAULT) -> pd.DataFrame:
    """One row per meta-analysis: causal vs ``classical`` estimates, CIs and disagreement flags (null = 0 on the
    analysis scale: RD, log RR, log OR)."""
    piv = {meth: long[long["method"] == meth].set_index("meta_id") for meth in ("causal", classical)}
    c, k = piv["causal"], piv[classical].reindex(piv["causal"].index)
    wide = pd.DataFrame({"meta_id": c.index, "k": c["k"].to_numpy(), "measure": c["measure"].to_numpy(),
                         "causal": c["estimate"].to_numpy(), "causal_se": c["se"].to_numpy(),
                         "causal_ci_low": c["ci_low"].to_numpy(), "causal_ci_high": c["ci_high"].to_numpy(),
                         "classical_method": classical, "classical": k["estimate"].to_numpy(),
                         "classical_se": k["se"].to_numpy(), "classical_ci_low": k["ci_low"].to_numpy(),
                         "classical_ci_high": k["ci_high"].to_numpy()})
    sig_c = (wide["causal_ci_low"] > 0) | (wide["causal_ci_high"] < 0)
    sig_k = (wide["classical_ci_low"] > 0) | (wide["classical_ci_high"] < 0)
    wide["sign_differs"] = np.sign(wide["causal"]) * np.sign(wide["classical"]) < 0
    wide["significance_differs"] = sig_c != sig_k
    wide["conclusion_differs"] = wide["sign_differs"] | wide["significance_differs"]
    return wide


# ------------------------------------------------------------------------------------------ output
def results_json(long: pd.DataFrame, report: dict | None = None) -> dict:
    """{"results": [{meta_id, method, measure, estimate, se, ci_low, ci_high, tau2, I2, k, …}], "excluded",
    "notes"}: estimates on the analysis scale (log for RR/OR; ``scale`` says which, ``exp_*`` give the ratio);
    NaN/inf become null."""
    results = []
    for rec in long.to_dict("records"):
        row = {}
        for key, val in rec.items():
            val = _jsonable(val)
            if isinstance(val, float) and not np.isfinite(val):
                val = None
            row[key] = val
        ratio = row.get("measure") in ("RR", "OR")
        row["scale"] = "log" if ratio else "identity"
        if ratio:
            for key in ("estimate", "ci_low", "ci_high"):
                row[f"exp_{key}"] = None if row.get(key) is None else float(np.exp(row[key]))
        results.append(row)
    report = report or {}
    return {"results": results, "excluded": report.get("excluded", []), "notes": report.get("notes", [])}


def forest_plot(studies: pd.DataFrame, results: pd.DataFrame, measure: str, path: str,
                methods=("FE", "REML", "MH", "causal"), labels=None, title: str | None = None):
    """Forest plot: per-study estimates (metafor effect sizes, 95% Wald CIs) and the pooled classical and causal
    rows as diamonds; ratio measures on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, v = mc.effect_sizes(*(studies[c].to_numpy(float) for c in ROLES_2X2), measure)
    y, se = np.asarray(y), np.sqrt(np.asarray(v))
    ratio = measure in ("RR", "OR")
    tr = np.exp if ratio else (lambda x: x)
    labels = list(labels) if labels is not None else list(studies["study"].astype(str))
    pooled = results.set_index("method")
    methods = [m for m in methods if m in pooled.index]
    k = len(y)
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * (k + len(methods)) + 1.6))
    rows = np.arange(k + len(methods) + 1)[::-1]
    for i in range(k):
        ax.plot([tr(y[i] - 1.96 * se[i]), tr(y[i] + 1.96 * se[i])], [rows[i]] * 2, color="k", lw=1)
        ax.plot(tr(y[i]), rows[i], "s", color="k", ms=4)
    colors = {"causal": "tab:red"}
    for j, meth in enumerate(methods):
        r = pooled.loc[meth]
        yy = rows[k + 1 + j]
        lo, est, hi = tr(r["ci_low"]), tr(r["estimate"]), tr(r["ci_high"])
        if np.isfinite(est):
            ax.fill([lo, est, hi, est], [yy, yy + 0.3, yy, yy - 0.3], color=colors.get(meth, "tab:blue"))
    ax.axvline(tr(0.0), color="grey", lw=0.8, ls="--")
    ax.set_yticks(list(rows[:k]) + list(rows[k + 1:]))
    ax.set_yticklabels(labels + ["causal (union of trials)" if m == "causal" else f"{m} (classical)"
                                 for m in methods], fontsize=8)
    if ratio:
        ax.set_xscale("log")
    ax.set_xlabel({"RR": "risk ratio", "OR": "odds ratio", "RD": "risk difference"}[measure])
    ax.set_title(title or f"Forest plot ({measure})")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def scatter_plot(wide: pd.DataFrame, path: str, title: str | None = None):
    """Causal vs classical estimate per meta-analysis (the paper's Figure 4), x = y line, disagreements in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measure = str(wide["measure"].iloc[0])
    ratio = measure in ("RR", "OR")
    tr = np.exp if ratio else (lambda x: x)
    x, y = tr(wide["classical"].to_numpy(float)), tr(wide["causal"].to_numpy(float))
    flag = wide["conclusion_differs"].to_numpy(bool)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(x[~flag], y[~flag], s=10, alpha=0.6, label="same conclusion")
    ax.scatter(x[flag], y[flag], s=14, color="tab:red", label=f"conclusions differ ({int(flag.sum())})")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.any():
        lo, hi = min(x[ok].min(), y[ok].min()), max(x[ok].max(), y[ok].max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    if ratio:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"classical ({wide['classical_method'].iloc[0]}) {measure}")
    ax.set_ylabel(f"causal {measure}")
    ax.set_title(title or f"Causal vs classical meta-analysis ({len(wide)} meta-analyses)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
