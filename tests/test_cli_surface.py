"""The command line's surface (issue 17): reading European CSVs, empty meta-analysis ids, tables out, JSON fields,
labels and messages, plots, progress, and the small things — each checked against the library's own answer."""

import json
import re

import numpy as np
import pandas as pd
import pytest

import estimators.cli as cli
from estimators import meta_batch as mb
from estimators.io import read_table
from mestim.errors import DataError


@pytest.fixture
def run_cli(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"meta": cli.COMMANDS["meta"], "transport": cli.COMMANDS["transport"]})
    return lambda *argv: cli.main([*map(str, argv)])


@pytest.fixture(scope="module")
def bcg():
    return mb.load_bcg()


def _european(df: pd.DataFrame, path):
    df.to_csv(path, sep=";", decimal=",", index=False)
    return path


# ------------------------------------------------------------------------------ 3. European CSVs, empty ids
def test_decimal_comma_is_detected_in_a_semicolon_csv(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"S": rng.integers(0, 3, 50), "X1": rng.normal(size=50), "name": ["a,b"] * 50})
    got = read_table(str(_european(df, tmp_path / "eu.csv")))
    assert got["X1"].dtype == float
    np.testing.assert_allclose(got["X1"], df["X1"], rtol=1e-12)
    assert got.attrs["read_as"] == "';'-separated, decimal ',' (detected; --decimal to change)"
    assert (got["name"] == "a,b").all()  # text with a comma stays text


def test_decimal_comma_ambiguous_is_not_guessed_and_the_error_says_decimal(tmp_path):
    """'1,500' may be 1.5 or 1500: not guessed; the option reads it, and transport's text-covariate error names it."""
    path = tmp_path / "amb.csv"
    path.write_text("S;X1\n0;1,500\n1;2,250\n")
    assert not pd.api.types.is_numeric_dtype(read_table(str(path))["X1"])
    assert read_table(str(path), decimal=",")["X1"].tolist() == [1.5, 2.25]
    from estimators.transport.data import _refuse_stray_text

    with pytest.raises(DataError, match="--decimal ,"):
        _refuse_stray_text(pd.Series([f"{i},{i % 7}5" for i in range(300)]), "X1")


def test_transport_cli_reads_a_european_csv_like_the_plain_one(run_cli, tmp_path, capsys):
    from estimators.transport import load_transport_sim

    df = load_transport_sim()
    plain, eu = tmp_path / "plain.json", tmp_path / "eu.json"
    df.to_csv(tmp_path / "plain.csv", index=False)
    _european(df, tmp_path / "eu.csv")
    args = ["--covariates", "X1,X2,X3", "--estimators", "outcome", "--pooled-only"]
    assert run_cli("transport", tmp_path / "plain.csv", *args, "--json", plain) == 0
    assert run_cli("transport", tmp_path / "eu.csv", *args, "--json", eu) == 0
    assert "decimal ','" in capsys.readouterr().out
    a, b = (json.loads(p.read_text())["estimates"] for p in (plain, eu))
    assert [r["estimate"] for r in a] == pytest.approx([r["estimate"] for r in b], rel=1e-12)


def test_keep_missing_ids_keeps_empty_subgroups_as_their_own_level(run_cli, bcg, tmp_path, capsys):
    df = bcg.assign(review="R1", group=[1.0, 1.0, 1.0, 2.0, 2.0, 2.0] + [np.nan] * 7)
    path = tmp_path / "long.csv"
    df.to_csv(path, index=False)
    out = tmp_path / "o.json"
    assert run_cli("meta", path, "--by", "review,group", "--json", out) == 0
    text = capsys.readouterr().out
    assert "7 row(s) with a missing meta-analysis id" in text and "--keep-missing-ids" in text
    assert {r["meta_id"] for r in json.loads(out.read_text())["results"]} == {"R1 | 1", "R1 | 2"}
    assert run_cli("meta", path, "--by", "review,group", "--keep-missing-ids", "--json", out) == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["meta_id"] for r in rows} == {"R1 | 1", "R1 | 2", "R1 | (missing)"}
    kept = next(r for r in rows if r["meta_id"] == "R1 | (missing)" and r["method"] == "REML")
    alone, _ = mb.meta_analysis(bcg.iloc[6:], "RR")
    assert kept["estimate"] == pytest.approx(alone.set_index("method").loc["REML", "estimate"], rel=1e-10)


