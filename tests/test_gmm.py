"""Over-identified estimating equations by GMM, against a two-step estimator and J statistic computed by hand;
and the choice of root finder."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

import estimators as est
import mestim


def _iv_data(n=3000, seed=0, invalid=0.0):
    """y = 1 + 0.5 a + 0.3 w + u; a endogenous (shares u); instruments z1, z2 (z2 violates exclusion by `invalid`);
    heteroskedastic errors, so the efficient weight differs from 2SLS's."""
    rng = np.random.default_rng(seed)
    w, z1, z2, v = rng.normal(size=(4, n))
    u = rng.normal(size=n) * (1 + 0.5 * np.abs(z1)) + 0.5 * v
    a = 0.6 * z1 + 0.4 * z2 + 0.3 * w + v
    y = 1.0 + 0.5 * a + 0.3 * w + u + invalid * z2
    return {"y": y, "a": a, "w": w, "z1": z1, "z2": z2}


def _by_hand(d):
    """Two-step GMM for E[z(y − xᵀβ)] = 0 written out: W₁ = I, W₂ = S(β̂₁)⁻¹, J, and the sandwich."""
    n = d["y"].size
    X = np.column_stack([np.ones(n), d["w"], d["a"]])
    Z = np.column_stack([np.ones(n), d["w"], d["z1"], d["z2"]])
    y = d["y"]
    ZX, Zy = Z.T @ X, Z.T @ y
    b1 = np.linalg.solve(ZX.T @ ZX, ZX.T @ Zy)
    e1 = y - X @ b1
    W = np.linalg.inv((Z * e1[:, None] ** 2).T @ Z)
    b2 = np.linalg.solve(ZX.T @ W @ ZX, ZX.T @ W @ Zy)
    e2 = y - X @ b2
    g = Z.T @ e2
    M = (Z * e2[:, None] ** 2).T @ Z
    B = np.linalg.solve(ZX.T @ W @ ZX, ZX.T @ W)
    return b2, B @ M @ B.T, float(g @ W @ g)


def test_two_step_gmm_equals_the_hand_computation():
    d = _iv_data()
    b2, vcov, j = _by_hand(d)
    res = mestim.fit([est.iv("iv", "y", "a", ["z1", "z2"], exogenous="w")], d, gmm="two-step")
    np.testing.assert_allclose(res.theta, b2, rtol=1e-10)
    np.testing.assert_allclose(res.vcov, vcov, rtol=1e-8)
    assert res.j_test.statistic == pytest.approx(j, rel=1e-8) and res.j_test.df == 1
    assert res.j_test.p_value == pytest.approx(stats.chi2.sf(j, 1), rel=1e-10)
    assert "Hansen's J" in res.summary()


def test_clustered_two_step_gmm_weights_by_the_cluster_totals():
    """With cluster=, the efficient weight and Hansen's J use the covariance of the cluster totals of the moments
    (they used the rows': J rejected valid instruments in 68% of clustered samples)."""
    d = _iv_data(seed=9)
    n = d["y"].size
    g = np.arange(n) % 150
    X = np.column_stack([np.ones(n), d["w"], d["a"]])
    Z = np.column_stack([np.ones(n), d["w"], d["z1"], d["z2"]])
    ZX, Zy = Z.T @ X, Z.T @ d["y"]

    def cluster_meat(e):
        totals = np.zeros((150, 4))
        np.add.at(totals, g, Z * e[:, None])
        return totals.T @ totals
    b1 = np.linalg.solve(ZX.T @ ZX, ZX.T @ Zy)
    W = np.linalg.inv(cluster_meat(d["y"] - X @ b1))
    b2 = np.linalg.solve(ZX.T @ W @ ZX, ZX.T @ W @ Zy)
    moments = Z.T @ (d["y"] - X @ b2)
    res = mestim.fit([est.iv("iv", "y", "a", ["z1", "z2"], exogenous="w")], {**d, "g": g}, gmm="two-step",
                     cluster="g")
    np.testing.assert_allclose(res.theta, b2, rtol=1e-10)
    assert res.j_test.statistic == pytest.approx(float(moments @ W @ moments), rel=1e-8)


def test_gmm_failures_name_the_moments_and_unidentified_parameters():
    data = {"x": np.linspace(1, 2, 50)}

    def nan_psi(t, r):
        return jnp.array([jnp.log(t[0]) - r["x"], t[0] - r["x"], t[0] ** 2 - r["x"] ** 2])
    with pytest.raises(mestim.ConvergenceError, match=r"non-finite for \['whitened moment 0'"):
        mestim.fit(nan_psi, data, init=[-1.0], gmm="two-step")

    def unidentified(t, r):  # only θ₀ + θ₁ is identified
        return jnp.array([t[0] + t[1] - r["x"], (t[0] + t[1]) * r["x"] - r["x"] ** 2, (t[0] + t[1]) - r["x"] ** 0.5])
    with pytest.raises(mestim.SingularBreadError, match="not identified"):
        mestim.fit(unidentified, data, init=[0.0, 0.0], gmm="two-step")
    with pytest.raises(mestim.SpecificationError, match="no solution with gmm="):
        mestim.fit(unidentified, data, init=[0.0, 0.0], gmm="two-step", root_finder=lambda f, j, x0: x0)


