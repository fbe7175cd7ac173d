"""transport() and ``mestim transport`` on data shaped like real data (issue 11): the transport paper's own
simulated file (target rows with treatment and outcome placeholders, trial-only columns empty in the target),
text covariates and text treatment labels, invalid options, and the printed, plotted and written output."""

import json
import re
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import mestim
from estimators.cli import main as cli
from estimators.transport import simulate_trials, transport
from mestim.errors import DataError, SpecificationError

COVS = ["X1", "X2", "X3"]


def _quiet(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mestim.MestimWarning)
        return transport(df, **kw)


def sampledata(seed=7) -> pd.DataFrame:
    """The shape of ``sampledata.csv`` of the paper's R code: columns X1, X2, in_trial, U, xb1, S, A, Y, with the
    target sample (S=0) carrying A = 0 and Y = 0 as placeholders and xb1 empty (NaN) there."""
    d = simulate_trials(n_trials=3, n_per_trial=[200, 250, 220], n_target=400, seed=seed).data
    return pd.DataFrame({"X1": d.X1, "X2": d.X2, "in_trial": (d.S > 0).astype(int),
                         "U": np.random.default_rng(seed).normal(size=len(d)),
                         "xb1": np.where(d.S > 0, 0.5 * d.X1, np.nan), "S": d.S,
                         "A": d.Z.fillna(0).astype(int), "Y": d.Y.fillna(0.0)})