# ------------------------------------------------------------------------------ 4. tables out, JSON fields, formatting
def test_meta_table_csv_has_the_json_rows(run_cli, bcg, tmp_path):
    df = pd.concat([bcg.assign(review="A"), bcg.iloc[:8].assign(review="B")])
    df.to_csv(tmp_path / "long.csv", index=False)
    out, table = tmp_path / "o.json", tmp_path / "o.csv"
    assert run_cli("meta", tmp_path / "long.csv", "--by", "review", "--json", out, "--table", table) == 0
    rows = json.loads(out.read_text())["results"]
    got = pd.read_csv(table)
    assert len(got) == len(rows) == 2 * len(mb.METHODS) and list(got.columns) == list(rows[0])
    for col in ("estimate", "se", "ci_low", "ci_high", "p_value"):
        np.testing.assert_allclose(got[col], [np.nan if r[col] is None else r[col] for r in rows], rtol=1e-12)
    assert run_cli("meta", "--table", table) == 0  # one meta-analysis
    assert set(pd.read_csv(table).method) == set(mb.METHODS)


def test_meta_json_has_p_values_level_and_version(run_cli, tmp_path):
    import mestim
    from mestim.results import normal_two_sided_p

    out = tmp_path / "o.json"
    assert run_cli("meta", "--level", "0.9", "--json", out) == 0
    d = json.loads(out.read_text())
    assert d["level"] == 0.9 and d["version"] == mestim.__version__
    for r in d["results"]:
        assert r["p_value"] == pytest.approx(float(normal_two_sided_p(r["estimate"] / r["se"])), rel=1e-12)


def test_transport_json_has_p_values_level_and_version(run_cli, tmp_path):
    import mestim
    from mestim.results import normal_two_sided_p

    out = tmp_path / "o.json"
    assert run_cli("transport", "--estimators", "outcome,dr", "--level", "0.9", "--json", out) == 0
    d = json.loads(out.read_text())
    assert d["level"] == 0.9 and d["version"] == mestim.__version__
    for r in d["estimates"]:
        assert r["p_value"] == pytest.approx(float(normal_two_sided_p(r["estimate"] / r["se"])), rel=1e-10)
        assert r["p_value"] < 1e-6  # the bundled effect is 2.8 with SE ≈ 0.15


def test_summaries_keep_trailing_zeros():
    from types import SimpleNamespace

    from estimators.transport.report import _cell

    assert _cell(SimpleNamespace(estimate=2.8, ci_low=2.51, ci_high=3.08)) == "2.80 (2.51, 3.08)"
    assert _cell(SimpleNamespace(estimate=100.0, ci_low=-4.0, ci_high=1234.0)) == "100 (-4.00, 1.23e+03)"


def test_positivity_block_lists_shared_weights_once_and_warnings_collapse():
    from types import SimpleNamespace

    from estimators.transport import simulate_trials, transport
    from estimators.transport.report import warning_lines

    sim = simulate_trials(n_trials=2, n_per_trial=150, n_target=200, seed=3).data
    text = transport(sim, covariates=["X1", "X2"], estimators=["weighting", "dr"]).summary()
    block = text.split("Positivity")[1].split("\n\n")[0]
    assert "  Weighting, Doubly robust  S=1" in block and "\n  Doubly robust" not in block
    advice = "; the target population is poorly covered by this trial, so the weighting estimates are unreliable"
    res = SimpleNamespace(warnings=[f"positivity: trial S={s}{advice}" for s in (1, 2, 3)] + ["engine"],
                          diagnostic_warnings=[f"positivity: trial S={s}{advice}" for s in (1, 2, 3)])
    lines = warning_lines(res)
    assert lines == ["engine", "positivity: trial S=1", "positivity: trial S=2", "positivity: trial S=3",
                     "positivity (each of the 3 above)" + advice]