def test_iterated_gmm_that_does_not_settle_says_so(monkeypatch):
    import mestim.gmm

    monkeypatch.setattr(mestim.gmm, "MAX_STEPS", 2)  # one weight update cannot settle from W = I
    with pytest.raises(mestim.ConvergenceError, match="did not settle in 2 weight updates"):
        mestim.fit([est.iv("iv", "y", "a", ["z1", "z2"], exogenous="w")], _iv_data(seed=3), gmm="iterated")


def test_iterated_gmm_is_a_fixed_point_of_the_weight_update():
    d = _iv_data(seed=3)
    res = mestim.fit([est.iv("iv", "y", "a", ["z1", "z2"], exogenous="w")], d, gmm="iterated")
    n = d["y"].size
    X = np.column_stack([np.ones(n), d["w"], d["a"]])
    Z = np.column_stack([np.ones(n), d["w"], d["z1"], d["z2"]])
    e = d["y"] - X @ res.theta
    W = np.linalg.inv((Z * e[:, None] ** 2).T @ Z)
    again = np.linalg.solve(X.T @ Z @ W @ Z.T @ X, X.T @ Z @ W @ Z.T @ d["y"])
    np.testing.assert_allclose(res.theta, again, rtol=1e-8)
    np.testing.assert_allclose(res.vcov, np.linalg.inv(X.T @ Z @ W @ Z.T @ X), rtol=1e-6)  # (GᵀM⁻¹G)⁻¹


def test_j_test_rejects_an_invalid_instrument():
    assert mestim.fit([est.iv("iv", "y", "a", ["z1", "z2"], exogenous="w")], _iv_data(invalid=0.5),
                      gmm="two-step").j_test.p_value < 1e-6


def test_exactly_identified_gmm_is_the_m_estimator():
    d = _iv_data(seed=5)
    block = [est.iv("iv", "y", "a", "z1", exogenous="w")]
    m, g = mestim.fit(block, d), mestim.fit(block, d, gmm="two-step")
    np.testing.assert_allclose(g.theta, m.theta, rtol=1e-10)
    np.testing.assert_allclose(g.vcov, m.vcov, rtol=1e-8)
    assert g.j_test is None


def test_over_identified_without_gmm_says_what_to_do():
    with pytest.raises(mestim.SpecificationError, match="pass gmm='two-step'"):
        mestim.fit([est.iv("iv", "y", "a", ["z1", "z2"], exogenous="w")], _iv_data())


def _ratio(t, r):
    return jnp.array([r["y"] - t[0], r["x"] - t[1], t[0] - t[2] * t[1]])


def test_root_finders_agree():
    rng = np.random.default_rng(2)
    x = rng.normal(2, 1, 500)
    d = {"x": x, "y": 3 * x + rng.normal(size=500)}
    ref = mestim.fit(_ratio, d, init=np.ones(3))

    def hybr(fun, jac, x0):
        return optimize.root(fun, x0, jac=jac, method="hybr", options={"xtol": 1e-14}).x
    for finder in ("newton", "lm", hybr):
        res = mestim.fit(_ratio, d, init=np.ones(3), root_finder=finder)
        np.testing.assert_allclose(res.theta, ref.theta, rtol=1e-10)
        np.testing.assert_allclose(res.vcov, ref.vcov, rtol=1e-8)


def test_a_root_finder_that_stops_early_is_caught():
    d = {"x": np.arange(1.0, 51.0), "y": 3 * np.arange(1.0, 51.0) + np.sin(np.arange(50.0))}

    def sloppy(fun, jac, x0):  # half a Newton step: nowhere near the root
        return x0 - 0.5 * np.linalg.solve(jac(x0), fun(x0))
    with pytest.raises(mestim.ConvergenceError, match="tighten its tolerance"):
        mestim.fit(_ratio, d, init=np.ones(3), root_finder=sloppy)
    with pytest.raises(mestim.SpecificationError, match=r"root_finder='newtn'.*did you mean 'newton'"):
        mestim.fit(_ratio, d, init=np.ones(3), root_finder="newtn")


def test_newton_alone_stops_where_lm_takes_over():
    """The ratio estimator from 0: J is singular there; Newton alone stops, LM goes on."""
    d = {"x": np.arange(1.0, 51.0), "y": 3 * np.arange(1.0, 51.0)}
    with pytest.raises(mestim.SingularBreadError):
        mestim.fit(_ratio, d, init=np.zeros(3), root_finder="newton")
    assert mestim.fit(_ratio, d, init=np.zeros(3), root_finder="lm").theta[2] == pytest.approx(3.0, rel=1e-12)
