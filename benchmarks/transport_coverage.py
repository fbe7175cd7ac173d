"""Coverage simulation for the transport estimators (Dahabreh et al.): bias, SE calibration, 95% CI coverage.

For each scenario, ``--reps`` data sets from :func:`estimators.transport.simulate_trials` (4 trials of 300,
target sample of 1000, Z/Y missing in the target) are analysed with every estimator in one stack; we record, per
estimator, the mean bias against the known target effect, the Monte Carlo SD of the estimates, the mean sandwich
SE and the coverage of the 95% Wald CI. Scenarios:

- ``correct``: every working model correctly specified (multinomial participation model; see simulate.py);
- ``correct_logistic``: the paper's default logistic participation models (the pooled one is then slightly
  misspecified, the per-trial ones are right);
- ``outcome_wrong``: outcome depends on X1² (linear outcome models wrong; weighting and DR should be fine);
- ``participation_wrong``: covariate variances differ by source (participation models wrong; outcome and DR fine);
- ``binary``: 0/1 outcome, logistic outcome models, risk difference.

Usage: python benchmarks/transport_coverage.py [--reps 200] [--out benchmarks/results/transport_coverage]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # small matrices: threads only contend
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from estimators.transport import simulate_trials, transport  # noqa: E402

SCENARIOS = {
    "correct": (dict(), dict(participation="multinomial")),
    "correct_logistic": (dict(), dict()),
    "outcome_wrong": (dict(misspecify="outcome"), dict(participation="multinomial")),
    "participation_wrong": (dict(misspecify="participation"), dict(participation="multinomial")),
    "binary": (dict(binary=True), dict(participation="multinomial")),
}


def run(reps: int, scenarios, seed0: int = 1000):
    recs = []
    for name in scenarios:
        sim_kw, fit_kw = SCENARIOS[name]
        t0 = time.time()
        for r in range(reps):
            sim = simulate_trials(n_trials=4, n_per_trial=300, n_target=1000, seed=seed0 + r, **sim_kw)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = transport(sim.data, covariates=["X1", "X2", "X3"], **fit_kw)
            t = res.table[(res.table.scale == "difference") & (res.table.estimator != "unadjusted")]
            for row in t.itertuples():
                recs.append({"scenario": name, "rep": r, "estimator": row.estimator, "trial": row.trial,
                             "estimate": row.estimate, "se": row.se, "truth": sim.true_effect,
                             "covered": row.ci_low <= sim.true_effect <= row.ci_high})
        print(f"{name}: {reps} reps in {time.time() - t0:.1f} s", flush=True)
    return pd.DataFrame(recs)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["scenario", "estimator", "trial"], sort=False)
    out = g.apply(lambda d: pd.Series({
        "reps": len(d), "truth": d.truth.iloc[0], "mean_estimate": d.estimate.mean(),
        "bias": d.estimate.mean() - d.truth.iloc[0], "mc_sd": d.estimate.std(ddof=1), "mean_se": d.se.mean(),
        "coverage": d.covered.mean(), "coverage_mc_se": np.sqrt(d.covered.mean() * (1 - d.covered.mean()) / len(d))}),
        include_groups=False)
    return out.reset_index()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--out", default=os.path.join(os.environ.get("MESTIM_BENCH_RESULTS") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results"), "transport_coverage"))
    args = p.parse_args(argv)
    df = run(args.reps, args.scenarios.split(","))
    summ = summarise(df)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    summ.to_csv(args.out + ".csv", index=False)
    with open(args.out + ".json", "w") as fh:
        json.dump({"reps": args.reps, "design": "4 trials x 300 rows, target sample 1000 rows, seeds 1000..",
                   "summary": summ.to_dict("records")}, fh, indent=1)
    pooled = summ[summ.trial == "pooled"]
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.float_format", "{:.4f}".format):
        text = pooled.to_string(index=False)
        per = summ[summ.trial != "pooled"].groupby(["scenario", "estimator"])[["bias", "coverage"]].agg(
            ["min", "max"]).to_string()
    with open(args.out + ".md", "w") as fh:
        fh.write(f"# Transport estimators: coverage simulation ({args.reps} replicates per scenario)\n\n")
        fh.write("Pooled estimators (truth = known target effect):\n\n```\n" + text + "\n```\n\n")
        fh.write("Per-trial estimators (range over the 4 trials of bias and coverage):\n\n```\n" + per + "\n```\n")
    print(text)
    print(per)


if __name__ == "__main__":
    main()
