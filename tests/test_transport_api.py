"""transport(): options, outputs, clear errors, the command line, and the large-sample behaviour."""

import json

import numpy as np
import pytest

from estimators.transport import bundled_truth, load_transport_sim, simulate_trials, transport
from mestim.errors import DataError, SpecificationError

COVS = ["X1", "X2", "X3"]


@pytest.fixture(scope="module")
def bundled():
    return load_transport_sim()


@pytest.fixture(scope="module")
def default_fit(bundled):
    return transport(bundled, covariates=COVS)


# ------------------------------------------------------------------------------------------- outputs
def test_a_second_transport_call_compiles_nothing(bundled, default_fit):
    """Every program of a transport call (the stack's, the positivity diagnostics') is reused by the next call."""
    import mestim

    with mestim.compilations() as count:
        transport(bundled, covariates=COVS)
    assert count.programs == 0


def test_bundled_default_table_and_tests(default_fit):
    res = default_fit
    t = res.table
    assert set(t.columns) >= {"estimator", "trial", "contrast", "estimate", "se", "ci_low", "ci_high"}
    assert set(t.estimator) == {"unadjusted", "outcome", "weighting", "dr", "pseudo_outcome"}
    assert set(t.trial) == {"1", "2", "3", "4", "pooled"}
    truth = bundled_truth()
    assert truth == pytest.approx(2.8)
    for e in ("outcome", "weighting", "dr", "pseudo_outcome"):
        row = res.estimate(e, "pooled")
        assert row.ci_low < truth < row.ci_high, e
    # homogeneity tests of transported effects: m − 1 df; the unadjusted (trial-specific) effects differ a lot
    for e in ("outcome", "weighting", "dr"):
        assert res.tests["homogeneity"][e]["1 vs 0"]["df"] == 3
        assert res.tests["homogeneity"][e]["1 vs 0"]["p_value"] > 0.01
    assert res.tests["homogeneity"]["unadjusted"]["1 vs 0"]["p_value"] < 1e-4
    assert res.tests["cate_equality"]["1 vs 0"]["df"] == 3 * 4
    assert "normalized" in res.settings["weighting"] and "[default]" in res.settings["weighting"]
    text = res.summary()
    for word in ("Outcome model", "Weighting", "Doubly robust", "pooled", "Participation model", "Treatment model"):
        assert word in text
    # each homogeneity test is the Wald χ² of the per-trial estimates with their joint covariance, written here
    # independently: contrasts against trial 1 (the library uses successive differences: the same χ²), a solve,
    # scipy's χ² tail
    from scipy import stats

    for e in ("unadjusted", "outcome", "weighting", "dr"):
        idx = [i for i, lab in enumerate(res.estimates.labels) if lab.startswith(f"{e}|") and "|pooled|" not in lab]
        assert len(idx) == 4
        theta, v = res.estimates.theta[idx], res.estimates.vcov[np.ix_(idx, idx)]
        c = np.column_stack([-np.ones(3), np.eye(3)])
        d = c @ theta
        chi2 = d @ np.linalg.solve(c @ v @ c.T, d)
        test = res.homogeneity_test(e)
        assert test.statistic == pytest.approx(chi2, rel=1e-10)
        assert test.df == 3 and test.p_value == pytest.approx(stats.chi2.sf(chi2, 3), rel=1e-10)


