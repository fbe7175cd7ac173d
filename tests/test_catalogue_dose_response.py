"""Dose-response blocks (estimators.dose_response) against delicatessen's ee_emax/ee_loglogistic (and their ED
equations) in exact-derivative mode on the data of delicatessen's own tests, and R's drc/DoseFinding output
published there."""

import numpy as np
import pytest
from delicatessen import MEstimator
from delicatessen.data import load_inderjit
from delicatessen.estimating_equations import ee_emax, ee_emax_ed, ee_loglogistic, ee_loglogistic_ed

import estimators as est
import mestim
from mestim.errors import DataError, SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5
P = (0.05, 0.10, 0.50)


@pytest.fixture(scope="module")
def ryegrass():
    d = load_inderjit()
    return {"root": d[:, 0], "dose": d[:, 1], "rising": d[:, 0].max() - d[:, 0]}


def delicatessen(psi, init):
    ref = MEstimator(psi, init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=5000)
    return np.asarray(ref.theta), np.sqrt(np.diag(ref.variance))


def test_emax_and_its_effective_doses_match_delicatessen(ryegrass):
    curve = est.emax("emax", "dose", "rising")
    res = mestim.fit([curve, est.effective_dose("ed", curve, P)], ryegrass)
    dose, resp = ryegrass["dose"], ryegrass["rising"]

    def psi(theta):
        return np.vstack([ee_emax(theta[:3], dose=dose, response=resp)]
                         + [ee_emax_ed(theta[3 + k], dose=dose, delta=p, ed50=theta[2]) for k, p in enumerate(P)])

    theta, se = delicatessen(psi, res.theta * 1.001)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)
    np.testing.assert_allclose(res.theta[:3], [0.1404261, 9.8200414, 4.5745239], atol=1e-5)  # R DoseFinding
    np.testing.assert_allclose(res.theta[3:], [p / (1 - p) * res.theta[2] for p in P], rtol=1e-12)  # closed form
    assert res.labels == ("emax:E0", "emax:Emax", "emax:ED50", "ed:ED(0.05)", "ed:ED(0.1)", "ed:ED(0.5)")


def test_emax_bonate_matches_dosefinding():
    d = {"d": np.array([0, 5, 5, 13, 11, 14.5, 6.8, 42.5, 37.5, 25, 38, 40, 26.5, 27.7, 27.4, 45, 61.4, 52.8]),
         "r": np.array([0, -12, -13, -28, -24, -45, -18, -26, -40, -45, -26, -29, -26, -22, -28, -36, -27, -48.])}
    res = mestim.fit(est.emax("e", "d", "r"), d)
    np.testing.assert_allclose(res.theta, [1.658004, -40.138821, 5.739854], atol=2e-6)
    theta, se = delicatessen(lambda theta: ee_emax(theta, dose=d["d"], response=d["r"]), res.theta * 1.001)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)


# R drc on ryegrass with coeftest(..., vcov=sandwich) (delicatessen's tests): estimates and SEs
DRC = {4: ([0.48141, 7.79296, 3.05795, 2.98222], [0.12779, 0.15311, 0.26741, 0.47438]),
       3: ([7.85543, 3.26336, 2.47033], [0.15397, 0.26572, 0.29238]),
       2: ([3.19946, 2.38220], [0.24290, 0.27937])}


@pytest.mark.parametrize("k", [4, 3, 2])
def test_log_logistic_matches_delicatessen_and_drc(ryegrass, k):
    fixed = {4: {}, 3: {"lower": 0.0}, 2: {"lower": 0.0, "upper": 8.0}}[k]
    res = mestim.fit(est.log_logistic("ll", "dose", "root", **fixed), ryegrass)
    head = [fixed[v] for v in ("lower", "upper") if v in fixed]

    def psi(theta):
        return ee_loglogistic(head + list(theta), dose=ryegrass["dose"], response=ryegrass["root"])[4 - k:]

    theta, se = delicatessen(psi, res.theta * 1.001)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)
    np.testing.assert_allclose(res.theta, DRC[k][0], atol=1e-5)
    np.testing.assert_allclose(res.se, DRC[k][1], atol=2e-5)  # R's printed digits


@pytest.mark.parametrize("response,drc", [("root", [0.99088, 1.34086, 3.26336]),
                                          ("rising", [0.87552, 1.18213, 2.8583])])
def test_log_logistic_effective_doses_match_delicatessen_and_drc(ryegrass, response, drc):
    curve = est.log_logistic("ll3", "dose", response, lower=0.0)
    res = mestim.fit([curve, est.effective_dose("ed", curve, P)], ryegrass)
    dose, y = ryegrass["dose"], ryegrass[response]

    def psi(theta):
        curve_eq = ee_loglogistic([0.0] + list(theta[:3]), dose=dose, response=y)[1:]
        eds = [ee_loglogistic_ed(theta[3 + j], dose=dose, delta=p, lower=0.0, upper=theta[0], ed50=theta[1],
                                 steepness=theta[2]) for j, p in enumerate(P)]
        return np.vstack([curve_eq] + eds)

    theta, se = delicatessen(psi, res.theta * 1.001)
    np.testing.assert_allclose(res.theta, theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, se, rtol=RTOL_SE)
    np.testing.assert_allclose(res.theta[3:], drc, atol=1e-4)
    assert (res.theta[2] > 0) == (response == "root")  # falling curve: steepness > 0; rising: < 0


def test_dose_response_options_are_checked_when_given(ryegrass):
    with pytest.raises(SpecificationError, match=r"lower=5.0, upper=1.0"):
        est.log_logistic("ll", "dose", "root", lower=5.0, upper=1.0)
    with pytest.raises(SpecificationError, match=r"lower='0'"):
        est.log_logistic("ll", "dose", "root", lower="0")
    curve = est.emax("e", "dose", "root")
    with pytest.raises(SpecificationError, match=r"p=1.5: give a number in \(0.0, 1.0\)"):
        est.effective_dose("ed", curve, [0.5, 1.5])
    with pytest.raises(SpecificationError, match="curve= must be"):
        est.effective_dose("ed", est.linear("lin", "root", ["dose"]), 0.5)
    with pytest.raises(DataError, match="negative values"):
        mestim.fit(curve, {**ryegrass, "dose": -ryegrass["dose"]})