def _write(tmp_path, df, name="data.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------ target placeholders (item 5)
def test_paper_sample_file_runs_and_skips_the_target_only_comparison(tmp_path, capsys):
    """`mestim transport sampledata.csv --treatment A --covariates X1,X2` used to stop with a singular bread at
    target_only:mu[A=1]: the placeholders (every target row A=0, Y=0) do not identify the target's arm means."""
    path = _write(tmp_path, sampledata())
    rc = cli(["transport", path, "--treatment", "A", "--covariates", "X1,X2", "--json", str(tmp_path / "o.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"note: target-only comparison skipped: the target sample has no rows in arm\(s\) "
                     r"A=\['1'\] \(every target row has A=0; placeholders\?\)", out), out
    d = json.loads((tmp_path / "o.json").read_text())
    assert not any(r["estimator"] == "target_only" for r in d["estimates"])
    assert any("target-only comparison skipped" in n for n in d["notes"]) and d["settings"]["notes"] == d["notes"]
    assert {r["estimator"] for r in d["estimates"]} == {"unadjusted", "outcome", "weighting", "dr", "pseudo_outcome"}


def test_target_only_needs_both_arms_and_a_varying_outcome():
    df = sampledata()
    with pytest.raises(DataError, match=r"'target_only' needs .*no rows in arm\(s\) A=\['1'\]"):
        transport(df, treatment="A", covariates=["X1", "X2"], estimators=["target_only"])
    # both arms present but the outcome a placeholder: skipped by default, run (with the note) when asked for
    both = df.assign(A=np.where(df.S == 0, np.arange(len(df)) % 2, df.A))
    res = _quiet(both, treatment="A", covariates=["X1", "X2"], estimators=["outcome", "target_only"], per_trial=False)
    assert res.estimate("target_only", 0).estimate == 0.0
    assert any("single value 0 in every target row" in n for n in res.notes)
    res = _quiet(both, treatment="A", covariates=["X1", "X2"], estimators=None, per_trial=False)
    assert "target_only" not in set(res.table.estimator)
    assert any(n.startswith("target-only comparison skipped: the outcome 'Y' takes the single value 0")
               for n in res.notes)


def test_target_with_outcomes_gets_its_own_row_with_its_own_n():
    sim = simulate_trials(n_trials=2, n_per_trial=150, n_target=240, seed=4, target_has_outcome=True)
    df = sim.data.copy()
    df.loc[df.index[:40], "Y"] = np.nan  # 40 target rows without outcome: not in the target-only n
    res = _quiet(df, covariates=COVS, estimators=["outcome", "target_only"])
    row = res.estimate("target_only", 0)
    assert row.n == 200 and row.trial == "0"
    text = res.summary()
    target_line = next(ln for ln in text.splitlines() if ln.startswith("0 (target only)"))
    assert re.match(r"0 \(target only\)\s+200\s+\S", target_line)
    pooled_line = next(ln for ln in text.splitlines() if ln.startswith("pooled "))
    assert re.match(r"pooled\s+300\s+—\s+\S", pooled_line)  # no target-only estimate in the pooled row


# ------------------------------------------------------------------------------------ invalid options (item 3)
@pytest.fixture(scope="module")
def small():
    return simulate_trials(n_trials=2, n_per_trial=150, n_target=200, seed=8).data


@pytest.mark.parametrize("probs, pattern", [
    ({0: 0.9, 1: 0.9}, r"sum to 1\.8; the probabilities of the arms of a trial must sum to 1"),
    ({0: 0.0, 1: 1.0}, r"must lie in \(0, 1\)"),
    ({0: 0.5, 1: 0.5, 2: 0.0}, r"names arm\(s\) \['2'\]"),
    ({1: {0: 0.5, 1: 0.5}, 2: {0: 0.3, 1: 0.3}}, r"\[2\] \{'0': 0\.3, '1': 0\.3\} sum to 0\.6"),
    ({0: "half", 1: 0.5}, r"'half' is not a probability"),
])
def test_known_probabilities_are_checked(small, probs, pattern):
    with pytest.raises(DataError, match=pattern):
        transport(small, covariates=COVS, estimators=["weighting"], treatment_model="known",
                  treatment_probabilities=probs)


def test_known_probabilities_as_fractions(small):
    kw = dict(covariates=COVS, estimators=["weighting"], per_trial=False, treatment_model="known",
              weighting="unnormalized")
    a = _quiet(small, treatment_probabilities={0: "2/3", 1: "1/3"}, **kw)
    b = _quiet(small, treatment_probabilities={0: 2 / 3, 1: 1 / 3}, **kw)
    assert a.estimate("weighting").estimate == b.estimate("weighting").estimate


@pytest.mark.parametrize("level, pattern", [(95, r"level=95: a confidence level must lie strictly between 0 and 1 "
                                                  r"\(e\.g\. 0\.95\); did you mean 0\.95\?"), (1.0, r"level=1\.0:"),
                                            (0, r"level=0:"),
                                            (float("nan"), "level=nan"), ("high", "level='high'")])
def test_level_must_lie_in_0_1(small, level, pattern):
    with pytest.raises(SpecificationError, match=pattern):
        transport(small, covariates=COVS, level=level)


@pytest.mark.parametrize("argv, pattern", [
    (["--treatment-model", "known", "--treatment-probabilities", "0:0.9,1:0.9"], r"sum to 1\.8"),
    (["--level", "95"], r"did you mean 0\.95\?"),
    (["--bias-grid", "nan"], r"finite multipliers"),
    (["--estimators", "pseudo_outcome", "--per-trial-only"], r"no estimator left to fit.*--per-trial-only"),
])
def test_cli_refuses_invalid_options(small, tmp_path, capsys, argv, pattern):
    rc = cli(["transport", _write(tmp_path, small), "--covariates", "X1,X2,X3", *argv])
    assert rc == 2
    assert re.search(pattern, _one_error_line(capsys))


def test_level_is_printed_as_asked(small):
    res = _quiet(small, covariates=COVS, estimators=["outcome"], per_trial=False, level=0.975)
    assert "estimate (97.5% CI)" in res.summary()
    fig = res.plot()
    assert "(97.5% CI)" in fig.axes[0].get_xlabel()


# ------------------------------------------------------------------------------------ text covariates (item 8)
@pytest.fixture(scope="module")
def with_text():
    sim = simulate_trials(n_trials=2, n_per_trial=200, n_target=300, seed=12)
    df = sim.data.copy()
    rng = np.random.default_rng(3)
    df["sex"] = np.where(rng.random(len(df)) < 0.4 + 0.2 * (df.S == 0), "male", "female")
    df["site"] = rng.choice(["north", "south", "west"], len(df))
    return df


def test_text_covariates_by_name_and_by_formula_equal_hand_made_indicators(with_text, tmp_path, capsys):
    df = with_text
    kw = dict(estimators=["outcome", "weighting", "dr"], per_trial=False)
    by_name = _quiet(df, covariates=["X1", "sex", "site"], **kw)
    by_formula = _quiet(df, formula="~ X1 + C(sex) + C(site)", **kw)
    hand = df.assign(male=(df.sex == "male").astype(float), south=(df.site == "south").astype(float),
                     west=(df.site == "west").astype(float))
    by_hand = _quiet(hand, covariates=["X1", "male", "south", "west"], **kw)
    for e in ("outcome", "weighting", "dr"):
        ref = by_hand.estimate(e)
        for res in (by_name, by_formula):
            assert res.estimate(e).estimate == pytest.approx(ref.estimate, rel=1e-10)
            assert res.estimate(e).se == pytest.approx(ref.se, rel=1e-8)
    assert "participation:sex[T.male]" in by_name.fit.labels
    assert any("text covariate 'sex' coded as 1 indicator(s) ['sex[T.male]'] against the reference level 'female'"
               in n for n in by_name.notes)
    assert any("'site' coded as 2 indicator(s) ['site[T.south]', 'site[T.west]'] against the reference level 'north'"
               in n for n in by_name.notes)
    # the command line, both ways; the coding is noted in the output
    path = _write(tmp_path, df)
    assert cli(["transport", path, "--covariates", "X1,sex", "--pooled-only", "--estimators", "outcome"]) == 0
    assert "note: text covariate 'sex' coded as" in capsys.readouterr().out
    assert cli(["transport", path, "--formula", "~ X1 + C(sex)", "--pooled-only", "--estimators", "outcome"]) == 0


def test_text_covariate_problems_are_named(with_text):
    df = with_text.copy()
    df.loc[df.index[:3], "sex"] = None  # the first rows are the target sample
    for kw in (dict(covariates=["X1", "sex"]), dict(formula="~ X1 + C(sex)")):
        with pytest.raises(DataError, match=r"covariate 'sex' is missing \(NaN\) in 3 row\(s\) of the target sample"):
            transport(df, **kw)
    orphan = with_text.copy()
    orphan.loc[orphan.index[:5], "site"] = "east"  # a level only the target sample has
    with pytest.raises(DataError, match=r"'site' takes level\(s\) \['east'\] in the target sample but in no trial"):
        transport(orphan, covariates=["X1", "site"])
    ids = with_text.assign(pid=[f"p{i}" for i in range(len(with_text))])
    with pytest.raises(DataError, match=r"text covariate 'pid' has 700 distinct values \(an identifier\?\)"):
        transport(ids, covariates=["X1", "pid"])
    with pytest.raises(DataError, match=r"covariate\(s\) \['Sex'\] are not in the data; did you mean 'sex'\?"):
        transport(with_text, covariates=["X1", "Sex"])


def test_text_treatment_labels_equal_numeric_arms(small):
    text = small.assign(Z=small.Z.map({0.0: "control", 1.0: "drug"}))
    kw = dict(covariates=COVS, estimators=["outcome", "weighting", "dr"])
    a, b = _quiet(small, **kw), _quiet(text, **kw)
    assert list(b.table.contrast.unique()) == ["drug vs control"]
    np.testing.assert_allclose(b.table.estimate.to_numpy(), a.table.estimate.to_numpy(), rtol=1e-10)
    c = _quiet(text, covariates=COVS, estimators=["outcome"], contrasts=[("control", "drug")], per_trial=False)
    assert c.estimate("outcome").estimate == pytest.approx(-a.estimate("outcome").estimate, rel=1e-10)


# ------------------------------------------------------------------------------------ output (item 16)
def _poor_overlap():
    df = simulate_trials(n_trials=2, n_per_trial=200, n_target=400, seed=5).data
    df.loc[df.S == 2, "X1"] += 3.0
    return df


def test_cli_prints_each_warning_once(tmp_path, capsys):
    path = _write(tmp_path, _poor_overlap())
    assert cli(["transport", path, "--covariates", "X1,X2,X3", "--estimators", "weighting"]) == 0
    out, err = capsys.readouterr()
    both = out + err
    first = next(ln for ln in err.splitlines() if "positivity: extreme" in ln).split("warning: ", 1)[1]
    assert both.count(first) == 1, both
    assert "warning: positivity" not in out and re.search(r"warnings: \d+ \(printed on stderr\)", out)


def test_many_positivity_warnings_are_summarised():
    from estimators.transport.report import WARNINGS_SHOWN, warning_lines

    msgs = [f"positivity: extreme inverse-odds weights in trial S={s}, arm Z=0" for s in range(30)]
    lines = warning_lines(SimpleNamespace(warnings=["engine says"] + msgs, diagnostic_warnings=msgs))
    assert lines[0] == "engine says" and len(lines) == 1 + WARNINGS_SHOWN
    assert lines[-1].startswith(f"positivity: … and {30 - WARNINGS_SHOWN + 1} more (trial, arm) groups")


def test_long_column_lists_are_summarised(small):
    wide = small.assign(**{f"extra{i}": 0.0 for i in range(200)})
    with pytest.raises(DataError, match=r"available columns: .*, … and \d+ more$") as e:
        transport(wide, covariates=["nothing_like_this"])
    assert len(str(e.value)) < 400


def test_forest_plot_rows_legend_and_reference_lines():
    sim = simulate_trials(n_trials=2, n_per_trial=150, n_target=200, seed=6, target_has_outcome=True)
    res = _quiet(sim.data, covariates=COVS, estimators=["unadjusted", "outcome", "dr", "target_only"])
    ax = res.plot().axes[0]
    legend = {t.get_text(): h for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    assert {"Unadjusted", "Outcome model", "Doubly robust", "pooled over trials (diamonds)", "no effect (0)",
            "target only (S = 0): estimate", "target only: 95% CI"} <= set(legend)
    assert legend["Outcome model"].get_marker() == "s" and legend["Doubly robust"].get_marker() == "o"
    assert legend["target only: 95% CI"].get_linestyle() == "--"
    # the per-trial marks drawn are the legend's (squares for the outcome model, circles for DR)
    drawn = {ln.get_marker() for ln in ax.get_lines() if ln.get_marker() not in ("None", "", None, "|", "_")}
    assert {"s", "o", "D"} <= drawn
    assert [t.get_text() for t in ax.get_yticklabels()] == ["all trials (pooled)", "S = 2", "S = 1"]
    # pooled only: no empty trial rows
    pooled = _quiet(sim.data, covariates=COVS, estimators=["outcome", "dr"], per_trial=False)
    ax = pooled.plot().axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["all trials (pooled)"]
    assert "pooled over trials (diamonds)" not in {t.get_text() for t in ax.get_legend().get_texts()}
    assert not any(ln.startswith("1 ") for ln in pooled.summary().splitlines())  # no empty trial rows in the table


def test_sensitivity_sweep_per_trial_rows_in_summary_and_table(small, tmp_path, capsys):
    res = _quiet(small, covariates=COVS, estimators=["outcome", "dr"], pooled=False, bias="X1",
                 bias_grid=[-0.5, 0.0, 0.5])
    text = res.summary()
    block = text.split("Sensitivity analysis (eq. 11)")[1]
    assert re.search(r"Outcome model\s+1\s+1 vs 0\s+\S+ \(", block) and re.search(r"Doubly robust\s+2\s+1 vs 0", block)
    full = res.table_with_sensitivity()
    sweep = full[full.delta.notna()]
    assert len(sweep) == 2 * 2 * 3 and set(sweep.trial) == {"1", "2"}
    at0 = sweep[(sweep.estimator == "dr") & (sweep.trial == "2") & (sweep.delta == 0.0)].iloc[0]
    assert at0.estimate == pytest.approx(res.estimate("dr", 2).estimate) and at0.n == res.estimate("dr", 2).n
    # the command line writes the same rows with --table
    out_csv = tmp_path / "t.csv"
    rc = cli(["transport", _write(tmp_path, small), "--covariates", "X1,X2,X3", "--estimators", "outcome,dr",
              "--per-trial-only", "--bias", "X1", "--bias-grid", "-0.5,0,0.5", "--table", str(out_csv)])
    assert rc == 0
    written = pd.read_csv(out_csv)
    assert {"delta", "bias_mean"} <= set(written.columns) and (written.delta.notna().sum() == 12)
    assert "Sensitivity analysis" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ siblings
def test_repeated_contrast_is_reported_once(small):
    res = _quiet(small, covariates=COVS, estimators=["outcome"], per_trial=False, contrasts=[(1, 0), (1, 0)])
    assert len(res.table) == 1


def test_wrong_weight_or_cluster_column_names_the_user_columns(small):
    with pytest.raises(DataError, match=r"weight column 'wt' is not in the data; available columns: S, X1"):
        transport(small, covariates=COVS, weights="wt")
    with pytest.raises(DataError, match=r"cluster column 'x1' is not in the data; did you mean 'X1'\?"):
        transport(small, covariates=COVS, cluster="x1")


def test_infinite_bias_refused(small):
    with pytest.raises(SpecificationError, match="bias=inf"):
        transport(small, covariates=COVS, bias=float("inf"))


def test_polars_table_is_accepted(small):
    import polars as pl  # a test dependency: missing, the test fails (it was skipped)
    kw = dict(covariates=COVS, estimators=["outcome"], per_trial=False)
    assert _quiet(pl.from_pandas(small), **kw).estimate("outcome").estimate == \
        pytest.approx(_quiet(small, **kw).estimate("outcome").estimate, rel=1e-12)


def test_per_protocol_with_text_arms_and_received():
    sim = simulate_trials(n_trials=2, n_per_trial=200, n_target=200, seed=9, nonadherence=True)
    labels = {0.0: "control", 1.0: "drug"}
    text = sim.data.assign(Z=sim.data.Z.map(labels), A=sim.data.A.map(labels))
    kw = dict(covariates=COVS, received="A", post_covariates=["L"], estimators=["weighting", "dr"], per_trial=False)
    a, b = _quiet(sim.data, **kw), _quiet(text, **kw)
    np.testing.assert_allclose(b.table.estimate.to_numpy(), a.table.estimate.to_numpy(), rtol=1e-10)


# ------------------------------------------------------------------------------------ host glue (item 7)
def test_diagnostics_compile_one_program():
    """The positivity diagnostics evaluate the working models in one jit(vmap) and do the rest in NumPy: no eager
    jax.numpy call (each compiles a program of its own)."""
    import jax.monitoring

    from estimators.transport.api import transport_stack
    from estimators.transport.diagnostics import positivity_diagnostics

    # sizes no other test uses: eager jax.numpy calls on them would compile (a cached shape would hide them)
    sim = simulate_trials(n_trials=3, n_per_trial=[117, 121, 119], n_target=203, seed=2)
    stack = transport_stack(sim.data, covariates=COVS, estimators=["weighting", "dr"])
    fit = stack.fit()
    count = [0]

    def listener(event, duration, **kw):
        count[0] += event == "/jax/core/compile/backend_compile_duration"

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        positivity_diagnostics(stack, fit)
        first = count[0]
        positivity_diagnostics(stack, fit)  # and nothing eager on a second call with the same shapes
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert first <= 1, first
    assert count[0] == first


def test_transport_import_is_light():
    """Importing the transport library loads neither matplotlib nor formulaic (imported where used)."""
    code = ("import sys, estimators.transport, estimators.commands.transport; "
            "print(sorted(m for m in ('matplotlib', 'formulaic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_text_outcome_says_how_to_recode(small):
    text = small.assign(Y=np.where(small.Y > 1, "yes", "no"))
    with pytest.raises(DataError, match=r"outcome column 'Y' has non-numeric values .*0/1 for a binary outcome"):
        transport(text, covariates=COVS)
