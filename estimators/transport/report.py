"""Printed and plotted output of a transport analysis: a table like the paper's Table 1, tests, forest plot."""

from __future__ import annotations

import numpy as np

from estimators.plotting import interval, number, numbers_column, pyplot, save

from .estimands import DISPLAY

COLUMNS = ("unadjusted", "outcome", "weighting", "dr")
WARNINGS_SHOWN = 4  # positivity warnings printed in full before "… and N more"
ADVICE = "; the target population is poorly covered"  # where a positivity warning's shared advice starts


def _cell(row) -> str:
    return "—" if row is None else interval(row.estimate, row.ci_low, row.ci_high)


def _lookup(table, estimator, trial, contrast, scale="difference"):
    sel = table[(table.estimator == estimator) & (table.trial == trial) & (table.contrast == contrast)
                & (table.scale == scale)]
    return None if sel.empty else sel.iloc[0]


def percent(level: float) -> str:
    """0.95 → '95%', 0.975 → '97.5%'."""
    return f"{level * 100:.6g}%"


def _aligned(head, body) -> list[str]:
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]


def format_summary(res, warnings: bool = True) -> str:
    """Table-1-like text: one row per trial (n, unadjusted, outcome model, weighting, doubly robust), a pooled row,
    the target-only comparison in its own row (the target's n); then ratios (binary outcomes), tests, positivity,
    the sensitivity sweep (every trial and the pooled estimators), the models used, notes and — unless
    ``warnings=False`` (the command line prints them on stderr instead) — the warnings."""
    t, st = res.table, res.settings
    lines = []
    target = st["target"]
    if st.get("reference") is not None:
        lines.append(reference_line(st))
    has_target_only = "target_only" in st["pooled_estimators"]
    for contrast in st["contrasts"]:
        lines.append(f"Transported effect {st['treatment']} = {contrast} in the target population "
                     f"({st['study']} = {target}, n = {st['n_target']}); estimate ({percent(res.level)} CI)")
        cols = [c for c in COLUMNS if c in t.estimator.values or (c == "unadjusted" and has_target_only)]
        head = [st["study"], "n"] + [DISPLAY[c] for c in cols]
        body = [[s, str(st["n_trials"][s])] + [_cell(_lookup(t, c, s, contrast)) for c in cols]
                for s in (st["trials"] if st["per_trial_estimators"] else [])]
        if any(c in st["pooled_estimators"] for c in cols if c != "unadjusted"):
            body.append(["pooled", str(sum(st["n_trials"].values()))]
                        + [_cell(_lookup(t, c, "pooled", contrast)) for c in cols])
        target_row = _lookup(t, "target_only", target, contrast)
        if target_row is not None:  # trial emulation: the target sample's own comparison, with its own n
            body.append([f"{target} (target only)", str(int(target_row.n))]
                        + [_cell(target_row) if c == "unadjusted" else "—" for c in cols])
        if cols:
            lines += _aligned(head, body)
        ps = _lookup(t, "pseudo_outcome", "pooled", contrast)
        if ps is not None:
            lines.append(f"pooled, pseudo-outcome CATE regression (eq. 8): {_cell(ps)}")
        for scale in ("risk ratio", "odds ratio"):
            for where, name in (("pooled", "pooled"), (target, "target-only")):
                rows = t[(t.trial == where) & (t.contrast == contrast) & (t.scale == scale)]
                if not rows.empty:
                    lines.append(f"{name} {scale}s: " + "; ".join(f"{DISPLAY[r.estimator]} {_cell(r)}"
                                                                for r in rows.itertuples()))
        lines.append("")
    tests = res.tests
    if tests["homogeneity"]:
        lines.append("Homogeneity of transported effects across trials (Wald χ², joint covariance):")
        for e, by in tests["homogeneity"].items():
            for contrast, d in by.items():
                tag = " (trial-specific effects, not transported)" if e == "unadjusted" else ""
                lines.append(f"  {DISPLAY[e]:<14} {contrast}: χ² = {d['statistic']:.3f} on {d['df']} df, "
                             f"p = {d['p_value']:.3g}{tag}")
    for contrast, d in tests["cate_equality"].items():
        eq = "eq. C.5, per protocol" if "C.5" in d["null"] else "eq. 3"
        lines.append(f"Per-trial CATE models equal (falsification check, {eq}) {contrast}: χ² = {d['statistic']:.3f} "
                     f"on {d['df']} df, p = {d['p_value']:.3g}")
    diag = getattr(res, "diagnostics", None)
    if diag is not None and not diag.empty:
        from .diagnostics import format_diagnostics

        lines.append("")
        lines += format_diagnostics(diag, st, DISPLAY)
    if res.sensitivity is not None and not res.sensitivity.empty:
        lines.append("")
        lines += _sensitivity_lines(res)
    lines.append("")
    lines.append(f"Estimand: {st['estimand']}")
    lines.append(f"Participation model: {st['participation_model']}")
    lines.append(f"Treatment model: {st['treatment_model']}")
    lines.append(f"Outcome model: {st['outcome_model']}")
    lines.append(f"Weighting: {st['weighting']}")
    lines.append(f"Variance: {st['variance']}")
    lines.append(f"Solver: {res.fit.status}")
    lines += [f"note: {n}" for n in res.notes]
    if warnings:
        lines += [f"warning: {w}" for w in warning_lines(res)]
    elif res.warnings:
        lines.append(f"warnings: {len(res.warnings)} (printed on stderr)")
    return "\n".join(lines)


