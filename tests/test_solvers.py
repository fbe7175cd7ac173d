"""The solver's rules are written once and run by two loops: from the host (fit, streams) and traced (vmappable).

A table of problems — easy, singular, non-finite, out of iterations, separated, a GLM, and a Gamma GLM from the
start where Newton alone fails — runs through both loops over the same row sums; they must end with the same
status, iterations and θ.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import digamma
from scipy import optimize

import mestim
from mestim.problem import prepare
from mestim.solve import CONVERGED, MAX_ITER, NONFINITE, SINGULAR, SolverOptions, solve_host, solve_traced
from mestim.sources import InMemory, layout
from mestim.sums import Kernel, Moments, plan

RNG = np.random.default_rng(4)
X = RNG.normal(2.0, 1.0, 300)
Y = 3 * X + RNG.normal(0, 1, 300)
Y01 = (RNG.random(300) < 1 / (1 + np.exp(-(X - 2)))).astype(float)
COUNTS = RNG.poisson(np.exp(0.3 + 0.2 * X)).astype(float)
# delicatessen's Gamma GLM case (MASS clotting data): log link with a log-shape parameter
CLOTTING = {"u": np.log([5, 10, 15, 20, 30, 40, 60, 80, 100.0]), "y": np.array([118, 58, 42, 35, 27, 25, 21, 19, 18.0])}
MASS_LOG_SHAPE = np.log(55.51389)  # MASS::gamma.shape of glm(lot1 ~ log(u), family = Gamma("log"))


def ratio(t, r):
    return jnp.array([r["y"] - t[0], r["x"] - t[1], t[0] - t[2] * t[1]])


def quantile_indicator(t, r):  # a sample median written as an indicator: its derivative is zero
    return jnp.atleast_1d(0.5 - (r["y"] <= t[0]))


def log_domain(t, r):
    return jnp.atleast_1d(jnp.log(t[0] - 10.0) - r["y"])


def logistic(t, r):
    x = jnp.array([1.0, r["x"]])
    return (r["y01"] - jax.nn.sigmoid(x @ t)) * x


def separated(t, r):
    x = jnp.array([1.0, r["x"] - 2.0])
    return (r["sep"] - jax.nn.sigmoid(x @ t)) * x


def poisson(t, r):
    x = jnp.array([1.0, r["x"]])
    return (r["k"] - jnp.exp(x @ t)) * x


def gamma_log_shape(t, r):
    x = jnp.array([1.0, r["u"]])
    mu, shape = jnp.exp(x @ t[:2]), jnp.exp(t[2])
    return jnp.append((r["y"] - mu) / mu * x, 1 - r["y"] / mu + jnp.log(shape * r["y"] / mu) - digamma(shape))


DATA = {"y": Y, "x": X, "y01": Y01, "sep": (X > 2).astype(float), "k": COUNTS}
PROBLEMS = [  # (id, ψ, data, init, max_iter, expected status)
    ("ratio from zero (singular start)", ratio, DATA, np.zeros(3), 100, CONVERGED),
    ("ψ does not vary with θ", quantile_indicator, DATA, np.array([1.0]), 100, SINGULAR),
    ("NaN ψ at the start", log_domain, DATA, np.array([0.0]), 100, NONFINITE),
    ("max_iter=1", logistic, DATA, np.zeros(2), 1, MAX_ITER),
    ("separated logistic", separated, DATA, np.zeros(2), 100, CONVERGED),
    ("well-posed Poisson GLM", poisson, DATA, np.zeros(2), 100, CONVERGED),
    ("Gamma GLM, log shape, delicatessen's start", gamma_log_shape, CLOTTING, np.array([0.0, 0.0, 1.0]), 100,
     CONVERGED),
]


def _both_loops(psi, data, init, max_iter):
    problem = prepare(psi, data, init)
    kernel = Kernel(problem.spec, 64)
    every = (problem.spec.blocks[0].name,)
    with_jac, residual_only = plan(problem.spec, values=every, jacobian=every), plan(problem.spec, values=every)
    source = InMemory(kernel, problem.used, problem.w)
    options = SolverOptions(max_iter=max_iter)

    def on_host(t, want_jac, closing):
        m = source.sums(t, with_jac if want_jac else residual_only)
        return m.psi, (m.jac if want_jac else None)
    host = solve_host(on_host, init, problem.w.sum(), options)

    (rows, w, n_chunks), = layout(problem.used, problem.w, kernel.chunk, capacity=-(-problem.n_rows // 64))[0]

    @jax.jit
    def traced_solve(t0):
        def evaluate(t):
            m = kernel.slab_sums(Moments(*map(jnp.asarray, kernel.zeros())), t, rows, w, n_chunks[0], with_jac)
            return m.psi, m.jac
        return solve_traced(evaluate, t0, w.sum(), options)
    return host, traced_solve(jnp.asarray(init))


@pytest.mark.parametrize("name,psi,data,init,max_iter,status", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_host_and_traced_loops_agree(name, psi, data, init, max_iter, status):
    host, traced = _both_loops(psi, data, init, max_iter)
    assert int(host.status) == int(traced.status) == status
    assert int(host.iterations) == int(traced.iterations)
    if status != NONFINITE:
        np.testing.assert_allclose(np.asarray(traced.theta), host.theta, rtol=1e-12, atol=1e-12)


def test_gamma_from_delicatessens_start_matches_mass():
    res = mestim.fit(gamma_log_shape, CLOTTING, init=np.array([0.0, 0.0, 1.0]))
    assert res.theta[2] == pytest.approx(MASS_LOG_SHAPE, abs=1e-4)
    import statsmodels.api as sm

    glm = sm.GLM(CLOTTING["y"], sm.add_constant(CLOTTING["u"]), family=sm.families.Gamma(sm.families.links.Log()))
    ref = glm.fit(tol=1e-12)
    np.testing.assert_allclose(res.theta[:2], ref.params, rtol=1e-8)


def test_flat_psi_is_reported_as_not_varying_with_theta():
    with pytest.raises(mestim.SingularBreadError, match="ψ does not vary with"):
        mestim.fit(quantile_indicator, DATA, init=np.array([1.0]))


# ------------------------------------------------------------------ delicatessen's AFT problems from its starts
# delicatessen's tests/test_ee_survival.py: Collett's breast-cancer data (stain X, time, status) and R's
# survreg + sandwich; θ = (β, log(1/σ)); ψ is delicatessen's ee_aft written in jax.numpy.
_COLLETT = {"X": np.repeat([0.0, 1.0], [13, 32]),
            "t": np.array([23, 47, 69, 70, 71, 100, 101, 148, 181, 198, 208, 212, 224, 5, 8, 10, 13, 18, 24, 26, 26,
                           31, 35, 40, 41, 48, 50, 59, 61, 68, 71, 76, 105, 107, 109, 113, 116, 118, 143, 154, 162, 188,
                           212, 217, 225], float),
            "delta": np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                               1, 1, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0], float)}
_SURVREG = {  # R: survreg(Surv(time, delta) ~ stain, dist=...); sandwich(sr)
    "exponential": ([5.8003040, -0.9516276], [[0.1855775, -0.1855775], [-0.1855775, 0.2473048]]),
    "weibull": ([5.8543638, -0.9966647, np.log(1 / 1.066777)],
                [[0.23281646, -0.2231509, -0.02183579], [-0.22315087, 0.2827840, 0.01221040],
                 [-0.02183579, 0.0122104, 0.01580507]]),
    "loglogistic": ([5.461100, -1.149056, np.log(1 / 0.8047005)],
                    [[0.19819085, -0.188012820, -0.017487829], [-0.18801282, 0.255164051, 0.003017458],
                     [-0.01748783, 0.003017458, 0.021047226]]),
    "lognormal": ([5.491726, -1.151172, np.log(1 / 1.359451)],
                  [[0.2027042, -0.187832061, -0.020758604], [-0.1878321, 0.247731353, 0.006169943],
                   [-0.0207586, 0.006169943, 0.018085983]]),
}


def _aft(distribution, covariates):
    from jax.scipy.stats import norm

    def psi(theta, row):
        x = jnp.stack([1.0] + [row[c] for c in covariates])
        k = x.shape[0]
        sigma = 1.0 if distribution == "exponential" else jnp.exp(-theta[k])
        z = (jnp.log(row["t"]) - x @ theta[:k]) / sigma
        if distribution in ("exponential", "weibull"):
            df_f, ds_s = 1 - jnp.exp(z), jnp.exp(z)
        elif distribution == "loglogistic":
            df_f, ds_s = 1 - 2 * jax.nn.sigmoid(z), jax.nn.sigmoid(z)
        else:
            df_f, ds_s = -z, jnp.exp(norm.logpdf(z) - norm.logsf(z))
        lam = row["delta"] * df_f - (1 - row["delta"]) * ds_s
        score = -lam / sigma * x
        if distribution == "exponential":
            return score
        return jnp.concatenate([score, jnp.atleast_1d(-lam * z / sigma - row["delta"] / sigma)])
    return psi


@pytest.mark.parametrize("root_finder", ["auto", "lm"])
@pytest.mark.parametrize("distribution", list(_SURVREG))
def test_aft_models_converge_from_delicatessens_starts(distribution, root_finder):
    start = [2.0, 0.0] if distribution == "exponential" else [5.0, -0.5, 0.0]
    res = mestim.fit(_aft(distribution, ["X"]), _COLLETT, init=start, root_finder=root_finder)
    theta, vcov = _SURVREG[distribution]
    np.testing.assert_allclose(res.theta, theta, atol=1e-6)
    np.testing.assert_allclose(res.vcov, vcov, atol=1e-6)


# delicatessen's test_weighted_weibull_aft data
_DELICATESSEN_WEIGHTED = {
    "X": np.repeat([1.0, 0.0], [15, 20]),
    "W": np.array([1, 2, 3, 1, -1, 1, -2, 1, 0, 1, -3, 1, 0, 1, -1, 3, 0, 2, 1, 1, -1, 2, -3, 2, -2, 0, 0, 1, 1,
                   2, 3, 0, 1, 0, -1], float),
    "t": np.array([1, 2, 3, 5, 1, 9, 10, 1, 3, 6, 8, 6, 9, 4, 3, 2, 1, 1, 5, 6, 7, 8, 3, 4, 4, 3, 2.1, 3, 5, 3, 2,
                   1, 3, 2, 10], float),
    "delta": np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1,
                       0, 1, 0, 1, 0], float),
    "weight": np.array([1, 2, 1, 0.1, 1, 1, 1, 3, 1, 1, 3, 1, 2, 1, 1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 6, 1, 1,
                        1, 1, 2, 1, 4, 1], float),
}


@pytest.mark.parametrize("root_finder", ["auto", "lm"])
def test_weighted_weibull_aft_converges_from_delicatessens_start(root_finder):
    """delicatessen's test_weighted_weibull_aft: start (1, 0, 0, 0.6), which the issue saw diverge (θ → −1.5e12);
    the answer is scipy's Levenberg–Marquardt root of the same ψ (delicatessen's solver='lm')."""
    d = _DELICATESSEN_WEIGHTED
    psi = _aft("weibull", ["X", "W"])
    res = mestim.fit(psi, d, init=[1.0, 0.0, 0.0, 0.6], weights="weight", root_finder=root_finder)
    rows = {k: jnp.asarray(v) for k, v in d.items()}
    total = jax.jit(lambda t: (jax.vmap(lambda r: psi(t, r))(rows) * rows["weight"][:, None]).sum(0))
    ref = optimize.root(lambda t: np.asarray(total(jnp.asarray(t))), [1.0, 0.0, 0.0, 0.6], method="lm", tol=1e-12)
    assert ref.success
    np.testing.assert_allclose(res.theta, ref.x, rtol=1e-7)


def test_a_root_at_infinity_is_not_reported_silently():
    """The weighted Weibull AFT written with σ = exp(θ) where delicatessen has exp(−θ): from (1, 0, 0, 0.6) every
    ψ_i vanishes as θ → −∞ and ‖Σψ‖ falls below gtol at θ ≈ −5e7 (scipy's LM stops at −9e15 and reports success)."""
    def flipped(theta, row):
        return _aft("weibull", ["X", "W"])(theta.at[3].multiply(-1.0), row)
    with pytest.warns(mestim.MestimWarning, match="ran off"):
        mestim.fit(flipped, _DELICATESSEN_WEIGHTED, init=[1.0, 0.0, 0.0, 0.6], weights="weight")
