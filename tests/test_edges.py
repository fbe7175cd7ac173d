"""Edges are errors or warnings, never a silent number (issue 15): too few rows for a model's parameters, a zero
standard error, numpy's own warnings."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import estimators as est
import mestim
from estimators.transport import simulate_trials, transport
from mestim.errors import DataError, MestimWarning

COVS = ["X1", "X2", "X3"]


def test_a_model_with_as_many_rows_as_parameters_is_refused():
    """A 2-row linear model fitted both rows exactly: SE 0, z = inf, p = NaN and a numpy divide-by-zero warning."""
    d = {"y": np.array([1.0, 2.0]), "x": np.array([0.0, 1.0])}
    with pytest.raises(DataError, match=r"block 'lm' has 2 rows? .*2 parameters.*more rows"):
        mestim.fit([est.linear("lm", "y", ["x"])], d)
    with pytest.raises(DataError, match="2 rows? .*2 parameters"):
        mestim.fit(lambda t, r: jnp.array([r["y"] - t[0] - t[1] * r["x"], (r["y"] - t[0] - t[1] * r["x"]) * r["x"]]),
                   d, init=[0.0, 0.0])


def test_a_masked_block_and_zero_weight_rows_count_only_the_rows_it_uses():
    rng = np.random.default_rng(0)
    d = {"y": rng.normal(size=40), "x": rng.normal(size=40), "z": rng.normal(size=40),
         "g": (np.arange(40) < 3).astype(float)}
    with pytest.raises(DataError, match=r"block 'few' has 3 rows? .*3 parameters"):
        mestim.fit([est.linear("few", "y", ["x", "z"], mask="g"), est.linear("all", "y", ["x"])], d)
    w = np.where(np.arange(40) < 2, 1.0, 0.0)  # two rows with weight: a 2-parameter model has nothing left over
    with pytest.raises(DataError, match="2 rows? with positive weight"):
        mestim.fit([est.linear("lm", "y", ["x"])], d, weights=w)


def test_a_downstream_block_may_use_one_row():
    """A block that reads another (a prediction at one covariate profile) takes its variance from upstream: it
    is not refused."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    d = {"y": 1 + x + rng.normal(size=50), "x": x, "at": (np.arange(50) == 0).astype(float)}
    pred = mestim.Block("pred", lambda mu, r, lm: jnp.array([r["at"] * (lm[0] + lm[1] * r["x"] - mu[0])]),
                        init=[0.0], reads=("lm",))
    res = mestim.fit([est.linear("lm", "y", ["x"]), pred], d)
    assert res.se[-1] > 0


def test_a_zero_standard_error_is_reported_with_a_warning_and_no_numpy_warning():
    d = {"y": np.full(10, 3.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's divide-by-zero / invalid value must not leak
        with pytest.warns(MestimWarning, match=r"standard error of \['0'\] is zero"):
            res = mestim.fit(lambda t, r: jnp.array([r["y"] - t[0]]), d, init=[0.0])
        assert res.se[0] == 0 and np.isnan(res.z[0]) and np.isnan(res.p_values[0])
        res.summary()
        res.table()
    assert any("is zero" in w for w in res.warnings)


def _small_arm(rows=4):
    """Three trials; trial 2's arm Z=1 cut to ``rows`` rows (3 covariates: 4 parameters per arm)."""
    d = simulate_trials(n_trials=3, n_per_trial=200, n_target=400, seed=11).data
    arm = np.flatnonzero((d["S"] == 2).to_numpy() & (d["Z"] == 1).to_numpy())
    return d.drop(index=d.index[arm[rows:]]).reset_index(drop=True)


@pytest.mark.parametrize("rows", [4, 3])
def test_a_trial_arm_with_too_few_rows_names_the_trial_the_arm_and_what_to_do(rows):
    """With 4 rows for 4 parameters the outcome model fitted the arm exactly: a transported effect of 19.9
    (19.1, 20.6) where the other trials gave ≈ 1.6, and a homogeneity χ² of 3802; with 3 rows: 'bread is
    singular … look for a constant or collinear covariate'."""
    d = _small_arm(rows)
    with pytest.raises(DataError, match=rf"trial S=2, arm Z=1 has {rows} rows? for the 4 parameters of its outcome "
                                        r"model.*drop trial S=2.*per_trial=False.*--pooled-only"):
        transport(d, covariates=COVS)
    res = transport(d, covariates=COVS, per_trial=False)  # what the message offers works
    assert np.all(res.table["se"] > 0)


def test_the_cli_names_the_arm(tmp_path, capsys):
    from estimators.cli import main

    path = tmp_path / "d.csv"
    _small_arm(4).to_csv(path, index=False)
    assert main(["transport", str(path), "--covariates", ",".join(COVS)]) == 2
    assert "trial S=2, arm Z=1 has 4 rows" in capsys.readouterr().err
    assert main(["transport", str(path), "--covariates", ",".join(COVS), "--pooled-only"]) == 0


def test_a_trial_arm_with_too_few_adherent_rows_is_refused_per_protocol():
    """Per protocol the inner outcome model is fitted to the adherent rows, with the post-randomisation covariate L
    among its regressors (5 parameters per arm)."""
    d = simulate_trials(n_trials=3, n_per_trial=200, n_target=400, seed=12, nonadherence=True).data
    arm = np.flatnonzero((d["S"] == 3).to_numpy() & (d["Z"] == 0).to_numpy() & (d["A"] == d["Z"]).to_numpy())
    d = d.drop(index=d.index[arm[5:]]).reset_index(drop=True)
    with pytest.raises(DataError, match=r"trial S=3, arm Z=0 has 5 rows for the 5 parameters of its outcome model "
                                        r"\(intercept and 4 covariate\(s\), adherent rows\)"):
        transport(d, covariates=COVS, received="A", post_covariates=["L"])
