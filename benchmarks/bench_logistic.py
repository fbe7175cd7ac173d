"""Issue 2's first benchmark: logistic regression (W1, p = 11) + sandwich, mestim vs statsmodels vs delicatessen.

    python -m benchmarks.bench_logistic [--ns 10000 100000 1000000] [--budget 60]

Every (tool, n) runs in a fresh process (:mod:`benchmarks.harness`): cold = first fit in the process (mestim:
tracing + XLA compilation included), warm = median of repeated fits, peak memory = ru_maxrss. Peers:
statsmodels GLM Binomial, ``cov_type="HC0"``; delicatessen ``MEstimator`` + ``ee_regression(model="logistic")``
with its defaults (solver "lm", ``deriv_method="approx"``: finite-difference bread, so its SEs differ from the
exact ones by ~1e-6 relative). mestim is also run a second time in a new process with JAX's persistent compilation
cache populated by the first (the CLI's setting), to show the cold latency a second CLI run sees.
Then, per n, the issue-19 comparison in ONE fresh process: mestim's registered logistic block and statsmodels fitted
alternately (``--interleaved`` rounds, medians: the machine's load hits both alike), with the host work of a mestim
fit — the time of preparing the problem (columns, design, starting values, row checks) and of the post-fit checks,
and, at ``--host-n`` rows, the bytes per row they allocate on the host (``tracemalloc``), and whether the user's
float64 columns were copied. Results: ``benchmarks/results/bench_logistic.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
    p.add_argument("--interleaved", type=int, default=7, help="rounds of mestim vs statsmodels in one process")
    p.add_argument("--host-n", type=int, default=50_000, help="rows of the fit whose host allocations are measured")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        print(json.dumps(interleaved_child(a.child, a.interleaved, a.host_n)))
        return
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
    for n in a.ns:
        rows.append(interleaved(n, a.interleaved, a.host_n))
    meta["load_average_end"] = os.getloadavg()
    notes = ("W1: logistic regression of Yb on (1, x1..x10), pooled data of `benchmarks/workloads.py`. "
             "statsmodels: GLM Binomial, HC0. delicatessen: MEstimator + ee_regression(model='logistic'), solver 'lm', "
             "deriv_method='approx' (its default; finite-difference bread). Peak memory: ru_maxrss of a fresh process "
             "per (tool, n); 'fit memory' = peak after the fits − peak after loading the data.")
    table = harness.markdown([r for r in rows if "tool" in r]) + "\n\n" + interleaved_markdown(
        [r for r in rows if "interleaved" in r])
    out = harness.write_results("bench_logistic", rows, meta, table, notes)
    print(f"results in {out}/bench_logistic.md")


def interleaved(n: int, rounds: int, host_n: int) -> dict:
    """:func:`interleaved_child` in a fresh process (its memory and compiled programs its own)."""
    env = dict(os.environ, PYTHONPATH=harness.ROOT, MESTIM_CACHE_DIR="off")
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_logistic", "--child", str(n), "--interleaved",
                          str(rounds), "--host-n", str(host_n)], cwd=harness.ROOT, env=env, capture_output=True,
                         text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"W1 interleaved n={n:>9,}: mestim {row['mestim_s']:.3f} s, statsmodels {row['statsmodels_s']:.3f} s "
          f"({row['statsmodels_over_mestim']:.1f}×), host work {row['host_share']:.0%} of the fit")
    return row


def interleaved_child(n: int, rounds: int, host_n: int) -> dict:
    """mestim's registered logistic block vs statsmodels GLM (HC0), alternately in this process, and the host work
    of the mestim fit: time preparing the problem and in the post-fit checks, host bytes per row they allocate."""
    import numpy as np

    import mestim
    from benchmarks import workloads as W
    from mestim import estimate, problem

    cols = W.cached_data(n)
    host = {"prepare": [], "checks": []}
    timed = lambda key, f: lambda *a, **k: _timed(host[key], f, *a, **k)  # noqa: E731
    fit_m, fit_s = (lambda: W.mestim_fit("W1", cols)), (lambda: W.statsmodels_fit("W1", cols))
    res, ref = fit_m(), fit_s()  # compiled, imported
    times = {"mestim": [], "statsmodels": []}
    with _patched(estimate, "prepare", timed("prepare", problem.prepare)), \
            _patched(estimate, "warnings_for", timed("checks", estimate.warnings_for)):
        for _ in range(rounds):
            for name, f in (("mestim", fit_m), ("statsmodels", fit_s)):
                start = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - start)
    m, s = statistics.median(times["mestim"]), statistics.median(times["statsmodels"])
    host_s = statistics.median(host["prepare"]) + statistics.median(host["checks"])
    return dict(interleaved=True, n=n, rounds=rounds, mestim_s=m, statsmodels_s=s, statsmodels_over_mestim=s / m,
                ratios=[b / a for a, b in zip(times["mestim"], times["statsmodels"])],
                prepare_s=statistics.median(host["prepare"]), checks_s=statistics.median(host["checks"]),
                host_share=host_s / m, iterations=res.iterations,
                max_dtheta_vs_statsmodels=float(np.max(np.abs(res.theta - ref[0]))),
                max_rel_dse_vs_statsmodels=float(np.max(np.abs(res.se / ref[1] - 1))),
                load_average=os.getloadavg(), **host_allocations(host_n))


def host_allocations(n: int) -> dict:
    """Host bytes per row allocated (peak, ``tracemalloc``) while a warm W1 fit of n rows prepares its problem
    (the prepared columns it keeps included: the design alone is 88 B a row) and while it runs the post-fit checks,
    and whether the prepared problem holds copies of the user's float64 columns."""
    import tracemalloc

    import numpy as np

    from benchmarks import workloads as W
    from mestim import estimate, problem
    from mestim.covariance import BreadFactor

    cols = W.pooled_data(n)
    res = W.mestim_fit("W1", cols)
    tracemalloc.start()
    prepared = problem.prepare(W.mestim_stack("W1"), cols)
    prepare_peak = tracemalloc.get_traced_memory()[1]
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    estimate.warnings_for(prepared, BreadFactor.of(-np.asarray(res.bread), prepared.labels), res.theta, True)
    checks_peak = tracemalloc.get_traced_memory()[1] - held
    tracemalloc.stop()
    return dict(host_n=n, prepare_bytes_per_row=prepare_peak / n, checks_bytes_per_row=checks_peak / n,
                user_columns_copied=not all(np.shares_memory(prepared.columns[k], v) for k, v in cols.items()))


