"""The engine against independent references: closed forms, statsmodels, delicatessen."""

import jax.numpy as jnp
import numpy as np
import pytest
import statsmodels.api as sm

import estimators as est
import mestim

RTOL = 1e-6


def test_mean_variance_closed_form():
    """Stefanski & Boos (2002) example 1: ψ = (y − μ, (y − μ)² − σ²)."""
    y = np.random.default_rng(1).gamma(2.0, 1.5, 800)
    res = mestim.fit(lambda t, r: jnp.array([r["y"] - t[0], (r["y"] - t[0]) ** 2 - t[1]]), {"y": y},
                     init=jnp.array([0.0, 1.0]))
    n, mu = y.size, y.mean()
    m2, m3, m4 = [np.mean((y - mu) ** k) for k in (2, 3, 4)]
    np.testing.assert_allclose(res.theta, [mu, m2], rtol=1e-12)
    np.testing.assert_allclose(res.vcov, np.array([[m2, m3], [m3, m4 - m2**2]]) / n, rtol=1e-10)


def test_ratio_estimator_closed_form():
    """Stefanski & Boos example: the ratio estimator from zero init (a singular Jacobian at the start)."""
    rng = np.random.default_rng(2)
    x = rng.normal(2, 1, 1000)
    y = 3 * x + rng.normal(0, 1, 1000)

    def psi(theta, row):
        mu_y, mu_x, r = theta
        return jnp.array([row["y"] - mu_y, row["x"] - mu_x, mu_y - r * mu_x])

    res = mestim.fit(psi, {"y": y, "x": x}, init=jnp.zeros(3))
    r = y.mean() / x.mean()
    assert res.theta[2] == pytest.approx(r, rel=1e-12)
    assert res.se[2] == pytest.approx(np.sqrt(np.mean((y - r * x) ** 2) / x.mean() ** 2 / x.size), rel=1e-10)
    lo, hi = res.ci(0.9)[2]
    assert (lo + hi) / 2 == pytest.approx(r, rel=1e-12)
    assert hi - lo == pytest.approx(2 * 1.6448536269514722 * res.se[2], rel=1e-12)


@pytest.mark.parametrize("correction,cov_type", [(None, "HC0"), ("df", "HC1")])
def test_ols_robust_matches_statsmodels(logit_df, correction, cov_type):
    df = logit_df
    res = mestim.fit([est.linear("ols", "yc", ["x1", "x2"])], df, correction=correction)
    ref = sm.OLS(df.yc, sm.add_constant(df[["x1", "x2"]])).fit(cov_type=cov_type)
    np.testing.assert_allclose(res.theta, ref.params.values, rtol=RTOL)
    np.testing.assert_allclose(res.se, ref.bse.values, rtol=RTOL)


def test_logistic_robust_and_clustered_match_statsmodels(logit_df):
    df = logit_df
    X = sm.add_constant(df[["x1", "x2"]])
    model = sm.GLM(df.y, X, family=sm.families.Binomial())
    robust = model.fit(cov_type="HC0")
    clustered = model.fit(cov_type="cluster", cov_kwds={"groups": df.g.values, "use_correction": False})
    res = mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], df)
    res_c = mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], df, cluster="g")
    np.testing.assert_allclose(res.theta, robust.params.values, rtol=RTOL)
    np.testing.assert_allclose(res.se, robust.bse.values, rtol=RTOL)
    np.testing.assert_allclose(res_c.se, clustered.bse.values, rtol=RTOL)
    assert res_c.n_clusters == 60


def test_poisson_and_multinomial_match_statsmodels(logit_df):
    df = logit_df.copy()
    rng = np.random.default_rng(3)
    df["k"] = rng.poisson(np.exp(0.2 + 0.4 * df.x1))
    df["c"] = np.digitize(df.yc, [0.0, 2.0])
    X = sm.add_constant(df[["x1", "x2"]])
    pois = mestim.fit([est.poisson("po", "k", ["x1", "x2"])], df)
    ref = sm.GLM(df.k, X, family=sm.families.Poisson()).fit(cov_type="HC0")
    np.testing.assert_allclose(pois.theta, ref.params.values, rtol=RTOL)
    np.testing.assert_allclose(pois.se, ref.bse.values, rtol=RTOL)
    # multinomial: θ̂, the HC0 sandwich (statsmodels' cov_params rows: class, then covariate, as mestim's labels)
    # and the cluster-robust SEs (no small-sample factor)
    mn = mestim.fit([est.multinomial("mn", "c", ["x1", "x2"])], df)
    ref = sm.MNLogit(df.c, X).fit(disp=0, tol=1e-12, maxiter=200, cov_type="HC0")
    assert mn.labels == tuple(f"{c}:{x}".replace("const", "(Intercept)") for c, x in ref.cov_params().index)
    np.testing.assert_allclose(mn.theta, ref.params.values.T.ravel(), rtol=RTOL)
    np.testing.assert_allclose(mn.vcov, ref.cov_params().values, rtol=RTOL)
    np.testing.assert_allclose(mn.se, ref.bse.values.T.ravel(), rtol=RTOL)
    mn_c = mestim.fit([est.multinomial("mn", "c", ["x1", "x2"])], df, cluster="g")
    ref_c = sm.MNLogit(df.c, X).fit(disp=0, tol=1e-12, maxiter=200, cov_type="cluster",
                                    cov_kwds={"groups": df.g.values, "use_correction": False})
    np.testing.assert_allclose(mn_c.se, ref_c.bse.values.T.ravel(), rtol=RTOL)


