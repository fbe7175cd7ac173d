"""Coverage of nominal 95% Wald CIs by simulation: 2000 replicates per estimator, vmapped on one compiled fit.

    python benchmarks/coverage.py [--replicates 2000] [--only NAME ...] [--out benchmarks/results/coverage] [--merge]

Each case simulates `replicates` data sets of one shape on the host (seeded), prepares their columns, and fits
them all with one `jax.vmap` of the pure fit (:func:`mestim.pure.fit_function`). Coverage is the share of CIs
θ̂ ± 1.96·SE that contain the true value; its Monte Carlo SE at 2000 replicates is 0.49 points, so [94%, 96%]
is about ±2 MCSE. A small-sample case shows where the sandwich under-covers and what the finite-sample
corrections (`"df"`, `"fay"`) do there. The sample median (n = 200, normal and exponential data) is fitted with
its estimating function smoothed (`Block(..., smooth="auto")`, docs/nonsmooth.md; the bandwidth is chosen once,
on the first replicate). Results: `<out>.json` and `<out>.md` (`--merge`: replace only this run's cases there).

Transport (Dahabreh et al.): `transport_stack(...)` builds the whole stack (working models + estimands) on
`simulate_trials(...)` data sets of one fixed shape (same trial and target sizes; seeds differ), and one compiled
pure fit is vmapped over all replicates; the reported effects are differences of arm means, formed with their SEs
from θ̂ and V̂ per replicate (`TransportStack.differences`, vectorised). Cases: 4 trials × 500 + target 2000 with
every working model correctly specified (multinomial participation model), and two where coverage should fail:
trial 1 moved away from the target (poor overlap, extreme weights) and small trials (4 × 60, target 240).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import estimators as est
import mestim
from mestim.pure import coverage, fit_function, prepare_columns, stack_columns

CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def _ratio_psi(theta, row):
    mu_y, mu_x, r = theta
    return jnp.array([row["y"] - mu_y, row["x"] - mu_x, mu_y - r * mu_x])


@case("ratio (n=500)")
def ratio_case():
    def simulate(rng):
        x = rng.gamma(4.0, 0.5, 500)
        return {"x": x, "y": 3.0 * x + rng.normal(0, 1 + x, 500)}
    return _ratio_psi, np.zeros(3), simulate, {2: 3.0}


@case("linear, heteroscedastic (n=500)")
def linear_case():
    def simulate(rng):
        x = rng.normal(size=(500, 2))
        return {"x1": x[:, 0], "x2": x[:, 1], "y": 1 + 2 * x[:, 0] - x[:, 1] + rng.normal(size=500) * (1 + np.abs(x[:, 0]))}
    return [est.linear("ols", "y", ["x1", "x2"])], None, simulate, {0: 1.0, 1: 2.0, 2: -1.0}


@case("logistic (n=500)")
def logistic_case():
    def simulate(rng):
        x = rng.normal(size=(500, 2))
        p = 1 / (1 + np.exp(-(0.3 + x[:, 0] - 0.5 * x[:, 1])))
        return {"x1": x[:, 0], "x2": x[:, 1], "y": (rng.random(500) < p).astype(float)}
    return [est.logistic("lg", "y", ["x1", "x2"])], None, simulate, {0: 0.3, 1: 1.0, 2: -0.5}


@case("poisson (n=500)")
def poisson_case():
    def simulate(rng):
        x = rng.normal(size=500)
        return {"x": x, "y": rng.poisson(np.exp(0.5 + 0.4 * x)).astype(float)}
    return [est.poisson("po", "y", ["x"])], None, simulate, {0: 0.5, 1: 0.4}


def _median_psi(theta, row):
    return jnp.atleast_1d(0.5 - (row["y"] <= theta[0]))


@case("median, smoothed, normal (n=200)")
def median_normal_case():
    """The sample median's estimating function 1/2 − 1{y ≤ θ}, smoothed (bandwidth from the first replicate)."""
    return mestim.Block("median", _median_psi, init=[0.5], smooth="auto"), None, \
        lambda rng: {"y": rng.normal(size=200)}, {0: 0.0}


