"""``mestim transport``: transport treatment effects from a collection of trials to a target population.

With no DATA file it runs on the bundled simulated data set (4 trials, target S=0 without Z/Y; true target
effect 2.8). The first line names the reference arm (``--reference``; default a control-like label, else the
smallest level). Prints a table like Table 1 of Dahabreh et al. (per trial: n, unadjusted, outcome model, weighting,
doubly robust; a pooled row), the homogeneity and CATE-equality tests, and the working models used.
Positivity diagnostics of the inverse-odds weights (effective sample size and largest weight share per trial and
arm) are printed too, and notes say how the data were used (a text covariate's coding, an estimator skipped and
why). Warnings (extreme weights, the engine's) are printed once, on stderr ("warning:" lines; many positivity
warnings are summarised, advice they share printed once); the summary on stdout counts them. The run still
exits 0. Row weights (``--weights``, ``--weight-type frequency|sampling``) and clusters (``--cluster``) are named
on the "Variance:" line; ``--plot`` with a sensitivity sweep also draws it; a progress bar shows on a terminal
(``--quiet``: none).
"""

from __future__ import annotations

from estimators.io import add_file_options, read_table

import os
import sys
import warnings


TRANSPORT_MEMORY = 100  # measured: `mestim transport` peaks at ~100× its table's float64 size (4.5 kB a row)


