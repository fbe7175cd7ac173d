"""Random-effects (Paule–Mandel) meta-regression (estimators.mixed_effects_meta) against R metafor's
rma(method="PM") on the BCG trials (tests/data/bcg_metafor_reference.json), the root of delicatessen's
ee_meta_regression, the sandwich written out with numpy, and weighted least squares at a fixed τ²."""

import json
from pathlib import Path

import numpy as np
import pytest
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_meta_regression

import estimators as est
import mestim
from mestim.errors import DataError, SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5
REFERENCE = json.loads((Path(__file__).parent / "data" / "bcg_metafor_reference.json").read_text())["results"]["RR"]
LATITUDE = np.array([44, 55, 42, 52, 13, 44, 19, 13, 27, 42, 18, 33, 33.])


@pytest.fixture(scope="module")
def bcg():
    study = REFERENCE["per_study_escalc"]
    return {"yi": np.array(study["yi"]), "vi": np.array(study["vi"]), "lat": LATITUDE}


def test_intercept_only_is_metafor_paule_mandel(bcg):
    res = mestim.fit(est.meta_regression("pm", "yi", "vi"), bcg)
    np.testing.assert_allclose(res.theta[0], REFERENCE["PM"]["estimate"], rtol=RTOL_THETA)
    np.testing.assert_allclose(np.exp(res.theta[1]), REFERENCE["PM"]["tau2"], rtol=RTOL_THETA)


def _sandwich(theta, x, y, v):
    """A⁻¹ B A⁻ᵀ of ψ_i = (w r x, w r² − (1 − p/k)) in (β, log τ²), derivatives by hand."""
    k, p = x.shape
    tau2 = np.exp(theta[-1])
    w = 1 / (v + tau2)
    r = y - x @ theta[:-1]
    psi = np.column_stack([(w * r)[:, None] * x, w * r**2 - (1 - p / k)])
    jac = np.zeros((p + 1, p + 1))
    jac[:p, :p] = -(x * w[:, None]).T @ x
    jac[:p, p] = -(x * (w**2 * r * tau2)[:, None]).sum(0)
    jac[p, :p] = -(x * (2 * w * r)[:, None]).sum(0)
    jac[p, p] = -np.sum(w**2 * r**2 * tau2)
    inv = np.linalg.inv(jac)
    return inv @ (psi.T @ psi) @ inv.T


@pytest.mark.parametrize("moderators", [None, ["lat"]])
def test_matches_delicatessen_root_and_the_sandwich(bcg, moderators):
    res = mestim.fit(est.meta_regression("mr", "yi", "vi", moderators), bcg)
    x = np.column_stack([np.ones(13)] + ([LATITUDE] if moderators else []))
    ref = MEstimator(lambda theta: ee_meta_regression(theta, point_est=bcg["yi"], var_est=bcg["vi"], X=x),
                     init=list(res.theta * 1.01))
    ref.estimate(tolerance=1e-13, maxiter=2000)
    np.testing.assert_allclose(res.theta, ref.theta, rtol=RTOL_THETA)  # same root (the leverages sum to p)
    np.testing.assert_allclose(res.vcov, _sandwich(res.theta, x, bcg["yi"], bcg["vi"]), rtol=RTOL_SE)


def test_fixed_tau2_is_weighted_least_squares(bcg):
    res = mestim.fit(est.meta_regression("fe", "yi", "vi", ["lat"], tau2=0.1), bcg)
    x, w = np.column_stack([np.ones(13), LATITUDE]), 1 / (bcg["vi"] + 0.1)
    np.testing.assert_allclose(res.theta, np.linalg.solve((x * w[:, None]).T @ x, (x * w[:, None]).T @ bcg["yi"]),
                               rtol=1e-10)
    fe = mestim.fit(est.meta_regression("fe", "yi", "vi", tau2=0), bcg)
    np.testing.assert_allclose(fe.theta, [REFERENCE["FE"]["estimate"]], rtol=RTOL_THETA)  # metafor's FE


def test_no_heterogeneity_and_bad_options_are_reported(bcg):
    homogeneous = {**bcg, "yi": np.full(13, -0.5) + 0.01 * np.sqrt(bcg["vi"]) * np.resize([1, -1], 13)}
    with pytest.raises(DataError, match="give tau2=0"):
        mestim.fit(est.meta_regression("mr", "yi", "vi"), homogeneous)
    with pytest.raises(SpecificationError, match=r"tau2=-1"):
        est.meta_regression("mr", "yi", "vi", tau2=-1)
    with pytest.raises(DataError, match="must be positive"):
        mestim.fit(est.meta_regression("mr", "yi", "vi"), {**bcg, "vi": -bcg["vi"]})
