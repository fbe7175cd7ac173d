"""Positivity diagnostics of the transport weights; the stack built without fitting (transport_stack)."""

import json
import warnings

import numpy as np
import pytest
import statsmodels.api as sm

import mestim
from estimators.transport import simulate_trials, transport
from estimators.transport.api import transport_stack
from estimators.transport.diagnostics import ESS_FRACTION, MAX_SHARE

COVS = ["X1", "X2", "X3"]


@pytest.fixture(scope="module")
def small():
    sim = simulate_trials(n_trials=2, n_per_trial=[150, 200], n_target=300, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mestim.MestimWarning)
        res = transport(sim.data, covariates=COVS, estimators=["weighting"])
    return sim.data, res


def test_ess_and_max_share_match_numpy(small):
    """Weights rebuilt from statsmodels fits of the same working models; ESS and shares by plain numpy."""
    df, res = small
    X = sm.add_constant(df[COVS].to_numpy())
    trial = df.S.to_numpy() > 0
    D = (df.S.to_numpy() == 2).astype(float)[:, None]
    treat = sm.Logit(df.Z[trial].to_numpy(), np.column_stack([X[trial], D[trial]])).fit(disp=0)
    p1 = np.full(len(df), np.nan)
    p1[trial] = treat.predict(np.column_stack([X[trial], D[trial]]))
    z = df.Z.to_numpy()
    e = np.where(z == 1, p1, 1 - p1)
    pooled = sm.Logit((df.S == 0).to_numpy(float), X).fit(disp=0)
    groups = {"pooled": (trial, np.exp(X @ pooled.params))}
    for s in (1, 2):
        rows = (df.S == 0).to_numpy() | (df.S == s).to_numpy()
        part = sm.Logit((df.S[rows] == 0).to_numpy(float), X[rows]).fit(disp=0)
        groups[str(s)] = ((df.S == s).to_numpy(), np.exp(X @ part.params))
    diag = res.diagnostics
    assert set(diag.estimator) == {"weighting"} and len(diag) == 6
    for name, (member, odds) in groups.items():
        for arm in (0, 1):
            w = (odds / e)[member & (z == arm)]
            r = diag[(diag.trial == name) & (diag.arm == str(arm))].iloc[0]
            assert r.n == w.size
            np.testing.assert_allclose(r.ess, w.sum() ** 2 / (w ** 2).sum(), rtol=1e-6)
            np.testing.assert_allclose(r.max_share, w.max() / w.sum(), rtol=1e-6)
            np.testing.assert_allclose(r.top_weights, np.sort(w)[::-1][:5] / w.mean(), rtol=1e-6)
            assert r.flagged == (r.ess / r.n < ESS_FRACTION or r.max_share > MAX_SHARE)
    d = json.loads(res.to_json())
    assert len(d["diagnostics"]) == 6 and len(d["diagnostics"][0]["top_weights"]) == 5
    assert "Positivity" in res.summary()


def _poor_overlap():
    """Trial 2's covariates moved far from the target's: its inverse-odds weights concentrate on a few rows."""
    df = simulate_trials(n_trials=2, n_per_trial=200, n_target=400, seed=5).data
    df.loc[df.S == 2, "X1"] += 3.0
    return df


def test_poor_overlap_warns_naming_the_trial():
    df = _poor_overlap()
    with pytest.warns(mestim.MestimWarning, match=r"trial S=2, arm Z=\d .*effective sample size") as rec:
        res = transport(df, covariates=COVS, estimators=["weighting"], pooled=False)
    msgs = [str(w.message) for w in rec if "positivity" in str(w.message)]
    assert msgs and not any("trial S=1," in m for m in msgs)
    assert "doubly robust" in msgs[0] and "overlap" in msgs[0]
    bad = res.diagnostics[res.diagnostics.trial == "2"]
    assert bad.flagged.all() and (bad.ess_fraction < 0.2).all()
    assert "[EXTREME]" in res.summary() and "warning: positivity" in res.summary()


def test_cli_warns_on_stderr_and_exits_0(tmp_path, capsys):
    from estimators.cli import main

    path = tmp_path / "poor.csv"
    _poor_overlap().to_csv(path, index=False)
    rc = main(["transport", str(path), "--covariates", "X1,X2,X3", "--estimators", "weighting", "--per-trial-only",
               "--json", str(tmp_path / "o.json")])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "Positivity" in out
    assert "warning: positivity: extreme inverse-odds weights in trial S=2" in err
    assert json.loads((tmp_path / "o.json").read_text())["diagnostic_warnings"]


def test_good_overlap_no_warning_and_stack_matches_fit():
    sim = simulate_trials(n_trials=4, n_per_trial=500, n_target=2000, seed=0)
    kw = dict(covariates=COVS, estimators=["weighting", "dr"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", mestim.MestimWarning)
        res = transport(sim.data, **kw)
    assert not res.diagnostic_warnings and not res.diagnostics.flagged.any()
    assert set(res.diagnostics.estimator) == {"weighting", "dr"}
    # the stack alone (no fit) gives the reported contrasts from θ and V
    stack = transport_stack(sim.data, **kw)
    assert stack.labels == tuple(res.estimates.labels)
    est, se, used = stack.differences(res.fit.theta, res.fit.vcov, res.fit.blocks)
    np.testing.assert_allclose(est, res.table.estimate.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(se, res.table.se.to_numpy(), rtol=1e-8)
