"""A registered GLM block's host work (issue 19): the user's columns are not copied, a large fit's starting values
come from a sample of its rows, and neither changes the answer."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import mestim  # noqa: E402
from benchmarks.workloads import XCOLS, pooled_data  # noqa: E402
from estimators import generalized_linear as gl  # noqa: E402
from estimators import glm, logistic  # noqa: E402
from mestim.problem import prepare  # noqa: E402


def test_columns_are_the_users_own_memory_and_read_only():
    cols = pooled_data(2_000)
    problem = prepare([logistic("m", "Yb", XCOLS)], cols)
    assert np.shares_memory(problem.columns["x1"], cols["x1"])
    with pytest.raises(ValueError, match="read-only"):
        problem.columns["x1"][0] = 1.0
    assert cols["x1"].flags.writeable  # the user's array itself is untouched


def test_influence_refuses_data_edited_after_the_fit():
    """A Result reads the user's arrays without a copy: an array edited after the fit would silently give influence
    functions of other rows, so influence() names the column instead; unedited, φ averages to 0 at θ̂."""
    rng = np.random.default_rng(3)
    cols = {"x": rng.normal(size=200), "w": rng.uniform(0.5, 2, 200)}
    res = mestim.fit(lambda t, r: r["x"] - t[0], cols, init=[0.0], weights="w")
    assert abs(np.average(res.influence()[:, 0], weights=cols["w"])) < 1e-12
    kept = cols["x"][5]
    cols["x"][5] = kept + 1.0
    with pytest.raises(mestim.errors.DataError, match=r"\['x'\] changed after the fit"):
        res.influence()
    cols["x"][5] = kept
    cols["w"][0] = 3.0
    with pytest.raises(mestim.errors.DataError, match=r"\['weights'\] changed"):
        res.influence()


@pytest.mark.parametrize("block", [
    logistic("m", "Yb", XCOLS),
    logistic("m", "A", XCOLS, mask="R"),
    glm("m", "Y", XCOLS[:4], family="gaussian", link="log", mask="R"),
])
def test_sampled_starting_values_reach_the_same_root(block, monkeypatch):
    """Starting values from START_ROWS sampled rows (the default above it) and from every row: θ̂ and SEs equal
    to 1e-10, the same Newton iterations."""
    cols = pooled_data(40_000)
    cols["Y"] = np.where(cols["R"] > 0, np.abs(cols["Y"]) + 1.0, np.nan)
    monkeypatch.setattr(gl, "START_ROWS", 4_096)
    sampled = mestim.fit([block], cols)
    monkeypatch.setattr(gl, "START_ROWS", 10**9)
    every = mestim.fit([block], cols)
    assert sampled.iterations == every.iterations
    np.testing.assert_allclose(sampled.theta, every.theta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sampled.se, every.se, rtol=1e-10)


def test_the_linear_model_start_is_its_estimate():
    """gaussian–identity: the least-squares start is the estimate, from every row however many (no Newton step)."""
    m = np.ones(200_000, bool)
    assert gl.start_rows(m, exact=True) == slice(None)
    assert gl.start_rows(m, exact=False).size == gl.START_ROWS
    masked = m.copy()
    masked[::3] = False
    rows = gl.start_rows(masked, exact=False)
    assert masked[rows].all() and rows.size == gl.START_ROWS