def reference_line(settings) -> str:
    """'Reference arm: Z = placebo (a control-like label; ...)': the sign of every contrast depends on it."""
    return (f"Reference arm: {settings['treatment']} = {settings['reference']} ({settings['reference_reason']}; "
            "change with --reference LABEL / reference=)")


def _sensitivity_lines(res) -> list[str]:
    """The sweep as a table: one row per estimator, trial (then pooled) and contrast; one column per δ."""
    sens, st = res.sensitivity, res.settings
    deltas = list(dict.fromkeys(sens.delta))
    order = {s: i for i, s in enumerate(st["trials"] + ["pooled"])}
    head = ["estimator", st["study"], "contrast"] + [f"δ = {d:+.3g}" for d in deltas]
    body = []
    keys = sens[["estimator", "trial", "contrast"]].drop_duplicates()
    keys = keys.assign(_o=keys.trial.map(order)).sort_values(["_o"], kind="stable")
    for r in keys.itertuples(index=False):
        g = sens[(sens.estimator == r.estimator) & (sens.trial == r.trial) & (sens.contrast == r.contrast)]
        cells = [_cell(g[g.delta == d].iloc[0]) if (g.delta == d).any() else "—" for d in deltas]
        body.append([DISPLAY[r.estimator], r.trial, r.contrast] + cells)
    return (["Sensitivity analysis (eq. 11): estimate + δ·mean_{S=0} u(s;X), "
             f"estimate ({percent(res.level)} CI) at each δ:"] + ["  " + ln for ln in _aligned(head, body)])


def warning_lines(res) -> list[str]:
    """Every warning once; many positivity warnings are summarised (each flagged group is marked [EXTREME] in the
    positivity lines of the summary, and all are in ``result.diagnostic_warnings``), and the advice several of them
    share is printed once, after them."""
    engine = [w for w in res.warnings if w not in res.diagnostic_warnings]
    positivity = list(res.diagnostic_warnings)
    more = []
    if len(positivity) > WARNINGS_SHOWN:
        shown = WARNINGS_SHOWN - 1
        more = [f"positivity: … and {len(positivity) - shown} more (trial, arm) groups with extreme inverse-odds "
                "weights: see the [EXTREME] entries of the positivity lines of the summary"]
        positivity = positivity[:shown]
    split = [w.partition(ADVICE) for w in positivity]
    tails = {head_sep_tail[1] + head_sep_tail[2] for head_sep_tail in split}
    if len(positivity) > 1 and len(tails) == 1 and split[0][1]:
        positivity = [head for head, _, _ in split] + [f"positivity (each of the {len(split)} above){tails.pop()}"]
    return engine + positivity + more


