"""IPW, AIPW and g-formula blocks (estimators.causal) against delicatessen's ee_ipw/ee_aipw/ee_gformula in
exact-derivative mode, and closed forms (known propensities; the g-formula of a linear model)."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_aipw, ee_gformula, ee_glm, ee_ipw

import estimators as est
import mestim
from mestim.errors import DataError, SpecificationError

RTOL_THETA, RTOL_SE = 1e-8, 1e-8  # measured against delicatessen: ≤ 1e-14


@pytest.fixture(scope="module")
def obs():
    """Confounded data: W = (w1, w2) → A → Y, with a continuous and a binary outcome, frequency weights 1..3."""
    rng = np.random.default_rng(42)
    n = 600
    w1, w2 = rng.normal(size=n), rng.binomial(1, 0.5, n) * 1.0
    a = (rng.random(n) < 1 / (1 + np.exp(-(-0.3 + 0.8 * w1 - 0.5 * w2)))) * 1.0
    y = 1.0 + 1.5 * a + w1 - 0.7 * w2 + 0.5 * a * w1 + rng.normal(size=n)
    yb = (rng.random(n) < 1 / (1 + np.exp(-(-0.5 + 0.9 * a + 0.6 * w1 - 0.4 * w2)))) * 1.0
    return pd.DataFrame({"w1": w1, "w2": w2, "a": a, "y": y, "yb": yb, "f": rng.integers(1, 4, n) * 1.0})


def _delicatessen(psi, init):
    ref = MEstimator(psi, init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=500)
    return np.asarray(ref.theta), np.sqrt(np.diag(ref.variance))


def _design(df, cols):
    return np.column_stack([np.ones(len(df))] + [df[c].values for c in cols])


def _reorder(theta, k_nuisance):
    """delicatessen's (ATE, μ₁, μ₀, nuisance…) as mestim's stack (nuisance…, μ₁, μ₀, ATE)."""
    return np.r_[theta[3:3 + k_nuisance], theta[1], theta[2], theta[0]]


@pytest.mark.parametrize("estimator,weight_type", [("hajek", "hajek"), ("horvitz-thompson", "horvitz-thompson")])
@pytest.mark.parametrize("truncate", [None, (0.1, 0.9)])
def test_ipw_matches_delicatessen(obs, estimator, weight_type, truncate):
    ps = est.logistic("ps", "a", ["w1", "w2"])
    res = mestim.fit([ps, est.ipw("ipw", "y", "a", propensity=ps, estimator=estimator, truncate=truncate)], obs)
    W = _design(obs, ["w1", "w2"])
    theta, se = _delicatessen(lambda theta: ee_ipw(theta, y=obs.y, A=obs.a, W=W, truncate=truncate,
                                                   weight_type=weight_type), np.r_[res.theta[3:][::-1], res.theta[:3]])
    np.testing.assert_allclose(res.theta, _reorder(theta, 3), rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, _reorder(se, 3), rtol=RTOL_SE)
    assert res.labels[3:] == ("ipw:E[Y(1)]", "ipw:E[Y(0)]", "ipw:ATE")


def test_ipw_with_a_probit_propensity_matches_delicatessen(obs):
    ps = est.glm("ps", "a", ["w1", "w2"], family="binomial", link="probit")
    res = mestim.fit([ps, est.ipw("ipw", "y", "a", propensity=ps)], obs)
    W = _design(obs, ["w1", "w2"])
    y, a = obs.y.values, obs.a.values

    def psi(theta):
        from delicatessen.utilities import standard_normal_cdf
        e = standard_normal_cdf(W @ np.asarray(theta[:3]))
        return np.vstack([ee_glm(theta[:3], X=W, y=a, distribution="binomial", link="probit"),
                          a / e * (y - theta[3]), (1 - a) / (1 - e) * (y - theta[4]),
                          np.full(len(y), theta[3] - theta[4] - theta[5])])

    theta, se = _delicatessen(psi, res.theta)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)


@pytest.mark.parametrize("outcome", ["y", "yb"])
def test_aipw_matches_delicatessen(obs, outcome):
    """Continuous outcome with a linear model, binary with a logistic one (delicatessen picks by the outcome)."""
    ps = est.logistic("ps", "a", ["w1", "w2"])
    om = est.glm("om", outcome, formula="~ a + w1 + w2 + a:w1", family="gaussian" if outcome == "y" else "binomial")
    df = obs.assign(aw1=obs.a * obs.w1)
    res = mestim.fit([ps, om, est.aipw("dr", outcome, "a", propensity=ps, outcome=om)], df)
    W, X = _design(df, ["w1", "w2"]), _design(df, ["a", "w1", "w2", "aw1"])
    X1, X0 = X.copy(), X.copy()
    X1[:, 1], X1[:, 4], X0[:, 1], X0[:, 4] = 1.0, df.w1, 0.0, 0.0
    theta, se = _delicatessen(lambda theta: ee_aipw(theta, y=df[outcome], A=df.a, W=W, X=X, X1=X1, X0=X0),
                              np.r_[res.theta[-1], res.theta[-3:-1], res.theta[:-3]])
    expected = np.r_[theta[3:], theta[1], theta[2], theta[0]]
    np.testing.assert_allclose(res.theta, expected, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, np.r_[se[3:], se[1], se[2], se[0]], rtol=RTOL_SE)


@pytest.mark.parametrize("outcome", ["y", "yb"])
def test_gformula_matches_delicatessen(obs, outcome):
    om = est.glm("om", outcome, formula="~ a * w1 + w2", family="gaussian" if outcome == "y" else "binomial")
    res = mestim.fit([om, est.gformula("gf", "a", outcome=om)], obs)
    assert res.labels[:5] == ("om:Intercept", "om:a", "om:w1", "om:w2", "om:a:w1")
    X = _design(obs, ["a", "w1", "w2"])
    X = np.column_stack([X, obs.a * obs.w1])
    X1, X0 = X.copy(), X.copy()
    X1[:, 1], X1[:, 4], X0[:, 1], X0[:, 4] = 1.0, obs.w1, 0.0, 0.0
    theta, se = _delicatessen(lambda theta: ee_gformula(theta, y=obs[outcome], X=X, X1=X1, X0=X0),
                              np.r_[res.theta[-1], res.theta[-3:-1], res.theta[:-3]])
    np.testing.assert_allclose(res.theta, np.r_[theta[3:], theta[1], theta[2], theta[0]], rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, np.r_[se[3:], se[1], se[2], se[0]], rtol=RTOL_SE)


def test_gformula_of_a_linear_model_is_its_treatment_coefficient(obs):
    """Without interactions Q(1, X) − Q(0, X) = β_A on every row: Δ̂ = β̂_A and SE(Δ̂) = the HC0 SE of β̂_A."""
    om = est.linear("om", "y", ["a", "w1", "w2"])
    res = mestim.fit([om, est.gformula("gf", "a", outcome=om)], obs, weights="f")
    ref = sm.WLS(obs.y, sm.add_constant(obs[["a", "w1", "w2"]]), weights=obs.f).fit()
    expanded = obs.loc[obs.index.repeat(obs.f.astype(int))]
    ref_hc0 = sm.OLS(expanded.y, sm.add_constant(expanded[["a", "w1", "w2"]])).fit(cov_type="HC0")
    assert res["gf:ATE"][0] == pytest.approx(ref.params["a"], rel=1e-10)
    assert res.se[res.index("gf:ATE")][0] == pytest.approx(ref_hc0.bse["a"], rel=1e-9)
    X = sm.add_constant(obs[["a", "w1", "w2"]]).assign(a=1.0).values
    assert res["gf:E[Y(1)]"][0] == pytest.approx(np.average(X @ ref.params.values, weights=obs.f), rel=1e-10)


def test_gformula_over_a_subset_and_a_categorical_treatment(obs):
    """Standardised over the treated rows (mask), with the treatment coded by the formula as C(a): the design
    under A := a keeps the observed coding; the means are averages of the fitted model's predictions."""
    om = est.linear("om", "y", formula="~ C(a) * w1 + w2")
    res = mestim.fit([om, est.gformula("att", "a", outcome=om, mask="a")], obs)
    beta = res["om"]
    treated = obs[obs.a == 1]
    pred = lambda a: beta[0] + beta[1] * a + beta[2] * treated.w1 + beta[3] * treated.w2 + beta[4] * a * treated.w1
    np.testing.assert_allclose(res["att"], [pred(1).mean(), pred(0).mean(), (pred(1) - pred(0)).mean()], rtol=1e-10)


