"""from_statsmodels (estimators.fitted_model): a fitted statsmodels model as a block — its θ̂ is statsmodels'
estimate (1e-8), its sandwich statsmodels' HC0 (1e-6), and it stacks under a user's block."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

import estimators as est
import mestim
from mestim.errors import DataError, SpecificationError

L = sm.families.links


@pytest.fixture(scope="module")
def df():
    rng = np.random.default_rng(9)
    n = 500
    x1, x2 = rng.normal(size=n), rng.binomial(1, 0.4, n) * 1.0
    exposure = rng.uniform(0.5, 3, n)
    trials = rng.integers(1, 10, n) * 1.0
    p = 1 / (1 + np.exp(-(0.2 + 0.7 * x1 - 0.4 * x2)))
    return pd.DataFrame({
        "x1": x1, "x2": x2, "exposure": exposure, "off": rng.uniform(-0.1, 0.1, n), "trials": trials,
        "events": rng.binomial(trials.astype(int), p) * 1.0, "y01": (rng.random(n) < p) * 1.0,
        "count": rng.poisson(exposure * np.exp(0.1 + 0.3 * x1 + 0.2 * x2)) * 1.0,
        "pos": rng.gamma(2.0, np.exp(0.5 + 0.3 * x1) / 2.0), "ig": rng.wald((0.4 + 0.05 * x1 + 0.1 * x2) ** -0.5, 3.0),
        "yc": 1 + x1 - x2 + rng.normal(size=n) * (1 + x2),
        "fw": rng.integers(1, 4, n) * 1.0, "vw": rng.uniform(0.5, 2.0, n)})


def _glm(df, y, family, **kw):
    return sm.GLM(df[y], sm.add_constant(df[["x1", "x2"]]), family=family, **kw).fit(tol=1e-13, maxiter=1000)


CASES = {
    "poisson: offset, exposure, freq and var weights": lambda d: _glm(
        d, "count", sm.families.Poisson(), offset=d.off, exposure=d.exposure, freq_weights=d.fw, var_weights=d.vw),
    "gamma, log link": lambda d: _glm(d, "pos", sm.families.Gamma(link=L.Log())),
    "binomial probit, freq weights": lambda d: _glm(d, "y01", sm.families.Binomial(link=L.Probit()), freq_weights=d.fw),
    "binomial, two-column outcome": lambda d: sm.GLM(np.column_stack([d.events, d.trials - d.events]),
                                                     sm.add_constant(d[["x1", "x2"]]),
                                                     family=sm.families.Binomial()).fit(tol=1e-13),
    "negative binomial GLM, fixed alpha": lambda d: _glm(d, "count", sm.families.NegativeBinomial(alpha=0.4),
                                                         exposure=d.exposure),
    "inverse gaussian, Power(-2) link": lambda d: _glm(d, "ig", sm.families.InverseGaussian(link=L.Power(-2),
                                                                                             check_link=False)),
    "OLS": lambda d: sm.OLS(d.yc, sm.add_constant(d[["x1", "x2"]])).fit(),
    "WLS": lambda d: sm.WLS(d.yc, sm.add_constant(d[["x1", "x2"]]), weights=d.vw).fit(),
    "Logit": lambda d: sm.Logit(d.y01, sm.add_constant(d[["x1", "x2"]])).fit(disp=0, tol=1e-13, maxiter=100),
    "Probit": lambda d: sm.Probit(d.y01, sm.add_constant(d[["x1", "x2"]]), offset=d.off.values).fit(disp=0, tol=1e-13,
                                                                                               maxiter=100),
    "Poisson": lambda d: sm.Poisson(d["count"], sm.add_constant(d[["x1", "x2"]]), exposure=d.exposure).fit(
        disp=0, tol=1e-13, maxiter=100),
}


@pytest.mark.parametrize("case", list(CASES))
def test_theta_and_sandwich_equal_statsmodels(df, case):
    fitted = CASES[case](df)
    freq = np.asarray(getattr(fitted.model, "freq_weights", np.ones(len(df))))
    res = mestim.fit([est.from_statsmodels("m", fitted)], df, weights=freq)
    assert res.labels == tuple(fitted.model.exog_names) and not res.warnings
    np.testing.assert_allclose(res.theta, fitted.params, rtol=1e-8)
    robust = fitted.get_robustcov_results("HC0") if case in ("OLS", "WLS") else None
    hc0 = robust.cov_params() if robust is not None else (
        fitted.model.fit(cov_type="HC0", disp=0, tol=1e-13, maxiter=100) if case in ("Logit", "Probit", "Poisson")
        else fitted.model.fit(cov_type="HC0", tol=1e-13, maxiter=1000)).cov_params()
    np.testing.assert_allclose(res.vcov, np.asarray(hc0), rtol=1e-6)


def test_stacks_under_a_user_block_like_the_native_block(df):
    """A downstream standardised risk reading the converted model equals the same stack on est.logistic."""
    fitted = sm.GLM(df.y01, sm.add_constant(df[["x1", "x2"]]), family=sm.families.Binomial()).fit(tol=1e-13)

    def risk(theta, row, lg):
        return jnp.atleast_1d(jax.nn.sigmoid(lg[0] + lg[1] * row["x1"] + lg[2] * row["x2"]) - theta[0])

    converted = mestim.fit([est.from_statsmodels("lg", fitted),
                            mestim.Block("risk", risk, init=[0.5], reads=("lg",))], df)
    native = mestim.fit([est.logistic("lg", "y01", ["x1", "x2"]),
                         mestim.Block("risk", risk, init=[0.5], reads=("lg",))], df)
    np.testing.assert_allclose(converted.theta, native.theta, rtol=1e-10)
    np.testing.assert_allclose(converted.vcov, native.vcov, rtol=1e-9)
    assert converted.labels == ("lg:const", "lg:x1", "lg:x2", "risk:0")


def test_a_statsmodels_propensity_model_feeds_ipw(df):
    """IPW reading a converted statsmodels logistic model equals IPW on est.logistic; a converted model cannot be
    a g-formula outcome model (its design cannot be rebuilt with the treatment set)."""
    d = df.assign(a=df.y01)
    fitted = smf.glm("a ~ x1 + x2", d, family=sm.families.Binomial()).fit(tol=1e-13)
    converted = est.from_statsmodels("ps", fitted)
    a = mestim.fit([converted, est.ipw("ipw", "yc", "a", propensity=converted)], d)
    native = est.logistic("ps", "a", ["x1", "x2"])
    b = mestim.fit([native, est.ipw("ipw", "yc", "a", propensity=native)], d)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-10)
    np.testing.assert_allclose(a.vcov, b.vcov, rtol=1e-9)
    outcome = est.from_statsmodels("om", smf.ols("yc ~ a + x1", d).fit())
    with pytest.raises(SpecificationError, match="cannot be rebuilt with the treatment set to a value"):
        mestim.fit([outcome, est.gformula("gf", "a", outcome=outcome)], d)


def test_formula_models_with_dropped_rows(df):
    """statsmodels' formula API drops rows with missing values: the block says which rows fit() must get."""
    d = df.copy()
    d.loc[[3, 10, 50], "x1"] = np.nan
    fitted = smf.glm("count ~ x1 + x2", d, family=sm.families.Poisson(), offset=np.log(d.exposure)).fit(tol=1e-13)
    with pytest.raises(DataError, match=r"fitted on 497 rows, but the data have 500.*data.loc\[fitted.model.data"):
        mestim.fit([est.from_statsmodels("m", fitted)], d)
    res = mestim.fit([est.from_statsmodels("m", fitted)], d.loc[fitted.model.data.row_labels])
    np.testing.assert_allclose(res.theta, fitted.params, rtol=1e-8)
    assert res.labels == ("Intercept", "x1", "x2")