@case("median, smoothed, exponential (n=200)")
def median_exponential_case():
    return mestim.Block("median", _median_psi, init=[0.5], smooth="auto"), None, \
        lambda rng: {"y": rng.exponential(size=200)}, {0: float(np.log(2))}


def run_case(name, replicates, seed=2026, batch=250):
    estimator, init, simulate, truth = CASES[name]()
    rng = np.random.default_rng(seed)
    frames = [simulate(rng) for _ in range(replicates)]
    _, f, problem = fit_function(estimator, frames[0], init)
    columns = [prepare_columns(problem, d) for d in frames]
    n = len(next(iter(frames[0].values())))
    solve = jax.jit(jax.vmap(lambda c: f(c, jnp.ones(n))))
    start = time.perf_counter()
    parts = [solve(stack_columns(columns[i:i + batch])) for i in range(0, replicates, batch)]
    theta = np.concatenate([np.asarray(p.theta) for p in parts])
    vcov = np.concatenate([np.asarray(p.vcov) for p in parts])
    ok = np.concatenate([np.asarray(p.converged) for p in parts])
    seconds = time.perf_counter() - start
    idx = np.array(sorted(truth))
    cov = coverage(theta[ok][:, idx], vcov[ok][:, idx][:, :, idx], np.array([truth[i] for i in idx]))
    se = np.sqrt(np.diagonal(vcov[ok], axis1=1, axis2=2))
    return [{"case": name, "param": problem.labels[i], "truth": truth[i], "coverage": float(c),
             "replicates": int(ok.sum()), "failed": int((~ok).sum()), "seconds": round(seconds, 2),
             "bias": float(theta[ok, i].mean() - truth[i]), "sd": float(theta[ok, i].std(ddof=1)),
             "mean_se": float(se[:, i].mean()), "notes": "; ".join(problem.notes)}
            for i, c in zip(idx, cov)]


def small_sample_corrections(replicates, n=20, seed=7):
    """Heteroscedastic linear model at n = 20: the slope's CI with no correction (HC0), n/(n−p) (HC1), and Fay's."""
    rng = np.random.default_rng(seed)
    hits = {None: [], "df": [], "fay": []}
    block = [est.linear("ols", "y", ["x"])]
    for _ in range(replicates):  # a loop over data sets (not rows): three corrections per data set
        x = rng.normal(size=n)
        d = {"x": x, "y": 1 + 0.5 * x + rng.normal(size=n) * (0.5 + np.abs(x))}
        for corr in hits:
            lo, hi = mestim.fit(block, d, correction=corr).ci()[1]
            hits[corr].append(lo <= 0.5 <= hi)
    return [{"case": f"linear heteroscedastic small sample (n={n})", "param": "x", "truth": 0.5,
             "correction": str(c), "coverage": float(np.mean(h)), "replicates": len(h), "failed": 0}
            for c, h in hits.items()]