def test_formula_design_matches_columns(logit_df):
    a = mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], logit_df)
    b = mestim.fit([est.logistic("lg", "y", formula="y ~ x1 + x2")], logit_df)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12)
    np.testing.assert_allclose(a.vcov, b.vcov, rtol=1e-10)


def test_logistic_ipw_stack_matches_delicatessen(logit_df):
    """Stack: logistic propensity model for A on X, then IPW means of Y under A=1 and A=0 and their difference."""
    from delicatessen import MEstimator
    from delicatessen.estimating_equations import ee_regression

    df = logit_df.iloc[:600].copy()
    df["a"] = df["y"]
    df["out"] = df["yc"]

    def ate_psi(theta, row, ps):
        e = 1 / (1 + jnp.exp(-(ps[0] + ps[1] * row["x1"] + ps[2] * row["x2"])))
        mu1, mu0, ate = theta
        return jnp.array([row["a"] * row["out"] / e - mu1, (1 - row["a"]) * row["out"] / (1 - e) - mu0,
                          mu1 - mu0 - ate])

    res = mestim.fit([est.logistic("ps", "a", ["x1", "x2"]),
                      mestim.Block("ate", ate_psi, init=np.zeros(3), reads=("ps",))], df)

    X = np.column_stack([np.ones(len(df)), df.x1, df.x2])
    a, yv = df.a.values, df.out.values

    def psi(theta):
        ee_ps = ee_regression(theta[:3], X=X, y=a, model="logistic")
        e = 1 / (1 + np.exp(-(X @ np.asarray(theta[:3]))))
        return np.vstack([ee_ps, a * yv / e - theta[3], (1 - a) * yv / (1 - e) - theta[4],
                          np.full(len(df), theta[3] - theta[4] - theta[5])])

    ref = MEstimator(psi, init=[0.0] * 6)
    ref.estimate(deriv_method="exact", tolerance=1e-12)
    np.testing.assert_allclose(res.theta, ref.theta, rtol=RTOL)
    np.testing.assert_allclose(res.se, np.sqrt(np.diag(ref.variance)), rtol=RTOL)


def test_frequency_weights_equal_expanded_rows(logit_df):
    df = logit_df
    reps = df.w.values.astype(int)
    expanded = df.loc[df.index.repeat(reps)].reset_index(drop=True)
    for block in (est.logistic("lg", "y", ["x1", "x2"]), est.linear("ols", "yc", ["x1", "x2"])):
        weighted = mestim.fit([block], df, weights="w")
        rows = mestim.fit([block], expanded)
        np.testing.assert_allclose(weighted.theta, rows.theta, rtol=1e-10)
        np.testing.assert_allclose(weighted.vcov, rows.vcov, rtol=1e-9)
        assert weighted.n == rows.n == reps.sum()
    # clustered too: a weighted row is w copies in its cluster
    weighted = mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], df, weights="w", cluster="g")
    rows = mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], expanded, cluster="g")
    np.testing.assert_allclose(weighted.vcov, rows.vcov, rtol=1e-9)


def test_sampling_weights_match_statsmodels_wls_hc0(logit_df):
    df = logit_df
    res = mestim.fit([est.linear("ols", "yc", ["x1", "x2"])], df, weights="w", weight_type="sampling")
    ref = sm.WLS(df.yc, sm.add_constant(df[["x1", "x2"]]), weights=df.w).fit(cov_type="HC0")
    np.testing.assert_allclose(res.theta, ref.params.values, rtol=RTOL)
    np.testing.assert_allclose(res.se, ref.bse.values, rtol=RTOL)


def _fay_reference(X, resid, b=0.75, clusters=None):
    """geex's bias_correction for OLS, written out in numpy: A_i = x_i x_iᵀ, H_i = diag((1 − min(b, diag(A_i A⁻¹)))^-½)."""
    A = X.T @ X
    Ainv = np.linalg.inv(A)
    groups = np.arange(len(X)) if clusters is None else clusters
    meat = np.zeros_like(A)
    for g in np.unique(groups):
        sel = groups == g
        Ai = X[sel].T @ X[sel]
        u = X[sel].T @ resid[sel]
        h = (1 - np.minimum(b, np.diag(Ai @ Ainv))) ** -0.5
        meat += np.outer(h * u, h * u)
    return Ainv @ meat @ Ainv.T


@pytest.mark.parametrize("clustered", [False, True])
def test_fay_correction_matches_geex_formula(logit_df, clustered):
    df = logit_df.iloc[:300]
    res = mestim.fit([est.linear("ols", "yc", ["x1", "x2"])], df, correction="fay",
                     cluster="g" if clustered else None)
    X = np.column_stack([np.ones(len(df)), df.x1, df.x2])
    beta = np.linalg.lstsq(X, df.yc.values, rcond=None)[0]
    ref = _fay_reference(X, df.yc.values - X @ beta, clusters=df.g.values if clustered else None)
    np.testing.assert_allclose(res.vcov, ref, rtol=1e-9)
