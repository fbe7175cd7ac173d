"""Issue 2's first benchmark: logistic regression (W1, p = 11) + sandwich, mestim vs statsmodels vs delicatessen.

    python -m benchmarks.bench_logistic [--ns 10000 100000 1000000] [--budget 60]

Every (tool, n) runs in a fresh process (:mod:`benchmarks.harness`): cold = first fit in the process (mestim:
tracing + XLA compilation included), warm = median of repeated fits, peak memory = ru_maxrss. Peers:
statsmodels GLM Binomial, ``cov_type="HC0"``; delicatessen ``MEstimator`` + ``ee_regression(model="logistic")``
with its defaults (solver "lm", ``deriv_method="approx"``: finite-difference bread, so its SEs differ from the
exact ones by ~1e-6 relative). mestim is also run a second time in a new process with JAX's persistent compilation
cache populated by the first (the CLI's setting), to show the cold latency a second CLI run sees.
Results: ``benchmarks/results/bench_logistic.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402
from benchmarks.workloads import cached_data  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ns", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--budget", type=float, default=60.0, help="seconds per fit past which a peer is skipped")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    meta = dict(hardware=harness.hardware(), budget=a.budget, ns=a.ns, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    for n in a.ns:
        cached_data(n)
    rows = harness.sweep(["W1"], a.ns, ["mestim", "statsmodels", "delicatessen"], budget=a.budget, repeats=a.repeats)
    with tempfile.TemporaryDirectory() as cache:
        for n in a.ns:
            harness.run_case("mestim", "W1", n, budget=a.budget, repeats=1, cache_dir=cache)  # populates the cache
            row = harness.run_case("mestim", "W1", n, budget=a.budget, repeats=a.repeats, cache_dir=cache)
            rows.append(row)
            print(f"W1 mestim (cache)  n={n:>9,}: cold {row.get('cold_s', float('nan')):.3f} s")
    meta["load_average_end"] = os.getloadavg()
    notes = ("W1: logistic regression of Yb on (1, x1..x10), pooled data of `benchmarks/workloads.py`. "
             "statsmodels: GLM Binomial, HC0. delicatessen: MEstimator + ee_regression(model='logistic'), solver 'lm', "
             "deriv_method='approx' (its default; finite-difference bread). Peak memory: ru_maxrss of a fresh process "
             "per (tool, n); 'fit memory' = peak after the fits − peak after loading the data.")
    out = harness.write_results("bench_logistic", rows, meta, harness.markdown(rows), notes)
    print(f"results in {out}/bench_logistic.md")


if __name__ == "__main__":
    main()
