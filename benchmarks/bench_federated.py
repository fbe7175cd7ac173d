"""Issue 20 benchmark: what a federated fit costs beside the pooled fit: rounds, bytes and seconds.

    python -m benchmarks.bench_federated                    # logistic GLM at n = 1e4, 1e5, 1e6; transport; meta
    python -m benchmarks.bench_federated --ns 10000 --sites 4 8

Workloads (float64, in one process, the protocol's messages encoded exactly as over Flower and counted):

- ``logistic``: a logistic GLM (intercept + 5 covariates, frequency weights) on n rows split evenly over
  ``--sites`` sites, the sites as clusters (``cluster="sites"``, meat from the sites' totals); the pooled fit is
  ``mestim.fit(..., cluster=site)`` on all rows;
- ``transport``: the transport stack of ``estimators.transport`` (every estimator per trial and pooled, 19 blocks)
  on the bundled data split by trial (4 trials and the target sample: 5 sites), against the pooled call;
- ``meta``: ``mestim meta --sites`` on the bundled BCG trials as participant rows (one row per person, 357,347
  rows; p = the 13 studies), the trials held by 3 sites (study mod 3): the sites' counts per study and arm, then
  the meta-analysis of their 2×2 tables (every method), against the 2×2 tables built from the pooled rows and the
  same meta-analysis; Δθ and ΔSE over every method's estimate and SE.

Rounds = request rounds (every site is asked once per round: levels, prepare, then one per pass); bytes = every
request and reply, as :func:`mestim.federated.encode` writes them (a JSON header and an ``.npz`` of the arrays;
Flower's RecordDicts carry the same arrays). Seconds = wall time of the whole fit, the median of ``--repeats``
runs after one warm-up run (compiled programs reused; the sites share this process's CPU, their sums run one
after another, and each site reads and checks its table on every pass). Over Flower each round also costs the
network's latency and a fresh ClientApp process per message (Flower starts one for each).

Results: ``benchmarks/results/bench_federated.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402


def logistic_data(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    eta = 0.2 + x @ np.array([0.5, -0.3, 0.2, 0.1, -0.4])
    cols = {f"x{j}": x[:, j] for j in range(5)}
    cols.update(y=(rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float), w=rng.uniform(0.5, 2.0, n))
    return cols


def timed(fn, repeats: int):
    fn()  # warm-up: compilation (the persistent cache may serve it)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def federated(blocks, tables, repeats, **options):
    from mestim import federated as F

    counts = {}

    def run():
        network = F.Loopback({name: F.Site(name, t, estimators=[F.Estimator("estimator", "1", blocks)])
                              for name, t in tables.items()})
        result = F.fit(blocks, network, **options)
        counts.update(rounds=network.rounds, bytes=network.bytes)
        return result
    result, seconds = timed(run, repeats)
    return result, seconds, counts


def logistic_row(n: int, n_sites: int, repeats: int) -> dict:
    import mestim
    from estimators.generalized_linear import glm

    cols = logistic_data(n)
    site = np.arange(n) * n_sites // n
    blocks = [glm("m", "y", [f"x{j}" for j in range(5)], family="binomial")]
    pooled, t_pooled = timed(lambda: mestim.fit(blocks, dict(cols, site=site), weights="w", cluster="site"), repeats)
    tables = {f"site{k}": {c: v[site == k] for c, v in cols.items()} for k in range(n_sites)}
    fed, t_fed, counts = federated(blocks, tables, repeats, weights="w", cluster="sites")
    return dict(workload="logistic", n=n, sites=n_sites, p=pooled.theta.size, pooled_s=t_pooled, federated_s=t_fed,
                **counts, theta_diff=float(np.max(np.abs(fed.theta - pooled.theta))),
                se_rel_diff=float(np.max(np.abs(fed.se / pooled.se - 1))))


def transport_row(repeats: int) -> dict:
    from estimators.transport import load_transport_sim
    from estimators.transport.api import transport_stack

    df = load_transport_sim()
    stack = transport_stack(df, covariates=["X1", "X2", "X3"])
    pooled, t_pooled = timed(stack.fit, repeats)
    study = df.S.to_numpy()
    tables = {f"S{s}": {k: np.asarray(v)[study == s] for k, v in stack.data_for_fit.items()} for s in np.unique(study)}
    fed, t_fed, counts = federated(stack.blocks, tables, repeats, solve=stack.solve)
    return dict(workload="transport", n=len(df), sites=len(tables), p=pooled.theta.size, pooled_s=t_pooled,
                federated_s=t_fed, **counts, theta_diff=float(np.max(np.abs(fed.theta - pooled.theta))),
                se_rel_diff=float(np.max(np.abs(fed.se / pooled.se - 1))))


def bcg_participants():
    """The BCG trials' 2×2 tables as one row per participant: study, treatment (1 vaccinated), outcome (1 TB)."""
    import pandas as pd

    from estimators.meta_batch import load_bcg

    bcg = load_bcg()
    cells = pd.DataFrame({"study": np.repeat(bcg.study.to_numpy(), 4), "treatment": np.tile([1, 1, 0, 0], len(bcg)),
                          "outcome": np.tile([1, 0, 1, 0], len(bcg)),
                          "n": bcg[["ai", "bi", "ci", "di"]].to_numpy().ravel()})
    return cells.loc[cells.index.repeat(cells.n)].drop(columns="n").reset_index(drop=True)


