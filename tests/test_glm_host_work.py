"""A registered GLM block's host work (issue 19): the user's columns are not copied, a large fit's starting values
come from a sample of its rows, and neither changes the answer."""

import pathlib
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import mestim  # noqa: E402
import statsmodels.api as sm  # noqa: E402
from benchmarks.workloads import XCOLS, pooled_data  # noqa: E402
from estimators import generalized_linear as gl  # noqa: E402
from estimators import glm, logistic  # noqa: E402
from mestim import estimate, sources  # noqa: E402
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
    to 1e-10, no more Newton iterations (a logistic start is Newton's on the sample: fewer)."""
    cols = pooled_data(40_000)
    cols["Y"] = np.where(cols["R"] > 0, np.abs(cols["Y"]) + 1.0, np.nan)
    monkeypatch.setattr(gl, "START_ROWS", 4_096)
    sampled = mestim.fit([block], cols)
    monkeypatch.setattr(gl, "START_ROWS", 10**9)
    every = mestim.fit([block], cols)
    assert sampled.iterations <= every.iterations
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


def _fit_counting_passes(monkeypatch, blocks, cols):
    """(the Result, the passes its row source made over every row)."""
    made = []
    monkeypatch.setattr(estimate, "InMemory", lambda *a, **k: made.append(sources.InMemory(*a, **k)) or made[-1])
    res = mestim.fit(blocks, cols)
    return res, made[0].passes


def test_large_logistic_fit_starts_from_newton_on_the_sample(monkeypatch):
    """Above START_ROWS rows a logistic start is Newton's on NEWTON_ROWS drawn rows: fewer passes over every row than
    from the least-squares start (4 Jacobian passes, the last with the meat, instead of 5 here), the same θ̂ and SE as
    statsmodels GLM Binomial (HC0) to 1e-10, and bitwise the same result on a second run."""
    cols = pooled_data(80_000)
    assert 80_000 > gl.START_ROWS
    fast, fast_passes = _fit_counting_passes(monkeypatch, [logistic("m", "Yb", XCOLS)], cols)
    again, _ = _fit_counting_passes(monkeypatch, [logistic("m", "Yb", XCOLS)], cols)
    monkeypatch.setattr(gl, "START_STEPS", 0)  # the least-squares start
    slow, slow_passes = _fit_counting_passes(monkeypatch, [logistic("m", "Yb", XCOLS)], cols)
    assert (fast_passes, slow_passes) == (4, 5)
    assert fast.theta.tobytes() == again.theta.tobytes() and fast.se.tobytes() == again.se.tobytes()
    np.testing.assert_allclose(fast.theta, slow.theta, rtol=0, atol=1e-12)
    X = np.column_stack([np.ones(80_000)] + [cols[c] for c in XCOLS])
    ref = sm.GLM(cols["Yb"], X, family=sm.families.Binomial()).fit(cov_type="HC0", tol=1e-15, maxiter=100)
    np.testing.assert_allclose(fast.theta, ref.params, rtol=1e-10)
    np.testing.assert_allclose(fast.se, ref.bse, rtol=1e-10)


def test_sample_newton_falls_back_to_its_start_where_the_sample_is_separated():
    """A separated sample has no MLE (Newton's β grows without end): the least-squares start is kept, silently; on
    a sample with an MLE, Newton stops within START_TOL of it (statsmodels' fit of the sample)."""
    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(4_000), rng.normal(size=4_000)])
    score = logistic("m", "y", ["x"]).psi
    start = np.array([0.1, 0.2])
    zeros = np.zeros(4_000)
    separated = (x[:, 1] > 0).astype(float)
    assert gl.sample_newton(score, x, separated, zeros, zeros + 1, start) is start
    y = (rng.random(4_000) < 1 / (1 + np.exp(-x[:, 1]))).astype(float)
    beta = gl.sample_newton(score, x, y, zeros, zeros + 1, start)
    mle = sm.GLM(y, x, family=sm.families.Binomial()).fit(tol=1e-15).params
    assert np.max(np.abs(beta - mle)) < gl.START_TOL**2


def test_the_device_shares_the_prepared_columns(monkeypatch):
    """On a CPU the design, the block's columns and the weights are placed without a copy: they are allocated
    64-byte aligned (mestim.data.aligned_empty), which XLA's CPU client shares instead of copying (a copy of a
    10⁶-row design held up the first pass 40–50 ms); a padded last slab is aligned too."""
    if jax.default_backend() != "cpu":
        pytest.skip("host memory is shared with a CPU device only")
    problems, made = [], []
    monkeypatch.setattr(estimate, "prepare", lambda *a, **k: problems.append(prepare(*a, **k)) or problems[-1])
    monkeypatch.setattr(estimate, "InMemory", lambda *a, **k: made.append(sources.InMemory(*a, **k)) or made[-1])
    mestim.fit([logistic("m", "Yb", XCOLS)], pooled_data(20_000), chunk_size=256)
    (full, w_full, _), (padded, w_padded, _) = made[0]._slabs  # 79 chunks: a slab of 64 and a padded one
    assert set(full) == {"m.X", "m.y", "m.mask", "m.offset"}
    for name, host in problems[0].used.items():
        assert full[name].unsafe_buffer_pointer() == host.ctypes.data, name
    assert w_full.unsafe_buffer_pointer() == problems[0].w.ctypes.data
    assert all(a.unsafe_buffer_pointer() % 64 == 0 for a in [*padded.values(), w_padded])


def _centre_x1(theta, row):
    return row["x1"][None] - theta


def test_strided_columns_are_laid_out_aligned_and_shared(monkeypatch):
    """A user's columns that are columns of a 2-D array (strided) reach a CPU device as one aligned host copy per
    full slab, which the device shares (XLA's CPU client copies a strided column 1.6× slower than numpy); contiguous
    aligned columns stay views. The fit equals the one from contiguous columns bitwise."""
    if jax.default_backend() != "cpu":
        pytest.skip("host memory is shared with a CPU device only")
    made = []
    monkeypatch.setattr(estimate, "InMemory", lambda *a, **k: made.append(sources.InMemory(*a, **k)) or made[-1])
    data = pooled_data(20_000)
    assert not data["x1"].flags.c_contiguous  # columns of the generator's (n, 10) array
    strided = mestim.fit(_centre_x1, data, init=[0.0], chunk_size=256)
    (full, w_full, _), _ = made[0]._host  # 79 chunks of 256: a full slab of 64 and a padded one
    assert full["x1"].flags.c_contiguous and full["x1"].ctypes.data % 64 == 0
    assert not np.shares_memory(full["x1"], data["x1"]) and w_full.ctypes.data % 64 == 0
    device = made[0]._slabs[0][0]["x1"]
    assert device.unsafe_buffer_pointer() == full["x1"].ctypes.data  # shared, not copied
    contiguous = {k: np.ascontiguousarray(v) for k, v in data.items()}
    again = mestim.fit(_centre_x1, contiguous, init=[0.0], chunk_size=256)
    np.testing.assert_array_equal(strided.theta, again.theta)
    np.testing.assert_array_equal(strided.vcov, again.vcov)
