"""Measurement-error blocks (estimators.measurement) against delicatessen's ee_rogan_gladen,
ee_rogan_gladen_extended and ee_regression_calibration in exact-derivative mode on the data of delicatessen's own
tests, the published numbers there (Cole et al. 2023; R's mecor) and closed forms."""

import numpy as np
import pandas as pd
import pytest
from delicatessen import MEstimator
from delicatessen.estimating_equations import (ee_regression, ee_regression_calibration, ee_rogan_gladen,
                                               ee_rogan_gladen_extended)
from delicatessen.utilities import inverse_logit
from scipy.special import expit

import estimators as est
import mestim
from mestim.errors import DataError, SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5


def expand(rows, counts):
    return pd.DataFrame(np.repeat(np.asarray(rows, float), counts, axis=0))


@pytest.fixture(scope="module")
def cole2023():
    """Cole et al. (2023): main sample 680/950 positive; validation 203/241 (Se) and 71/89 (Sp)."""
    d = expand([[0, np.nan, 0], [1, np.nan, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]],
               [270, 680, 71, 18, 38, 203])
    d.columns = ["y_star", "y", "valid"]
    return d


@pytest.fixture(scope="module")
def covs():
    """delicatessen's data_covs: Se, Sp differ by X; weights 2 on the main sample's X = 0 rows."""
    rows = [[0, np.nan, 0], [1, np.nan, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]
    d1, d0 = expand(rows, [400, 400, 75, 25, 5, 95]), expand(rows, [100, 100, 85, 15, 20, 80])
    d1["X"], d0["X"] = 1.0, 0.0
    d = pd.concat([d1, d0], ignore_index=True)
    d.columns = ["y_star", "y", "valid", "X"]
    d["w"] = np.where((d.X == 0) & d.y.isna(), 2.0, 1.0)
    return d


def delicatessen(psi, init):
    ref = MEstimator(psi, init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=2000)
    return np.asarray(ref.theta), np.asarray(ref.variance)


def test_rogan_gladen_matches_delicatessen_and_cole(cole2023):
    res = mestim.fit(est.rogan_gladen("rg", "y_star", "y", "valid"), cole2023)
    theta, var = delicatessen(lambda theta: ee_rogan_gladen(theta, y=cole2023.y, y_star=cole2023.y_star,
                                                            r=1 - cole2023.valid), res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.vcov, var, rtol=RTOL_SE, atol=1e-15)
    # closed form: μ = (μ* + Sp − 1)/(Se + Sp − 1) with the sample proportions; Cole et al.'s covariance
    np.testing.assert_allclose(res.theta, [(680 / 950 + 71 / 89 - 1) / (203 / 241 + 71 / 89 - 1), 680 / 950,
                                           203 / 241, 71 / 89], rtol=1e-12)
    np.testing.assert_allclose(res.vcov, [[1.56147627e-03, 3.34556962e-04, -6.90781941e-04, 5.59893648e-04],
                                          [3.34556962e-04, 2.14142010e-04, 0., 0.],
                                          [-6.90781941e-04, 0., 5.51097661e-04, 0.],
                                          [5.59893648e-04, 0., 0., 1.81284545e-03]], rtol=2e-6, atol=1e-14)
    # (published with delicatessen's numerical bread, hence 2e-6)


def test_weighted_rogan_gladen_matches_delicatessen(covs):
    res = mestim.fit(est.rogan_gladen("rg", "y_star", "y", "valid", weights="w"), covs)
    theta, var = delicatessen(lambda theta: ee_rogan_gladen(theta, y=covs.y, y_star=covs.y_star, r=1 - covs.valid,
                                                            weights=covs.w), res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, np.sqrt(np.diag(var)), rtol=RTOL_SE)


@pytest.mark.parametrize("weighted", [False, True])
def test_extended_rogan_gladen_matches_delicatessen_and_closed_form(covs, weighted):
    res = mestim.fit(est.rogan_gladen_extended("rg", "y_star", "y", "valid", ["X"],
                                               weights="w" if weighted else None), covs)
    X = np.column_stack([np.ones(len(covs)), covs.X])
    theta, var = delicatessen(lambda theta: ee_rogan_gladen_extended(
        theta, y=covs.y, y_star=covs.y_star, r=1 - covs.valid, X=X, weights=covs.w if weighted else None),
        res.theta * 1.01)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA, atol=1e-12)
    np.testing.assert_allclose(res.se, np.sqrt(np.diag(var)), rtol=RTOL_SE)
    np.testing.assert_allclose(expit([res.theta[1], res.theta[1] + res.theta[2]]), [0.8, 0.95], rtol=1e-10)
    np.testing.assert_allclose(expit([res.theta[3], res.theta[3] + res.theta[4]]), [0.85, 0.75], rtol=1e-10)
    pr_x1 = 800 / 1200 if weighted else 0.8
    mu = (1 - pr_x1) * (0.5 + 0.85 - 1) / (0.85 + 0.8 - 1) + pr_x1 * (0.5 + 0.75 - 1) / (0.75 + 0.95 - 1)
    np.testing.assert_allclose(res.theta[0], mu, rtol=1e-10)
    assert res.labels == ("mu", "sensitivity:(Intercept)", "sensitivity:X", "specificity:(Intercept)",
                          "specificity:X")