def test_json_and_plot(default_fit, tmp_path):
    out = default_fit.to_json(str(tmp_path / "o.json"))
    d = json.loads(out)
    assert set(d) >= {"estimates", "tests"}
    first = d["estimates"][0]
    assert set(first) >= {"estimator", "trial", "contrast", "estimate", "se", "ci_low", "ci_high"}
    assert any(r["trial"] == "pooled" for r in d["estimates"])
    default_fit.plot(str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_blockwise_and_joint_solutions_agree():
    """The engine's default level-by-level Newton and one joint Newton give the same root and covariance."""
    sim = simulate_trials(n_trials=2, n_per_trial=150, n_target=200, seed=3)
    kw = dict(covariates=["X1", "X2"], estimators=["weighting", "dr"], per_trial=False)
    a = transport(sim.data, **kw)
    b = transport(sim.data, **kw, solve="joint")
    np.testing.assert_allclose(a.fit.theta, b.fit.theta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a.fit.vcov, b.fit.vcov, rtol=1e-7, atol=1e-14)


# ------------------------------------------------------------------------------------------- options
def test_binary_outcome_ratios_target_only_and_sensitivity():
    sim = simulate_trials(n_trials=3, n_per_trial=300, n_target=600, seed=5, binary=True, target_has_outcome=True)
    res = transport(sim.data, covariates=COVS, bias="X1", bias_grid=[-0.1, 0.0, 0.1])
    t = res.table
    assert {"difference", "risk ratio", "odds ratio"} <= set(t.scale)
    assert "target_only" in set(t.estimator)
    assert "logistic" in res.settings["outcome_model"]
    dr = res.estimate("dr", "pooled")
    rr = res.estimate("dr", "pooled", scale="risk ratio")
    mu1 = res.fit["dr_pooled:mu[Z=1]"][0]
    mu0 = res.fit["dr_pooled:mu[Z=0]"][0]
    assert dr.estimate == pytest.approx(mu1 - mu0)
    assert rr.estimate == pytest.approx(mu1 / mu0)
    assert rr.ci_low < rr.estimate < rr.ci_high
    # sensitivity: δ = 0 reproduces the estimate; δ shifts it by δ·mean_{S=0}(X1)
    s = res.sensitivity
    at0 = s[(s.estimator == "dr") & (s.trial == "pooled") & (s.delta == 0.0)].iloc[0]
    assert at0.estimate == pytest.approx(dr.estimate) and at0.se == pytest.approx(dr.se)
    at1 = s[(s.estimator == "dr") & (s.trial == "pooled") & (s.delta == 0.1)].iloc[0]
    x1bar = sim.data.X1[sim.data.S == 0].mean()
    assert at1.estimate == pytest.approx(dr.estimate + 0.1 * x1bar)
    # binary outcome with trial effects in a logistic pooled model is refused
    with pytest.raises(SpecificationError, match="trial main effects"):
        transport(sim.data, covariates=COVS, trial_effects=True)


def test_multivalued_treatment_any_pair():
    sim = simulate_trials(n_trials=3, n_per_trial=400, n_target=600, seed=9, n_arms=3)
    res = transport(sim.data, covariates=COVS, contrasts=[(2, 0), (2, 1)], per_trial=False,
                    estimators=["outcome", "weighting", "dr", "pseudo_outcome"])
    assert set(res.table.contrast) == {"2 vs 0", "2 vs 1"}
    for contrast, truth in (("2 vs 0", sim.true_effects[(2, 0)]), ("2 vs 1", sim.true_effects[(2, 1)])):
        for e in ("outcome", "dr", "pseudo_outcome", "weighting"):
            row = res.estimate(e, "pooled", contrast)
            assert abs(row.estimate - truth) < 4 * row.se, (e, contrast)


def test_participation_and_treatment_options_are_named():
    sim = simulate_trials(n_trials=2, n_per_trial=200, n_target=300, seed=4)
    res = transport(sim.data, covariates=["X1", "X2"], participation="multinomial", treatment_model="per_trial",
                    estimators=["weighting"], weighting="unnormalized")
    assert "multinomial" in res.settings["participation_model"]
    assert "separate" in res.settings["treatment_model"]
    assert "unnormalized" in res.settings["weighting"]
    assert "participation_multinomial" in res.fit.blocks and "treatment_s2" in res.fit.blocks


def test_nonadherence_per_protocol():
    sim = simulate_trials(n_trials=3, n_per_trial=700, n_target=800, seed=21, nonadherence=True)
    res = transport(sim.data, covariates=COVS, received="A", post_covariates=["L"])
    assert "per-protocol" in res.settings["estimand"]
    assert {"adherence_z0", "adherence_z1"} <= set(res.fit.blocks)
    for e in ("outcome", "weighting", "dr", "pseudo_outcome"):
        row = res.estimate(e, "pooled")
        assert abs(row.estimate - sim.true_effect) < 4 * row.se, e
    with pytest.raises(SpecificationError, match="per-protocol"):
        transport(sim.data, covariates=COVS, received="A", post_covariates=["L"], estimators=["target_only"])


# ------------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def tiny():
    return simulate_trials(n_trials=2, n_per_trial=60, n_target=80, seed=1).data


def test_error_target_label_absent(tiny):
    with pytest.raises(DataError, match="target label '9' does not occur"):
        transport(tiny, covariates=COVS, target=9)


def test_error_trial_with_one_arm(tiny):
    df = tiny.copy()
    df.loc[df.S == 2, "Z"] = 1.0
    with pytest.raises(DataError, match="trial S=2 has one arm only"):
        transport(df, covariates=COVS)


def test_error_logistic_on_continuous_outcome(tiny):
    with pytest.raises(DataError, match="logistic outcome model.*besides 0/1"):
        transport(tiny, covariates=COVS, outcome_model="logistic")


def test_error_covariate_missing_in_target(tiny):
    df = tiny.copy()
    df.loc[df.index[:3], "X2"] = np.nan  # the first rows are the target sample
    with pytest.raises(DataError, match="covariate 'X2' is missing .* 3 row\\(s\\) of the target sample"):
        transport(df, covariates=COVS)


def test_error_nan_in_trial_rows(tiny):
    df = tiny.copy()
    df.loc[df.index[df.S == 1][0], "Y"] = np.nan
    with pytest.raises(DataError, match="'Y' has 1 NaN"):
        transport(df, covariates=COVS)


def test_error_missing_columns_and_options(tiny):
    with pytest.raises(DataError, match="covariate\\(s\\) \\['X9'\\]"):
        transport(tiny, covariates=["X1", "X9"])
    with pytest.raises(DataError, match="treatment column 'T'"):
        transport(tiny, treatment="T", covariates=COVS)
    with pytest.raises(SpecificationError, match="unknown estimator"):
        transport(tiny, covariates=COVS, estimators=["magic"])
    with pytest.raises(SpecificationError, match="treatment_probabilities"):
        transport(tiny, covariates=COVS, treatment_model="known")
    with pytest.raises(DataError, match="target_only"):
        transport(tiny, covariates=COVS, estimators=["target_only"])


def test_nan_in_target_outcome_is_masked_not_multiplied():
    """Target rows with NaN Z/Y give the same answer as the same rows with any finite Z/Y values."""
    sim = simulate_trials(n_trials=2, n_per_trial=100, n_target=100, seed=2)
    kw = dict(covariates=["X1"], estimators=["dr"], per_trial=False)
    a = transport(sim.data, **kw)
    df = sim.data.copy()
    df.loc[df.S == 0, "Z"] = 7.0  # not an arm of the trials: ignored
    df.loc[df.S == 0, "Y"] = 1e6
    b = transport(df, **kw)
    np.testing.assert_allclose(a.fit.theta, b.fit.theta, rtol=1e-12)
    assert np.all(np.isfinite(a.fit.vcov))


# ------------------------------------------------------------------------------------------- command line
def test_cli_default_run_json_plot(tmp_path, capsys):
    from estimators.cli import main

    rc = main(["transport", "--json", str(tmp_path / "o.json"), "--plot", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "bundled simulated data" in out and "Doubly robust" in out and "Homogeneity" in out
    d = json.loads((tmp_path / "o.json").read_text())
    assert {"estimates", "tests"} <= set(d)
    assert (tmp_path / "o.png").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from estimators.cli import main

    path = tmp_path / "d.csv"
    simulate_trials(n_trials=2, n_per_trial=60, n_target=80, seed=1).data.to_csv(path, index=False)
    rc = main(["transport", str(path), "--covariates", "X1,X2", "--target", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and "target label '5'" in err and err.count("\n") == 1
    rc = main(["transport", str(tmp_path / "missing.csv"), "--covariates", "X1"])
    assert rc == 2


# ------------------------------------------------------------------------------------------- large samples
def _quadratic_cate_trials(n, seed):
    """Two trials (X1 ~ N(0, 1), N(−0.5, 1)) and a target (X1 ~ N(1, 1)); Y = 1 + X1 + X2 + Z(1 + X1²) + ε.
    X | S is normal with a common variance, so the logistic participation models are right; the linear outcome
    models are wrong: their CATE extrapolates X1² linearly, off by −(μ₀ − μ_s)² at the target (−1 and −2.25).
    The truth is E[1 + X1² | S=0] = 3."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frames = []
    for s, mu in ((0, 1.0), (1, 0.0), (2, -0.5)):
        x1, x2, z = rng.normal(mu, 1, n), rng.normal(size=n), (rng.random(n) < 0.5) * 1.0
        y = 1 + x1 + x2 + z * (1 + x1**2) + rng.normal(size=n)
        if s == 0:
            z, y = np.full(n, np.nan), np.full(n, np.nan)
        frames.append(pd.DataFrame({"S": s, "Z": z, "Y": y, "X1": x1, "X2": x2}))
    return pd.concat(frames, ignore_index=True)


def test_doubly_robust_when_the_outcome_model_is_wrong():
    """Wrong outcome model, right participation and treatment models (one sample, n = 2000 per source, fixed seed):
    the outcome-model estimator misses the truth 3 by more than 8 SE (the misspecification bites), weighting and
    doubly robust find it within 4 SE."""
    res = transport(_quadratic_cate_trials(2000, seed=1), covariates=["X1", "X2"], per_trial=False,
                    estimators=["outcome", "weighting", "dr"])
    z = {e: (res.estimate(e, "pooled").estimate - 3.0) / res.estimate(e, "pooled").se
         for e in ("outcome", "weighting", "dr")}
    assert z["outcome"] < -8, z
    assert abs(z["weighting"]) < 4 and abs(z["dr"]) < 4, z


@pytest.mark.parametrize("misspecify", [None, "participation"])
def test_recovers_truth_on_large_data(misspecify):
    """Large n (4 × 5000 trial rows, 20,000 target rows, one fixed sample): correctly specified estimators recover
    the truth within 4 SE; with the participation model wrong (σ differs between sources), weighting misses it by
    more than 3 SE and the outcome-model and doubly robust estimators still find it."""
    sim = simulate_trials(n_trials=4, n_per_trial=5000, n_target=20000, seed=100, misspecify=misspecify)
    res = transport(sim.data, covariates=COVS, participation="multinomial", per_trial=False)
    right = {None: ["outcome", "weighting", "dr", "pseudo_outcome"], "participation": ["outcome", "dr"]}[misspecify]
    for e in right:
        row = res.estimate(e, "pooled")
        assert abs(row.estimate - sim.true_effect) < 4 * row.se, (e, row.estimate, sim.true_effect)
    if misspecify:
        row = res.estimate("weighting", "pooled")
        assert abs(row.estimate - sim.true_effect) > 3 * row.se, (row.estimate, row.se, sim.true_effect)