def causal_meta_coverage(replicates, seed=11, n=3000):
    """Causal RR/OR on the union of 6 trials (Berenfeld et al.): H ~ π, A ~ Bernoulli(½), Y ~ Bernoulli(p_A(H)).

    The target is P* = Σ_k π_k P_k, so ψ_a = Σ_k π_k p_a(k). All replicates' tables are summarised by one vmapped
    call of the closed-form sandwich (equal to the engine's stack, tested in tests/test_causal_meta.py); the
    paper's printed variance and the design-based variance (study sizes fixed) are scored against the same truth.
    """
    from estimators.causal_meta import causal_closed_form

    rng = np.random.default_rng(seed)
    pi = np.array([0.3, 0.25, 0.15, 0.12, 0.1, 0.08])
    p1 = np.array([0.10, 0.25, 0.05, 0.40, 0.15, 0.30])
    p0 = np.array([0.20, 0.20, 0.15, 0.35, 0.30, 0.25])
    psi1, psi0 = pi @ p1, pi @ p0
    truth = {"RR": np.log(psi1 / psi0), "OR": np.log(psi1 / (1 - psi1)) - np.log(psi0 / (1 - psi0))}
    nk = rng.multinomial(n, pi, size=replicates)
    n1 = rng.binomial(nk, 0.5)
    n0 = nk - n1
    ai, ci = rng.binomial(n1, p1), rng.binomial(n0, p0)
    rows = []
    for measure, value in truth.items():
        out = jax.vmap(lambda a, b, c, d: causal_closed_form(a, b, c, d, measure=measure))(
            *(jnp.asarray(x, float) for x in (ai, n1 - ai, ci, n0 - ci)))
        estimate = np.asarray(out["estimate"])
        for variant in ("sandwich", "paper", "design"):
            se = np.asarray(out[f"se_{variant}"])
            rows.append({"case": f"causal meta-analysis, log {measure} (n={n}, K=6)", "param": f"SE: {variant}",
                         "truth": float(value), "coverage": float(np.mean(np.abs(estimate - value) <= 1.959964 * se)),
                         "replicates": replicates, "failed": 0})
    return rows


TRANSPORT_CASES = {
    # name: (trial sizes, target size, shift of trial 1's X1, transport() options)
    "transport (4 trials x 500, target 2000)": (500, 2000, 0.0, dict(estimators=["weighting", "outcome", "dr"])),
    "transport, poor overlap (trial 1 X1 shifted +1.5)": (500, 2000, 1.5, dict(estimators=["weighting"])),
    "transport, small trials (4 trials x 60, target 240)": (60, 240, 0.0, dict(estimators=["weighting", "outcome", "dr"])),
}
TRANSPORT_REPORT = {("weighting", "1"): "psi_w (trial 1)", ("outcome", "1"): "psi_te (trial 1)",
                    ("dr", "1"): "psi_dr (trial 1)", ("weighting", "pooled"): "phi_w (pooled)",
                    ("outcome", "pooled"): "phi_te (pooled)", ("dr", "pooled"): "phi_dr (pooled)"}


def _transport_data(seed, n_trial, n_target, shift):
    """simulate_trials data; with ``shift`` trial 1's X1 is moved by ``shift`` and Y moved by the exact change of
    the linear outcome law (β₁ + Z τ₁)·shift, so the conditional law of Y and the target truth are unchanged while
    trial 1's covariates overlap the target's poorly (every working model stays correctly specified)."""
    from estimators.transport import simulate

    sim = simulate.simulate_trials(n_trials=4, n_per_trial=n_trial, n_target=n_target, seed=seed)
    df = sim.data
    if shift:
        rows = df.S == 1
        df.loc[rows, "Y"] += (simulate.BETA[0] + df.loc[rows, "Z"] * simulate.TAU[0]) * shift
        df.loc[rows, "X1"] += shift
    return df, sim.true_effect