def test_gformula_value_outside_the_categorical_coding_is_an_error(obs):
    """A value the formula's categories never saw (C(a) learnt from 0/1) was coded as the reference level, so
    E[Y(2)] came out as E[Y(0)]; it is refused, naming the value."""
    om = est.linear("om", "y", formula="~ C(a) + w1")
    with pytest.raises(DataError, match=r"could not be built.*2\.0"):
        mestim.fit([om, est.gformula("g", "a", outcome=om, values=(2, 1))], obs)


def test_counterfactual_design_codes_text_columns_with_the_agreed_levels(obs):
    """Several processes agree on a text column's levels before preparing; the counterfactual design must use
    them too (a process whose rows lack a level had one column fewer than its outcome model)."""
    from mestim.data import Columns

    cols = Columns({k: v.to_numpy() for k, v in obs.items()})
    cols["site"] = np.where(obs.w1.to_numpy() > 0, "A", "B").astype(object)
    cols.levels = {"site": ["A", "B", "C"]}  # 'C' lives in another process's rows
    om = est.linear("om", "y", formula="~ a + w1 + C(site)")
    g = est.gformula("g", "a", outcome=om)
    model = om.prepare(cols)
    cols.update(model.columns)
    design = g.prepare(cols).columns
    assert design["g.X1"].shape[1] == design["g.X0"].shape[1] == len(model.labels) == 5


