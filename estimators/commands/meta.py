"""``mestim meta [TABLES.csv] [--measure RR|OR|RD] [--by META_ID] [--json OUT.json] [--plot OUT.png]``

Causal (Berenfeld et al. 2026) and classical meta-analysis of 2×2 tables. Without a file it runs on the bundled
BCG vaccine trials. Columns: ``ai, bi, ci, di`` (2×2 cells: treated events/non-events, control events/non-events)
or ``event.e, n.e, event.c, n.c`` (events/totals per arm; also ``event_e, n_e, event_c, n_c`` and metafor's
``ai, n1i, ci, n2i``); map other names with ``--columns event.e=trt_events,n.e=trt_n,...``. With ``--by`` every
meta-analysis in the long table is fitted in one vectorised call; ``--plot`` then draws causal vs classical
(the paper's Figure 4), otherwise a forest plot with the classical and causal pooled rows.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from estimators.io import add_file_options, out_of_memory, read_table
from mestim.errors import DataError


META_MEMORY = 40  # measured: `mestim meta --by` peaks at ~35× its table's float64 size (1.7 kB a row)


def add_arguments(parser) -> None:
    parser.add_argument("tables", nargs="?", default=None,
                        help="CSV of 2×2 tables, one row per study (default: the bundled BCG vaccine trials)")
    parser.add_argument("--measure", default="RR", choices=["RR", "OR", "RD"], help="effect measure (default RR)")
    parser.add_argument("--by", default=None, metavar="META_ID_COLUMN",
                        help="column identifying meta-analyses: batch mode, one result set per meta-analysis")
    add_file_options(parser)
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write the results as JSON")
    parser.add_argument("--plot", default=None, metavar="OUT.png",
                        help="forest plot (one meta-analysis) or causal-vs-classical scatter (with --by)")
    parser.add_argument("--columns", default=None, metavar="ROLE=COLUMN,...",
                        help="map column names: roles ai, bi, ci, di, event.e, n.e, event.c, n.c, study")
    parser.add_argument("--classical", default="REML",
                        help="classical method compared with the causal one in batch mode (default REML)")
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


def _read(path, sep=None, encoding=None):
    if path is None:
        from estimators.meta_batch import load_bcg

        return load_bcg(), "BCG vaccine trials (bundled)"
    return read_table(path, sep, encoding, working_memory=META_MEMORY), path


def _fmt(x, ratio):
    if x is None or not np.isfinite(x):
        return "NA"
    return f"{np.exp(x):.4f}" if ratio else f"{x:.5f}"


def run(args) -> int:
    try:
        return _run(args)
    except MemoryError:  # the size check before reading is an estimate: the analysis may still run out
        raise out_of_memory(args.tables or "the bundled data") from None


def _run(args) -> int:
    from estimators import meta_batch as mb

    df, source = _read(args.tables, args.sep, args.encoding)
    columns = _parse_columns(args.columns)
    invalid = "exclude" if args.drop_invalid else "raise"
    ratio = args.measure in ("RR", "OR")
    out = sys.stdout
    if args.by is None:
        long, report = mb.meta_analysis(df, args.measure, columns=columns, invalid=invalid)
        if args.tables is not None:
            long["meta_id"] = str(args.tables)
        else:
            long["meta_id"] = "bcg"
        print(f"meta-analysis of {source}: {int(long['k'].iloc[0])} studies, measure {args.measure}"
              + (" (estimates and CIs as ratios; SE on the log scale)" if ratio else ""), file=out)
        print(f"{'method':<10}{'estimate':>12}{'ci_low':>12}{'ci_high':>12}{'se':>12}{'tau2':>12}{'I2':>8}", file=out)
        for r in long.to_dict("records"):
            print(f"{r['method']:<10}{_fmt(r['estimate'], ratio):>12}{_fmt(r['ci_low'], ratio):>12}"
                  f"{_fmt(r['ci_high'], ratio):>12}{r['se']:>12.5g}{r['tau2']:>12.4g}{r['I2']:>8.2f}", file=out)
        c = long[long["method"] == "causal"].iloc[0]
        if np.isfinite(c["estimate"]):
            print(f"causal SE: sandwich {c['se']:.6g} | paper's formula {c['se_paper']:.6g} | design-based "
                  f"{c['se_design']:.6g}", file=out)
        if args.plot:
            mb.forest_plot(report["studies"], long, args.measure, args.plot,
                           title=f"{source}: {args.measure}")
            print(f"forest plot written to {args.plot}", file=out)
    else:
        long, wide, report = mb.meta_analyses(df, args.by, args.measure, columns=columns, invalid=invalid,
                                              classical=args.classical)
        n_diff = int(wide["conclusion_differs"].sum())
        print(f"{len(wide)} meta-analyses ({source}), measure {args.measure}: causal vs {args.classical} "
              f"conclusions differ in {n_diff}", file=out)
        if len(wide) <= 50:
            for r in wide.to_dict("records"):
                print(f"  {r['meta_id']!s:<20} k={r['k']:<4} causal {_fmt(r['causal'], ratio):>10} "
                      f"classical {_fmt(r['classical'], ratio):>10}" + ("  *differs*" if r["conclusion_differs"] else ""),
                      file=out)
        if args.plot:
            mb.scatter_plot(wide, args.plot)
            print(f"scatter plot written to {args.plot}", file=out)
    for e in report["excluded"]:
        print(f"excluded: meta {e['meta_id']} study {e['study']} (row {e['row']}): {e['reason']}", file=out)
    for n in report["notes"]:
        print(f"note: {n}", file=out)
    if args.json:
        payload = mb.results_json(long, report)
        payload["source"] = source
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"results written to {args.json}", file=out)
    return 0
