"""Penalized regression blocks (estimators.penalized) against delicatessen's ee_ridge_regression,
ee_bridge_regression and ee_elasticnet_regression in exact-derivative mode, and ridge's closed form."""

import numpy as np
import pandas as pd
import pytest
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_bridge_regression, ee_elasticnet_regression, ee_ridge_regression

import estimators as est
import mestim
from mestim.errors import SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5
PENALTY = [0.0, 5.0, 10.0, 2.0]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    n = 200
    x = rng.normal(size=(n, 3))
    eta = 0.2 + x @ [0.8, -0.6, 0.3]
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "y": eta + rng.normal(size=n),
                         "yb": (rng.random(n) < 1 / (1 + np.exp(-eta))) * 1.0,
                         "yc": rng.poisson(np.exp(0.5 * eta)) * 1.0, "w": rng.integers(1, 4, n) * 1.0})


def delicatessen(psi, init):
    ref = MEstimator(psi, init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=2000)
    return np.asarray(ref.theta), np.sqrt(np.diag(ref.variance))


def _x(df):
    return np.column_stack([np.ones(len(df)), df.x1, df.x2, df.x3])


COLS = ["x1", "x2", "x3"]


@pytest.mark.parametrize("model,y", [("linear", "y"), ("logistic", "yb"), ("poisson", "yc")])
def test_ridge_matches_delicatessen(data, model, y):
    res = mestim.fit(est.ridge_regression("r", y, COLS, penalty=PENALTY, model=model), data)
    theta, se = delicatessen(lambda theta: ee_ridge_regression(theta, X=_x(data), y=data[y], model=model,
                                                               penalty=PENALTY), res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)


def test_linear_ridge_is_its_closed_form(data):
    res = mestim.fit(est.ridge_regression("r", "y", COLS, penalty=PENALTY, center=0.1), data)
    x, lam = _x(data), np.diag(PENALTY)
    np.testing.assert_allclose(res.theta, np.linalg.solve(x.T @ x + lam, x.T @ data.y + lam @ np.full(4, 0.1)),
                               rtol=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
def test_bridge_matches_delicatessen(data, weighted):
    w = data.w if weighted else None
    res = mestim.fit(est.bridge_regression("b", "y", COLS, penalty=PENALTY, gamma=1.5,
                                           weights="w" if weighted else None), data)
    theta, se = delicatessen(lambda theta: ee_bridge_regression(theta, X=_x(data), y=data.y, model="linear",
                                                                penalty=PENALTY, gamma=1.5, weights=w),
                             res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)


def test_elastic_net_matches_delicatessen(data):
    res = mestim.fit(est.elastic_net_regression("en", "yb", COLS, penalty=PENALTY, ratio=0.4, model="logistic"),
                     data)
    theta, se = delicatessen(lambda theta: ee_elasticnet_regression(theta, X=_x(data), y=data.yb, model="logistic",
                                                                    penalty=PENALTY, ratio=0.4), res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)


def test_penalized_options_are_checked(data):
    with pytest.raises(SpecificationError, match=r"model='logit'.*did you mean 'logistic'"):
        est.ridge_regression("r", "y", COLS, penalty=1.0, model="logit")
    with pytest.raises(SpecificationError, match=r"penalty=-1"):
        est.ridge_regression("r", "y", COLS, penalty=-1)
    with pytest.raises(SpecificationError, match=r"ratio=1.5"):
        est.elastic_net_regression("e", "y", COLS, penalty=1.0, ratio=1.5)
    with pytest.raises(SpecificationError, match=r"gamma=1"):
        est.bridge_regression("b", "y", COLS, penalty=1.0, gamma=1)
    with pytest.raises(SpecificationError, match="3 values for 4 coefficients"):
        mestim.fit(est.ridge_regression("r", "y", COLS, penalty=[1, 2, 3]), data)


@pytest.mark.parametrize("model,y,natural,normalized", [("linear", "y", True, False), ("logistic", "yb", False, True)])
def test_additive_regression_matches_delicatessen(data, model, y, natural, normalized):
    from delicatessen.estimating_equations import ee_additive_regression

    spec = {"knots": [-1.0, 0.0, 1.0], "penalty": 3.0, "natural": natural, "normalized": normalized, "power": 3}
    res = mestim.fit(est.additive_regression("ad", y, ["x2"], splines={"x1": dict(spec)}, model=model), data)
    X = np.column_stack([np.ones(len(data)), data.x2, data.x1])
    theta, se = delicatessen(lambda theta: ee_additive_regression(theta, X=X, y=data[y], model=model,
                                                                  specifications=[None, None, dict(spec)]),
                             res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)
    assert res.labels[:4] == ("(Intercept)", "x2", "x1", "x1:spline(-1)")


def test_spline_specifications_are_checked():
    with pytest.raises(SpecificationError, match="unknown keys"):
        est.additive_regression("ad", "y", splines={"x1": {"knots": [0, 1], "degree": 3}})
    with pytest.raises(SpecificationError, match="two or more finite knots"):
        est.additive_regression("ad", "y", splines={"x1": {"knots": [0]}})
    with pytest.raises(SpecificationError, match=r"penalty=-1"):
        est.Spline(knots=(0, 1), penalty=-1)
