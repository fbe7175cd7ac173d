"""Huber and Tukey regression (estimators.robust) against statsmodels' RLM (same norm, same scale treatment) and
delicatessen's ee_robust_regression (fixed scale) or a delicatessen stack with the proposal-2 scale, exact mode."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_robust_regression
from delicatessen.utilities import robust_loss_functions

import estimators as est
import mestim
from estimators.robust import HUBER_SCALE_D, proposal2_kappa
from mestim.errors import SpecificationError

SM_NORMS = {"huber": sm.robust.norms.HuberT, "tukey": sm.robust.norms.TukeyBiweight}
C = {"huber": 1.345, "tukey": 4.685}


@pytest.fixture(scope="module")
def contaminated():
    """y = 1 + 2 x1 − x2 + t₃ errors, 6% gross outliers, a mask dropping some rows (with NaN outcomes)."""
    rng = np.random.default_rng(17)
    n = 400
    x1, x2 = rng.uniform(0, 4, n), rng.binomial(1, 0.5, n) * 1.0
    y = 1.0 + 2.0 * x1 - x2 + rng.standard_t(3, n)
    y[rng.random(n) < 0.06] += rng.choice([-15.0, 20.0], size=1)
    keep = (rng.random(n) < 0.9) * 1.0
    y[keep == 0] = np.nan
    return pd.DataFrame({"x1": x1, "x2": x2, "y": y, "keep": keep, "f": rng.integers(1, 4, n) * 1.0})


def _rlm(df, norm, **fit):
    sub = df[df.keep == 1]
    return sm.RLM(sub.y, sm.add_constant(sub[["x1", "x2"]]), M=SM_NORMS[norm]()).fit(conv="coefs", tol=1e-14,
                                                                                      maxiter=5000, **fit)


def _delicatessen(psi, init):
    ref = MEstimator(psi, init=list(init))
    ref.estimate(deriv_method="exact", tolerance=1e-13, maxiter=500)
    return np.asarray(ref.theta), np.sqrt(np.diag(ref.variance))


@pytest.mark.parametrize("norm", ["huber", "tukey"])
def test_fixed_mad_scale_matches_rlm_and_delicatessen(contaminated, norm):
    """scale='mad' is RLM(update_scale=False): σ fixed at the LS residuals' MAD."""
    df = contaminated
    res = mestim.fit([est.robust_regression("rr", "y", ["x1", "x2"], norm=norm, scale="mad", mask="keep")], df)
    ref = _rlm(df, norm, update_scale=False)
    np.testing.assert_allclose(res.theta, ref.params.values, rtol=1e-8)
    sub = df[df.keep == 1]
    X = sm.add_constant(sub[["x1", "x2"]]).values
    k = C[norm] * ref.scale  # delicatessen's unscaled ψ: f_k(y − xᵀβ) with k = c σ
    theta, se = _delicatessen(lambda theta: ee_robust_regression(theta, X=X, y=sub.y.values, model="linear", k=k,
                                                                 loss=norm), res.theta)
    np.testing.assert_allclose(res.theta, theta, rtol=1e-8)
    np.testing.assert_allclose(res.se, se, rtol=1e-8)


@pytest.mark.parametrize("norm", ["huber", "tukey"])
def test_stacked_huber_scale_matches_rlm_and_delicatessen(contaminated, norm):
    """scale='huber' stacks Huber's proposal 2, what RLM iterates with scale_est=HuberScale()."""
    df = contaminated
    res = mestim.fit([est.robust_regression("rr", "y", ["x1", "x2"], norm=norm, mask="keep")], df)
    assert res.labels[-1] == "log(scale)"
    ref = _rlm(df, norm, scale_est=sm.robust.scale.HuberScale(d=HUBER_SCALE_D, tol=1e-15, maxiter=10000))
    np.testing.assert_allclose(res.theta[:-1], ref.params.values, rtol=1e-8)
    assert np.exp(res.theta[-1]) == pytest.approx(ref.scale, rel=1e-8)

    sub = df[df.keep == 1]
    X, y = sm.add_constant(sub[["x1", "x2"]]).values, sub.y.values
    kappa = proposal2_kappa(HUBER_SCALE_D, len(sub), X.shape[1])

    def psi(theta):
        sigma = np.exp(theta[-1])
        r = (y - X @ np.asarray(theta[:-1])) / sigma
        ee_beta = (robust_loss_functions(r, loss=norm, k=C[norm])[:, None] * X).T
        chi = np.where(np.abs(r) < HUBER_SCALE_D, r * r / 2, HUBER_SCALE_D**2 / 2)
        return np.vstack([ee_beta, chi - kappa])

    theta, se = _delicatessen(psi, res.theta)
    np.testing.assert_allclose(res.theta, theta, rtol=1e-8)
    np.testing.assert_allclose(res.se, se, rtol=1e-8)


