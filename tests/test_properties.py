"""Property tests (hypothesis): on random well-posed problems the sandwich equals its closed form."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import estimators as est
import mestim

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.sampled_from([60, 250]))  # a few shapes: each new shape is a new compilation
    k = draw(st.sampled_from([1, 3]))
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k)) * draw(st.floats(0.1, 5.0))
    beta = rng.normal(size=k + 1) * 0.5
    return rng, X, beta


def _separated(Z, y) -> bool:
    """Quasi-complete separation, by a linear program written here: some β has (2y − 1) zᵢᵀβ ≥ 0 on every row and
    Σᵢ (2yᵢ − 1) zᵢᵀβ = 1."""
    from scipy.optimize import linprog

    a = (2 * y - 1)[:, None] * Z
    lp = linprog(np.zeros(Z.shape[1]), A_ub=-a, b_ub=np.zeros(len(y)), A_eq=a.sum(0)[None], b_eq=[1.0],
                 bounds=(None, None))
    return lp.status == 0


def test_separated_is_a_separation_check():
    z = np.column_stack([np.ones(6), np.arange(6.0)])
    assert _separated(z, np.array([0, 0, 0, 1, 1, 1.0])) and not _separated(z, np.array([0, 1, 0, 1, 0, 1.0]))


def _cols(X, y):
    d = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    d["y"] = y
    return d, [f"x{j}" for j in range(X.shape[1])]


@SETTINGS
@given(problems())
def test_linear_sandwich_is_hc0_closed_form(problem):
    rng, X, beta = problem
    y = beta[0] + X @ beta[1:] + rng.standard_t(5, size=len(X))
    d, names = _cols(X, y)
    res = mestim.fit([est.linear("ols", "y", names)], d)
    Z = np.column_stack([np.ones(len(X)), X])
    b = np.linalg.lstsq(Z, y, rcond=None)[0]
    e = y - Z @ b
    inv = np.linalg.inv(Z.T @ Z)
    np.testing.assert_allclose(res.theta, b, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.vcov, inv @ (Z.T * e**2) @ Z @ inv, rtol=1e-7, atol=1e-14)


@SETTINGS
@given(problems())
def test_logistic_sandwich_is_closed_form_at_the_mle(problem):
    rng, X, beta = problem
    Z = np.column_stack([np.ones(len(X)), X])
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-np.clip(Z @ beta, -4, 4)))).astype(float)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    d, names = _cols(X, y)
    try:
        res = mestim.fit([est.logistic("lg", "y", names)], d)
    except mestim.SeparationError:  # small random samples can be separated: reported, as it must be
        assert _separated(Z, y)  # (it returned before: any SeparationError passed)
        return
    p = 1 / (1 + np.exp(-(Z @ res.theta)))
    np.testing.assert_allclose(Z.T @ (y - p), 0, atol=1e-8 * len(y))
    A = (Z.T * (p * (1 - p))) @ Z
    M = (Z.T * (y - p) ** 2) @ Z
    inv = np.linalg.inv(A)
    np.testing.assert_allclose(res.vcov, inv @ M @ inv, rtol=1e-6, atol=1e-12)
