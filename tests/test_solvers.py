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

    def on_host(t, want_jac):
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