def meta_row(repeats: int) -> dict:
    import pandas as pd

    from estimators import meta_batch as mb
    from estimators.meta_federated import meta_counts
    from mestim import federated as F

    rows = bcg_participants()
    sites = {f"sponsor{j}": rows[rows.study % 3 == j].reset_index(drop=True) for j in range(3)}

    def pooled_tables():
        cells = rows.groupby(["study", "treatment"]).outcome.agg(["size", "sum"]).unstack("treatment")
        n, e = cells["size"], cells["sum"]
        return pd.DataFrame({"study": n.index, "ai": e[1].values, "bi": (n[1] - e[1]).values, "ci": e[0].values,
                             "di": (n[0] - e[0]).values})

    (pooled, _), t_pooled = timed(lambda: mb.meta_analysis(pooled_tables()), repeats)
    (fed, _), t_fed = timed(lambda: mb.meta_analysis(sites=sites), repeats)
    counts = meta_counts()
    network = F.Loopback({name: F.Site(name, t, estimators=[counts]) for name, t in sites.items()})
    F.tabulate(counts, network)
    return dict(workload="meta", n=len(rows), sites=len(sites), p=len(pooled_tables()), pooled_s=t_pooled,
                federated_s=t_fed, rounds=network.rounds, bytes=network.bytes,
                theta_diff=float(np.nanmax(np.abs(fed.estimate - pooled.estimate))),
                se_rel_diff=float(np.nanmax(np.abs(fed.se / pooled.se - 1))))


def table(rows) -> str:
    header = ["workload", "n", "sites", "p", "pooled fit (s)", "federated fit (s)", "ratio", "rounds", "bytes",
              "bytes/round", "max abs Δθ", "max rel ΔSE"]
    return "\n".join(harness.markdown_table(header, (
        [r["workload"], f"{r['n']:,}", r["sites"], r["p"], f"{r['pooled_s']:.3f}", f"{r['federated_s']:.3f}",
         f"{r['federated_s'] / r['pooled_s']:.2f}", r["rounds"], f"{r['bytes']:,}", f"{r['bytes'] // r['rounds']:,}",
         f"{r['theta_diff']:.1e}", f"{r['se_rel_diff']:.1e}"] for r in rows)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ns", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--sites", type=int, nargs="+", default=[4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-transport", action="store_true")
    p.add_argument("--no-meta", action="store_true")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    meta = dict(hardware=harness.hardware(), budget="-", repeats=a.repeats)
    rows = [logistic_row(n, s, a.repeats) for n in a.ns for s in a.sites]
    if not a.no_transport:
        rows.append(transport_row(a.repeats))
    if not a.no_meta:
        rows.append(meta_row(a.repeats))
    for r in rows:
        print(r, flush=True)
    meta["load_average_end"] = os.getloadavg()
    notes = ("Federated fits run the protocol of mestim.federated in one process (Loopback: every message encoded "
             "and decoded as over Flower, the sites summed one after another); rounds and bytes are what would "
             "cross the network. Seconds: the median of the repeats after a warm-up run (compiled programs reused); "
             "a federated fit also reads and checks every site's table on every pass (the data-change check). "
             "meta: one round of counts (participants and events per study and arm), then the meta-analysis of "
             "the 2×2 tables at the coordinator; pooled = the tables built from the pooled rows, then the same.")
    out = harness.write_results("bench_federated", rows, meta, table(rows), notes)
    print(f"results in {out}/bench_federated.md")


if __name__ == "__main__":
    main()
