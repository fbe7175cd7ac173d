"""Benchmark workloads W1–W3 on one pooled data set: d = 10 covariates, 5 trials + a target sample.

Data (seeded, :func:`pooled_data`): x1..x10 ~ N(0, 1); R = 1 for trial rows (participation depends on x1, x2,
about 45 % of rows), S ∈ {1..5} the trial of a trial row (0 for the target) and indicators t2..t5; treatment
A ~ Bernoulli(expit(0.1 + 0.3 x1 − 0.2 x3)) in the trials; a continuous outcome Y = xᵀγ + A (1 + 0.5 x1) + ε
in the trials; a binary outcome Yb ~ Bernoulli(expit(xᵀβ)) on all rows (for W1). A and Y are 0 on target rows
(they are never used there: every ψ below multiplies them by R).

Stacks (the same estimating functions for mestim and for delicatessen):

- **W1** logistic regression of Yb on (1, x1..x10) over all rows: p = 11.
- **W2** the pooled transport weighting stack φ_w: participation logistic R ~ x (11), treatment logistic
  A ~ x + t2..t5 on trial rows (15), and the inverse-odds weighting estimand (1):
  ψ_τ = R · (1 − p(x))/p(x) · [A Y / e(x) − (1 − A) Y / (1 − e(x))] − (1 − R) τ;  p = 27.
- **W3** the pooled outcome-model stack φ_te: linear Y ~ x on treated trial rows (11) and on control trial rows
  (11), and the target-population contrast ψ_τ = (1 − R) (g₁(x) − g₀(x) − τ);  p = 23.

These are self-contained (engine blocks from ``estimators.regression`` + one small estimand block); the full
transport library lives in ``estimators/transport`` and is not used here.
"""

from __future__ import annotations

import os

import numpy as np

D = 10
XCOLS = [f"x{j}" for j in range(1, D + 1)]
TRIALS = [f"t{j}" for j in range(2, 6)]
WORKLOADS = {"W1": "logistic regression (p = 11)",
             "W2": "pooled transport weighting stack φ_w (p = 27)",
             "W3": "pooled outcome-model stack φ_te (p = 23)"}


def _expit(z):
    return 1.0 / (1.0 + np.exp(-z))


def pooled_data(n: int, seed: int = 0, dtype=np.float64) -> dict[str, np.ndarray]:
    """The pooled data set with ``n`` rows, as a dict of float arrays (see the module docstring)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(dtype)
    cols = {name: x[:, j] for j, name in enumerate(XCOLS)}
    r = (rng.random(n) < _expit(-0.2 + 0.4 * x[:, 0] - 0.3 * x[:, 1])).astype(dtype)
    s = np.where(r > 0, rng.integers(1, 6, n), 0)
    a = ((rng.random(n) < _expit(0.1 + 0.3 * x[:, 0] - 0.2 * x[:, 2])) & (r > 0)).astype(dtype)
    gamma = np.linspace(0.5, -0.5, D)
    y = (x @ gamma + a * (1.0 + 0.5 * x[:, 0]) + 0.3 * (s - 3) + rng.standard_normal(n)) * r
    beta = np.linspace(-0.4, 0.4, D)
    yb = (rng.random(n) < _expit(0.2 + x @ beta)).astype(dtype)
    cols.update(R=r, A=a, Y=y.astype(dtype), Yb=yb, S=s.astype(dtype), control=(r * (1 - a)).astype(dtype))
    cols.update({t: (s == int(t[1:])).astype(dtype) for t in TRIALS})
    return cols


def cached_data(n: int, seed: int = 0, root: str | None = None) -> dict[str, np.ndarray]:
    """:func:`pooled_data`, cached as an .npz file (so a benchmark process's memory is not inflated by the
    generator's temporaries)."""
    root = root or os.environ.get("MESTIM_BENCH_DATA", os.path.join("/tmp", "mestim_bench_data"))
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, f"pooled_n{n}_s{seed}.npz")
    if not os.path.exists(path):
        np.savez(path + ".tmp.npz", **pooled_data(n, seed))
        os.replace(path + ".tmp.npz", path)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# ---------------------------------------------------------------------------------------------- mestim stacks
