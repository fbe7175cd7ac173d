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


def _2sls(Z, ZX, Zy):
    W1 = np.linalg.inv(Z.T @ Z)
    return np.linalg.solve(ZX.T @ W1 @ ZX, ZX.T @ W1 @ Zy)


def _by_hand(d):
    """Two-step GMM for E[z(y − xᵀβ)] = 0 written out: W₁ = (ZᵀZ)⁻¹ (2SLS), W₂ = S(β̂₁)⁻¹, J, and the sandwich."""
    n = d["y"].size
    X = np.column_stack([np.ones(n), d["w"], d["a"]])
    Z = np.column_stack([np.ones(n), d["w"], d["z1"], d["z2"]])
    y = d["y"]
    ZX, Zy = Z.T @ X, Z.T @ y
    b1 = _2sls(Z, ZX, Zy)
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
    b1 = _2sls(Z, ZX, Zy)
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
    with pytest.raises(mestim.ConvergenceError, match=r"non-finite at the starting values for \['moment 0'"):
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


# ------------------------------------------------------------------ first step, units, convergence (issue 15)
def _macro_iv(scale=1.0):
    """statsmodels' macrodata: investment growth on GDP growth (endogenous), instrumented by lagged GDP and
    consumption growth and the T-bill rate (×``scale``: its units)."""
    from statsmodels.datasets import macrodata

    df = macrodata.load_pandas().data
    growth = lambda c: np.diff(np.log(df[c].to_numpy()))  # noqa: E731
    return {"y": growth("realinv")[1:], "a": growth("realgdp")[1:], "z1": growth("realgdp")[:-1],
            "z2": growth("realcons")[:-1], "z3": df["tbilrate"].to_numpy()[2:] * scale}


def _linearmodels_gmm(d, **fit):
    import pandas as pd
    from linearmodels.iv import IVGMM

    exog = pd.DataFrame({"const": np.ones(d["y"].size)})
    return IVGMM(pd.Series(d["y"]), exog, pd.DataFrame({"a": d["a"]}),
                 pd.DataFrame({k: d[k] for k in ("z1", "z2", "z3")})).fit(**fit)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_two_step_gmm_starts_from_2sls_like_linearmodels(scale):
    """Two-step GMM is 2SLS, then W = M(β̂_2SLS)⁻¹, as linearmodels' IVGMM and Stata's ivregress gmm (it started
    from W = I: 1% off linearmodels on these data, and moved when an instrument's units changed)."""
    pytest.importorskip("linearmodels")
    d = _macro_iv(scale)
    ref = _linearmodels_gmm(d)
    res = mestim.fit([est.iv("iv", "y", "a", ["z1", "z2", "z3"])], d, gmm="two-step")
    np.testing.assert_allclose(res.theta, ref.params.to_numpy(), rtol=1e-8)
    assert res.j_test.statistic == pytest.approx(float(ref.j_stat.stat), rel=1e-6)
    assert any("2SLS" in n for n in res.notes)
    unit = mestim.fit([est.iv("iv", "y", "a", ["z1", "z2", "z3"])], _macro_iv(1.0), gmm="two-step")
    np.testing.assert_allclose(res.theta, unit.theta, rtol=1e-9)


def _levels_iv():
    """macrodata in levels: log consumption on log GDP (endogenous) and inflation, instrumented by log investment
    and log government spending (strongly collinear with the regressors: an ill-conditioned weight)."""
    from statsmodels.datasets import macrodata

    df = macrodata.load_pandas().data
    return {"y": np.log(df["realcons"].to_numpy()), "a": np.log(df["realgdp"].to_numpy()),
            "w": df["infl"].to_numpy(), "z1": np.log(df["realinv"].to_numpy()),
            "z2": np.log(df["realgovt"].to_numpy())}


def _levels_psi(theta, row):
    e = row["y"] - theta[0] - theta[1] * row["w"] - theta[2] * row["a"]
    return e * jnp.stack([1.0, row["w"], row["z1"], row["z2"]])


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_iterated_gmm_converges_by_its_objective_not_a_root(scale):
    """An over-identified ψ has no root: iterated GMM raised 'a local minimum of ‖Σψ‖ that is not a root' on these
    data from init 0 where its last θ was the answer; its estimate does not move with an instrument's units."""
    d = _levels_iv()
    d["z2"] = d["z2"] * scale
    res = mestim.fit(_levels_psi, d, init=np.zeros(3), gmm="iterated")
    n = d["y"].size
    X = np.column_stack([np.ones(n), d["w"], d["a"]])
    Z = np.column_stack([np.ones(n), d["w"], d["z1"], d["z2"]])
    b = res.theta
    e = d["y"] - X @ b
    W = np.linalg.inv((Z * e[:, None] ** 2).T @ Z)  # a fixed point: β̂ minimises Q with W = M(β̂)⁻¹
    fixed = np.linalg.solve(X.T @ Z @ W @ Z.T @ X, X.T @ Z @ W @ Z.T @ d["y"])
    np.testing.assert_allclose(b, fixed, rtol=1e-7)
    if scale == 1.0:
        pytest.importorskip("linearmodels")
        import pandas as pd
        from linearmodels.iv import IVGMM

        ref = IVGMM(pd.Series(d["y"]), pd.DataFrame({"const": np.ones(n), "w": d["w"]}), pd.DataFrame({"a": d["a"]}),
                    pd.DataFrame({"z1": d["z1"], "z2": d["z2"]})).fit(iter_limit=200, tol=1e-12)
        np.testing.assert_allclose(b, ref.params.to_numpy(), rtol=1e-6)


def test_user_psi_first_step_weight_is_unit_free():
    """Without declared instruments the first step weights by the moments' covariance at the starting values,
    so rescaling one moment (an instrument's units) leaves the two-step estimate where it was."""
    d = _levels_iv()
    res = mestim.fit(_levels_psi, d, init=np.zeros(3), gmm="two-step")
    d["z2"] = d["z2"] * 100
    scaled = mestim.fit(_levels_psi, d, init=np.zeros(3), gmm="two-step")
    np.testing.assert_allclose(scaled.theta, res.theta, rtol=1e-8)
    assert any("starting values" in n for n in res.notes)


def test_blockwise_solve_with_gmm_is_refused():
    """gmm= minimises one quadratic form of the whole stack; solve='blockwise' was silently ignored."""
    with pytest.raises(mestim.errors.SpecificationError, match="blockwise.*gmm|gmm.*blockwise"):
        mestim.fit([est.iv("iv", "y", "a", ["z1", "z2", "z3"])], _macro_iv(), gmm="two-step", solve="blockwise")
