"""Section 4.1 of Berenfeld et al. (2026), "A potential great mismatch": classical fixed/random-effects vs causal
meta-analysis on synthetic two-study meta-analyses (data-generating process of their Appendix A).

DGP per participant: H ∈ {1, 2} with probability ½; X | H = k ~ N(μ_k, 0.1² I₂), μ₁ = (1, 0), μ₂ = (0, 1);
A ~ Bernoulli(½); Y | X, A = a ~ Bernoulli(expit(Xᵀβ_a)), β₁ = (0.36, −1.38), β₀ = (2.94, −4.60).
n = 1000 participants per meta-analysis, 100 repetitions (seeded). Each repetition gives a 2-study table; all 100
meta-analyses are fitted in one vectorised call (estimators.meta_batch.meta_analyses). The causal target θ(P*) is
computed by Monte Carlo on 4·10⁶ draws of X (P* = ½P₁ + ½P₂).

Run:  python -m benchmarks.meta_synthetic  →  benchmarks/results/meta_synthetic.json and meta_synthetic.png
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd

import mestim  # noqa: F401  (float64)
from estimators import meta_batch as mb

MU = np.array([[1.0, 0.0], [0.0, 1.0]])
SIGMA = 0.1
BETA1 = np.array([0.36, -1.38])
BETA0 = np.array([2.94, -4.60])
N, REPS, SEED = 1000, 100, 20260401
METHODS = ("FE", "DL", "REML", "causal")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def expit(z):
    return 1 / (1 + np.exp(-z))


def simulate_tables(rng, n=N):
    """One meta-analysis: per study k the 2×2 counts (ai, bi, ci, di)."""
    h = rng.integers(0, 2, n)
    x = MU[h] + SIGMA * rng.standard_normal((n, 2))
    a = rng.integers(0, 2, n)
    y = rng.random(n) < expit(np.where(a[:, None] == 1, x @ BETA1[:, None], x @ BETA0[:, None])[:, 0])
    rows = []
    for k in (0, 1):
        s = h == k
        rows.append({"study": k + 1, "ai": int((s & (a == 1) & y).sum()), "bi": int((s & (a == 1) & ~y).sum()),
                     "ci": int((s & (a == 0) & y).sum()), "di": int((s & (a == 0) & ~y).sum())})
    return rows


def true_causal(rng, draws=4_000_000):
    """θ(P*) for RD, log RR, log OR by Monte Carlo over P* = ½P₁ + ½P₂, and the per-study ψ_a(k)."""
    per = {}
    for k in (0, 1):
        x = MU[k] + SIGMA * rng.standard_normal((draws // 2, 2))
        per[k] = (expit(x @ BETA1).mean(), expit(x @ BETA0).mean())
    p1 = 0.5 * (per[0][0] + per[1][0])
    p0 = 0.5 * (per[0][1] + per[1][1])
    return ({"RD": p1 - p0, "RR": np.log(p1 / p0), "OR": np.log(p1 / (1 - p1)) - np.log(p0 / (1 - p0))},
            {"psi1": p1, "psi0": p0, "per_study": {f"study{k + 1}": {"psi1": per[k][0], "psi0": per[k][1]}
                                                     for k in per}})


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=REPS)
    a = p.parse_args(argv)
    out = os.environ.get("MESTIM_BENCH_RESULTS") or OUT
    t0 = time.time()
    rng = np.random.default_rng(SEED)
    recs = []
    for r in range(a.reps):
        for row in simulate_tables(rng):
            recs.append({"rep": r, **row})
    tables = pd.DataFrame(recs)
    truth, truth_detail = true_causal(np.random.default_rng(SEED + 1))
    summary, estimates = {}, {}
    for measure in ("RD", "RR", "OR"):
        long, wide, report = mb.meta_analyses(tables, "rep", measure)
        summary[measure] = {"truth_causal": truth[measure]}
        estimates[measure] = {}
        for meth in METHODS:
            sub = long[long["method"] == meth]
            est, lo, hi = (sub[c].to_numpy(float) for c in ("estimate", "ci_low", "ci_high"))
            estimates[measure][meth] = est
            tr = np.exp if measure != "RD" else (lambda v: v)
            summary[measure][meth] = {
                "mean_estimate": float(tr(est.mean())), "median_estimate": float(tr(np.median(est))),
                "sd_estimate_analysis_scale": float(est.std(ddof=1)),
                "mean_se": float(sub["se"].mean()),
                "coverage_of_causal_truth": float(np.mean((lo <= truth[measure]) & (truth[measure] <= hi))),
                "share_ci_above_null": float(np.mean(lo > 0)), "share_ci_below_null": float(np.mean(hi < 0))}
        summary[measure]["truth_causal"] = float(np.exp(truth[measure]) if measure != "RD" else truth[measure])
    elapsed = time.time() - t0
    payload = {"experiment": "Berenfeld et al. (2026) Section 4.1 / Appendix A", "n_per_meta_analysis": N,
               "repetitions": a.reps, "seed": SEED, "scale": "RD as is; RR and OR as ratios (exp of log-scale mean)",
               "truth": {k: float(v) for k, v in truth.items()}, "truth_detail": truth_detail,
               "summary": summary, "seconds": elapsed}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "meta_synthetic.json"), "w") as f:
        json.dump(payload, f, indent=1, default=float)
    plot(estimates, truth, os.path.join(out, "meta_synthetic.png"))
    for measure, s in summary.items():
        print(measure, "truth", round(s["truth_causal"], 4),
              {m: round(s[m]["mean_estimate"], 4) for m in METHODS})
    print(f"done in {elapsed:.1f}s")
    return payload


def plot(estimates, truth, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, measure in zip(axes, ("RD", "RR", "OR")):
        tr = np.exp if measure != "RD" else (lambda v: v)
        data = [tr(estimates[measure][m]) for m in METHODS]
        ax.boxplot(data, tick_labels=["fixed (FE)", "random (DL)", "random (REML)", "causal"])
        ax.axhline(tr(0.0), color="grey", lw=1)
        ax.axhline(tr(truth[measure]), color="red", lw=1.5, label="θ(P*)")
        if measure != "RD":
            ax.set_yscale("log")
        ax.set_title({"RD": "risk difference", "RR": "risk ratio", "OR": "odds ratio"}[measure])
        ax.tick_params(axis="x", labelsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle("Classical vs causal meta-analysis, 100 synthetic meta-analyses (Berenfeld et al. 2026, §4.1)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