def _weighting_psi(tau, row, part, trt):
    import jax

    p = jax.nn.sigmoid(row["part.X"] @ part)
    e = jax.nn.sigmoid(row["trt.X"] @ trt)
    a, y, r = row["A"], row["Y"], row["R"]
    return r * (1.0 - p) / p * (a * y / e - (1.0 - a) * y / (1.0 - e)) - (1.0 - r) * tau[0]


def _outcome_psi(tau, row, out1, out0):  # out1.X is zeroed outside out1's rows: use the full design X1
    return (1.0 - row["R"]) * (row["X1"] @ out1 - row["X1"] @ out0 - tau[0])


# ψ functions are module-level (the same object on every call), so refits of the same shapes reuse the
# compiled code: a closure created per call would be a new static argument and recompile.
def mestim_stack(workload: str):
    """The list of blocks of a workload (W3 needs the column ``X1`` from :func:`add_design`)."""
    from estimators import linear, logistic
    from mestim import Block

    if workload == "W1":
        return [logistic("m", "Yb", XCOLS)]
    if workload == "W2":
        return [logistic("part", "R", XCOLS), logistic("trt", "A", XCOLS + TRIALS, mask="R"), Block("tau", _weighting_psi, init=[0.0], reads=("part", "trt"), labels=("ATE",))]
    if workload == "W3":
        return [linear("out1", "Y", XCOLS, mask="A"), linear("out0", "Y", XCOLS, mask="control"),
                Block("tau", _outcome_psi, init=[0.0], reads=("out1", "out0"), labels=("ATE",))]
    raise ValueError(workload)


def w2_user_psi(theta, row):
    """W2 written by a user as ONE ψ of 27 parameters (participation 11, treatment 15, estimand 1): no registered
    blocks, no closed forms — what issue 9 measures against the one-jit yardstick and delicatessen."""
    import jax
    import jax.numpy as jnp

    x = jnp.array([1.0] + [row[c] for c in XCOLS])
    xt = jnp.concatenate([x, jnp.array([row[t] for t in TRIALS])])
    bp, bt, tau = theta[:11], theta[11:26], theta[26]
    p, e = jax.nn.sigmoid(x @ bp), jax.nn.sigmoid(xt @ bt)
    r, a, y = row["R"], row["A"], row["Y"]
    estimand = r * (1.0 - p) / p * (a * y / e - (1.0 - a) * y / (1.0 - e)) - (1.0 - r) * tau
    return jnp.concatenate([(r - p) * x, r * (a - e) * xt, jnp.atleast_1d(estimand)])