def test_extended_rogan_gladen_without_covariates_is_rogan_gladen(cole2023):
    plain = mestim.fit(est.rogan_gladen("rg", "y_star", "y", "valid"), cole2023)
    ext = mestim.fit(est.rogan_gladen_extended("rg", "y_star", "y", "valid"), cole2023)
    np.testing.assert_allclose(ext.theta[0], plain.theta[0], rtol=1e-10)
    np.testing.assert_allclose(ext.se[0], plain.se[0], rtol=1e-8)
    np.testing.assert_allclose(expit(ext.theta[1:]), plain.theta[2:], rtol=1e-10)


@pytest.fixture(scope="module")
def exposure():
    """delicatessen's data_exp_m: a main sample (R = 1) with A* and Y, an external validation sample with A, A*."""
    main = pd.DataFrame({"a_star": [1, 1, 1, 1, 1, 0, 0, 0, 0.], "y": [3, 3, 5, 2, 1, 9, 6, 7, 2.], "a": np.nan,
                         "r": 1.0, "w": [1, 1, 1, 1, 5, 10, 1, 1, 1.]})
    valid = pd.DataFrame({"a_star": [1.] * 10 + [0.] * 10, "a": [1.] * 9 + [0.] * 9 + [1., 1.], "y": np.nan,
                          "r": 0.0, "w": [1.] * 9 + [2.] + [1.] * 8 + [1., 2.]})
    d = pd.concat([main, valid], ignore_index=True)
    d["valid"] = 1.0 - d.r
    return d


@pytest.mark.parametrize("weighted", [False, True])
def test_regression_calibration_matches_delicatessen_and_mecor(exposure, weighted):
    d, w = exposure, ("w" if weighted else None)
    naive = est.glm("naive", "y", ["a_star"], mask="r", var_weights=w)
    res = mestim.fit([naive, est.regression_calibration("rc", naive, "a_star", "a", "a_star", "valid", weights=w)], d)
    y0 = np.where(d.y.isna(), -999.0, d.y)
    X = np.column_stack([np.ones(len(d)), d.a_star])

    def psi(theta):
        weights = d.w if weighted else None
        main = ee_regression(theta[3:], y=y0, X=X, model="linear", weights=weights) * d.r.values
        calib = ee_regression_calibration(theta[:3], beta=theta[4], a=d.a, a_star=d.a_star, r=d.r, weights=weights)
        return np.vstack([calib, main])

    mine = np.r_[res.theta[2:], res.theta[:2]]
    theta, var = delicatessen(psi, mine * 1.01)
    np.testing.assert_allclose(mine, theta, rtol=RTOL_THETA, atol=1e-12)  # the sampling intercept is 0
    np.testing.assert_allclose(np.r_[res.se[2:], res.se[:2]], np.sqrt(np.diag(var)), rtol=RTOL_SE)
    if not weighted:  # R mecor (delicatessen's test): naive (6, −3.2), calibration (0.7, 0.2), corrected −4.571429
        np.testing.assert_allclose(res.theta, [6, -3.2, -3.2 / 0.7, 0.7, 0.2], rtol=1e-10)
    assert res.labels[2:] == ("rc:a_star", "rc:calibration:a_star", "rc:calibration:(Intercept)")