def test_misaligned_rows_and_forgotten_weights_are_caught(df):
    fitted = CASES["binomial probit, freq weights"](df)
    with pytest.raises(DataError, match=r"column 'y01' of the data differs from the statsmodels model's at row \d+"):
        mestim.fit([est.from_statsmodels("m", fitted)], df.sample(frac=1.0, random_state=1).reset_index(drop=True))
    with pytest.warns(mestim.MestimWarning, match=r"pass weights=fitted.model.freq_weights"):
        mestim.fit([est.from_statsmodels("m", fitted)], df)


def test_unsupported_models_list_what_is_supported(df):
    X = sm.add_constant(df[["x1", "x2"]])
    tweedie = sm.GLM(df["count"], X, family=sm.families.Tweedie(var_power=1.5)).fit()
    with pytest.raises(SpecificationError, match=r"GLM family Tweedie is not supported; supported families: "):
        est.from_statsmodels("m", tweedie)
    nb = sm.NegativeBinomial(df["count"], X).fit(disp=0)
    with pytest.raises(SpecificationError, match=r"a fitted NegativeBinomial is not supported; supported models: GLM"):
        est.from_statsmodels("m", nb)
    logc = sm.GLM(df.y01, X, family=sm.families.Binomial(link=L.LogC()))
    with pytest.raises(SpecificationError, match=r"the link LogC is not supported"):
        est.from_statsmodels("m", logc.fit(start_params=[-1.0, 0.0, 0.0]))
    with pytest.raises(SpecificationError, match="expected fitted statsmodels results"):
        est.from_statsmodels("m", X)