def _timed(into: list, f, *args, **kwargs):
    start = time.perf_counter()
    out = f(*args, **kwargs)
    into.append(time.perf_counter() - start)
    return out


class _patched:
    def __init__(self, module, name, value):
        self.module, self.name, self.value = module, name, value

    def __enter__(self):
        self.old = getattr(self.module, self.name)
        setattr(self.module, self.name, self.value)

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.old)


def interleaved_markdown(rows) -> str:
    header = ["n", "mestim", "statsmodels", "statsmodels ÷ mestim", "prepare", "post-fit checks", "host share",
              "host B/row: prepare, checks (at n)", "load"]
    fmt = harness.seconds_text
    return "\n".join(["Interleaved in one process (medians): mestim's registered logistic block vs statsmodels GLM "
                      "Binomial (HC0), and the host work of the mestim fit.", ""] + harness.markdown_table(header, (
        [f"{r['n']:,}", fmt(r["mestim_s"]), fmt(r["statsmodels_s"]), f"{r['statsmodels_over_mestim']:.1f}×",
         fmt(r["prepare_s"]), fmt(r["checks_s"]), f"{r['host_share']:.0%}",
         f"{r['prepare_bytes_per_row']:.0f}, {r['checks_bytes_per_row']:.0f} ({r['host_n']:,})",
         f"{r['load_average'][0]:.1f}"] for r in rows)))


if __name__ == "__main__":
    main()
