"""IV / just-identified 2SLS (estimators.instrumental) against statsmodels' IV2SLS (θ), the closed-form HC0 sandwich
(SE), and delicatessen's ee_2sls and ee_iv_causal in exact-derivative mode."""

import numpy as np
import pandas as pd
import pytest
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_2sls, ee_iv_causal
from statsmodels.sandbox.regression.gmm import IV2SLS

import estimators as est
import mestim
from mestim.errors import SpecificationError


@pytest.fixture(scope="module")
def endogenous():
    """Two endogenous regressors sharing the error u with y, two instruments, one exogenous covariate,
    heteroskedastic errors, frequency weights and a mask."""
    rng = np.random.default_rng(8)
    n = 1200
    w, z1, z2, u = rng.normal(size=(4, n))
    a1 = 0.7 * z1 + 0.2 * z2 + 0.3 * w + u + rng.normal(size=n)
    a2 = 0.5 * z2 - 0.3 * z1 + 0.5 * u + rng.normal(size=n)
    y = 1.0 + 0.5 * a1 - 0.8 * a2 + 0.4 * w + u * (1 + 0.5 * np.abs(w))
    return pd.DataFrame({"w": w, "z1": z1, "z2": z2, "a1": a1, "a2": a2, "y": y,
                         "f": rng.integers(1, 4, n) * 1.0, "keep": (rng.random(n) < 0.85) * 1.0})


def _hc0(X, Z, y, f=None):
    """β̂ = (ZᵀFX)⁻¹ZᵀFy and the HC0 sandwich (ZᵀFX)⁻¹ (Σ f û² z zᵀ) (XᵀFZ)⁻¹ (F: frequency weights)."""
    f = np.ones(len(y)) if f is None else f
    A = Z.T @ (X * f[:, None])
    beta = np.linalg.solve(A, Z.T @ (f * y))
    u = y - X @ beta
    meat = Z.T @ (Z * (f * u**2)[:, None])
    Ainv = np.linalg.inv(A)
    return beta, Ainv @ meat @ Ainv.T


def test_iv_matches_statsmodels_and_the_closed_form_sandwich(endogenous):
    df = endogenous
    res = mestim.fit([est.iv("iv", "y", ["a1", "a2"], ["z1", "z2"], exogenous="w", mask="keep")], df, weights="f")
    assert res.labels == ("(Intercept)", "w", "a1", "a2")
    sub = df[df.keep == 1]
    X = np.column_stack([np.ones(len(sub)), sub.w, sub.a1, sub.a2])
    Z = np.column_stack([np.ones(len(sub)), sub.w, sub.z1, sub.z2])
    expanded = sub.loc[sub.index.repeat(sub.f.astype(int))]
    Xe = np.column_stack([np.ones(len(expanded)), expanded.w, expanded.a1, expanded.a2])
    Ze = np.column_stack([np.ones(len(expanded)), expanded.w, expanded.z1, expanded.z2])
    ref = IV2SLS(expanded.y.values, Xe, instrument=Ze).fit()
    np.testing.assert_allclose(res.theta, ref.params, rtol=1e-8)
    beta, vcov = _hc0(X, Z, sub.y.values, sub.f.values)
    np.testing.assert_allclose(res.theta, beta, rtol=1e-10)
    np.testing.assert_allclose(res.vcov, vcov, rtol=1e-9)


def test_iv_matches_delicatessen_2sls_and_wald_estimator(endogenous):
    df = endogenous
    res = mestim.fit([est.iv("iv", "y", "a1", "z1", exogenous="w")], df)
    W = np.column_stack([np.ones(len(df)), df.w])
    ref = MEstimator(lambda theta: ee_2sls(theta, y=df.y, A=df.a1, Z=df.z1.values[:, None], W=W), init=[0.0] * 6)
    ref.estimate(deriv_method="exact", tolerance=1e-13)
    # ee_2sls: (A-hat, W) second stage, then the first stage; mestim: ((Intercept), w, a1)
    np.testing.assert_allclose(res.theta, ref.theta[[1, 2, 0]], rtol=1e-8)
    np.testing.assert_allclose(res.se, np.sqrt(np.diag(ref.variance))[[1, 2, 0]], rtol=1e-8)

    # a binary instrument without covariates: the Wald (grouping) estimator
    zb = (df.z1 > 0) * 1.0
    wald = mestim.fit([est.iv("iv", "y", "a1", "zb")], df.assign(zb=zb))
    ref = MEstimator(lambda theta: ee_iv_causal(theta, y=df.y, A=df.a1, Z=zb), init=[0.0, 0.5])
    ref.estimate(deriv_method="exact", tolerance=1e-13)
    assert wald.theta[1] == pytest.approx(ref.theta[0], rel=1e-8)
    assert wald.se[1] == pytest.approx(np.sqrt(ref.variance[0, 0]), rel=1e-8)


def test_iv_closed_form_jacobian_equals_autodiff(endogenous):
    from helpers import closed_form_and_autodiff

    _, closed, autodiff = closed_form_and_autodiff(
        [est.iv("iv", "y", ["a1", "a2"], ["z1", "z2"], exogenous="w", mask="keep")], endogenous, weights="f")
    np.testing.assert_allclose(closed.jac, autodiff.jac, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("kwargs,match", [
    ({"endogenous": ["a1", "a2"], "instruments": "z1"}, r"under-identified: 1 instrument\(s\) for 2 endogenous"),
    ({"endogenous": "a1", "instruments": "a1"}, r"\['a1'\] cannot be both an instrument and a regressor"),
    ({"endogenous": [], "instruments": "z1"}, "at least one endogenous regressor"),
])
def test_iv_specification_errors(kwargs, match):
    with pytest.raises(SpecificationError, match=match):
        est.iv("iv", "y", **kwargs)


def test_irrelevant_instrument_is_a_singular_bread(endogenous):
    """An instrument uncorrelated with every regressor (here: constant within the data) does not identify β."""
    with pytest.raises(mestim.SingularBreadError):
        mestim.fit([est.iv("iv", "y", "a1", "c")], endogenous.assign(c=1.0))