def one_jit_fit(psi, steps: int = 8):
    """The yardstick of ``shared/spec/performance.md``: a fit written as ~10 lines of JAX in one ``jit`` (vmap ψ,
    jacrev of Σψ, a fixed number of Newton steps, sandwich). ``fit(theta0, data) -> (theta, vcov)``."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def fit(theta, data):
        G = lambda t: jax.vmap(lambda r: psi(t, r))(data).sum(0)  # noqa: E731
        theta = jax.lax.fori_loop(0, steps, lambda i, t: t - jnp.linalg.solve(jax.jacrev(G)(t), G(t)), theta)
        f = jax.vmap(lambda r: psi(theta, r))(data)
        a_inv = jnp.linalg.inv(jax.jacrev(G)(theta))
        return theta, a_inv @ (f.T @ f) @ a_inv.T
    return fit


def add_design(cols: dict) -> dict:
    """Adds ``X1`` = (1, x1..x10), the full-population design the W3 estimand evaluates g₁, g₀ on."""
    n = cols["x1"].shape[0]
    return dict(cols, X1=np.column_stack([np.ones(n)] + [cols[c] for c in XCOLS]))


def mestim_fit(workload: str, cols: dict, **kw):
    import mestim

    return mestim.fit(mestim_stack(workload), add_design(cols) if workload == "W3" else cols, **kw)


# ---------------------------------------------------------------------------------------------- delicatessen
def delicatessen_fit(workload: str, cols: dict, deriv_method: str = "approx"):
    """The same stack with delicatessen's MEstimator + ee_regression (solver "lm", its default)."""
    from delicatessen import MEstimator
    from delicatessen.estimating_equations import ee_regression

    n = cols["x1"].shape[0]
    X = np.column_stack([np.ones(n)] + [cols[c] for c in XCOLS])
    r, a, y = cols["R"], cols["A"], cols["Y"]
    if workload == "W1":
        def psi(theta):
            return ee_regression(theta, X=X, y=cols["Yb"], model="logistic")
        init = np.zeros(11)
    elif workload == "W2":
        Xt = np.column_stack([X] + [cols[t] for t in TRIALS]) * r[:, None]

        def psi(theta):
            bp, bt, tau = theta[:11], theta[11:26], theta[26]
            ee_p = ee_regression(bp, X=X, y=r, model="logistic")
            ee_t = ee_regression(bt, X=Xt, y=a, model="logistic") * r
            p = 1.0 / (1.0 + np.exp(-(X @ bp)))
            e = 1.0 / (1.0 + np.exp(-(Xt @ bt)))
            ee_tau = r * (1.0 - p) / p * (a * y / e - (1.0 - a) * y / (1.0 - e)) - (1.0 - r) * tau
            return np.vstack([ee_p, ee_t, ee_tau[None, :]])
        init = np.zeros(27)
    elif workload == "W3":
        treated, control = r * a, r * (1 - a)

        def psi(theta):
            b1, b0, tau = theta[:11], theta[11:22], theta[22]
            ee_1 = ee_regression(b1, X=X, y=y, model="linear") * treated
            ee_0 = ee_regression(b0, X=X, y=y, model="linear") * control
            ee_tau = (1.0 - r) * (X @ b1 - X @ b0 - tau)
            return np.vstack([ee_1, ee_0, ee_tau[None, :]])
        init = np.zeros(23)
    else:
        raise ValueError(workload)
    est = MEstimator(psi, init=list(init))
    est.estimate(deriv_method=deriv_method)
    return np.asarray(est.theta), np.sqrt(np.diag(est.variance))


def statsmodels_fit(workload: str, cols: dict):
    """W1 only: GLM Binomial with HC0 robust covariance."""
    import statsmodels.api as sm

    if workload != "W1":
        raise ValueError("statsmodels runs W1 only")
    n = cols["x1"].shape[0]
    X = np.column_stack([np.ones(n)] + [cols[c] for c in XCOLS])
    res = sm.GLM(cols["Yb"], X, family=sm.families.Binomial()).fit(cov_type="HC0")
    return np.asarray(res.params), np.asarray(res.bse)


# ---------------------------------------------------------------------------------------------- meta-analysis
def cochrane_like(k: int, seed: int = 0):
    """k studies as a collection of Cochrane reviews looks when read without --by: arms of 3–400, a third of the
    studies with a zero cell, control risks from 0.1% to 60% (log-uniform), treated risks about 20% lower."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n1, n0 = rng.integers(3, 400, k), rng.integers(3, 400, k)
    base = np.exp(rng.uniform(np.log(0.001), np.log(0.6), k))
    ai = rng.binomial(n1, np.clip(base * np.exp(rng.normal(-0.2, 0.3, k)), 0, 1))
    ci = rng.binomial(n0, base)
    return pd.DataFrame({"ai": ai, "bi": n1 - ai, "ci": ci, "di": n0 - ci})
