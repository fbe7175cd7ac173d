"""Printed and plotted output of a transport analysis: a table like the paper's Table 1, tests, forest plot."""

from __future__ import annotations

from .api import DISPLAY

COLUMNS = ("unadjusted", "outcome", "weighting", "dr")


def _cell(row) -> str:
    if row is None:
        return "—"
    return f"{row.estimate:.3g} ({row.ci_low:.3g}, {row.ci_high:.3g})"


def _lookup(table, estimator, trial, contrast, scale="difference"):
    sel = table[(table.estimator == estimator) & (table.trial == trial) & (table.contrast == contrast)
                & (table.scale == scale)]
    return None if sel.empty else sel.iloc[0]


def format_summary(res) -> str:
    """Table-1-like text: one row per trial (n, unadjusted, outcome model, weighting, doubly robust), a pooled row,
    the target-only row when available; then ratios (binary outcomes), tests and the models used."""
    t, st = res.table, res.settings
    lines = []
    pct = int(round(res.level * 100))
    for contrast in st["contrasts"]:
        lines.append(f"Transported effect {st['treatment']} = {contrast.replace(' vs ', ' vs ')} in the target population "
                     f"({st['study']} = {st['target']}, n = {st['n_target']}); estimate ({pct}% CI)")
        cols = [c for c in COLUMNS if c in t.estimator.values]
        head = [st["study"], "n"] + [DISPLAY[c] for c in cols]
        body = []
        for s in st["trials"]:
            body.append([s, str(st["n_trials"][s])] + [_cell(_lookup(t, c, s, contrast)) for c in cols])
        if any(c in st["pooled_estimators"] for c in cols):
            target_row = _lookup(t, "target_only", st["target"], contrast)
            pooled = ["pooled", str(sum(st["n_trials"].values()))]
            for c in cols:
                pooled.append(_cell(target_row) + " [target only]" if c == "unadjusted" and target_row is not None
                              else _cell(_lookup(t, c, "pooled", contrast)))
            body.append(pooled)
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
        fmt = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths))  # noqa: E731
        lines += [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]
        ps = _lookup(t, "pseudo_outcome", "pooled", contrast)
        if ps is not None:
            lines.append(f"pooled, pseudo-outcome CATE regression (eq. 8): {_cell(ps)}")
        for scale in ("risk ratio", "odds ratio"):
            rows = t[(t.trial == "pooled") & (t.contrast == contrast) & (t.scale == scale)]
            if not rows.empty:
                lines.append(f"pooled {scale}s: " + "; ".join(f"{DISPLAY[r.estimator]} {_cell(r)}" for r in rows.itertuples()))
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
        lines.append(f"Per-trial CATE models equal (falsification check, eq. 3) {contrast}: χ² = {d['statistic']:.3f} "
                     f"on {d['df']} df, p = {d['p_value']:.3g}")
    diag = getattr(res, "diagnostics", None)
    if diag is not None and not diag.empty:
        from .diagnostics import format_diagnostics

        lines.append("")
        lines += format_diagnostics(diag, st, DISPLAY)
    if res.sensitivity is not None and not res.sensitivity.empty:
        lines.append("")
        lines.append("Sensitivity analysis (eq. 11): estimate + δ·mean_{S=0} u(s;X)")
        sens = res.sensitivity[res.sensitivity.trial == "pooled"]
        for r in sens.itertuples():
            lines.append(f"  {DISPLAY[r.estimator]:<14} {r.contrast} δ = {r.delta:+.3g}: {r.estimate:.3g} "
                         f"({r.ci_low:.3g}, {r.ci_high:.3g})")
    lines.append("")
    lines.append(f"Estimand: {st['estimand']}")
    lines.append(f"Participation model: {st['participation_model']}")
    lines.append(f"Treatment model: {st['treatment_model']}")
    lines.append(f"Outcome model: {st['outcome_model']}")
    lines.append(f"Weighting: {st['weighting']}")
    lines.append(f"Variance: {st['variance']}")
    lines.append(f"Solver: {res.fit.status}")
    for w in res.fit.warnings:
        lines.append(f"warning: {w}")
    for w in getattr(res, "diagnostic_warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


MARKERS = {"unadjusted": dict(marker="s", mfc="white", mec="black", color="black"),
           "outcome": dict(marker="s", mfc="black", mec="black", color="black"),
           "weighting": dict(marker="s", mfc="0.5", mec="0.5", color="0.5"),
           "dr": dict(marker="o", mfc="tab:blue", mec="tab:blue", color="tab:blue"),
           "pseudo_outcome": dict(marker="D", mfc="white", mec="black", color="black")}


def forest_plot(res, path=None, contrast=None):
    """Forest plot like the paper's Figure 1: per trial unadjusted (white squares), outcome model (black),
    weighting (gray), doubly robust (blue circles); pooled estimates as diamonds; the target-only estimate and CI
    (when the target sample has Z and Y) as solid and dashed vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = res.table
    contrast = contrast or res.settings["contrasts"][0]
    t = t[(t.contrast == contrast) & (t.scale == "difference")]
    trials = res.settings["trials"]
    ests = [e for e in ("unadjusted", "outcome", "weighting", "dr", "pseudo_outcome") if e in set(t.estimator)]
    per = [e for e in ests if e in res.settings["per_trial_estimators"]]
    fig_h = 1.0 + 0.45 * (len(trials) + 1) * max(1, len(per)) / 2
    fig, ax = plt.subplots(figsize=(7, max(3.5, fig_h)))
    ypos, yticks, ylabels = 0.0, [], []
    step = 0.8 / max(1, len(per))
    rows = [(s, per) for s in trials] + [("pooled", [e for e in ests if e in res.settings["pooled_estimators"]])]
    for s, es in rows[::-1]:
        for i, e in enumerate(es):
            r = _lookup(t, e, s, contrast)
            if r is None:
                continue
            y = ypos + (i - (len(es) - 1) / 2) * step
            style = dict(MARKERS[e])
            if s == "pooled":
                style["marker"] = "D"
            ax.errorbar([r.estimate], [y], xerr=[[r.estimate - r.ci_low], [r.ci_high - r.estimate]], fmt=style.pop("marker"),
                        capsize=2, ms=6, label=f"{DISPLAY[e]}", **{"mfc": style["mfc"], "mec": style["mec"],
                                                                      "color": style["color"]})
        yticks.append(ypos)
        ylabels.append(f"{res.settings['study']} = {s}" if s != "pooled" else "all trials (pooled)")
        ypos += 1.0
    target = _lookup(t, "target_only", res.settings["target"], contrast)
    if target is not None:
        ax.axvline(target.estimate, color="black", lw=1)
        ax.axvline(target.ci_low, color="black", lw=1, ls="--")
        ax.axvline(target.ci_high, color="black", lw=1, ls="--")
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    ax.legend(seen.values(), seen.keys(), loc="best", fontsize=8)
    ax.set_yticks(yticks, ylabels)
    ax.set_xlabel(f"{res.settings['outcome']}: effect of {res.settings['treatment']} {contrast} in the target "
                  f"population (95% CI)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig

