"""Descriptive blocks (estimators.descriptive): the geometric mean against delicatessen's ee_mean_geometric in
exact-derivative mode and its closed form; smoothed percentiles and the positive mean deviation against the roots
of their smoothed equations (scipy's brentq) and the sandwich written out with numpy."""

import numpy as np
import pytest
from delicatessen import MEstimator
from delicatessen.estimating_equations import ee_mean_geometric
from scipy.optimize import brentq
from scipy.stats import norm

import estimators as est
import mestim
from mestim.errors import DataError, SpecificationError

RTOL_THETA, RTOL_SE = 1e-6, 1e-5


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return {"y": rng.lognormal(0.3, 0.8, 300), "w": rng.integers(1, 4, 300) * 1.0}


@pytest.mark.parametrize("weighted", [False, True])
def test_geometric_mean_matches_delicatessen_and_closed_form(data, weighted):
    w = data["w"] if weighted else np.ones(300)
    res = mestim.fit(est.geometric_mean("gm", "y", weights="w" if weighted else None), data)
    ref = MEstimator(lambda theta: ee_mean_geometric(theta, y=data["y"], weights=w), init=[1.0])
    ref.estimate(deriv_method="exact", tolerance=1e-13)
    np.testing.assert_allclose(res.theta, ref.theta, rtol=RTOL_THETA)
    np.testing.assert_allclose(res.se, np.sqrt(np.diag(ref.variance)), rtol=RTOL_SE)
    log_y = np.log(data["y"])
    gm = np.exp(np.average(log_y, weights=w))  # closed form; sandwich θ² Σ w²(log y − log θ)² / (Σ w)²
    np.testing.assert_allclose(res.theta, [gm], rtol=1e-12)
    np.testing.assert_allclose(res.se, [gm * np.sqrt(np.sum(w**2 * (log_y - np.log(gm)) ** 2)) / w.sum()],
                               rtol=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
def test_smoothed_percentiles_solve_the_smoothed_equations(data, weighted):
    h, qs = 0.15, (0.25, 0.5, 0.9)
    y, w = data["y"], (data["w"] if weighted else np.ones(300))
    res = mestim.fit(est.percentile("q", "y", qs, smooth=h, weights="w" if weighted else None), data)
    for k, q in enumerate(qs):
        root = brentq(lambda t: np.sum(w * (q - norm.cdf((t - y) / h))), y.min() - 1, y.max() + 1, xtol=1e-14)
        np.testing.assert_allclose(res.theta[k], root, rtol=RTOL_THETA)
    # the sandwich: A = Σ w φ(d/h)/h per percentile (diagonal), B = Σ w² ψ ψᵀ
    psi = w[:, None] * (np.asarray(qs) - norm.cdf((res.theta[None, :] - y[:, None]) / h))
    bread = np.sum(w[:, None] * norm.pdf((res.theta[None, :] - y[:, None]) / h) / h, axis=0)
    cov = (psi.T @ psi) / np.outer(bread, bread)
    np.testing.assert_allclose(res.vcov, cov, rtol=RTOL_SE)
    assert res.labels == ("q(0.25)", "q(0.5)", "q(0.9)")


def test_positive_mean_deviation_solves_the_smoothed_equations(data):
    h, y = 0.1, data["y"]
    res = mestim.fit(est.positive_mean_deviation("pmd", "y", smooth=h), data)
    median = brentq(lambda t: np.sum(0.5 - norm.cdf((t - y) / h)), y.min(), y.max(), xtol=1e-14)
    d = y - median
    pmd = np.mean(2 * d * norm.cdf(d / h))
    np.testing.assert_allclose(res.theta, [pmd, median], rtol=RTOL_THETA)
    psi = np.column_stack([2 * d * norm.cdf(d / h) - pmd, 0.5 - norm.cdf(-d / h)])
    jac = np.array([[-y.size, np.sum(-2 * norm.cdf(d / h) - 2 * d * norm.pdf(d / h) / h)],
                    [0.0, -np.sum(norm.pdf(d / h) / h)]])
    inv = np.linalg.inv(jac)
    np.testing.assert_allclose(res.vcov, inv @ (psi.T @ psi) @ inv.T, rtol=RTOL_SE)


def test_automatic_bandwidth_is_reported_and_reproducible(data):
    res = mestim.fit(est.percentile("q", "y", 0.5), data)
    note = next(n for n in res.notes if "smooth='auto'" in n)
    h = float(note.split("h = ")[1].split()[0])
    again = mestim.fit(est.percentile("q", "y", 0.5, smooth=h), data)
    np.testing.assert_allclose(again.theta, res.theta, rtol=1e-12)
    assert abs(res.theta[0] - np.median(data["y"])) < 0.05


def test_descriptive_options_and_data_are_checked(data):
    with pytest.raises(SpecificationError, match=r"q=50: give a number in \(0.0, 1.0\)"):
        est.percentile("q", "y", 50)
    with pytest.raises(SpecificationError, match="smooth='none'"):
        est.percentile("q", "y", 0.5, smooth="none")
    with pytest.raises(SpecificationError, match=r"smooth=0: give a number in \(0.0"):
        est.positive_mean_deviation("p", "y", smooth=0)
    with pytest.raises(DataError, match="needs positive values"):
        mestim.fit(est.geometric_mean("gm", "y"), {"y": data["y"] - 1})
