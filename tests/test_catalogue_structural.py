"""IPW marginal structural models and g-estimation of structural nested mean models (estimators.structural)
against delicatessen's ee_ipw_msm and ee_gestimation_snmm in exact-derivative mode, and closed forms (the Hájek
IPW estimator for a saturated MSM; the linear SNMM's ratio)."""

import numpy as np
import pandas as pd
import pytest
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_gestimation_snmm, ee_ipw_msm

import estimators as est
import mestim
from mestim.errors import SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5


@pytest.fixture(scope="module")
def obs():
    rng = np.random.default_rng(21)
    n = 500
    w1, w2, v = rng.normal(size=n), rng.binomial(1, 0.5, n) * 1.0, rng.normal(size=n)
    a = (rng.random(n) < 1 / (1 + np.exp(-(-0.2 + 0.7 * w1 - 0.4 * w2)))) * 1.0
    y = 1.0 + a * (1.2 + 0.4 * v) + w1 - 0.5 * w2 + rng.normal(size=n)
    yb = (rng.random(n) < 1 / (1 + np.exp(-(-0.3 + 0.8 * a + 0.5 * w1)))) * 1.0
    yc = rng.poisson(np.exp(0.2 + 0.3 * a + 0.3 * w1)) * 1.0
    return pd.DataFrame({"w1": w1, "w2": w2, "v": v, "a": a, "y": y, "yb": yb, "yc": yc,
                         "f": rng.integers(1, 4, n) * 1.0})


def delicatessen(psi, init):
    ref = MEstimator(psi, init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=2000)
    return np.asarray(ref.theta), np.sqrt(np.diag(ref.variance))


def _design(df, cols):
    return np.column_stack([np.ones(len(df))] + [df[c].values for c in cols])


@pytest.mark.parametrize("y,family,link,truncate", [("y", "gaussian", "identity", None),
                                                     ("yb", "binomial", "logit", (0.1, 0.9)),
                                                     ("yc", "poisson", "log", None)])
def test_ipw_msm_matches_delicatessen(obs, y, family, link, truncate):
    ps = est.logistic("ps", "a", ["w1", "w2"])
    res = mestim.fit([ps, est.ipw_msm("msm", y, "a", formula="~ a * v", propensity=ps, family=family,
                                      truncate=truncate)], obs)
    W, V = _design(obs, ["w1", "w2"]), np.column_stack([np.ones(len(obs)), obs.a, obs.v, obs.a * obs.v])
    dist = {"gaussian": "normal"}.get(family, family)
    theta, se = delicatessen(lambda theta: ee_ipw_msm(theta, y=obs[y], A=obs.a, W=W, V=V, distribution=dist,
                                                      link=link, truncate=truncate),
                             np.r_[res.theta[3:], res.theta[:3]])
    np.testing.assert_allclose(res.theta, np.r_[theta[4:], theta[:4]], rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, np.r_[se[4:], se[:4]], rtol=RTOL_SE)
    assert res.labels[3:] == ("msm:Intercept", "msm:a", "msm:v", "msm:a:v")


def test_saturated_msm_is_the_hajek_ipw_estimator(obs):
    ps = est.logistic("ps", "a", ["w1", "w2"])
    msm = mestim.fit([ps, est.ipw_msm("msm", "y", "a", ["a"], propensity=ps)], obs)
    ipw = mestim.fit([ps, est.ipw("ipw", "y", "a", propensity=ps)], obs)
    np.testing.assert_allclose(msm.theta[3:], [ipw.theta[4], ipw.theta[5]], rtol=1e-9)  # (E[Y(0)], ATE)
    np.testing.assert_allclose(msm.se[3:], [ipw.se[4], ipw.se[5]], rtol=1e-8)


@pytest.mark.parametrize("model,y,with_x,weighted", [("linear", "y", False, False), ("linear", "y", True, True),
                                                     ("poisson", "yc", True, False)])
def test_g_estimation_matches_delicatessen(obs, model, y, with_x, weighted):
    wt = "f" if weighted else None
    ps = est.glm("ps", "a", ["w1", "w2"], family="binomial", var_weights=wt)
    res = mestim.fit([ps, est.g_estimation("snmm", y, "a", ["v"], propensity=ps, model=model,
                                           X=["w1", "w2"] if with_x else None, weights=wt)], obs)
    W, V = _design(obs, ["w1", "w2"]), _design(obs, ["v"])
    X = W if with_x else None
    k = 3 if with_x else 0

    def psi(theta):
        return ee_gestimation_snmm(theta, y=obs[y], A=obs.a, W=W, V=V, X=X, model=model,
                                   weights=obs.f if weighted else None)

    mine = np.r_[res.theta[3:5], res.theta[:3], res.theta[5:]]  # delicatessen: (φ, α, β)
    theta, se = delicatessen(psi, mine)
    np.testing.assert_allclose(mine, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(np.r_[res.se[3:5], res.se[:3], res.se[5:]], se, rtol=RTOL_SE)
    assert res.theta.size == 5 + k


def test_linear_snmm_without_covariates_is_a_ratio(obs):
    ps = est.logistic("ps", "a", ["w1", "w2"])
    res = mestim.fit([ps, est.g_estimation("snmm", "y", "a", propensity=ps)], obs)
    e = 1 / (1 + np.exp(-(_design(obs, ["w1", "w2"]) @ res.theta[:3])))
    resid = obs.a - e  # Σ (A − e)(Y − Aφ) = 0  ⇒  φ = Σ (A − e) Y / Σ (A − e) A
    np.testing.assert_allclose(res.theta[3], np.sum(resid * obs.y) / np.sum(resid * obs.a), rtol=1e-10)


def test_structural_options_are_checked(obs):
    ps = est.logistic("ps", "a", ["w1"])
    with pytest.raises(SpecificationError, match=r"model='poison'.*did you mean 'poisson'"):
        est.g_estimation("g", "y", "a", propensity=ps, model="poison")
    with pytest.raises(SpecificationError, match="binomial model of 'y'"):
        est.ipw_msm("m", "y", "y", ["a"], propensity=ps)
    with pytest.raises(SpecificationError, match="propensity= must be a binomial GLM block"):
        est.ipw_msm("m", "y", "a", ["a"], propensity="ps")
    with pytest.raises(SpecificationError, match="does not include the treatment"):
        mestim.fit([ps, est.ipw_msm("m", "y", "a", ["v"], propensity=ps)], obs)
