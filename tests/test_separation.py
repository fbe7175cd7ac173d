"""Separation decided by Konis' linear program (estimators.separation), not by fitted probabilities of 0 or 1."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.special import expit

import estimators as est
import mestim
from estimators.separation import separation
from mestim.errors import SeparationError


@pytest.fixture(scope="module")
def wide_range():
    """The MLE exists (the classes overlap for |x| < 4) but x spans ±30, so about 30 rows are fitted with
    |xᵀβ| > 20 — what the old rule refused as quasi-complete separation."""
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-30, -4, 30), rng.normal(0, 1.5, 150), np.linspace(4, 30, 30)])
    return pd.DataFrame({"x": x, "g": rng.binomial(1, 0.5, x.size) * 1.0,
                         "y": (rng.random(x.size) < expit(1.5 * x)) * 1.0})


def test_extreme_fitted_probabilities_without_separation_are_accepted(wide_range):
    df = wide_range
    res = mestim.fit([est.logistic("lg", "y", ["x", "g"])], df)
    X = sm.add_constant(df[["x", "g"]]).values
    eta = X @ res.theta
    assert (np.abs(eta) > 20).sum() >= 20 and not res.warnings
    ref = sm.GLM(df.y, X, family=sm.families.Binomial()).fit(tol=1e-14)
    np.testing.assert_allclose(res.theta, ref.params, rtol=1e-6)
    # statsmodels' HC0 is NaN here (its variance weights underflow); the closed-form sandwich of the score:
    p, q = expit(eta), expit(-eta)
    bread = X.T @ (X * (p * q)[:, None])
    meat = X.T @ (X * ((df.y.values - p) ** 2)[:, None])
    vcov = np.linalg.solve(bread, np.linalg.solve(bread, meat).T)
    np.testing.assert_allclose(res.se, np.sqrt(np.diag(vcov)), rtol=1e-9)
    assert separation(X, df.y.values.astype(int), 2) is None


def test_probit_link_with_extreme_fitted_values_is_accepted(wide_range):
    res = mestim.fit([est.glm("pr", "y", ["x", "g"], family="binomial", link="probit")], wide_range.iloc[20:190])
    sub = wide_range.iloc[20:190]
    ref = sm.GLM(sub.y, sm.add_constant(sub[["x", "g"]]),
                 family=sm.families.Binomial(link=sm.families.links.Probit())).fit(tol=1e-14)
    np.testing.assert_allclose(res.theta, ref.params.values, rtol=1e-6)


def test_complete_separation_is_refused():
    x = np.linspace(-1, 1, 40)
    with pytest.raises(SeparationError, match=r"perfectly separated .*estimates of \['\(Intercept\)', 'x'\]|"
                                              r"perfectly separated .*estimates of \['x'\]"):
        mestim.fit([est.logistic("lg", "y", ["x"])], {"x": x, "y": (x > 0) * 1.0})


def test_quasi_complete_separation_names_the_covariate_and_rows():
    """An indicator g with y = 1 on every row where g = 1: the g coefficient runs off to +∞."""
    rng = np.random.default_rng(0)
    n = 200
    x, g = rng.normal(size=n), (rng.random(n) < 0.1) * 1.0
    y = (rng.random(n) < expit(x)) * 1.0
    y[g == 1] = 1.0
    with pytest.raises(SeparationError, match=rf"quasi-complete separation: {int(g.sum())} of {n} rows \(data rows "
                                              rf"{np.flatnonzero(g)[0]}, .*estimates of \['g'\] run off"):
        mestim.fit([est.logistic("lg", "y", ["x", "g"])], {"x": x, "g": g, "y": y})


def test_quasi_separation_in_a_masked_probit_block():
    """Rows outside the mask do not count; data row numbers refer to the whole table."""
    rng = np.random.default_rng(2)
    n = 300
    x, g = rng.normal(size=n), (rng.random(n) < 0.1) * 1.0
    y = (rng.random(n) < expit(x)) * 1.0
    keep = np.arange(n) >= 100
    y[(g == 1) & keep] = 0.0
    first = np.flatnonzero((g == 1) & keep)[0]
    with pytest.raises(SeparationError, match=rf"binomial \(probit link\) MLE.*|data rows {first}"):
        mestim.fit([est.glm("pr", "y", ["x", "g"], family="binomial", link="probit", mask=keep)],
                   {"x": x, "g": g, "y": y})


def test_linear_program_on_textbook_cases():
    """Albert & Anderson's cases on one covariate: complete, quasi-complete (a tie at the boundary), overlap."""
    X = np.column_stack([np.ones(6), [1, 2, 3, 4, 5, 6.0]])
    complete = separation(X, np.array([0, 0, 0, 1, 1, 1]), 2)
    assert complete is not None and complete[2] and complete[0].size == 6
    Xq = np.column_stack([np.ones(6), [1, 2, 3, 3, 4, 5.0]])
    quasi = separation(Xq, np.array([0, 0, 0, 1, 1, 1]), 2)
    assert quasi is not None and not quasi[2]
    assert set(quasi[0]) == {0, 1, 4, 5}  # the tied rows at x = 3 stay at probability ½
    assert separation(X, np.array([0, 1, 0, 1, 0, 1]), 2) is None
    # duplicated rows are solved once and mapped back
    rows = separation(np.repeat(X, 3, axis=0), np.repeat([0, 0, 0, 1, 1, 1], 3), 2)[0]
    assert rows.size == 18


def test_multinomial_separation_is_refused_and_overlap_accepted():
    rng = np.random.default_rng(4)
    n = 300
    x = rng.normal(size=n)
    eta = np.column_stack([np.zeros(n), 0.5 + x, -0.5 + 2 * x])
    c = np.array([rng.choice(3, p=np.exp(e) / np.exp(e).sum()) for e in eta]) * 1.0
    df = pd.DataFrame({"x": x, "c": c, "g": (rng.random(n) < 0.08) * 1.0})
    res = mestim.fit([est.multinomial("mn", "c", ["x", "g"])], df)
    ref = sm.MNLogit(df.c, sm.add_constant(df[["x", "g"]])).fit(disp=0, tol=1e-12, maxiter=200)
    np.testing.assert_allclose(res.theta, ref.params.values.T.ravel(), rtol=1e-6)
    sep = df.assign(c=np.where(df.g == 1, 2.0, df.c))  # class 2 whenever g = 1
    with pytest.raises(SeparationError, match=r"quasi-complete separation.*multinomial logistic MLE.*'2:g'"):
        mestim.fit([est.multinomial("mn", "c", ["x", "g"])], sep)