def test_repeated_identical_warnings_print_once(capsys):
    import warnings

    from mestim.errors import MestimWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            warnings.warn("divide by zero encountered in log", RuntimeWarning)
            warnings.warn("tau2 did not converge in meta-analysis 7", MestimWarning)
    cli.print_warnings("meta", caught)
    err = capsys.readouterr().err
    assert err.count("RuntimeWarning: divide by zero") == 1 and err.count("tau2 did not converge") == 1


# ------------------------------------------------------------------------------ 5. labels
def test_meta_detects_study_label_columns_and_names_file_lines(run_cli, bcg, tmp_path, capsys):
    """A Cochrane-style `studlab` column labels the studies; "line N" is the line of the file (header = line 1)."""
    df = bcg.drop(columns=["label"]).assign(studlab=bcg.label)
    df.loc[2, "ai"] = -1  # the 3rd study: line 4 of the file
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    assert run_cli("meta", path) == 2
    err = capsys.readouterr().err
    assert "row 3, line 4 of the file (study Rosenthal et al 1960)" in err
    out = tmp_path / "o.json"
    assert run_cli("meta", path, "--drop-invalid", "--json", out) == 0
    assert re.search(r"row 3, line 4 of the file \(.*study Rosenthal et al 1960\)", capsys.readouterr().out)
    excluded = json.loads(out.read_text())["excluded"]
    assert excluded[0]["row"] == 3 and excluded[0]["line"] == 4  # "row" (1-based data row) kept, "line" added
    for name in ("Author", "trial"):
        tables, _ = mb.standardise_tables(bcg.drop(columns=["label", "study"]).assign(**{name: bcg.label}))
        assert tables.study.tolist() == bcg.label.tolist()


def test_meta_did_you_mean_for_by_and_columns(run_cli, bcg, tmp_path, capsys):
    df = bcg.assign(review="R", **{f"extra{i}": 0 for i in range(60)})
    df.to_csv(tmp_path / "t.csv", index=False)
    assert run_cli("meta", tmp_path / "t.csv", "--by", "reviw") == 2
    err = capsys.readouterr().err
    assert "did you mean 'review'?" in err and "extra59" not in err
    assert run_cli("meta", tmp_path / "t.csv", "--columns", "study=labl") == 2
    assert "did you mean 'label'?" in capsys.readouterr().err


def test_intercept_found_by_either_name_however_the_block_was_built():
    """Columns give '(Intercept)' (R's name), formulas 'Intercept' (formulaic's, statsmodels'): the labels stay as
    they were (a contract), and either name finds the intercept of a fit built either way."""
    import mestim
    from estimators import linear

    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=40)}
    data["y"] = 1.5 + 2 * data["x"] + rng.normal(size=40)
    by_columns = mestim.fit([linear("m", "y", ["x"]), linear("k", "y", formula="~ x")], data)
    assert by_columns.labels[0] == "m:(Intercept)" and by_columns.labels[2] == "k:Intercept"
    for block in ("m", "k"):
        for name in ("Intercept", "(Intercept)"):
            assert by_columns[f"{block}:{name}"] == pytest.approx(by_columns["m:(Intercept)"], rel=1e-10)


def test_single_block_fit_keeps_the_block_prefix():
    import jax.numpy as jnp

    import mestim

    data = {"y": np.array([1.0, 2.0, 4.0, 7.0]), "x": np.array([0.0, 1.0, 2.0, 3.0])}
    block = mestim.Block("m", lambda theta, row: jnp.array([row["y"] - theta[0], row["x"] - theta[1]]),
                         init=np.zeros(2), labels=("Intercept", "x"))
    alone = mestim.fit(block, data)
    stacked = mestim.fit([block, mestim.Block("k", lambda t, row: row["y"] - t, init=np.zeros(1))], data)
    assert alone.labels == ("Intercept", "x")  # unchanged
    for key in ("m:x", "x", "m:(Intercept)", "(Intercept)"):
        assert alone[key] == pytest.approx(stacked["m:x" if key.endswith("x") else "m:Intercept"])
    np.testing.assert_allclose(alone["m"], stacked["m"])


