"""Smoothed quantile regression (estimators.quantile) against the root of its smoothed equations (scipy) and the
sandwich written out with numpy, and statsmodels' QuantReg (the unsmoothed estimate, within the smoothing bias)."""

import numpy as np
import pytest
from scipy.optimize import root
from scipy.stats import norm
from statsmodels.regression.quantile_regression import QuantReg

import estimators as est
import mestim
from mestim.errors import SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(9)
    n = 400
    x = rng.uniform(0, 3, n)
    return {"x": x, "y": 0.5 + x + (0.4 + 0.3 * x) * rng.standard_t(5, n), "w": rng.integers(1, 4, n) * 1.0}


@pytest.mark.parametrize("q,weighted", [(0.5, False), (0.8, True)])
def test_smoothed_quantile_regression_solves_its_equations(data, q, weighted):
    h = 0.2
    w = data["w"] if weighted else np.ones(data["x"].size)
    res = mestim.fit(est.quantile_regression("qr", "y", ["x"], q, smooth=h, weights="w" if weighted else None),
                     data)
    x = np.column_stack([np.ones(data["x"].size), data["x"]])

    def smoothed(beta):
        return (w * (q - norm.cdf((x @ beta - data["y"]) / h))) @ x

    ref = root(smoothed, res.theta + 0.05, tol=1e-14)
    np.testing.assert_allclose(res.theta, ref.x, rtol=RTOL_THETA)
    r = data["y"] - x @ res.theta
    psi = (w * (q - norm.cdf(-r / h)))[:, None] * x
    bread = (x * (w * norm.pdf(r / h) / h)[:, None]).T @ x
    inv = np.linalg.inv(bread)
    np.testing.assert_allclose(res.vcov, inv @ (psi.T @ psi) @ inv.T, rtol=RTOL_SE)


def test_close_to_the_unsmoothed_estimate(data):
    res = mestim.fit(est.quantile_regression("qr", "y", ["x"], 0.5, smooth=0.05), data)
    x = np.column_stack([np.ones(data["x"].size), data["x"]])
    unsmoothed = QuantReg(data["y"], x).fit(q=0.5).params
    np.testing.assert_allclose(res.theta, unsmoothed, atol=0.03)  # O(h²) and the step function's flat spots


def test_quantile_regression_options_are_checked():
    with pytest.raises(SpecificationError, match=r"q=0: give a number in \(0.0, 1.0\)"):
        est.quantile_regression("qr", "y", ["x"], 0)
    with pytest.raises(SpecificationError, match="smooth=None"):
        est.quantile_regression("qr", "y", ["x"], 0.5, smooth=None)