MARKERS = {"unadjusted": dict(marker="s", mfc="white", mec="black", color="black"),
           "outcome": dict(marker="s", mfc="black", mec="black", color="black"),
           "weighting": dict(marker="s", mfc="0.5", mec="0.5", color="0.5"),
           "dr": dict(marker="o", mfc="tab:blue", mec="tab:blue", color="tab:blue"),
           "pseudo_outcome": dict(marker="D", mfc="white", mec="tab:orange", color="tab:orange")}
POOLED_MARKER = "D"  # every pooled estimate is a diamond, in its estimator's colours


def forest_plot(res, path=None, contrast=None):
    """Forest plot like the paper's Figure 1: per trial unadjusted (white squares), outcome model (black),
    weighting (gray), doubly robust (blue circles); pooled estimates as diamonds in the same colours (the
    pseudo-outcome regression, pooled only, an orange diamond); the
    target-only estimate and CI (when the target sample has Z and Y) as solid and dashed vertical lines; a dotted
    line at no effect. Right of the plot, each mark's estimate and CI in numbers (as metafor's forest plot);
    below it the legend (every mark and line, drawn as on the plot, covering none of them). Rows without
    estimates (the trials under ``pooled=False``, say) are left out."""
    from matplotlib.lines import Line2D

    plt = pyplot()

    t = res.table
    st = res.settings
    contrast = contrast or st["contrasts"][0]
    t = t[(t.contrast == contrast) & (t.scale == "difference")]
    present = [e for e in MARKERS if e in set(t.estimator)]
    per = [e for e in present if e in st["per_trial_estimators"]]
    pooled = [e for e in present if e in st["pooled_estimators"]]
    rows = ([(s, per) for s in st["trials"]] if per else []) + ([("pooled", pooled)] if pooled else [])
    lanes = max([len(es) for _, es in rows] + [1])
    fig, ax = plt.subplots(figsize=(8.5, max(4.5, 2.4 + 0.3 * len(rows) * lanes)))
    step = 0.8 / lanes
    yticks, ylabels, number_y, numbers, number_colors = [], [], [], [], []
    for ypos, (s, es) in enumerate(rows[::-1]):
        for i, e in enumerate(es):
            r = _lookup(t, e, s, contrast)
            if r is None:
                continue
            style = MARKERS[e]
            lane = ypos + (i - (len(es) - 1) / 2) * step
            ax.errorbar([r.estimate], [lane], xerr=[[r.estimate - r.ci_low], [r.ci_high - r.estimate]], capsize=2,
                        ms=6, fmt=POOLED_MARKER if s == "pooled" else style["marker"], mfc=style["mfc"],
                        mec=style["mec"], color=style["color"])
            number_y.append(lane)
            numbers.append(_cell(r))
            number_colors.append(style["color"])
        yticks.append(ypos)
        ylabels.append(f"{st['study']} = {s}" if s != "pooled" else "all trials (pooled)")
    numbers_column(ax, number_y, numbers, f"estimate ({percent(res.level)} CI)", colors=number_colors,
                   fontsize=7 if lanes > 3 else 8)
    handles = [Line2D([], [], ls="none", marker=MARKERS[e]["marker"] if e in per else POOLED_MARKER, ms=6,
                      mfc=MARKERS[e]["mfc"], mec=MARKERS[e]["mec"], label=DISPLAY[e]) for e in present]
    if per and pooled:
        handles.append(Line2D([], [], ls="none", marker=POOLED_MARKER, ms=6, mfc="0.85", mec="0.4",
                              label="pooled over trials (diamonds)"))
    ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
    handles.append(Line2D([], [], color="0.6", lw=0.8, ls=":", label="no effect (0)"))
    target = _lookup(t, "target_only", st["target"], contrast)
    if target is not None:
        ax.axvline(target.estimate, color="black", lw=1)
        for x in (target.ci_low, target.ci_high):
            ax.axvline(x, color="black", lw=1, ls="--")
        handles += [Line2D([], [], color="black", lw=1, label=f"target only ({st['study']} = {st['target']}): estimate"),
                    Line2D([], [], color="black", lw=1, ls="--", label=f"target only: {percent(res.level)} CI")]
    ax.set_yticks(yticks, ylabels)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(f"{st['outcome']}: effect of {st['treatment']} {contrast} in the target population "
                  f"({percent(res.level)} CI)")
    ax.grid(axis="x", alpha=0.3)
    _legend_below(fig, ax, handles)
    save(fig, path)
    return fig


