"""W4: a batch of causal + classical meta-analyses in one vectorised call, against a per-meta-analysis loop.

    python -m benchmarks.bench_meta_batch [--m 500 5000] [--repeats 5]

Data: M meta-analyses (seeded), each with K ~ U{2..30} studies of 300–2000 participants per arm, baseline risks 5–30% (zero
cells are rare; meta-analyses with one are left out of the agreement check, as the tools' continuity corrections differ) and log-normal between-study heterogeneity. mestim: :func:`estimators.meta_batch.meta_analyses` (validation, padding, one vmapped
call for FE, DL, REML, PM, Hartung–Knapp, MH and the causal estimate with its three SEs, then the result tables);
`batch core` is the vmapped call alone on already padded arrays. Peer (same run, same data): a Python loop over
the meta-analyses with statsmodels' `combine_effects` (log RR, DerSimonian–Laird and fixed effect) — fewer methods
than mestim computes, so the ratio understates mestim's advantage. Agreement with statsmodels' DL is checked where
its τ² is ≥ 0: statsmodels does not truncate the DL τ² at 0 (mestim does, as metafor and DerSimonian–Laird do). Results: benchmarks/results/bench_meta_batch.*
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax.numpy as jnp
import numpy as np
import pandas as pd

from benchmarks.harness import hardware, results_dir


def tables(m: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 31, m)
    meta = np.repeat(np.arange(m), k)
    n1 = rng.integers(300, 2001, meta.size)
    n0 = rng.integers(300, 2001, meta.size)
    base = rng.uniform(0.05, 0.3, meta.size)
    rr = np.exp(rng.normal(-0.3, 0.4, m))[meta] * np.exp(rng.normal(0, 0.2, meta.size))
    ai = rng.binomial(n1, np.clip(base * rr, 0.03, 0.95))
    ci = rng.binomial(n0, base)
    return pd.DataFrame({"meta": meta, "study": np.arange(meta.size), "ai": ai, "bi": n1 - ai, "ci": ci, "di": n0 - ci})


def time_it(fn, repeats):
    start = time.perf_counter()
    fn()
    cold = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
    return cold, float(np.median(warm))


def statsmodels_loop(df: pd.DataFrame):
    from statsmodels.stats.meta_analysis import combine_effects, effectsize_2proportions

    out = []
    for _, t in df.groupby("meta", sort=False):
        y, v = effectsize_2proportions(t.ai.values, (t.ai + t.bi).values, t.ci.values, (t.ci + t.di).values,
                                       statistic="risk-ratio")
        res = combine_effects(y, v, method_re="chi2")  # "chi2" = DerSimonian–Laird
        out.append((res.mean_effect_re, res.sd_eff_w_re, res.tau2))
    return out


def main(argv=None):
    from estimators.meta_batch import batch_core, meta_analyses, pad_tables, standardise_tables

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, nargs="+", default=[500, 5000])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    rows = []
    for m in a.m:
        df = tables(m)
        padded = pad_tables(standardise_tables(df, by="meta")[0])
        counts, mask = jnp.asarray(padded[1]), jnp.asarray(padded[2])
        core = lambda: [x.block_until_ready() for x in batch_core(counts, mask, "RR").values()]  # noqa: E731
        full = lambda: meta_analyses(df, by="meta", measure="RR")  # noqa: E731
        core_cold, core_warm = time_it(core, a.repeats)
        full_cold, full_warm = time_it(full, a.repeats)
        peer_cold, peer_warm = time_it(lambda: statsmodels_loop(df), max(1, a.repeats // 2))
        dl = meta_analyses(df, by="meta", measure="RR")[0]
        dl = dl[dl.method == "DL"].sort_values("meta_id")
        ref = np.array(statsmodels_loop(df))
        zero = df.assign(z=(df[["ai", "bi", "ci", "di"]] == 0).any(axis=1)).groupby("meta", sort=True)["z"].any()
        # statsmodels leaves the DL τ² negative when Q < k−1 (no truncation at 0), and corrects zero cells by its
        # own convention: compare where neither applies
        ok = (ref[:, 2] >= 0) & ~zero.to_numpy()
        dl, ref = dl[ok], ref[ok]
        rows.append({"M": m, "studies": len(df), "mestim_batch_core_cold_s": core_cold,
                     "mestim_batch_core_warm_s": core_warm, "mestim_meta_analyses_cold_s": full_cold,
                     "mestim_meta_analyses_warm_s": full_warm, "statsmodels_loop_warm_s": peer_warm,
                     "ratio_statsmodels_over_mestim_full_warm": peer_warm / full_warm,
                     "max_rel_diff_DL_estimate_vs_statsmodels": float(np.max(np.abs(dl.estimate.values / ref[:, 0] - 1))),
                     "max_abs_diff_DL_tau2_vs_statsmodels": float(np.max(np.abs(dl.tau2.values - ref[:, 2]))),
                     "compared": int(ok.sum()), "not_compared": int((~ok).sum())})
        print(json.dumps(rows[-1], indent=1), flush=True)
    meta = {"hardware": hardware(), "what": __doc__}
    with open(os.path.join(results_dir(), "bench_meta_batch.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    with open(os.path.join(results_dir(), "bench_meta_batch.md"), "w") as fh:
        fh.write("# W4: batch meta-analysis (RR)\n\n" + f"Hardware: {meta['hardware']}\n\n")
        fh.write("| M | studies | batch core cold / warm | meta_analyses cold / warm | statsmodels loop warm | ratio |\n")
        fh.write("|---|---|---|---|---|---|\n")
        for r in rows:
            fh.write(f"| {r['M']} | {r['studies']} | {r['mestim_batch_core_cold_s']:.2f} s / "
                     f"{r['mestim_batch_core_warm_s'] * 1e3:.1f} ms | {r['mestim_meta_analyses_cold_s']:.2f} s / "
                     f"{r['mestim_meta_analyses_warm_s']:.2f} s | {r['statsmodels_loop_warm_s']:.2f} s | "
                     f"{r['ratio_statsmodels_over_mestim_full_warm']:.1f}× |\n")


if __name__ == "__main__":
    main()
