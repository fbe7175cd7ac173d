"""Meta-analysis of 2×2 tables from a DataFrame: one meta-analysis, or thousands at once (batch mode).

Input tables (one row per study; for batch mode also one or more meta-analysis id columns, ``by``). Accepted
column names:

- 2×2 cells (metafor): ``ai``, ``bi`` (treated: events, non-events), ``ci``, ``di`` (control: events, non-events);
- events and totals per arm (R ``meta::metabin``): ``event.e``, ``n.e`` (experimental/treated), ``event.c``,
  ``n.c`` (control); underscores also accepted (``event_e``, ``n_e``, ``event_c``, ``n_c``);
- events and totals per arm (metafor): ``ai``, ``n1i``, ``ci``, ``n2i``.

Other names are mapped with ``columns={"event.e": "my_col", ...}`` (CLI: ``--columns event.e=my_col,...``);
roles are the names above plus ``study`` (study label, optional; default: a ``label`` or ``study`` column).
A meta-analysis is identified by one column or by several (``by=["review", "comparison", "outcome",
"subgroup"]``, CLI ``--by review,comparison,outcome,subgroup``: a Cochrane meta-analysis).

Validation (nothing is dropped silently; every exclusion is listed in ``report["excluded"]`` with its ``kind``,
and :func:`exclusion_summary` condenses the list for a person):

- malformed rows — a count missing or non-numeric, negative, or events > total — raise a
  :class:`~mestim.errors.DataError` listing them (``invalid="exclude"`` excludes them instead, and reports them);
- a row whose meta-analysis id is missing (empty or NaN in a ``by`` column) belongs to no meta-analysis:
  excluded and reported;
- a study with an empty arm (n₁ = 0 or n₀ = 0) carries no comparison: excluded and reported;
- a meta-analysis with no usable study: reported, no result row;
- zero cells are kept: the classical per-study effect sizes get metafor's continuity correction (0.5 added to
  the four cells of a study with a zero cell), Mantel–Haenszel and the causal estimator use the raw counts; a
  note says how many studies were corrected. A causal ratio whose pooled risk is 0 (or 1) is undefined: NaN,
  with the reason in ``undefined_reason``, and never counted as agreeing or disagreeing with the classical one.
- a single-study meta-analysis is defined (see :mod:`estimators.meta_classical`).

Batch mode pads the meta-analyses to a common number of studies (a study mask) and fits all of them in one
``jax.jit(jax.vmap(...))`` call: classical FE / DL / REML / PM / Hartung–Knapp / MH and the causal estimate with its
closed-form sandwich SE (equal to the engine's stacked sandwich, see :mod:`estimators.causal_meta`). The REML and
Paule–Mandel iterations stop per meta-analysis at convergence; one that did not converge is flagged
(``converged`` False) and warned about (:class:`~mestim.errors.MestimWarning`, also in ``report["warnings"]``).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import warnings
from importlib import resources
from typing import TYPE_CHECKING

import jax
import numpy as np

from mestim.errors import DataError, MestimWarning, check_choice
from mestim.results import z_crit

from . import causal_meta as cm
from . import meta_classical as mc
from .meta_federated import from_sites
from .output import json_value
from .plotting import interval, numbers_column, pyplot, readable_log_axis, save

if TYPE_CHECKING:
    import pandas as pd

ROLES_2X2 = ("ai", "bi", "ci", "di")
ARM_NAME_SETS = (("event.e", "n.e", "event.c", "n.c"), ("event_e", "n_e", "event_c", "n_c"),
                 ("ai", "n1i", "ci", "n2i"))
METHODS = ("causal", "FE", "DL", "REML", "PM", "DL_HK", "REML_HK", "PM_HK", "MH")
CLASSICAL_DEFAULT = "REML"
CAUSAL_FIELDS = ("se_paper", "se_design", "psi1", "psi0", "n", "undefined_reason")
RESULT_FIELDS = frozenset({"meta_id", "method", "measure", "estimate", "se", "ci_low", "ci_high", "tau2", "I2", "Q",
                           "k", "pi_low", "pi_high", "converged", "scale", "study", *CAUSAL_FIELDS, *ROLES_2X2})
DISCORDANCE_RULE = ("a meta-analysis is discordant when the {level:g}% CI excludes the null ({null}) for one "
                    "method only, or for both on opposite sides; a sign change with both CIs covering the null is "
                    "not counted, and an undefined causal estimate is not compared")


def load_bcg() -> pd.DataFrame:
    """The BCG vaccine trials (Colditz et al. 1994; metafor's ``dat.bcg``): 13 studies, columns study, label, ai,
    bi, ci, di (arm 1 = vaccinated, events = TB cases). Bundled with the package."""
    import pandas as pd

    with resources.files("estimators").joinpath("data/bcg.csv").open("r") as f:
        return pd.read_csv(f)


# ------------------------------------------------------------------------------------------ input tables
STUDY_LABELS = ("studlab", "label", "study", "author", "trial", "study_id", "studyid", "name")


def study_label_column(columns) -> str | None:
    """The column that names the studies (R meta's ``studlab``, metafor's ``label``/``author``, …, compared
    case-insensitively), or None: rows are then labelled by their position."""
    by_lower = {str(c).lower(): c for c in columns}
    return next((by_lower[name] for name in STUDY_LABELS if name in by_lower), None)


def by_columns(by, columns_in_table) -> list[str]:
    """The meta-analysis id columns named by ``by``: a column name, several comma-separated names, or a list."""
    if by is None:
        return []
    if isinstance(by, str):
        names = [by] if by in columns_in_table else [b.strip() for b in by.split(",") if b.strip()]
    else:
        names = [str(b) for b in by]
    missing = [b for b in names if b not in columns_in_table]
    if not names or missing:
        from estimators.transport.data import column_hint

        raise DataError(f"meta-analysis id column(s) {missing or [by]} not in the table; "
                        f"{column_hint((missing or [by])[0], columns_in_table)}")
    if len(set(names)) < len(names):
        raise DataError(f"meta-analysis id columns {names} name a column twice")
    return names


MISSING_ID = "(missing)"  # the level of an empty id kept with missing_ids="keep" (e.g. "no subgroup")


def _id_values(df, names, keep_missing: bool = False):
    """(ids, blank, values): one hashable id per row — the value of the one id column, or the values of several
    joined by " | " —, a (rows, columns) boolean array of empty ids (NaN, None or blank text), and each column's
    values. Whole-number floats (an integer column with a blank cell reads as float) become integers. With
    ``keep_missing`` an empty id is the level ``MISSING_ID`` and nothing is blank."""
    import pandas as pd

    parts, blank = [], np.zeros((len(df), len(names)), bool)
    for j, name in enumerate(names):
        col = df[name]
        blank[:, j] = col.isna().to_numpy()
        if col.dtype == object or pd.api.types.is_string_dtype(col):
            blank[:, j] |= col.astype(str).str.strip().eq("").to_numpy()
        if pd.api.types.is_float_dtype(col) and np.all(np.mod(col[~blank[:, j]], 1) == 0):
            col = col.astype("Int64")
        parts.append(col.astype(object).to_numpy(copy=True))  # Python scalars, as JSON wants them
        if keep_missing:
            parts[-1][blank[:, j]] = MISSING_ID
            blank[:, j] = False
    if len(parts) == 1:
        return parts[0], blank, parts
    text = [pd.Series(p, dtype=object).astype(str) for p in parts]
    return text[0].str.cat(text[1:], sep=" | ").to_numpy(dtype=object), blank, parts


def standardise_tables(df: pd.DataFrame, columns: dict | None = None, by=None,
                       invalid: str = "raise", missing_ids: str = "exclude") -> tuple[pd.DataFrame, dict]:
    """(tables, report): tables with columns meta_id, study, ai, bi, ci, di (floats, one row per usable study; and
    the ``by`` columns when there are several) and a report {"excluded": [{meta_id, study, row, kind, reason}],
    "notes": [...], "warnings": [...], "format": ..., "by": [id columns]}. ``by``: one id column, several
    (a list or comma-separated names), or None (one meta-analysis). See the module docstring for accepted names
    and the validation rules. ``invalid``: "raise" (default) or "exclude". ``missing_ids``: rows with an empty
    id are "exclude"d (default, reported) or "keep"-t as their own level "(missing)" (e.g. no subgroup)."""
    import pandas as pd

    check_choice("invalid", invalid, ("raise", "exclude"))
    check_choice("missing_ids", missing_ids, ("exclude", "keep"))
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
        from estimators.transport.data import column_hint

        raise DataError(f"mapped column(s) {missing_cols} are not in the table; "
                        f"{column_hint(missing_cols[0], df.columns)}")
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
    groups = by_columns(by, df.columns)
    clash = sorted(set(groups) & RESULT_FIELDS) if len(groups) > 1 else []
    if clash:
        raise DataError(f"meta-analysis id column(s) {clash} share a name with a result field: rename them")
    raw = {r: pd.to_numeric(df[name[r]], errors="coerce").to_numpy(float) for r in roles}
    orig = {r: df[name[r]].to_numpy() for r in roles}
    if fmt == "2x2":
        ai, bi, ci, di = (raw[r] for r in roles)
        e1, t1, e0, t0 = ai, ai + bi, ci, ci + di
    else:
        e1, t1, e0, t0 = (raw[r] for r in roles)
    study_col = columns.get("study", study_label_column(df.columns))
    study = df[study_col].astype(str).to_numpy() if study_col else np.array([str(i + 1) for i in range(len(df))])
    if groups:
        meta_id, blank, group_values = _id_values(df, groups, missing_ids == "keep")
    else:
        meta_id, blank, group_values = np.full(len(df), "all", dtype=object), np.zeros((len(df), 0), bool), []
    no_id = blank.any(axis=1)
    excluded = [{"meta_id": None, "study": study[i], "row": int(i + 1), "line": int(i + 2), "kind": "missing id",
                 "reason": f"meta-analysis id missing ({', '.join(np.asarray(groups)[blank[i]])}): the row "
                           "belongs to no meta-analysis (excluded)"} for i in np.flatnonzero(no_id)]
    reasons = [[] for _ in range(len(df))]
    for r in roles:
        for i in np.flatnonzero(~np.isfinite(raw[r]) & ~no_id):
            v = orig[r][i]
            reasons[i].append(f"{name[r]} is missing" if pd.isna(v) else f"{name[r]}={v!r} is not a number")
        for i in np.flatnonzero((raw[r] < 0) & ~no_id):
            reasons[i].append(f"{name[r]}={raw[r][i]:g} is negative")
    if fmt == "arms":
        for (e, t, en, tn) in ((e1, t1, roles[0], roles[1]), (e0, t0, roles[2], roles[3])):
            for i in np.flatnonzero((e > t) & ~no_id):
                reasons[i].append(f"{name[en]}={e[i]:g} exceeds {name[tn]}={t[i]:g}")
    bad = np.array([bool(r) for r in reasons])
    _warn_fractional(raw, name, study, ~bad & ~no_id)
    if bad.any():
        listed = [f"row {i + 1}, line {i + 2} of the file (study {study[i]}): {'; '.join(reasons[i])}"
                  for i in np.flatnonzero(bad)]
        if invalid == "raise":
            more = f" … and {len(listed) - 5} more" if len(listed) > 5 else ""
            raise DataError(f"{len(listed)} malformed row(s): " + " | ".join(listed[:5]) + more
                            + "; fix them, or exclude them with invalid='exclude' (CLI: --drop-invalid)")
        excluded += [{"meta_id": meta_id[i], "study": study[i], "row": int(i + 1), "line": int(i + 2), "kind": "malformed",
                      "reason": "malformed: " + "; ".join(reasons[i])} for i in np.flatnonzero(bad)]
    with np.errstate(invalid="ignore"):
        empty_arm = ~bad & ~no_id & ((t1 == 0) | (t0 == 0))
    for i in np.flatnonzero(empty_arm):
        which = "both arms" if t1[i] == 0 and t0[i] == 0 else ("arm 1 (treated)" if t1[i] == 0 else "arm 0 (control)")
        excluded.append({"meta_id": meta_id[i], "study": study[i], "row": int(i + 1), "line": int(i + 2), "kind": "empty arm",
                         "reason": f"{which} has no participants: no comparison (study excluded)"})
    keep = ~bad & ~empty_arm & ~no_id
    out = pd.DataFrame({"meta_id": meta_id[keep], "study": study[keep], "ai": e1[keep], "bi": (t1 - e1)[keep],
                        "ci": e0[keep], "di": (t0 - e0)[keep]})
    if len(groups) > 1:
        for g, values in zip(groups, group_values):
            out[g] = values[keep]
    kept_ids = set(out["meta_id"])
    for m in pd.unique(meta_id[~no_id]):
        if m not in kept_ids:
            excluded.append({"meta_id": m, "study": None, "row": None, "line": None, "kind": "no usable study",
                             "reason": "meta-analysis has no usable study: no result"})
    if len(out) == 0:
        raise DataError("no usable study left: " + "; ".join(e["reason"] for e in excluded[:5]))
    notes = []
    zero = (out[list(ROLES_2X2)] == 0).any(axis=1)
    if zero.any():
        notes.append(f"{int(zero.sum())} stud(ies) with a zero cell: classical effect sizes use the continuity "
                     "correction 0.5 on all four cells (MH and causal use the raw counts)")
    dz = (out["ai"] == 0) & (out["ci"] == 0)
    if dz.any():
        notes.append(f"{int(dz.sum())} stud(ies) with no events in either arm are kept (they carry weight in the "
                     "causal target and, corrected, in the classical pooling)")
    return out, {"excluded": excluded, "notes": notes, "warnings": [], "format": fmt, "by": groups}


def _warn_fractional(counts: dict, name: dict, study, rows) -> None:
    """A :class:`MestimWarning` naming the rows (of ``rows``) whose counts are not whole numbers: counts of
    people are whole, so a fraction is a typo, or imputed or corrected counts; they are used as given."""
    with np.errstate(invalid="ignore"):
        fractional = {r: rows & np.isfinite(v) & (np.mod(v, 1) != 0) for r, v in counts.items()}
    hit = np.flatnonzero(np.any(list(fractional.values()), axis=0))
    if hit.size:
        listed = [f"row {i + 1}, line {i + 2} of the file (study {study[i]}): "
                  + ", ".join(f"{name[r]}={counts[r][i]:g}" for r in counts if fractional[r][i]) for i in hit[:5]]
        warnings.warn(f"{hit.size} row(s) with fractional counts: " + " | ".join(listed)
                      + (f" … and {hit.size - 5} more" if hit.size > 5 else "") + "; counts of people are whole "
                      "numbers: fix typos; imputed or corrected counts are used as given", MestimWarning, stacklevel=3)


EXCLUSION_KINDS = {"missing id": "row(s) with a missing meta-analysis id", "malformed": "malformed row(s)",
                   "empty arm": "stud(ies) with an empty arm",
                   "no usable study": "meta-analys(es) with no usable study"}


def exclusion_summary(excluded: list[dict], limit: int = 10) -> list[str]:
    """The exclusion list condensed for a person: one line with the count of each kind, then the first ``limit``
    exclusions and how many more there are (the JSON output lists them all)."""
    if not excluded:
        return []
    kinds = collections.Counter(e["kind"] for e in excluded)
    lines = ["excluded: " + ", ".join(f"{n} {EXCLUSION_KINDS.get(kind, kind)}" for kind, n in kinds.items())
             + (" (to keep rows whose empty id is meaningful, e.g. no subgroup, as their own level: "
                "--keep-missing-ids, Python missing_ids='keep')"
                if "missing id" in kinds else "")]
    for e in excluded[:limit]:
        if e["row"] is None:
            where = f"meta-analysis {e['meta_id']}"
        else:
            where = f"row {e['row']}, line {e['line']} of the file (" + (f"meta-analysis {e['meta_id']}, " if e["meta_id"] is not None else "") \
                + f"study {e['study']})"
        lines.append(f"  {where}: {e['reason']}")
    if len(excluded) > limit:
        lines.append(f"  … and {len(excluded) - limit} more (all listed in the JSON output's 'excluded')")
    return lines


@contextlib.contextmanager
def recorded_warnings(report: dict):
    """Collect the :class:`MestimWarning` messages raised inside into ``report["warnings"]`` (each once), and
    raise them again (each once) for the caller."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MestimWarning)
        yield
    for w in caught:
        if issubclass(w.category, MestimWarning):
            if str(w.message) not in report["warnings"]:
                report["warnings"].append(str(w.message))
                warnings.warn(str(w.message), MestimWarning, stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# ------------------------------------------------------------------------------------------ one meta-analysis
def meta_analysis(df: pd.DataFrame | None = None, measure: str = "RR", columns: dict | None = None,
                  target_weights=None, invalid: str = "raise", level: float = 0.95,
                  use_engine: bool = True, *, sites=None) -> tuple[pd.DataFrame, dict]:
    """Classical and causal meta-analysis of one set of 2×2 tables (a DataFrame; BCG if None), or of participant
    rows held by sites: ``sites={"site_a": rows_a, …}`` in place of ``df``, ``columns`` mapping the roles study,
    treatment, outcome, weights (:mod:`estimators.meta_federated`; the results of the pooled rows' 2×2 tables).

    Returns (results, report): one row per method — causal (sandwich SE: the engine's fit of the stack when
    ``use_engine`` and k ≤ :data:`estimators.causal_meta.ENGINE_MAX_K`, the same stack in NumPy without it, else
    its closed form (O(k)), equal to 1e-10, see :func:`estimators.causal_meta.causal_meta`; with ``se_paper`` and
    ``se_design`` alongside), FE, DL,
    REML, PM, DL_HK, REML_HK, PM_HK, MH — with estimate, se, ci_low, ci_high
    on the analysis scale (log for RR/OR), tau2, I2, Q, k, prediction interval, ``converged`` (False where an
    iterative τ² did not converge) and, for an undefined causal ratio, ``undefined_reason``; and the validation
    report (its ``warnings`` repeat the :class:`MestimWarning` messages raised).
    Formulas and references: :mod:`estimators.meta_classical`, :mod:`estimators.causal_meta`.

    Example (every method on the BCG trials (the default data))::

        >>> from estimators import meta_analysis
        >>> results, report = meta_analysis(measure="RR")
        >>> print(results.set_index("method").loc[["causal", "FE", "REML"], ["estimate", "se"]].round(4))
                estimate      se
        method
        causal   -0.4564  0.0395
        FE       -0.4303  0.0405
        REML     -0.7145  0.1798
    """
    import pandas as pd

    check_choice("measure", measure, mc.MEASURES)
    level = mc.check_level(level)
    df, columns, notes = from_sites(df, sites, columns)
    tables, report = standardise_tables(load_bcg() if df is None else df, columns, None, invalid)
    report["notes"][:0] = notes
    counts = [tables[c].to_numpy() for c in ROLES_2X2]
    with recorded_warnings(report):
        rows = mc.classical_meta(*counts, measure=measure, level=level)
        try:
            causal = cm.causal_meta(*counts, measure=measure, target_weights=target_weights, level=level,
                                    use_engine=use_engine)
            causal["undefined_reason"] = None
            if len(tables) > cm.ENGINE_MAX_K:
                report["notes"].append(f"causal: sandwich SE in closed form ({len(tables)} studies; the stacked "
                                       f"fit, cubic in the studies, checks it up to {cm.ENGINE_MAX_K})")
        except DataError as e:
            report["notes"].append(f"causal: {e}")
            causal = {"method": "causal", "measure": measure, "estimate": np.nan, "se": np.nan, "ci_low": np.nan,
                      "ci_high": np.nan, "k": len(tables), "undefined_reason": str(e)}
    causal.update(tau2=np.nan, I2=np.nan, Q=np.nan, converged=True)
    out = pd.DataFrame([causal] + rows)
    out.insert(0, "meta_id", "all")
    return out, {**report, "studies": tables}


# ------------------------------------------------------------------------------------------ batch
def pad_tables(tables: pd.DataFrame, bucket: bool = True):
    """(ids, counts (4, M, Kmax), mask (M, Kmax), M) from standardised tables; Kmax and M rounded up to powers of
    two (``bucket``) so nearby sizes reuse the compiled function."""
    import pandas as pd

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
    mask[m:, 0] = 1.0  # padded meta-analyses: one dummy study (cells all 1, harmless), results dropped
    counts[:, m:, 0] = 1.0
    return np.asarray(ids), counts, mask, m


@functools.partial(jax.jit, static_argnames=("measure",))
def batch_core(counts, mask, measure: str):
    """All summaries of M padded meta-analyses at once (vmap over meta-analyses): classical
    (:func:`estimators.meta_classical.classical_summaries`, the kernel of the one-at-a-time path too) and causal
    (closed form, :func:`estimators.causal_meta.causal_closed_form`). ``counts`` (4, M, Kmax), ``mask`` (M, Kmax).
    The REML and Paule–Mandel loops run until every meta-analysis has converged (or hit its iteration limit);
    converged ones are held fixed meanwhile."""

    def one(ai, bi, ci, di, m):
        out = mc.classical_summaries(ai, bi, ci, di, m, measure)
        causal = cm.causal_closed_form(ai, bi, ci, di, m, measure)
        out.update({f"causal_{k}": v for k, v in causal.items()})
        return out

    return jax.vmap(one)(counts[0], counts[1], counts[2], counts[3], mask)


def meta_analyses(df: pd.DataFrame, by, measure: str = "RR", columns: dict | None = None,
                  invalid: str = "raise", classical: str = CLASSICAL_DEFAULT, level: float = 0.95,
                  missing_ids: str = "exclude", progress: bool | None = False, *, sites=None):
    """Many meta-analyses at once from one long table (``by`` = the meta-analysis id column, or several: a list or
    comma-separated names; rows with a missing id are excluded and reported, or with ``missing_ids="keep"`` form
    their own level "(missing)"). ``progress``: a bar over the stages on stderr (True; None: only on a terminal).
    ``sites``: participant rows held by sites in place of ``df``, as :func:`meta_analysis`.

    Returns (long, wide, report): ``long`` has one row per meta-analysis × method (as :func:`meta_analysis`, the
    causal SE from the closed-form sandwich); ``wide`` one row per meta-analysis with the causal and the
    ``classical`` method's estimate, SE, CI and the disagreement flags of :func:`comparison_table`. With several
    ``by`` columns both also carry those columns. All meta-analyses are fitted in one vectorised call
    (:func:`batch_core`). REML/PM τ² that did not converge: ``converged`` False, a :class:`MestimWarning` naming
    the meta-analyses, and ``report["warnings"]``.

    Example (one meta-analysis per group of trials)::

        >>> import numpy as np
        >>> from estimators.meta_batch import load_bcg
        >>> bcg = load_bcg()
        >>> from estimators import meta_analyses
        >>> bcg["era"] = np.where(bcg.study <= 7, "early", "late")
        >>> results = meta_analyses(bcg, by="era", measure="RR")[0]
        >>> print(results[results.method == "FE"][["meta_id", "estimate"]].round(4).to_string(index=False))
        meta_id  estimate
          early   -0.9220
           late   -0.1337
    """
    check_choice("measure", measure, mc.MEASURES)
    check_choice("classical", classical, METHODS[1:])
    level = mc.check_level(level)
    from .progress import stages

    with stages("meta_analyses", ["checking the tables", "fitting (one vectorised program)", "comparing"],
                progress) as step:
        step("checking the tables")
        df, columns, notes = from_sites(df, sites, columns, by)
        tables, report = standardise_tables(df, columns, by, invalid, missing_ids)
        report["notes"][:0] = notes
        step("fitting (one vectorised program)")
        ids, counts, mask, m = pad_tables(tables)
        core = {k: np.asarray(v)[:m] for k, v in batch_core(counts, mask, measure).items()}
        methods = {"causal": causal_columns(core, measure, level), **mc.summary_columns(core, measure, level)}
        step("comparing")
        long = _long_table(ids, methods, measure)
        groups = report["by"]
        if len(groups) > 1:
            first = tables.drop_duplicates("meta_id").set_index("meta_id")[groups]
            for pos, g in enumerate(groups):
                long.insert(1 + pos, g, first[g].reindex(long["meta_id"]).to_numpy())
        _report_batch_diagnostics(report, ids, core, measure,
                                  np.not_equal(methods["causal"]["undefined_reason"], None))
        wide = comparison_table(long, classical, level)
    return long, wide, report


def causal_columns(core: dict, measure: str, level: float = 0.95) -> dict:
    """The causal rows of M meta-analyses as columns {field: array (M,)} from :func:`batch_core`'s output: estimate,
    sandwich SE and Wald CI, the paper's and the design-based SE, ψ̂₁, ψ̂₀, n, k and ``undefined_reason``
    (None where defined; an undefined estimate, SE and CI are NaN)."""
    z = z_crit(level)
    reason = cm.undefined_reason(measure, core["causal_psi1"], core["causal_psi0"])
    undefined = reason != ""
    nan_if = lambda x: np.where(undefined, np.nan, x)  # noqa: E731
    est, se = nan_if(core["causal_estimate"]), nan_if(core["causal_se_sandwich"])
    nan = np.full(est.shape, np.nan)
    return dict(estimate=est, se=se, ci_low=est - z * se, ci_high=est + z * se, tau2=nan, I2=nan, pi_low=nan,
                pi_high=nan, converged=np.ones(est.shape, bool), Q=nan, k=np.asarray(core["k"]).astype(int),
                se_paper=nan_if(core["causal_se_paper"]), se_design=nan_if(core["causal_se_design"]),
                psi1=core["causal_psi1"], psi0=core["causal_psi0"], n=core["causal_n"],
                undefined_reason=np.where(undefined, reason, None))


def _long_table(ids, methods: dict, measure: str) -> pd.DataFrame:
    """One row per meta-analysis × method (meta-analysis-major, methods in ``methods`` order) from per-method
    columns; a field a method lacks is NaN (None for text)."""
    import pandas as pd

    m, names = len(ids), list(methods)
    fields = list(dict.fromkeys(f for cols in methods.values() for f in cols))
    data = {"meta_id": np.repeat(np.asarray(ids, dtype=object), len(names)), "method": np.tile(names, m),
            "measure": measure}
    for f in fields:
        text = any(np.asarray(c[f]).dtype == object for c in methods.values() if f in c)
        fill = np.full(m, None, dtype=object) if text else np.full(m, np.nan)
        stacked = np.stack([np.asarray(methods[n].get(f, fill), dtype=object if text else None) for n in names])
        data[f] = stacked.T.ravel()
    long = pd.DataFrame(data)
    return long.astype({"k": int, "converged": bool})


def _report_batch_diagnostics(report: dict, ids, core: dict, measure: str, undefined):
    """Warnings (non-converged τ²) and notes (undefined causal estimates, multimodal restricted likelihoods) of a
    batch, each naming up to 10 meta-analyses."""
    def named(hit):
        listed = [json_value(i) for i in np.asarray(ids, dtype=object)[hit][:10]]
        return f"{int(hit.sum())} meta-analys(es): {listed}" + (" …" if hit.sum() > 10 else "")

    for meth, bad in mc.convergence_problems(core).items():
        if bad.any():
            message = mc.convergence_message(meth, f" in {named(bad)}")
            report["warnings"].append(message)
            warnings.warn(message, MestimWarning, stacklevel=3)
    if undefined.any():
        report["notes"].append(f"causal {measure} undefined (a pooled risk is 0 or 1) in {named(undefined)}: "
                               "reported as undefined (NaN, with the reason) and not compared")
    multimodal = np.asarray(core["REML_modes"]) > 1
    if multimodal.any():
        report["notes"].append(f"the restricted likelihood has several local maxima in {named(multimodal)}: REML "
                               "reports the global maximum")


def comparison_table(long: pd.DataFrame, classical: str = CLASSICAL_DEFAULT, level: float = 0.95) -> pd.DataFrame:
    """One row per meta-analysis: causal vs ``classical`` estimates, CIs and disagreement flags (null = 0 on the
    analysis scale: RD, log RR, log OR; the rule is :data:`DISCORDANCE_RULE`).

    ``comparable``: both estimates and CIs are finite (an undefined causal ratio is not) and the classical τ²
    converged; the flags are missing (``pd.NA``) where not comparable, and ``not_compared_reason`` says why. ``sign_differs``: the point estimates have opposite signs;
    ``significance_differs``: one CI excludes the null and the other does not; ``opposite_significant``: both
    exclude it, on opposite sides; ``conclusion_differs`` (discordant): ``significance_differs`` or
    ``opposite_significant`` — a sign change alone, with both CIs covering the null, is not a different
    conclusion. ``causal_undefined_reason`` says why a causal estimate is undefined.
    """
    import pandas as pd

    piv = {meth: long[long["method"] == meth].set_index("meta_id") for meth in ("causal", classical)}
    c, k = piv["causal"], piv[classical].reindex(piv["causal"].index)
    wide = pd.DataFrame({"meta_id": c.index, "k": c["k"].to_numpy(), "measure": c["measure"].to_numpy(),
                         "causal": c["estimate"].to_numpy(), "causal_se": c["se"].to_numpy(),
                         "causal_ci_low": c["ci_low"].to_numpy(), "causal_ci_high": c["ci_high"].to_numpy(),
                         "classical_method": classical, "classical": k["estimate"].to_numpy(),
                         "classical_se": k["se"].to_numpy(), "classical_ci_low": k["ci_low"].to_numpy(),
                         "classical_ci_high": k["ci_high"].to_numpy()})
    extra = [col for col in long.columns[1:long.columns.get_loc("method")]]  # several `by` columns, if any
    for pos, col in enumerate(extra):
        wide.insert(1 + pos, col, c[col].to_numpy())
    reason = c["undefined_reason"] if "undefined_reason" in c else pd.Series(None, index=c.index, dtype=object)
    wide["causal_undefined_reason"] = reason.to_numpy()
    wide["classical_converged"] = k["converged"].to_numpy(bool)
    values = wide[["causal", "causal_ci_low", "causal_ci_high", "classical", "classical_ci_low",
                   "classical_ci_high"]].to_numpy(float)
    comparable = np.isfinite(values).all(axis=1) & wide["classical_converged"].to_numpy()
    not_converged = f"the {classical} τ² did not converge"
    wide["not_compared_reason"] = np.where(comparable, None, np.where(
        pd.notna(wide["causal_undefined_reason"]), wide["causal_undefined_reason"],
        np.where(wide["classical_converged"], "an estimate or CI is not finite", not_converged)))
    sig_c = (wide["causal_ci_low"] > 0) | (wide["causal_ci_high"] < 0)
    sig_k = (wide["classical_ci_low"] > 0) | (wide["classical_ci_high"] < 0)
    sign = np.sign(wide["causal"]) * np.sign(wide["classical"]) < 0
    flags = {"sign_differs": sign, "significance_differs": sig_c != sig_k, "opposite_significant": sig_c & sig_k & sign}
    flags["conclusion_differs"] = flags["significance_differs"] | flags["opposite_significant"]
    wide["comparable"] = comparable
    for name, flag in flags.items():
        wide[name] = pd.array(flag.to_numpy(bool), dtype="boolean")
        wide.loc[~comparable, name] = pd.NA
    wide.attrs["level"] = level
    return wide


def discordance_rule(measure: str, level: float = 0.95) -> str:
    """The rule behind ``conclusion_differs``, in words."""
    return DISCORDANCE_RULE.format(level=100 * level, null="RR = 1" if measure == "RR" else
                                   "OR = 1" if measure == "OR" else "RD = 0")


def discordant(wide: pd.DataFrame) -> pd.DataFrame:
    """The discordant meta-analyses (``conclusion_differs``) of :func:`comparison_table`, with ``why``: "significant
    for causal only", "significant for <classical> only" or "significant in opposite directions"."""
    hit = wide[wide["conclusion_differs"].fillna(False).to_numpy(bool)].copy()
    method = str(wide["classical_method"].iloc[0]) if len(wide) else "classical"
    causal_sig = (hit["causal_ci_low"] > 0) | (hit["causal_ci_high"] < 0)
    hit["why"] = np.where(hit["opposite_significant"].to_numpy(bool), "significant in opposite directions",
                          np.where(causal_sig, "significant for causal only", f"significant for {method} only"))
    return hit


def not_compared_summary(wide: pd.DataFrame) -> str:
    """How many meta-analyses were not compared, and why (e.g. "2 not compared: 1 causal estimate undefined, 1
    classical τ² not converged"); "" when all were."""
    import pandas as pd

    left_out = wide[~wide["comparable"].to_numpy(bool)]
    if not len(left_out):
        return ""
    undefined = int(pd.notna(left_out["causal_undefined_reason"]).sum())
    not_converged = int((~left_out["classical_converged"].to_numpy(bool)).sum())
    other = len(left_out) - undefined - not_converged
    parts = [(n, what) for n, what in ((undefined, "causal estimate undefined"),
                                        (not_converged, "classical τ² not converged"),
                                        (other, "estimate not finite")) if n > 0]
    why = parts[0][1] if len(parts) == 1 else ", ".join(f"{n} {what}" for n, what in parts)
    return f"{len(left_out)} not compared: {why}"


# ------------------------------------------------------------------------------------------ output
def _json_row(rec: dict) -> dict:
    """A result record for JSON: NumPy scalars as Python ones, NaN/inf/NA as null, and for ratio measures the
    ``exp_*`` values beside the log-scale ones (``scale`` says which)."""
    row = {key: json_value(val) for key, val in rec.items()}
    if "estimate" in row and "se" in row:  # two-sided Wald p-value of no effect, on the analysis scale
        from mestim.results import normal_two_sided_p

        z = np.nan if row["estimate"] is None or not row["se"] else row["estimate"] / row["se"]
        row["p_value"] = None if not np.isfinite(z) else float(normal_two_sided_p(z))
    ratio = row.get("measure") in ("RR", "OR")
    row["scale"] = "log" if ratio else "identity"
    if ratio:
        for key in [k for k in ("estimate", "ci_low", "ci_high", "causal", "causal_ci_low", "causal_ci_high",
                                "classical", "classical_ci_low", "classical_ci_high") if k in row]:
            row[f"exp_{key}"] = None if row[key] is None else float(np.exp(row[key]))
    return row


def results_json(long: pd.DataFrame, report: dict | None = None, wide: pd.DataFrame | None = None) -> dict:
    """{"results": [{meta_id, method, measure, estimate, se, ci_low, ci_high, tau2, I2, k, converged, …}],
    "excluded", "notes", "warnings"}: estimates on the analysis scale (log for RR/OR; ``scale`` says which,
    ``exp_*`` give the ratio); NaN/inf become null. With ``wide`` (batch mode, :func:`comparison_table`) also
    "comparison" (the rule, the classical method and the counts), "discordant" (the discordant meta-analyses,
    each with ``why``), "undefined" (meta-analyses whose causal estimate is undefined, with the reason) and
    "not_compared" (every meta-analysis left out of the comparison, with the reason)."""
    import pandas as pd

    report = report or {}
    payload = {"results": [_json_row(rec) for rec in long.to_dict("records")],
               "excluded": report.get("excluded", []), "notes": report.get("notes", []),
               "warnings": report.get("warnings", [])}
    if wide is not None:
        measure = str(wide["measure"].iloc[0]) if len(wide) else "RR"
        level = wide.attrs.get("level", 0.95)
        flagged = discordant(wide)
        keep = [c for c in flagged.columns if c not in ("comparable", "classical_converged", "not_compared_reason")]
        payload["comparison"] = {
            "classical_method": str(wide["classical_method"].iloc[0]) if len(wide) else None, "level": level,
            "rule": discordance_rule(measure, level), "meta_analyses": len(wide),
            "compared": int(wide["comparable"].sum()), "discordant": len(flagged),
            "significance_differs": int(wide["significance_differs"].sum()),
            "opposite_significant": int(wide["opposite_significant"].sum()),
            "not_compared": int((~wide["comparable"]).sum())}
        left_out = wide[~wide["comparable"].to_numpy(bool)]
        payload["not_compared"] = [{"meta_id": json_value(i), "reason": r} for i, r in
                                   zip(left_out["meta_id"], left_out["not_compared_reason"])]
        payload["discordant"] = [_json_row(rec) for rec in flagged[keep].to_dict("records")]
        undefined = wide[pd.notna(wide["causal_undefined_reason"])]
        payload["undefined"] = [{"meta_id": json_value(i), "reason": r} for i, r in
                                zip(undefined["meta_id"], undefined["causal_undefined_reason"])]
    return payload


def forest_plot(studies: pd.DataFrame, results: pd.DataFrame, measure: str, path: str,
                methods=("FE", "REML", "MH", "causal"), labels=None, title: str | None = None, level: float = 0.95):
    """Forest plot: per-study estimates (metafor effect sizes, Wald CIs at ``level``, as the pooled rows) and the
    pooled classical and causal rows as diamonds; ratio measures on a log axis."""
    plt = pyplot()
    z = z_crit(mc.check_level(level))

    y, v = mc.effect_sizes(*(studies[c].to_numpy(float) for c in ROLES_2X2), measure)
    y, se = np.asarray(y), np.sqrt(np.asarray(v))
    ratio = measure in ("RR", "OR")
    tr = np.exp if ratio else (lambda x: x)
    labels = list(labels) if labels is not None else list(studies["study"].astype(str))
    pooled = results.set_index("method")
    methods = [m for m in methods if m in pooled.index]
    k = len(y)
    fig, ax = plt.subplots(figsize=(9.5, 0.32 * (k + len(methods)) + 1.6))
    rows = np.arange(k + len(methods) + 1)[::-1]
    numbers = []
    for i in range(k):
        ax.plot([tr(y[i] - z * se[i]), tr(y[i] + z * se[i])], [rows[i]] * 2, color="k", lw=1)
        ax.plot(tr(y[i]), rows[i], "s", color="k", ms=4)
        numbers.append(interval(tr(y[i]), tr(y[i] - z * se[i]), tr(y[i] + z * se[i])))
    colors = {"causal": "tab:red"}
    for j, meth in enumerate(methods):
        r = pooled.loc[meth]
        yy = rows[k + 1 + j]
        lo, est, hi = tr(r["ci_low"]), tr(r["estimate"]), tr(r["ci_high"])
        numbers.append(interval(est, lo, hi) if np.isfinite(est) else "not defined")
        if np.isfinite(est):
            ax.fill([lo, est, hi, est], [yy, yy + 0.3, yy, yy - 0.3], color=colors.get(meth, "tab:blue"))
    ax.axvline(tr(0.0), color="grey", lw=0.8, ls="--")
    ticks = list(rows[:k]) + list(rows[k + 1:])
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels + ["causal (union of trials)" if m == "causal" else f"{m} (classical)"
                                 for m in methods], fontsize=8)
    ax.set_ylim(-0.7, rows[0] + 0.7)
    numbers_column(ax, ticks, numbers, f"{measure} ({100 * level:g}% CI)",
                   colors=["k"] * k + [colors.get(m, "tab:blue") for m in methods])
    if ratio:
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        readable_log_axis(ax.xaxis, lo, hi)
    ax.set_xlabel({"RR": "risk ratio", "OR": "odds ratio", "RD": "risk difference"}[measure])
    ax.set_title(title or f"Forest plot ({measure})")
    fig.tight_layout(rect=(0, 0, 0.8, 1))  # the right fifth holds the numbers column
    save(fig, path)
    return path


def scatter_plot(wide: pd.DataFrame, path: str, title: str | None = None):
    """Causal vs classical estimate per meta-analysis (the paper's Figure 4), x = y line, discordant ones in red.
    Only comparable meta-analyses (both estimates defined) are plotted; the title counts those and says how many
    were left out."""
    plt = pyplot()

    measure = str(wide["measure"].iloc[0])
    ratio = measure in ("RR", "OR")
    tr = np.exp if ratio else (lambda x: x)
    shown = wide[wide["comparable"].to_numpy(bool)]
    x, y = tr(shown["classical"].to_numpy(float)), tr(shown["causal"].to_numpy(float))
    flag = shown["conclusion_differs"].to_numpy(bool)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(x[~flag], y[~flag], s=10, alpha=0.6, label=f"same conclusion ({int((~flag).sum())})")
    ax.scatter(x[flag], y[flag], s=14, color="tab:red", label=f"conclusions differ ({int(flag.sum())})")
    if len(shown):
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, label="x = y")
    if ratio:
        ax.set_xscale("log")
        ax.set_yscale("log")
        if len(shown):
            for axis in (ax.xaxis, ax.yaxis):
                readable_log_axis(axis, lo, hi)
    ax.set_xlabel(f"classical ({wide['classical_method'].iloc[0]}) {measure}")
    ax.set_ylabel(f"causal {measure}")
    left_out = not_compared_summary(wide).replace("not compared", "not plotted")
    ax.set_title(title or f"Causal vs classical meta-analysis\n{len(shown)} meta-analyses"
                 + (f" ({left_out})" if left_out else ""), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    return path