def _list(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _number_or_text(v: str):
    try:
        f = float(v)
        return int(f) if f.is_integer() else f
    except ValueError:
        return v


def add_arguments(parser) -> None:
    parser.add_argument("data", nargs="?", help="CSV (or .parquet) file; default: the bundled simulated data set")
    parser.add_argument("--sites", metavar="SITES.toml", help="the data as one table per site instead of DATA (a TOML "
                        "file: site = 'its CSV or Parquet file', each trial and the target sample a site): the "
                        "federated fit, simulated in this process (mestim.federated)")
    parser.add_argument("--study", default="S", help="study/trial column (default S)")
    parser.add_argument("--treatment", default="Z", help="treatment column (default Z)")
    parser.add_argument("--outcome", default="Y", help="outcome column (default Y)")
    parser.add_argument("--covariates", help="comma-separated covariates (default for the bundled data: X1,X2,X3); "
                        "a text column is coded as indicators against its first level (the coding is noted)")
    parser.add_argument("--formula", help="covariate formula instead of --covariates, e.g. '~ X1 + C(sex) + I(X1**2)'")
    parser.add_argument("--target", default="0", help="label of the target sample in the study column (default 0)")
    parser.add_argument("--estimators", help="comma-separated subset of unadjusted,outcome,weighting,dr,"
                        "pseudo_outcome,target_only (default: all that apply)")
    parser.add_argument("--reference", metavar="LABEL",
                        help="reference arm: every other arm is compared with it (default: a control-like label such "
                        "as placebo/control, else the smallest level, e.g. 0; stated on the first output line)")
    parser.add_argument("--contrast", action="append", metavar="Z1,Z0",
                        help="arms compared, e.g. 1,0 (repeatable; default every arm vs the reference arm, "
                        "--reference)")
    parser.add_argument("--participation", default="logistic", choices=["logistic", "multinomial"],
                        help="participation model (default logistic, as in the paper)")
    parser.add_argument("--treatment-model", default="trial", choices=["trial", "pooled", "per_trial", "known"],
                        help="treatment model (default trial: X and trial indicators, the paper's e(z;X,S))")
    parser.add_argument("--treatment-probabilities", metavar="Z:P,...",
                        help="known randomisation probabilities for --treatment-model known, each in (0, 1), summing "
                        "to 1: e.g. 0:0.5,1:0.5 or 0:1/3,1:2/3")
    parser.add_argument("--outcome-model", default="auto", choices=["auto", "linear", "logistic"],
                        help="outcome model (default auto: logistic for a 0/1 outcome, else linear)")
    parser.add_argument("--no-trial-effects", action="store_true",
                        help="no trial main effects in the pooled outcome model (default: with them for linear models)")
    parser.add_argument("--weighting", default="normalized", choices=["normalized", "unnormalized"],
                        help="normalised (Hajek, default) or unnormalised inverse-odds weights")
    parser.add_argument("--per-trial-only", action="store_true", help="only the one-trial-at-a-time estimators")
    parser.add_argument("--pooled-only", action="store_true", help="only the pooled estimators")
    parser.add_argument("--received", help="treatment received column: estimate per-protocol effects (eAppendix C) "
                        "with every estimator but target_only")
    parser.add_argument("--post-covariates", help="comma-separated post-randomisation covariates (with --received)")
    parser.add_argument("--bias", help="sensitivity analysis bias function u: a number or a covariate name")
    parser.add_argument("--bias-grid", help="comma-separated multipliers δ of the bias function (eq. 11)")
    parser.add_argument("--weights", metavar="COLUMN", help="row weights column (read as --weight-type says)")
    parser.add_argument("--weight-type", default="frequency", choices=["frequency", "sampling"],
                        help="frequency (default: a row of weight w counts as w rows) or sampling (survey / "
                        "inverse-probability weights, e.g. on the target sample: each estimating equation times w)")
    parser.add_argument("--cluster", metavar="COLUMN",
                        help="cluster column (e.g. the recruiting site): cluster-robust sandwich SEs")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level in (0, 1) (default 0.95)")
    add_file_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr (it is shown only when "
                        "stderr is a terminal)")
    parser.add_argument("--json", metavar="OUT.json", help="write estimates and tests as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="draw the forest plot (as the paper's Figure 1); with "
                        "--bias/--bias-grid also OUT_sensitivity.png (estimates against the bias multiplier δ)")
    parser.add_argument("--table", metavar="OUT.csv", help="write the tidy table of estimates as CSV (with the "
                        "sensitivity sweep's rows, one per delta, when --bias/--bias-grid is given)")


def run(args) -> int:
    from estimators.transport import simulate
    from estimators.transport.api import transport
    from mestim.errors import DataError, MestimWarning

    sites = None
    if args.sites is not None:
        import tomllib

        if args.data is not None:
            raise DataError("give DATA or --sites, not both")
        with open(args.sites, "rb") as fh:
            sites = {name: read_table(path, args.sep, args.encoding, working_memory=TRANSPORT_MEMORY)
                     for name, path in tomllib.load(fh).items()}
        df, source = None, f"{len(sites)} sites ({', '.join(sites)}), federated (simulated)"
        covariates = _list(args.covariates)
    elif args.data is None:
        df = simulate.load_transport_sim()
        source = f"bundled simulated data ({simulate.bundled_data_path()}; true target effect {simulate.bundled_truth():.4g})"
        covariates = _list(args.covariates) or (None if args.formula else ["X1", "X2", "X3"])
    else:
        df = read_table(args.data, args.sep, args.encoding, working_memory=TRANSPORT_MEMORY, decimal=args.decimal)
        source = args.data + (f" ({df.attrs['read_as']})" if "read_as" in df.attrs else "")
        covariates = _list(args.covariates)
        if covariates is None and args.formula is None:
            raise DataError("give --covariates X1,X2,... (or --formula '~ ...')")
    contrasts = None
    if args.contrast:
        contrasts = []
        for c in args.contrast:
            parts = _list(c)
            if parts is None or len(parts) != 2:
                raise DataError(f"--contrast {c!r}: give two arms, e.g. --contrast 1,0")
            contrasts.append(tuple(_number_or_text(p) for p in parts))
    probs = None
    if args.treatment_probabilities:
        probs = {}
        for item in _list(args.treatment_probabilities):
            try:
                z, p = item.split(":")
            except ValueError:
                raise DataError(f"--treatment-probabilities item {item!r}: use Z:P, e.g. 0:0.5,1:0.5") from None
            probs[_number_or_text(z.strip())] = p.strip()  # a number or a fraction such as 1/3, checked by transport()
    bias = None
    if args.bias is not None:
        b = _number_or_text(args.bias)
        bias = float(b) if isinstance(b, (int, float)) else b
    grid = [float(x) for x in _list(args.bias_grid)] if args.bias_grid else None
    if args.per_trial_only and args.pooled_only:
        raise DataError("--per-trial-only and --pooled-only exclude each other")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MestimWarning)
        res = transport(df, sites=sites, study=args.study, treatment=args.treatment, outcome=args.outcome, covariates=covariates,
                        formula=args.formula, target=_number_or_text(args.target), estimators=_list(args.estimators),
                        per_trial=not args.pooled_only, pooled=not args.per_trial_only, contrasts=contrasts,
                        participation=args.participation, treatment_model=args.treatment_model,
                        treatment_probabilities=probs, outcome_model=args.outcome_model,
                        trial_effects=False if args.no_trial_effects else None, weighting=args.weighting,
                        reference=None if args.reference is None else _number_or_text(args.reference),
                        received=args.received, post_covariates=_list(args.post_covariates), bias=bias, bias_grid=grid,
                        weights=args.weights, weight_type=args.weight_type, cluster=args.cluster, level=args.level,
                        progress=False if args.quiet else None)
    summary = res.summary(warnings=False).splitlines()
    first = summary[0] if summary[0].startswith("Reference arm") else None  # the sign of every contrast: line 1
    print("\n".join(([first] if first else []) + [f"Data: {source}"] + summary[bool(first):]))
    if args.json:
        res.to_json(args.json)
        print(f"wrote {args.json}")
    if args.table:
        res.table_with_sensitivity().to_csv(args.table, index=False)
        print(f"wrote {args.table}")
    if args.plot:
        res.plot(args.plot)
        print(f"wrote {args.plot}")
        if res.sensitivity is not None and not res.sensitivity.empty:
            root, ext = os.path.splitext(args.plot)
            res.plot_sensitivity(f"{root}_sensitivity{ext or '.png'}")
            print(f"wrote {root}_sensitivity{ext or '.png'} (estimate against the bias multiplier δ, eq. 11)")
    sys.stdout.flush()
    from estimators.cli import print_warnings
    from estimators.transport.report import warning_lines

    print_warnings("transport", caught, first=warning_lines(res), skip=set(res.warnings))
    return 0