def transport_coverage(name, replicates, seed=5000, batch=50):
    """Coverage of the transported effect (arm 1 vs 0) for ψ_w, ψ_te, ψ_dr (trial 1) and φ_w, φ_te, φ_dr."""
    from estimators.transport.api import transport_stack

    n_trial, n_target, shift, opts = TRANSPORT_CASES[name]
    kw = dict(covariates=["X1", "X2", "X3"], participation="multinomial", **opts)
    df0, truth = _transport_data(seed, n_trial, n_target, shift)
    stack = transport_stack(df0, **kw)
    _, f, problem = fit_function(stack.blocks, stack.data_for_fit)
    n = len(df0)
    solve = jax.jit(jax.vmap(lambda c: f(c, jnp.ones(n))))
    start = time.perf_counter()
    est, se, ok = [], [], []
    for b0 in range(0, replicates, batch):
        cols = [prepare_columns(problem, transport_stack(_transport_data(seed + r, n_trial, n_target, shift)[0],
                                                         **kw).data_for_fit)
                for r in range(b0, min(b0 + batch, replicates))]
        out = solve(stack_columns(cols))
        e, s, used = stack.differences(np.asarray(out.theta), np.asarray(out.vcov), problem.spec.offsets())
        est.append(e)
        se.append(s)
        ok.append(np.asarray(out.converged) & np.all(np.isfinite(s), axis=1))
        print(f"  {name}: {b0 + len(cols)}/{replicates} replicates, {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    est, se, ok = np.concatenate(est), np.concatenate(se), np.concatenate(ok)
    covered = np.abs(est - truth) <= 1.959964 * se
    rows = []
    for j, u in enumerate(used):
        param = TRANSPORT_REPORT.get((u.estimator, u.trial))
        if param is None:
            continue
        e = est[ok, j]
        rows.append({"case": name, "param": param, "truth": float(truth), "coverage": float(covered[ok, j].mean()),
                     "replicates": int(ok.sum()), "failed": int((~ok).sum()), "seconds": round(seconds, 2),
                     "bias": float(e.mean() - truth), "sd": float(e.std(ddof=1)), "mean_se": float(se[ok, j].mean())})
    return rows


def markdown_table(table: pd.DataFrame) -> str:
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--only", nargs="*", help="case names (substring match)")
    parser.add_argument("--out", default=os.path.join(os.environ.get("MESTIM_BENCH_RESULTS") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results"), "coverage"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the other cases' rows (and notes) already in <out>.json/.md; replace this run's")
    args = parser.parse_args(argv)
    rows = []
    for name in CASES:
        if args.only and not any(o in name for o in args.only):
            continue
        rows += run_case(name, args.replicates)
        print(pd.DataFrame(rows[-len(CASES[name]()[3]):]).to_string(index=False), flush=True)
    if not args.only or any("small" in o for o in args.only):
        rows += small_sample_corrections(min(args.replicates, 1000))
    if not args.only or any("meta" in o for o in args.only):
        rows += causal_meta_coverage(args.replicates)
        print(pd.DataFrame(rows[-6:]).to_string(index=False), flush=True)
    for name in TRANSPORT_CASES:
        if args.only and not any(o in name for o in args.only):
            continue
        got = transport_coverage(name, args.replicates)
        rows += got
        print(pd.DataFrame(got).to_string(index=False), flush=True)
    meta = {"replicates": args.replicates, "machine": platform.processor() or platform.machine(),
            "cpus": jax.device_count(), "jax": jax.__version__, "level": 0.95,
            "mc_se_at_2000": 0.0049}
    after_table = ""
    if args.merge:
        rows, meta, after_table = _merged(args.out, rows, meta)
    table = pd.DataFrame(rows)
    with open(args.out + ".json", "w") as fh:
        json.dump({"meta": meta, "results": rows}, fh, indent=1)
    with open(args.out + ".md", "w") as fh:
        fh.write(f"# Coverage of nominal 95% CIs ({args.replicates} replicates)\n\n")
        fh.write(markdown_table(table.drop(columns="notes", errors="ignore")) + after_table)
    print(table.to_string(index=False))


def _merged(out, rows, meta):
    """This run's rows merged into ``<out>.json`` (rows of the cases run now replaced), its meta kept (a note
    added), and the text after the table in ``<out>.md``."""
    with open(out + ".json") as fh:
        old = json.load(fh)
    ran = {r["case"] for r in rows}
    kept = [r for r in old["results"] if r["case"] not in ran]
    merged_meta = {**old["meta"], "note": (old["meta"].get("note", "") + f"; {sorted(ran)} from a later run of "
                                           f"this script ({meta['replicates']} replicates, --merge)").lstrip("; ")}
    with open(out + ".md") as fh:
        text = fh.read()
    parts = text.split("\n\n", 2)  # the title, the table, any text below it
    return kept + rows, merged_meta, ("\n" + parts[2] if len(parts) > 2 else "")


if __name__ == "__main__":
    main()