# ------------------------------------------------------------------------------ 6. progress
def test_progress_bar_on_a_terminal_only_and_off_with_quiet(run_cli, monkeypatch, capsys):
    import sys

    assert run_cli("meta") == 0
    assert "stages" not in capsys.readouterr().err  # stderr is not a terminal here: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert run_cli("meta") == 0
    err = capsys.readouterr().err
    assert "mestim meta: 2/3 stages" in err and "writing the results" in err
    assert run_cli("meta", "--quiet") == 0
    assert "stages" not in capsys.readouterr().err


def test_transport_progress_keyword(capsys):
    from estimators.transport import simulate_trials, transport

    sim = simulate_trials(n_trials=2, n_per_trial=150, n_target=200, seed=3).data
    kw = dict(covariates=["X1", "X2"], estimators=["outcome"], per_trial=False)
    transport(sim, **kw)
    assert capsys.readouterr().err == ""  # off by default in Python
    transport(sim, **kw, progress=True)
    err = capsys.readouterr().err
    assert "mestim transport: 1/4 stages" in err and "fitting the stack" in err


# ------------------------------------------------------------------------------ 7. plots
def _boxes(fig, artists):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def _tick_labels(fig, axis):
    fig.canvas.draw()
    return [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]


def _apart(boxes):
    return all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure saved by the code under test (the meta plots return the path, not the figure)."""
    import matplotlib.figure

    figs, save = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: (figs.append(self), save(self, *a, **k))[1])
    return figs


def test_meta_forest_plot_numbers_column_and_plain_log_ticks(bcg, tmp_path, saved_figures):
    long, report = mb.meta_analysis(bcg, "RR")
    mb.forest_plot(report["studies"], long, "RR", str(tmp_path / "forest.png"))
    fig = saved_figures[-1]
    texts = [t.get_text() for t in fig.axes[0].texts]
    first = bcg.iloc[0]  # Aronson 1948: RR = (4/123)/(11/139)
    rr = (first.ai / (first.ai + first.bi)) / (first.ci / (first.ci + first.di))
    assert texts[0].startswith(f"{rr:#.3g}") and texts[-1] == "RR (95% CI)"
    causal = long.set_index("method").loc["causal"]
    assert f"{np.exp(causal.estimate):#.3g} ({np.exp(causal.ci_low):#.3g}, {np.exp(causal.ci_high):#.3g})" in texts
    labels = _tick_labels(fig, fig.axes[0].xaxis)
    assert labels and all("10^" not in t.get_text() and "mathdefault" not in t.get_text() for t in labels)
    assert _apart([t.get_window_extent() for t in labels])


def test_by_scatter_log_tick_labels_do_not_collide(bcg, tmp_path, saved_figures):
    rng = np.random.default_rng(1)
    df = pd.concat([bcg.assign(review=r, ai=(bcg.ai * rng.uniform(0.02, 30)).round() + 1) for r in range(40)])
    long, wide, report = mb.meta_analyses(df, "review", "RR")
    mb.scatter_plot(wide, str(tmp_path / "scatter.png"))
    fig = saved_figures[-1]
    for axis in (fig.axes[0].xaxis, fig.axes[0].yaxis):
        labels = _tick_labels(fig, axis)
        assert len(labels) >= 3 and _apart([t.get_window_extent() for t in labels])


@pytest.fixture(scope="module")
def sensitivity_fit():
    from estimators.transport import transport

    from estimators.transport import load_transport_sim

    return transport(load_transport_sim(), covariates=["X1", "X2", "X3"], bias="X1",
                     bias_grid=[-1, -0.5, 0, 0.5, 1, 1.5, 2])


def test_transport_forest_numbers_and_legend_covering_no_point(sensitivity_fit, tmp_path):
    fig = sensitivity_fit.plot(str(tmp_path / "transport_forest.png"))
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    dr = sensitivity_fit.estimate("dr", "pooled")
    assert f"{dr.estimate:#.3g} ({dr.ci_low:#.3g}, {dr.ci_high:#.3g})" in texts
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    points = np.concatenate([line.get_transform().transform(line.get_xydata()) for line in ax.lines
                             if len(line.get_xydata()) == 1])
    assert not any(legend.contains(x, y) for x, y in points)
    assert not legend.overlaps(ax.get_window_extent())  # below the axes
    assert not legend.overlaps(ax.xaxis.label.get_window_extent())  # and below the x label


def test_sensitivity_plot_is_the_sweep(sensitivity_fit, tmp_path):
    fig = sensitivity_fit.plot_sensitivity(str(tmp_path / "sensitivity.png"))
    sens = sensitivity_fit.sensitivity
    drawn = [line for ax in fig.axes for line in ax.lines if len(line.get_xdata()) > 2]
    assert len(fig.axes) == len(drawn) == len(set(sens[sens.trial == "pooled"].estimator))  # a panel each
    dr = sens[(sens.trial == "pooled") & (sens.estimator == "dr")].sort_values("delta")
    match = [ln for ln in drawn if np.allclose(ln.get_ydata(), dr.estimate)]
    assert match and np.allclose(match[0].get_xdata(), dr.delta)
    # eq. 11: the estimate moves by δ·mean_{S=0} u, u = X1
    slope = np.polyfit(dr.delta, dr.estimate, 1)[0]
    from estimators.transport import load_transport_sim

    df = load_transport_sim()
    assert slope == pytest.approx(df.X1[df.S == 0].mean(), rel=1e-8)
    assert (tmp_path / "sensitivity.png").stat().st_size > 20_000
    from estimators.transport.report import _tipping_point

    rows = pd.DataFrame({"delta": [0.0, 1.0, 2.0], "ci_low": [1.0, 0.5, -0.5], "ci_high": [3.0, 2.5, 1.5]})
    assert _tipping_point(rows) == pytest.approx(1.5)  # ci_low 0.5 → −0.5 between δ = 1 and 2


def test_cli_plot_with_bias_writes_the_sensitivity_plot(run_cli, tmp_path, capsys):
    assert run_cli("transport", "--bias", "X1", "--bias-grid", "-1,0,1", "--estimators", "dr", "--pooled-only",
                   "--plot", tmp_path / "f.png") == 0
    assert (tmp_path / "f_sensitivity.png").stat().st_size > 10_000
    assert "f_sensitivity.png" in capsys.readouterr().out


# ------------------------------------------------------------------------------ 8. small things
def test_fractional_event_counts_are_warned_with_their_rows(bcg):
    import mestim

    df = bcg.astype({"ai": float})
    df.loc[4, "ai"] = 2.5
    with pytest.warns(mestim.MestimWarning, match=r"1 row\(s\) with fractional counts.*row 5, line 6 of the file "
                                                  r"\(study Frimodt-Moller et al 1973\): ai=2.5"):
        tables, _ = mb.standardise_tables(df)
    assert tables.ai.iloc[4] == 2.5  # used as given (imputed or corrected counts are fractional on purpose)


def test_spreadsheet_error_says_export_to_csv(run_cli, tmp_path, capsys):
    (tmp_path / "t.xlsx").write_bytes(b"PK\x03\x04\x00\x00")
    assert run_cli("meta", tmp_path / "t.xlsx") == 2
    assert "export it to CSV" in capsys.readouterr().err


def test_measure_and_classical_are_case_insensitive(run_cli, bcg, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    df = pd.concat([bcg.assign(review="A"), bcg.iloc[:6].assign(review="B")])
    df.to_csv(tmp_path / "t.csv", index=False)
    assert run_cli("meta", tmp_path / "t.csv", "--by", "review", "--measure", "rr", "--classical", "dl",
                   "--json", a) == 0
    assert run_cli("meta", tmp_path / "t.csv", "--by", "review", "--measure", "RR", "--classical", "DL",
                   "--json", b) == 0
    assert json.loads(a.read_text())["results"] == json.loads(b.read_text())["results"]
    assert json.loads(a.read_text())["comparison"]["classical_method"] == "DL"


def test_rows_with_missing_covariates_are_named():
    from estimators.transport import load_transport_sim, transport

    df = load_transport_sim()
    df.loc[[3, 7], "X2"] = np.nan  # target rows (S = 0): positions 3 and 7, lines 5 and 9 of a CSV
    with pytest.raises(DataError, match=r"2 row\(s\) of the target sample \(rows 3, 7 \(from 0, as the data frame's "
                                        r"positions; lines 5, 9 of a CSV file\)\)"):
        transport(df, covariates=["X1", "X2"])


def test_target_rows_left_out_of_the_target_only_comparison_are_noted():
    from estimators.transport import simulate_trials, transport

    sim = simulate_trials(n_trials=2, n_per_trial=150, n_target=200, seed=3).data
    rng = np.random.default_rng(0)
    t = sim.S == 0
    sim.loc[t, "Z"] = rng.integers(0, 2, t.sum())
    sim.loc[t, "Y"] = sim.loc[t, "X1"] + sim.loc[t, "Z"] + rng.normal(size=t.sum())
    sim.loc[sim.index[t][:7], "Y"] = np.nan  # 7 target rows without an outcome
    res = transport(sim, covariates=["X1", "X2"], estimators=["target_only", "outcome"], per_trial=False)
    assert res.estimate("target_only", 0).n == 193
    assert any("7 target row(s) without treatment or outcome are left out of the target-only comparison" in n
               for n in res.notes)


def test_a_clone_folder_named_mestim_in_the_working_directory_is_explained(tmp_path):
    import subprocess
    import sys

    (tmp_path / "mestim").mkdir()  # a clone of the repository, run from its parent folder
    (tmp_path / "mestim" / "README.md").write_text("clone")
    run = subprocess.run([sys.executable, "-c", "import estimators"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0
    assert "shadows the installed mestim" in run.stderr and "cd " in run.stderr


# ------------------------------------------------------------------------------ 9. install
def test_test_extra_bounds_are_the_tested_versions():
    """distributed pins dask exactly: with equal lower bounds pip takes the matching pair (one step) instead of
    backtracking through ~20 distributed wheels; and every bound is met by the versions this suite runs with."""
    import importlib.metadata as md
    import pathlib
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    for extra in ("test", "dask"):
        reqs = {r.name: r for r in map(Requirement, project["optional-dependencies"][extra])}
        low = {name: min(s.version for s in reqs[name].specifier if s.operator == ">=") for name in ("dask", "distributed")}
        assert low["dask"] == low["distributed"] == md.version("distributed") == md.version("dask"), (
            "bump both lower bounds to the dask/distributed pair the suite is tested with")
    for r in map(Requirement, project["dependencies"] + project["optional-dependencies"]["test"]):
        assert r.specifier.contains(md.version(r.name), prereleases=True), r


def test_meta_analyses_progress_keyword(bcg, capsys):
    df = pd.concat([bcg.assign(review=r) for r in "AB"])
    mb.meta_analyses(df, "review")
    assert capsys.readouterr().err == ""
    mb.meta_analyses(df, "review", progress=True)
    assert "meta_analyses: 1/3 stages" in capsys.readouterr().err


_EXECUTABLE = """
import atexit, runpy, sys
atexit.register(lambda: print("exit handler ran", file=sys.stderr))
class Freed:
    def __del__(self):
        print("teardown ran", file=sys.stderr)
kept = Freed()  # freed by the interpreter's teardown
sys.argv = ["mestim"] + sys.argv[1:]
runpy.run_module("estimators.cli", run_name="__main__")
"""


@pytest.mark.parametrize("args, code", [(["meta", "--quiet"], 0), (["meta", "no-such-file.csv"], 2)])
def test_the_executable_skips_the_teardown_but_not_the_exit_handlers_or_the_output(tmp_path, capsys, args, code):
    """`mestim` ends without freeing every module's objects (0.3 s after a cold `mestim transport`): its exit code,
    its printed output and the file it wrote are the in-process command's, and the exit handlers run."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "o.json"
    run = subprocess.run([sys.executable, "-c", _EXECUTABLE, *args, "--json", str(out)], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=root, MESTIM_CACHE_DIR="off"),
                         cwd=root)
    assert run.returncode == code, run.stderr[-2000:]
    written = json.loads(out.read_text()) if code == 0 else None
    assert cli.main([*args, "--json", str(out)]) == code
    printed = capsys.readouterr()
    assert run.stdout == printed.out and run.stderr == printed.err + "exit handler ran\n"
    assert written == (json.loads(out.read_text()) if code == 0 else None)
