"""The mean under missing at random and its sensitivity analysis (estimators.missing) against delicatessen's
ee_mean_sensitivity_analysis in exact-derivative mode, and the closed form of an intercept-only model."""

import numpy as np
import pandas as pd
import pytest
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_mean_sensitivity_analysis
from delicatessen.utilities import inverse_logit, standard_normal_cdf
from scipy.special import expit

import estimators as est
import mestim
from mestim.errors import DataError, SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(31)
    n = 400
    w = rng.binomial(1, 0.5, n) * 1.0
    y = 20.0 - 3.5 * w + rng.normal(scale=2, size=n)
    s = (rng.random(n) < expit(2 + w - 0.1 * y)) * 1.0
    return pd.DataFrame({"w": w, "s": s, "y": np.where(s == 1, y, np.nan), "f": rng.integers(1, 4, n) * 1.0})


def delicatessen(psi, init):
    ref = MEstimator(psi, init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=2000)
    return np.asarray(ref.theta), np.sqrt(np.diag(ref.variance))


@pytest.mark.parametrize("alpha,link,H", [(0.0, "logit", inverse_logit), (-0.05, "logit", inverse_logit),
                                              (0.03, "probit", standard_normal_cdf)])
def test_matches_delicatessen(data, alpha, link, H):
    res = mestim.fit(est.mean_sensitivity_analysis("m", "y", "s", ["w"], alpha=alpha, link=link), data)
    y0 = data.y.fillna(0.0)
    X = np.column_stack([np.ones(len(data)), data.w])
    theta, se = delicatessen(lambda theta: ee_mean_sensitivity_analysis(theta, y=y0, delta=data.s, X=X,
                                                                        q_eval=alpha * y0, H_function=H),
                             res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)
    assert res.labels == ("mean", "observed:(Intercept)", "observed:w")


def test_a_column_of_q_is_alpha_times_y(data):
    by_alpha = mestim.fit(est.mean_sensitivity_analysis("m", "y", "s", ["w"], alpha=-0.05), data)
    by_column = mestim.fit(est.mean_sensitivity_analysis("m", "y", "s", ["w"], q="q"),
                           data.assign(q=-0.05 * data.y))
    np.testing.assert_allclose(by_column.theta, by_alpha.theta, rtol=1e-12)
    np.testing.assert_allclose(by_column.se, by_alpha.se, rtol=1e-10)


def test_intercept_only_mar_is_the_observed_mean(data):
    res = mestim.fit(est.mean_sensitivity_analysis("m", "y", "s"), data)
    np.testing.assert_allclose(res.theta[0], data.y.mean(), rtol=1e-12)  # H = observed share: μ = mean of observed
    np.testing.assert_allclose(expit(res.theta[1]), data.s.mean(), rtol=1e-12)


def test_block_weights_are_repeated_rows(data):
    res = mestim.fit(est.mean_sensitivity_analysis("m", "y", "s", ["w"], alpha=-0.05, weights="f"), data)
    rows = data.loc[data.index.repeat(data.f.astype(int))].reset_index(drop=True)
    expanded = mestim.fit(est.mean_sensitivity_analysis("m", "y", "s", ["w"], alpha=-0.05), rows)
    np.testing.assert_allclose(res.theta, expanded.theta, rtol=1e-10)


def test_options_and_data_are_checked(data):
    with pytest.raises(SpecificationError, match=r"link='logistic'.*did you mean 'logit'"):
        est.mean_sensitivity_analysis("m", "y", "s", link="logistic")
    with pytest.raises(SpecificationError, match="not both"):
        est.mean_sensitivity_analysis("m", "y", "s", alpha=0.1, q="q")
    with pytest.raises(DataError, match="no row has 'y' observed"):
        mestim.fit(est.mean_sensitivity_analysis("m", "y", "s"), data.assign(s=0.0))