def test_fixed_numeric_scale_and_frequency_weights(contaminated):
    """A given σ is held fixed; frequency weights equal expanded rows (stacked scale: κ counts rows)."""
    df = contaminated[contaminated.keep == 1].reset_index(drop=True)
    a = mestim.fit([est.robust_regression("rr", "y", ["x1", "x2"], norm="tukey", scale=1.3)], df)
    X = sm.add_constant(df[["x1", "x2"]]).values
    theta, se = _delicatessen(lambda theta: ee_robust_regression(theta, X=X, y=df.y.values, model="linear",
                                                                 k=4.685 * 1.3, loss="tukey"), a.theta)
    np.testing.assert_allclose(a.theta, theta, rtol=1e-8)
    np.testing.assert_allclose(a.se, se, rtol=1e-8)
    expanded = df.loc[df.index.repeat(df.f.astype(int))].reset_index(drop=True)
    block = est.robust_regression("rr", "y", ["x1", "x2"], scale=1.3)
    w, e = mestim.fit([block], df, weights="f"), mestim.fit([block], expanded)
    np.testing.assert_allclose(w.theta, e.theta, rtol=1e-10)
    np.testing.assert_allclose(w.vcov, e.vcov, rtol=1e-8)


def test_tukey_root_is_the_one_next_to_the_huber_fit():
    """Tukey's ψ redescends (several roots): with 20% one-sided outliers the block's root is RLM's Tukey fit started
    from RLM's Huber fit (the documented choice), at the same fixed MAD scale."""
    rng = np.random.default_rng(5)
    n = 300
    x = rng.uniform(0, 10, n)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.5, n)
    y[: n // 5] += 12.0
    res = mestim.fit([est.robust_regression("rr", "y", ["x"], norm="tukey", scale="mad")], {"x": x, "y": y})
    X = sm.add_constant(x)
    huber = sm.RLM(y, X, M=sm.robust.norms.HuberT()).fit(update_scale=False, conv="coefs", tol=1e-14, maxiter=5000)
    tukey = sm.RLM(y, X, M=sm.robust.norms.TukeyBiweight()).fit(
        start_params=huber.params, start_scale=huber.scale, update_scale=False, conv="coefs", tol=1e-14,
        maxiter=5000)
    np.testing.assert_allclose(res.theta, tukey.params, rtol=1e-8)


@pytest.mark.parametrize("kwargs,match", [
    ({"norm": "bisquare"}, r"norm='bisquare': use one of \['huber', 'tukey'\]"),
    ({"c": -1.0}, "tuning constant must be a positive number"),
    ({"scale": "iqr"}, "scale='iqr': use 'huber'"),
    ({"scale": 0.0}, "a fixed scale must be a positive number"),
])
def test_bad_robust_options(kwargs, match):
    with pytest.raises(SpecificationError, match=match):
        est.robust_regression("rr", "y", ["x"], **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"scale": "mad"}, {"norm": "tukey", "mask": "keep"}])
def test_refit_on_other_data_compiles_nothing(contaminated, kwargs):
    """κ and a fixed σ depend on the data: they travel as columns, not in ψ's hashed fields."""
    df = contaminated.fillna({"y": 0.0})
    other = df.assign(y=df.y + np.random.default_rng(1).normal(size=len(df)), keep=1.0 - (df.index % 7 == 0))
    mestim.fit([est.robust_regression("rr", "y", ["x1", "x2"], **kwargs)], df)
    with mestim.compilations() as count:
        mestim.fit([est.robust_regression("rr", "y", ["x1", "x2"], **kwargs)], other)
    assert count.programs == 0


def test_zero_scale_is_refused_only_where_the_mad_is_used():
    x = np.arange(20.0)
    fixed = mestim.fit([est.robust_regression("rr", "y", ["x"], scale=2.0)], {"x": x, "y": np.full(20, 3.0)})
    np.testing.assert_allclose(fixed.theta, [3.0, 0.0], atol=1e-12)
    with pytest.raises(mestim.DataError, match=r"MAD of the residuals .*e-1\d\), so the residual scale is 0"):
        mestim.fit([est.robust_regression("rr", "y", ["x"])], {"x": x, "y": 1.0 + 2.0 * x})  # rounding, not 0
