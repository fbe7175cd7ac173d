"""Survival blocks (estimators.survival) against delicatessen's ee_survival_model / ee_aft in exact-derivative
mode on the data of delicatessen's own tests, R's survreg/flexsurv output published there, and closed forms of
S, h and RMST with the delta method."""

import numpy as np
import pandas as pd
import pytest
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_aft, ee_survival_model
from scipy.integrate import quad
from scipy.special import ndtr

import estimators as est
import mestim
from mestim.errors import DataError, SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5

TIMES = np.array([1, 2, 3, 4, 5, 1, 1, 2, 2.5, 3, 4, 5])
EVENTS = np.array([1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0.])


@pytest.fixture(scope="module")
def small():
    return {"t": TIMES, "delta": EVENTS}


@pytest.fixture(scope="module")
def collett():
    """Collett's breast cancer data (delicatessen's collett_bc fixture): stain X, time, delta."""
    x = [0] * 13 + [1] * 32
    time = [23, 47, 69, 70, 71, 100, 101, 148, 181, 198, 208, 212, 224, 5, 8, 10, 13, 18, 24, 26, 26, 31, 35, 40,
            41, 48, 50, 59, 61, 68, 71, 76, 105, 107, 109, 113, 116, 118, 143, 154, 162, 188, 212, 217, 225]
    delta = [1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0,
             0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    return pd.DataFrame({"X": np.array(x, float), "time": np.array(time, float), "delta": np.array(delta, float)})


@pytest.fixture(scope="module")
def weighted():
    """delicatessen's data_sc fixture: two covariates and weights."""
    return pd.DataFrame({
        "X": [1.] * 15 + [0.] * 20,
        "W": [1, 2, 3, 1, -1, 1, -2, 1, 0, 1, -3, 1, 0, 1, -1, 3, 0, 2, 1, 1, -1, 2, -3, 2, -2, 0, 0, 1, 1, 2, 3, 0,
              1, 0, -1.],
        "t": [1, 2, 3, 5, 1, 9, 10, 1, 3, 6, 8, 6, 9, 4, 3, 2, 1, 1, 5, 6, 7, 8, 3, 4, 4, 3, 2.1, 3, 5, 3, 2, 1, 3,
              2, 10],
        "delta": [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1,
                  0, 1, 0.],
        "weight": [1, 2, 1, 0.1, 1, 1, 1, 3, 1, 1, 3, 1, 2, 1, 1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 6, 1, 1, 1, 1,
                   2, 1, 4, 1.]})


def delicatessen(psi, init):
    ref = MEstimator(psi, init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=2000)
    return np.asarray(ref.theta), np.asarray(ref.variance)


@pytest.mark.parametrize("distribution", ["exponential", "weibull", "gompertz"])
def test_parametric_survival_matches_delicatessen(small, distribution):
    res = mestim.fit(est.parametric_survival("s", "t", "delta", distribution=distribution), small)
    theta, var = delicatessen(lambda theta: ee_survival_model(theta, t=TIMES, delta=EVENTS, distribution=distribution),
                              res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, np.sqrt(np.diag(var)), rtol=RTOL_SE)


def test_parametric_survival_matches_closed_forms_and_r(small):
    expo = mestim.fit(est.parametric_survival("s", "t", "delta", distribution="exponential"), small)
    np.testing.assert_allclose(expo.theta, [EVENTS.sum() / TIMES.sum()], rtol=1e-12)  # λ̂ = events / exposure
    gomp = mestim.fit(est.parametric_survival("s", "t", "delta", distribution="gompertz"), small)
    np.testing.assert_allclose(gomp.theta, [0.02600120662398, 0.78718366977333], rtol=1e-6)  # R flexsurv
    assert gomp.labels == ("lambda", "gamma")


# R survreg(Surv(time, delta) ~ stain, dist=...), with sandwich(sr) (delicatessen's tests); last: log σ
SURVREG = {
    "exponential": ([5.8003040, -0.9516276], [[0.1855775, -0.1855775], [-0.1855775, 0.2473048]]),
    "weibull": ([5.8543638, -0.9966647, np.log(1.066777)],
                [[0.23281646, -0.2231509, 0.02183579], [-0.22315087, 0.2827840, -0.01221040],
                 [0.02183579, -0.0122104, 0.01580507]]),
    "log-logistic": ([5.461100, -1.149056, np.log(0.8047005)],
                     [[0.19819085, -0.188012820, 0.017487829], [-0.18801282, 0.255164051, -0.003017458],
                      [0.01748783, -0.003017458, 0.021047226]]),
    "log-normal": ([5.491726, -1.151172, np.log(1.359451)],
                   [[0.2027042, -0.187832061, 0.020758604], [-0.1878321, 0.247731353, -0.006169943],
                    [0.0207586, -0.006169943, 0.018085983]]),
}


@pytest.mark.parametrize("distribution", list(SURVREG))
def test_aft_matches_delicatessen_and_survreg(collett, distribution):
    res = mestim.fit(est.aft("aft", "time", "delta", ["X"], distribution=distribution), collett)
    flip = np.ones(res.theta.size)
    if distribution != "exponential":
        flip[-1] = -1.0  # delicatessen's last parameter is −log σ
    X = np.column_stack([np.ones(len(collett)), collett.X])
    theta, var = delicatessen(lambda theta: ee_aft(theta, X=X, t=collett.time, delta=collett.delta,
                                                distribution=distribution), res.theta * flip)
    np.testing.assert_allclose(res.theta, theta * flip, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.vcov, var * np.outer(flip, flip), rtol=RTOL_SE, atol=1e-12)
    r_theta, r_cov = SURVREG[distribution]
    np.testing.assert_allclose(res.theta, r_theta, atol=2e-6)  # R's printed digits
    np.testing.assert_allclose(res.vcov, r_cov, atol=1e-6)
    assert res.labels[:2] == ("(Intercept)", "X")


def test_weighted_weibull_aft_matches_delicatessen(weighted):
    res = mestim.fit(est.aft("aft", "t", "delta", ["X", "W"], weights="weight"), weighted)
    X = np.column_stack([np.ones(len(weighted)), weighted.X, weighted.W])
    theta, var = delicatessen(lambda theta: ee_aft(theta, X=X, t=weighted.t, delta=weighted.delta,
                                                   distribution="weibull", weights=weighted.weight),
                              res.theta * [1, 1, 1, -1])
    np.testing.assert_allclose(res.theta, theta * [1, 1, 1, -1], rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, np.sqrt(np.diag(var)), rtol=RTOL_SE)
    # the block's weights are mestim.fit's sampling weights for a stack of one block
    again = mestim.fit(est.aft("aft", "t", "delta", ["X", "W"]), weighted, weights="weight", weight_type="sampling")
    np.testing.assert_allclose(again.theta, res.theta, rtol=1e-9)
    np.testing.assert_allclose(again.se, res.se, rtol=1e-8)


def _delta_method(g, theta, cov):
    """g(θ̂) and its delta-method SE, with a central-difference gradient."""
    grad = np.empty(theta.size)
    for j in range(theta.size):
        h = 1e-5 * max(abs(theta[j]), 1e-3)
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        grad[j] = (g(up) - g(down)) / (2 * h)
    return g(theta), float(np.sqrt(grad @ cov @ grad))


def _rmst(surv, tau):
    return quad(surv, 0, tau, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


WEIBULL = {"survival": lambda th, t: np.exp(-th[0] * t ** th[1]),
           "hazard": lambda th, t: th[0] * th[1] * t ** (th[1] - 1),
           "rmst": lambda th, t: _rmst(lambda u: np.exp(-th[0] * u ** th[1]), t)}


def test_weibull_predictions_match_the_delta_method(small):
    model = est.parametric_survival("wb", "t", "delta")
    times = [0.5, 2.0, 4.5]
    what = ("survival", "hazard", "rmst")
    res = mestim.fit([model, est.survival_predictions("p", model, times, what=what)], small)
    theta, cov = res.theta[:2], res.vcov[:2, :2]
    expected = [_delta_method(lambda th, f=WEIBULL[k], t=t: f(th, t), theta, cov) for k in what for t in times]
    np.testing.assert_allclose(res.theta[2:], [e[0] for e in expected], rtol=1e-9)
    np.testing.assert_allclose(res.se[2:], [e[1] for e in expected], rtol=RTOL_SE)
    assert res.labels[2:5] == ("p:S(0.5)", "p:S(2)", "p:S(4.5)") and res.labels[-1] == "p:RMST(4.5)"


def test_lognormal_aft_predictions_at_a_profile(collett):
    model = est.aft("ln", "time", "delta", ["X"], distribution="log-normal")
    times = [50.0, 150.0]
    what = ("survival", "hazard", "rmst")
    res = mestim.fit([model, est.survival_predictions("p", model, times, what=what, at={"X": 1.0})], collett)
    theta, cov = res.theta[:3], res.vcov[:3, :3]

    def surv(th, t):
        return ndtr(-(np.log(t) - th[0] - th[1]) / np.exp(th[2]))

    def hazard(th, t):
        z, s = (np.log(t) - th[0] - th[1]) / np.exp(th[2]), np.exp(th[2])
        return np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi) / (s * t * ndtr(-z))

    funcs = {"survival": surv, "hazard": hazard, "rmst": lambda th, t: _rmst(lambda u: surv(th, u), t)}
    expected = [_delta_method(lambda th, f=funcs[k], t=t: f(th, t), theta, cov) for k in what for t in times]
    np.testing.assert_allclose(res.theta[3:], [e[0] for e in expected], rtol=1e-9)
    np.testing.assert_allclose(res.se[3:], [e[1] for e in expected], rtol=RTOL_SE)


def test_survival_options_are_checked_when_given(small):
    with pytest.raises(SpecificationError, match=r"distribution='weibul'.*did you mean 'weibull'"):
        est.parametric_survival("s", "t", "delta", distribution="weibul")
    with pytest.raises(SpecificationError, match=r"distribution='lognormal'.*did you mean 'log-normal'"):
        est.aft("s", "t", "delta", distribution="lognormal")
    model = est.parametric_survival("s", "t", "delta")
    with pytest.raises(SpecificationError, match=r"what='rmsd'.*did you mean 'rmst'"):
        est.survival_predictions("p", model, [1.0], what="rmsd")
    with pytest.raises(SpecificationError, match="positive times"):
        est.survival_predictions("p", model, [0.0])
    with pytest.raises(SpecificationError, match="only for an AFT model"):
        est.survival_predictions("p", model, [1.0], at={"X": 1})
    with pytest.raises(DataError, match="must be positive"):
        mestim.fit(model, {"t": -TIMES, "delta": EVENTS})
    with pytest.raises(DataError, match=r"use 1 \(event\) and 0"):
        mestim.fit(model, {"t": TIMES, "delta": 2 * EVENTS})