def test_ipw_with_known_propensities_closed_forms(obs):
    """A trial with known P(A = 1 | W): no propensity block; HT and Hájek means and variances in closed form."""
    rng = np.random.default_rng(1)
    e = np.where(obs.w2 == 1, 0.3, 0.6)
    df = obs.assign(e=e, a=(rng.random(len(obs)) < e) * 1.0)
    n, a, y = len(df), df.a.values, df.y.values
    ht = mestim.fit([est.ipw("ht", "y", "a", propensity="e", estimator="horvitz-thompson")], df)
    d1, d0 = a * y / e, (1 - a) * y / (1 - e)
    np.testing.assert_allclose(ht.theta, [d1.mean(), d0.mean(), d1.mean() - d0.mean()], rtol=1e-12)
    np.testing.assert_allclose(ht.se, [d1.std() / np.sqrt(n), d0.std() / np.sqrt(n), (d1 - d0).std() / np.sqrt(n)],
                               rtol=1e-10)
    hj = mestim.fit([est.ipw("hj", "y", "a", propensity="e")], df)
    w1, w0 = a / e, (1 - a) / (1 - e)
    mu1, mu0 = (w1 * y).sum() / w1.sum(), (w0 * y).sum() / w0.sum()
    var1 = (w1**2 * (y - mu1) ** 2).sum() / w1.sum() ** 2
    var0 = (w0**2 * (y - mu0) ** 2).sum() / w0.sum() ** 2
    np.testing.assert_allclose(hj.theta, [mu1, mu0, mu1 - mu0], rtol=1e-12)
    np.testing.assert_allclose(hj.se[:2], np.sqrt([var1, var0]), rtol=1e-10)
    np.testing.assert_allclose(hj.se[2], np.sqrt(var1 + var0), rtol=1e-10)  # the arms share no row


def test_aipw_frequency_weights_equal_expanded_rows(obs):
    expanded = obs.loc[obs.index.repeat(obs.f.astype(int))].reset_index(drop=True)
    ps = est.logistic("ps", "a", ["w1", "w2"])
    om = est.linear("om", "y", formula="~ a * (w1 + w2)")
    stack = [ps, om, est.aipw("dr", "y", "a", propensity=ps, outcome=om)]
    weighted, rows = mestim.fit(stack, obs, weights="f"), mestim.fit(stack, expanded)
    np.testing.assert_allclose(weighted.theta, rows.theta, rtol=1e-10)
    np.testing.assert_allclose(weighted.vcov, rows.vcov, rtol=1e-8)


def test_bad_causal_specifications(obs):
    ps = est.logistic("ps", "a", ["w1"])
    with pytest.raises(SpecificationError, match="estimator='ht': use one of"):
        est.ipw("x", "y", "a", propensity=ps, estimator="ht")
    with pytest.raises(SpecificationError, match=r"truncate=\(0.9, 0.1\) must satisfy 0 ≤ lo < hi ≤ 1"):
        est.ipw("x", "y", "a", propensity=ps, truncate=(0.9, 0.1))
    with pytest.raises(SpecificationError, match="the propensity model 'ps2' is a gaussian model; it must be binomial"):
        est.ipw("x", "y", "a", propensity=est.linear("ps2", "a", ["w1"]))
    with pytest.raises(SpecificationError, match="the propensity model 'pz' models 'w2', not 'a'"):
        est.ipw("x", "y", "a", propensity=est.logistic("pz", "w2", ["w1"]))
    with pytest.raises(SpecificationError, match="outcome= must be a block from estimators.glm"):
        est.gformula("g", "a", outcome="om")
    om = est.linear("om", "y", ["w1"])
    with pytest.raises(SpecificationError, match="does not use the treatment 'a'"):
        mestim.fit([om, est.gformula("g", "a", outcome=om)], obs)
    with pytest.raises(DataError, match=r"treatment 'w1' takes values .* besides 0/1"):
        mestim.fit([est.ipw("x", "y", "w1", propensity="e")], obs.assign(e=0.5))
    with pytest.raises(DataError, match=r"must lie strictly between 0 and 1; 1 row\(s\) do not \(first: row 3\)"):
        mestim.fit([est.ipw("x", "y", "a", propensity="e")], obs.assign(e=np.where(np.arange(len(obs)) == 3, 1, .5)))