def _legend_below(fig, ax, handles) -> None:
    """The legend under the axes' x label (it covers no mark), the right part left to the numbers column."""
    from matplotlib.transforms import offset_copy

    columns = 3 if len(handles) > 4 else 2
    below_label = offset_copy(ax.transAxes, fig, y=-38, units="points")  # clear of the tick labels and x label
    ax.legend(handles=handles, loc="upper center", ncol=columns, fontsize=8, frameon=False,
              bbox_to_anchor=(0.5, 0.0), bbox_transform=below_label)
    fig.tight_layout(rect=(0, 0, 0.83, 1))


def _tipping_point(rows) -> float | None:
    """The δ nearest 0 at which the CI first reaches 0 (linear between grid points), or None within the grid."""
    d = rows.delta.to_numpy(float)
    for side in (rows.ci_low.to_numpy(float), rows.ci_high.to_numpy(float)):
        cross = np.flatnonzero(np.sign(side[:-1]) * np.sign(side[1:]) <= 0)
        if cross.size:
            points = [d[i] - side[i] * (d[i + 1] - d[i]) / (side[i + 1] - side[i]) if side[i + 1] != side[i]
                      else d[i] for i in cross]
            return float(min(points, key=abs))
    return None


def sensitivity_plot(res, path=None, contrast=None, trial="pooled"):
    """The sensitivity analysis of eq. 10–11 drawn: per estimator (one panel each) the estimate
    ψ̂ + δ·mean_{S=0} u(s;X) (line) and its CI (band) against the multiplier δ of the bias function, for one trial
    or the pooled estimators; a dotted line at no effect, the main analysis (δ = 0) dashed, and the δ at which
    the CI reaches 0 (the bias that would overturn the conclusion) in the panel's title when the grid covers it.
    Saved to ``path`` if given; returns the figure."""
    plt = pyplot()
    sens, st = res.sensitivity, res.settings
    if sens is None or sens.empty:
        from mestim.errors import SpecificationError

        raise SpecificationError("no sensitivity analysis to plot: give bias= (and bias_grid=) to transport()")
    contrast = contrast or st["contrasts"][0]
    g = sens[(sens.contrast == contrast) & (sens.trial == str(trial))]
    if g.empty:
        from mestim.errors import SpecificationError

        raise SpecificationError(f"no sensitivity rows for trial={trial!r}, contrast={contrast!r}; trials are "
                                 f"{sorted(set(sens.trial))}")
    estimators = [e for e in MARKERS if e in set(g.estimator)]
    fig, axes = plt.subplots(1, len(estimators), figsize=(2.2 + 2.6 * len(estimators), 4.2), sharey=True,
                             squeeze=False)
    for ax, e in zip(axes[0], estimators):  # one panel per estimator: their lines nearly coincide
        rows = g[g.estimator == e].sort_values("delta")
        color = MARKERS[e]["color"] if MARKERS[e]["mfc"] != "white" else MARKERS[e]["mec"]
        ax.fill_between(rows.delta, rows.ci_low, rows.ci_high, color=color, alpha=0.2, lw=0,
                        label=f"{percent(res.level)} CI")
        ax.plot(rows.delta, rows.estimate, color=color, lw=1.5, marker=MARKERS[e]["marker"], ms=4,
                label="estimate")
        ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
        ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
        tip = _tipping_point(rows)
        ax.set_title(DISPLAY[e] + ("" if tip is None else f"\nCI reaches 0 at δ ≈ {number(tip)}"), fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("δ")
    axes[0][0].set_ylabel(f"effect of {st['treatment']} {contrast}")
    where = "pooled over trials" if str(trial) == "pooled" else f"trial {st['study']} = {trial}"
    fig.suptitle(f"Sensitivity analysis ({where}): estimate + δ·mean over the target of the bias function u "
                 "(eq. 11); δ = 0 (dashed) is the main analysis, dotted: no effect", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return fig
