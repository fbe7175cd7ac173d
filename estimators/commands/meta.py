"""``mestim meta [TABLES.csv | --sites SITES.toml] [--measure RR|OR|RD] [--by META_ID[,...]] [--keep-missing-ids]
[--level 0.95] [--json OUT.json] [--table OUT.csv] [--plot OUT.png] [--quiet]``

Causal (Berenfeld et al. 2026) and classical meta-analysis of 2×2 tables. Without a file it runs on the bundled
BCG vaccine trials. Columns: ``ai, bi, ci, di`` (2×2 cells: treated events/non-events, control events/non-events)
or ``event.e, n.e, event.c, n.c`` (events/totals per arm; also ``event_e, n_e, event_c, n_c`` and metafor's
``ai, n1i, ci, n2i``); map other names with ``--columns event.e=trt_events,n.e=trt_n,...``. With ``--by`` (one id
column, or several comma-separated: review,comparison,outcome,subgroup) every meta-analysis in the long table is
fitted in one vectorised call, and the discordant ones (causal vs classical conclusions) are listed with the rule;
``--plot`` then draws causal vs classical (the paper's Figure 4), otherwise a forest plot with the classical and
causal pooled rows. With ``--sites`` the tables are the counts per study and arm of participant rows that stay
at their sites (:mod:`estimators.meta_federated`). Notes go to stdout; warnings (e.g. a τ² that did not converge)
to stderr, each once.
Everything is computed in closed form or NumPy for one meta-analysis (nothing to compile) and in one vectorised
XLA program for a batch.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from estimators.io import add_file_options, read_table
from estimators.output import write_json
from estimators.progress import stages
from mestim.errors import DataError, MestimWarning


STAGES = ("reading the table", "fitting", "writing the results")
META_MEMORY = 40  # measured: `mestim meta --by` peaks at ~35× its table's float64 size (1.7 kB a row)


def add_arguments(parser) -> None:
    parser.add_argument("tables", nargs="?", default=None,
                        help="CSV of 2×2 tables, one row per study (default: the bundled BCG vaccine trials)")
    parser.add_argument("--sites", metavar="SITES.toml",
                        help="participant rows held by sites instead of TABLES (a TOML file: site = 'its CSV or "
                        "Parquet file of participant rows', and an optional [columns] table naming the columns of "
                        "the roles study, treatment (1/0), outcome (1/0), weights; defaults study, treatment, "
                        "outcome): the sites release per study and arm only their counts (mestim.federated, "
                        "simulated in this process), whose 2×2 tables are meta-analysed as TABLES would be")
    parser.add_argument("--measure", default="RR", type=str.upper, choices=["RR", "OR", "RD"],
                        help="effect measure, any case (default RR)")
    parser.add_argument("--by", default=None, metavar="META_ID_COLUMN[,...]",
                        help="column(s) identifying meta-analyses, comma-separated (e.g. review,comparison,outcome,"
                             "subgroup): batch mode, one result set per meta-analysis; rows with a missing id are "
                             "excluded and reported")
    parser.add_argument("--keep-missing-ids", action="store_true",
                        help="with --by: rows whose id is empty (e.g. group.no blank = no subgroup) form their own "
                        "level '(missing)' instead of being excluded")
    parser.add_argument("--level", default="0.95", metavar="LEVEL",
                        help="confidence level of the CIs, in (0, 1) (default 0.95)")
    add_file_options(parser)
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar on stderr (it is shown only when stderr is a terminal)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write the results as JSON")
    parser.add_argument("--table", default=None, metavar="OUT.csv",
                        help="write the results as CSV: one row per meta-analysis × method, the JSON's fields")
    parser.add_argument("--plot", default=None, metavar="OUT.png",
                        help="forest plot (one meta-analysis) or causal-vs-classical scatter (with --by)")
    parser.add_argument("--columns", default=None, metavar="ROLE=COLUMN,...",
                        help="map column names: roles ai, bi, ci, di, event.e, n.e, event.c, n.c, study (with "
                        "--sites: study, treatment, outcome, weights, over the sites file's [columns])")
    parser.add_argument("--classical", default="REML", type=str.upper,
                        help="classical method compared with the causal one in batch mode, any case (default REML)")
    parser.add_argument("--drop-invalid", action="store_true",
                        help="exclude malformed rows (reported) instead of stopping with an error")


def _parse_columns(text):
    if not text:
        return None
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise DataError(f"--columns: '{part}' is not ROLE=COLUMN")
        role, col = (s.strip() for s in part.split("=", 1))
        out[role] = col
    return out


def _read(path, sep=None, encoding=None, decimal=None):
    if path is None:
        from estimators.meta_batch import load_bcg

        return load_bcg(), "BCG vaccine trials (bundled)"
    return read_table(path, sep, encoding, working_memory=META_MEMORY, decimal=decimal), path


def _read_sites(args, columns):
    """(sites, columns, source) from the sites TOML: ``site = "file"`` entries (read as TABLES is) and an optional
    ``[columns]`` table of roles, which ``--columns`` overrides."""
    import tomllib

    if args.tables is not None:
        raise DataError("give TABLES or --sites, not both")
    with open(args.sites, "rb") as fh:
        config = tomllib.load(fh)
    named = config.pop("columns", {})
    bad = [k for k, v in config.items() if not isinstance(v, str)]
    if not isinstance(named, dict) or bad or not config:
        raise DataError(f"{args.sites}: give each site as site = \"its file\" (and the roles' columns in a "
                        "[columns] table)" + (f"; {bad} are not file names" if bad else ""))
    sites = {name: read_table(path, args.sep, args.encoding, working_memory=META_MEMORY, decimal=args.decimal)
             for name, path in config.items()}
    return sites, {**named, **(columns or {})}, f"{len(sites)} sites ({', '.join(sites)}), federated (simulated)"


def _fmt(x, ratio):
    if x is None or not np.isfinite(x):
        return "NA"
    return f"{np.exp(x):.4f}" if ratio else f"{x:.5f}"


def run(args) -> int:
    from estimators.cli import print_warnings
    from estimators.meta_classical import check_level

    level = check_level(args.level, f"--level {args.level}")
    with warnings.catch_warnings(record=True) as caught, \
            stages("mestim meta", STAGES, False if args.quiet else None) as step:
        warnings.simplefilter("always", MestimWarning)
        code = _run(args, level, step)
    sys.stdout.flush()
    print_warnings("meta", caught)  # the library also lists them in the JSON's "warnings"
    return code


def _run(args, level, step) -> int:
    from estimators import meta_batch as mb

    step(STAGES[0])
    columns, sites = _parse_columns(args.columns), None
    if args.sites is None:
        df, source = _read(args.tables, args.sep, args.encoding, args.decimal)
    else:
        df, (sites, columns, source) = None, _read_sites(args, columns)
    invalid = "exclude" if args.drop_invalid else "raise"
    ratio = args.measure in ("RR", "OR")
    out = sys.stdout
    wide = None
    step(STAGES[1])
    if args.by is None:
        # the causal sandwich in closed form, checked by the stack worked out in NumPy (k ≤ 50): the engine's fit of
        # the same stack agrees (tests: to 1e-10) but compiles a program first, 0.5 s of a 1.5 s command
        long, report = mb.meta_analysis(df, args.measure, columns=columns, invalid=invalid, level=level,
                                        use_engine=False, sites=sites)
        long["meta_id"] = str(args.tables if args.tables is not None else args.sites or "bcg")
        print(f"meta-analysis of {source}: {int(long['k'].iloc[0])} studies, measure {args.measure}, "
              f"{100 * level:g}% CIs" + (" (estimates and CIs as ratios; SE on the log scale)" if ratio else ""),
              file=out)
        print(f"{'method':<10}{'estimate':>12}{'ci_low':>12}{'ci_high':>12}{'se':>12}{'tau2':>12}{'I2':>8}", file=out)
        for r in long.to_dict("records"):
            flag = "" if r["converged"] else "  (not converged)"
            print(f"{r['method']:<10}{_fmt(r['estimate'], ratio):>12}{_fmt(r['ci_low'], ratio):>12}"
                  f"{_fmt(r['ci_high'], ratio):>12}{r['se']:>12.5g}{r['tau2']:>12.4g}{r['I2']:>8.2f}{flag}", file=out)
        c = long[long["method"] == "causal"].iloc[0]
        if np.isfinite(c["estimate"]):
            print(f"causal SE: sandwich {c['se']:.6g} | paper's formula {c['se_paper']:.6g} | design-based "
                  f"{c['se_design']:.6g}", file=out)
        if args.plot:
            mb.forest_plot(report["studies"], long, args.measure, args.plot, title=f"{source}: {args.measure}",
                           level=level)
            print(f"forest plot written to {args.plot}", file=out)
    else:
        long, wide, report = mb.meta_analyses(df, args.by, args.measure, columns=columns, invalid=invalid,
                                              classical=args.classical, level=level,
                                              missing_ids="keep" if args.keep_missing_ids else "exclude",
                                              sites=sites)
        _print_batch(wide, source, args, ratio, level, out)
        if args.plot:
            mb.scatter_plot(wide, args.plot)
            print(f"scatter plot written to {args.plot}", file=out)
    step(STAGES[2])
    for line in mb.exclusion_summary(report["excluded"]):
        print(line, file=out)
    read_as = [f"read {source} as {df.attrs['read_as']}"] if df is not None and "read_as" in df.attrs else []
    for n in read_as + report["notes"]:
        print(f"note: {n}", file=out)
    payload = mb.results_json(long, report, wide)
    if args.json:
        import mestim

        payload.update(source=source, level=level, version=mestim.__version__)
        write_json(payload, args.json, indent=1)
        print(f"results written to {args.json}", file=out)
    if args.table:
        import pandas as pd

        pd.DataFrame(payload["results"]).to_csv(args.table, index=False)
        print(f"table written to {args.table}", file=out)
    return 0


def _print_batch(wide, source, args, ratio, level, out):
    """The batch summary: counts, the rule, every discordant meta-analysis, and (up to 50) all of them."""
    from estimators import meta_batch as mb

    compared = int(wide["comparable"].sum())
    flagged = mb.discordant(wide)
    left_out = mb.not_compared_summary(wide)
    print(f"{len(wide)} meta-analyses ({source}), measure {args.measure}, {100 * level:g}% CIs: causal vs "
          f"{args.classical} conclusions differ in {len(flagged)} of {compared} compared"
          + (f" ({left_out})" if left_out else ""), file=out)
    print(f"rule: {mb.discordance_rule(args.measure, level)}", file=out)
    line = lambda r: (f"  {r['meta_id']!s:<20} k={r['k']:<4} causal {_fmt(r['causal'], ratio):>10} "  # noqa: E731
                      f"[{_fmt(r['causal_ci_low'], ratio)}, {_fmt(r['causal_ci_high'], ratio)}]  classical "
                      f"{_fmt(r['classical'], ratio):>10} [{_fmt(r['classical_ci_low'], ratio)}, "
                      f"{_fmt(r['classical_ci_high'], ratio)}]")
    if len(flagged):
        print(f"discordant ({len(flagged)}):", file=out)
        for r in flagged.to_dict("records"):
            print(line(r) + f"  {r['why']}", file=out)
    if len(wide) <= 50:
        print("all meta-analyses:", file=out)
        for r in wide.to_dict("records"):
            mark = ("  *differs*" if r["conclusion_differs"] is True else
                    f"  (not compared: {r['not_compared_reason']})" if not r["comparable"] else "")
            print(line(r) + mark, file=out)