def test_measurement_errors_name_the_problem(cole2023, exposure):
    with pytest.raises(DataError, match="validation sample has no rows with Y = 1"):
        mestim.fit(est.rogan_gladen("rg", "y_star", "y", "valid"), cole2023.assign(y=cole2023.y * 0))
    with pytest.raises(DataError, match="must mark both"):
        mestim.fit(est.rogan_gladen("rg", "y_star", "y", "valid"), cole2023.assign(valid=1.0, y=0.0))
    naive = est.linear("naive", "y", ["a_star"], mask="r")
    with pytest.raises(SpecificationError, match=r"coefficient='astar' is not a parameter of block 'naive'"):
        mestim.fit([naive, est.regression_calibration("rc", naive, "astar", "a", "a_star", "valid")], exposure)


@pytest.fixture(scope="module")
def roses():
    """Cole et al.'s rejoinder (delicatessen's cole_roses_data): a main study (S = 1: Y*, W), a target sample
    (S = 2: W only) and a validation study (S = 3: Y, Y*)."""
    rows = [[0, np.nan, 0, 1], [1, np.nan, 0, 1], [0, np.nan, 1, 1], [1, np.nan, 1, 1], [np.nan, np.nan, 0, 2],
            [np.nan, np.nan, 1, 2], [1, 1, np.nan, 3], [0, 1, np.nan, 3], [1, 0, np.nan, 3], [0, 0, np.nan, 3]]
    d = expand(rows, [266, 67, 400, 267, 333, 167, 180, 20, 60, 240])
    d.columns = ["y_star", "y", "w", "s"]
    for k in (1, 2, 3):
        d[f"s{k}"] = (d.s == k) * 1.0
    return d


def test_transported_rogan_gladen_matches_delicatessen_and_cole(roses):
    d = roses
    sampling = est.logistic("sm", "s2", ["w"], mask=lambda c: c["s3"] == 0)
    rg = est.rogan_gladen("rg", "y_star", "y", "s3", sampling=sampling, mask=lambda c: c["s2"] == 0)
    res = mestim.fit([sampling, rg], d)
    y0, ys0, W = d.y.fillna(-9).values, d.y_star.fillna(-9).values, np.column_stack([np.ones(len(d)),
                                                                                   d.w.fillna(-9)])

    def psi(theta):
        ee_sm = ee_regression(theta[4:], X=W, y=d.s2, model="logistic") * (1 - d.s3.values)
        pi = inverse_logit(np.dot(W, theta[4:]))
        iosw = d.s1.values * pi / (1 - pi) + d.s3.values
        ee_rg = ee_rogan_gladen(theta[:4], y=y0, y_star=ys0, r=d.s1, weights=iosw) * (1 - d.s2.values)
        return np.vstack([ee_rg, ee_sm])

    mine = np.r_[res.theta[2:], res.theta[:2]]
    theta, var = delicatessen(psi, mine * 1.01)
    np.testing.assert_allclose(mine, theta, rtol=RTOL_THETA, atol=1e-12)  # the sampling intercept is 0
    np.testing.assert_allclose(np.r_[res.se[2:], res.se[:2]], np.sqrt(np.diag(var)), rtol=RTOL_SE)
    # Cole et al.'s rejoinder (delicatessen's reference values)
    np.testing.assert_allclose(res.theta[2:], [0.0967144999, 0.267700150, 0.9, 0.8], rtol=1e-8)
    np.testing.assert_allclose(res.vcov[2:, 2:], [[1.45149504e-03, 3.88376666e-04, -6.21735965e-05, 6.88217424e-04],
                                                  [3.88376666e-04, 2.71863653e-04, 0., 0.],
                                                  [-6.21735965e-05, 0., 4.49999988e-04, 0.],
                                                  [6.88217424e-04, 0., 0., 5.33333316e-04]], rtol=2e-6, atol=1e-14)
    with pytest.raises(SpecificationError, match="sampling= must be a binomial GLM block"):
        est.rogan_gladen("rg", "y_star", "y", "s3", sampling="sm")
