"""Beta and Tobit regression blocks (estimators.limited_outcome) against delicatessen's ee_beta_regression and
ee_tobit in exact-derivative mode, statsmodels' BetaModel, and the closed form of an uncensored Tobit model (OLS)."""

import numpy as np
import pandas as pd
import pytest
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_beta_regression, ee_tobit
from statsmodels.othermod.betareg import BetaModel

import estimators as est
import mestim
from mestim.errors import DataError, SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    n = 250
    x1, x2 = rng.normal(size=n), rng.binomial(1, 0.4, n) * 1.0
    mu = 1 / (1 + np.exp(-(-0.4 + 0.7 * x1 - 0.5 * x2)))
    prop = rng.beta(mu * 8, (1 - mu) * 8)
    latent = 0.3 + 0.9 * x1 - 0.6 * x2 + rng.normal(scale=1.2, size=n)
    return pd.DataFrame({"x1": x1, "x2": x2, "prop": prop, "cens": np.clip(latent, -0.5, 2.0), "lin": latent,
                         "w": rng.integers(1, 4, n) * 1.0})


def delicatessen(psi, init):
    ref = MEstimator(psi, init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=2000)
    return np.asarray(ref.theta), np.sqrt(np.diag(ref.variance))


def _x(df):
    return np.column_stack([np.ones(len(df)), df.x1, df.x2])


@pytest.mark.parametrize("weighted", [False, True])
def test_beta_regression_matches_delicatessen(data, weighted):
    res = mestim.fit(est.beta_regression("br", "prop", ["x1", "x2"], weights="w" if weighted else None), data)
    theta, se = delicatessen(lambda theta: ee_beta_regression(theta, X=_x(data), y=data.prop,
                                                              weights=data.w if weighted else None), res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)
    assert res.labels[-1] == "log(precision)"


def test_beta_regression_matches_statsmodels(data):
    res = mestim.fit(est.beta_regression("br", "prop", formula="~ x1 + x2"), data)
    sm = BetaModel(data.prop.values, _x(data)).fit(method="newton", maxiter=200, disp=False)
    # statsmodels' precision parameter is log φ too
    np.testing.assert_allclose(res.theta, sm.params, rtol=RTOL_THETA)


@pytest.mark.parametrize("limits,weighted", [((-0.5, 2.0), False), ((-0.5, None), True), ((None, 2.0), False)])
def test_tobit_matches_delicatessen(data, limits, weighted):
    lower, upper = limits
    res = mestim.fit(est.tobit("tob", "cens", ["x1", "x2"], lower=lower, upper=upper,
                               weights="w" if weighted else None), data)
    y = data.cens.clip(lower, upper)
    theta, se = delicatessen(lambda theta: ee_tobit(theta, X=_x(data), y=y, lower=lower, upper=upper,
                                                    weights=data.w if weighted else None), res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)


def test_uncensored_tobit_is_least_squares(data):
    res = mestim.fit(est.tobit("tob", "lin", ["x1", "x2"], lower=-100.0), data)
    x = _x(data)
    beta = np.linalg.lstsq(x, data.lin, rcond=None)[0]
    np.testing.assert_allclose(res.theta[:3], beta, rtol=1e-9)
    np.testing.assert_allclose(np.exp(2 * res.theta[3]), np.mean((data.lin - x @ beta) ** 2), rtol=1e-9)


def test_limited_outcome_options_and_data_are_checked(data):
    with pytest.raises(SpecificationError, match="give lower= and/or upper="):
        est.tobit("tob", "cens", ["x1"])
    with pytest.raises(SpecificationError, match="lower must be below upper"):
        est.tobit("tob", "cens", ["x1"], lower=2.0, upper=1.0)
    with pytest.raises(DataError, match="outside the censoring limits"):
        mestim.fit(est.tobit("tob", "cens", ["x1"], lower=0.0), data)
    with pytest.raises(DataError, match=r"strictly between 0 and 1"):
        mestim.fit(est.beta_regression("br", "x2", ["x1"]), data)
