"""What meta-analysis reports around the numbers (issue 11, items 2, 3, 7, 12, 16 and issue 9): undefined causal
estimates, the confidence level, missing and composite meta-analysis ids, the discordant meta-analyses and their
rule, warnings printed once, the exclusion list summarised, and host-side arithmetic in NumPy."""

import ast
import json
import pathlib
import warnings

import jax
import jax.monitoring
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import estimators.cli as cli
from estimators import causal_meta as cm
from estimators import meta_batch as mb
from estimators import meta_classical as mc
from mestim.errors import DataError, MestimWarning, SpecificationError

BCG = mb.load_bcg()


@pytest.fixture
def run_cli(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"meta": cli.COMMANDS["meta"]})
    return lambda *argv: cli.main(["meta", *map(str, argv)])


def arms(meta, a, n1, c, n0, **extra):
    return pd.DataFrame({"meta": meta, "event.e": a, "n.e": n1, "event.c": c, "n.c": n0, **extra})


def undefined_rr_table():
    """Three meta-analyses: BCG (defined), one with no control events anywhere (causal RR undefined: ψ̂₀ = 0),
    and one small one (defined)."""
    bcg = arms("bcg", BCG.ai, BCG.ai + BCG.bi, BCG.ci, BCG.ci + BCG.di)
    return pd.concat([bcg, arms("no-control-events", [3, 5], [50, 60], [0, 0], [50, 60]),
                      arms("small", [4, 9], [40, 60], [8, 14], [40, 60])], ignore_index=True)


# ------------------------------------------------------------------------------------------ item 2: undefined
def test_undefined_reason_names_the_arm_and_the_measure():
    assert cm.undefined_reason("RR", 0.1, 0.0).item() == ("pooled risk ψ̂₀ = 0 (no events in any control arm): the "
                                                          "causal RR is not defined")
    assert "ψ̂₁ = 1 (only events in any treated arm)" in cm.undefined_reason("OR", 1.0, 0.3).item()
    assert "ψ̂₁ = 1" in cm.undefined_reason("SR", 1.0, 0.3).item()
    reasons = cm.undefined_reason("RR", np.array([0.2, 0.0, 0.1]), np.array([0.1, 0.3, 0.2]))
    assert list(reasons != "") == [False, True, False]
    assert cm.undefined_reason("RD", 0.0, 1.0).item() == ""


def test_undefined_causal_estimate_is_reported_and_never_compared(tmp_path):
    long, wide, report = mb.meta_analyses(undefined_rr_table(), "meta", "RR")
    row = wide.set_index("meta_id").loc["no-control-events"]
    assert not row["comparable"] and pd.isna(row["conclusion_differs"]) and pd.isna(row["sign_differs"])
    assert "ψ̂₀ = 0" in row["causal_undefined_reason"] and np.isnan(row["causal"])
    causal = long[(long.meta_id == "no-control-events") & (long.method == "causal")].iloc[0]
    assert np.isnan(causal["estimate"]) and np.isnan(causal["se"]) and "control arm" in causal["undefined_reason"]
    assert wide.set_index("meta_id").loc[["bcg", "small"], "comparable"].all()
    assert int(wide["conclusion_differs"].sum()) + int((wide["conclusion_differs"] == False).sum()) == 2  # noqa: E712
    payload = mb.results_json(long, report, wide)
    assert payload["comparison"]["compared"] == 2 and payload["comparison"]["not_compared"] == 1
    assert [u["meta_id"] for u in payload["undefined"]] == ["no-control-events"]
    assert "no-control-events" not in [d["meta_id"] for d in payload["discordant"]]
    assert any("undefined" in n and "not compared" in n for n in report["notes"])


def test_scatter_title_counts_only_plotted_meta_analyses(tmp_path, monkeypatch):
    import matplotlib.figure

    titles = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: titles.append(
        fig.axes[0].get_title()))
    _, wide, _ = mb.meta_analyses(undefined_rr_table(), "meta", "RR")
    mb.scatter_plot(wide, str(tmp_path / "s.png"))
    assert "2 meta-analyses (1 not plotted: causal estimate undefined)" in titles[0]


def test_single_meta_analysis_with_undefined_causal_ratio_says_why():
    long, report = mb.meta_analysis(arms("m", [3, 5], [50, 60], [0, 0], [50, 60]).drop(columns="meta"), "RR")
    causal = long[long.method == "causal"].iloc[0]
    assert np.isnan(causal["estimate"]) and "ψ̂₀ = 0" in causal["undefined_reason"]
    assert long[long.method == "REML"]["undefined_reason"].isna().all()


# ------------------------------------------------------------------------------------------ item 3: level
def test_level_as_a_percentage_is_refused_with_a_hint(run_cli, capsys):
    assert run_cli("--level", "95") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--level 95" in err and "did you mean 0.95?" in err
    for bad in ("0", "1", "-0.2", "abc", "nan"):
        assert run_cli("--level", bad) == 2
        assert "--level" in capsys.readouterr().err
    with pytest.raises(SpecificationError, match="did you mean 0.9"):
        mb.meta_analyses(undefined_rr_table(), "meta", level=90)
    with pytest.raises(SpecificationError, match="between 0 and 1"):
        mc.classical_meta(BCG.ai, BCG.bi, BCG.ci, BCG.di, level=1.5)


def test_level_sets_every_interval(run_cli, tmp_path, capsys):
    assert run_cli("--level", "0.9", "--json", tmp_path / "o.json") == 0
    assert "90% CIs" in capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((tmp_path / "o.json").read_text())["results"]}
    z, t12 = stats.norm.ppf(0.95), stats.t.ppf(0.95, 12)
    for method, crit in (("causal", z), ("REML", z), ("MH", z), ("REML_HK", t12)):
        r = rows[method]
        assert r["ci_high"] - r["estimate"] == pytest.approx(crit * r["se"], rel=1e-12), method
    _, wide, _ = mb.meta_analyses(undefined_rr_table(), "meta", level=0.9)
    assert (wide["causal_ci_high"] - wide["causal"]).dropna().to_numpy() == pytest.approx(
        (z * wide["causal_se"]).dropna().to_numpy(), rel=1e-12)


# ------------------------------------------------------------------------------------------ item 7: --by
def test_missing_ids_are_excluded_and_every_row_is_accounted_for(run_cli, tmp_path, capsys):
    bcg = arms(None, BCG.ai, BCG.ai + BCG.bi, BCG.ci, BCG.ci + BCG.di)
    review = np.array(["R1"] * 6 + [np.nan] * 3 + ["R2"] * 3 + ["  "], dtype=object)  # NaN and blank ids
    df = bcg.assign(meta=review)
    df.to_csv(tmp_path / "t.csv", index=False)
    assert run_cli(tmp_path / "t.csv", "--by", "meta", "--json", tmp_path / "o.json") == 0
    out = capsys.readouterr().out
    assert "excluded: 4 row(s) with a missing meta-analysis id" in out
    payload = json.loads((tmp_path / "o.json").read_text())
    missing = [e for e in payload["excluded"] if e["kind"] == "missing id"]
    assert sorted(e["row"] for e in missing) == [7, 8, 9, 13]
    k = {r["meta_id"]: r["k"] for r in payload["results"] if r["method"] == "FE"}
    assert k == {"R1": 6, "R2": 3}
    assert sum(k.values()) + len(missing) == len(df)  # no study vanishes silently


def test_several_id_columns_identify_a_meta_analysis(run_cli, tmp_path, capsys):
    bcg = arms(None, BCG.ai, BCG.ai + BCG.bi, BCG.ci, BCG.ci + BCG.di).drop(columns="meta")
    df = bcg.assign(review=["CD1"] * 7 + ["CD2"] * 6,
                    comparison=[1, 1, 1, 2, 2, 2, np.nan, 1, 1, 1, 1, 1, 1],
                    outcome=[1] * 13)
    df.to_csv(tmp_path / "t.csv", index=False)
    assert run_cli(tmp_path / "t.csv", "--by", "review,comparison,outcome", "--json", tmp_path / "o.json") == 0
    payload = json.loads((tmp_path / "o.json").read_text())
    fe = {r["meta_id"]: r for r in payload["results"] if r["method"] == "FE"}
    assert set(fe) == {"CD1 | 1 | 1", "CD1 | 2 | 1", "CD2 | 1 | 1"}
    assert (fe["CD1 | 2 | 1"]["review"], fe["CD1 | 2 | 1"]["comparison"], fe["CD1 | 2 | 1"]["k"]) == ("CD1", 2, 3)
    assert [e["row"] for e in payload["excluded"]] == [7] and "comparison" in payload["excluded"][0]["reason"]
    long, wide, _ = mb.meta_analyses(df, ["review", "comparison", "outcome"])
    assert list(wide.columns[:4]) == ["meta_id", "review", "comparison", "outcome"]
    assert list(long.columns[:4]) == ["meta_id", "review", "comparison", "outcome"]
    with pytest.raises(DataError, match="not in the table"):
        mb.meta_analyses(df, "review,chapter")


def test_exclusion_list_is_summarised(run_cli, tmp_path, capsys):
    rows = arms(["m"] * 40, [2] * 40, [10] * 40, [3] * 40, [10] * 40)
    rows.loc[5:34, ["event.e", "n.e"]] = 0  # 30 studies with an empty treated arm
    rows.to_csv(tmp_path / "t.csv", index=False)
    assert run_cli(tmp_path / "t.csv", "--by", "meta", "--json", tmp_path / "o.json") == 0
    out = capsys.readouterr().out
    assert "excluded: 30 stud(ies) with an empty arm" in out
    assert sum("has no participants" in line for line in out.splitlines()) == 10
    assert "… and 20 more" in out
    assert len(json.loads((tmp_path / "o.json").read_text())["excluded"]) == 30


# ------------------------------------------------------------------------------------------ item 12: discordance
def _long(rows):
    """A long table with causal and REML rows: rows = (meta_id, causal (est, lo, hi), REML (est, lo, hi))."""
    recs = []
    for mid, causal, reml in rows:
        for method, (est, lo, hi) in (("causal", causal), ("REML", reml)):
            recs.append({"meta_id": mid, "method": method, "measure": "RR", "estimate": est, "se": 0.1,
                         "ci_low": lo, "ci_high": hi, "k": 3, "converged": True,
                         "undefined_reason": None if np.isfinite(est) else "pooled risk ψ̂₀ = 0"})
    return pd.DataFrame(recs)


def test_discordance_rule():
    long = _long([
        ("same", (-0.5, -0.8, -0.2), (-0.4, -0.7, -0.1)),  # both exclude the null on the same side
        ("one significant", (-0.5, -0.8, -0.2), (-0.3, -0.7, 0.1)),
        ("sign only", (0.1, -0.2, 0.4), (-0.1, -0.4, 0.2)),  # signs differ, both CIs cover the null
        ("opposite", (0.5, 0.2, 0.8), (-0.5, -0.8, -0.2)),
        ("undefined", (np.nan, np.nan, np.nan), (0.3, 0.1, 0.5)),
    ])
    wide = mb.comparison_table(long, "REML").set_index("meta_id")
    assert wide["conclusion_differs"].dropna().to_dict() == {"same": False, "one significant": True,
                                                             "sign only": False, "opposite": True}
    assert pd.isna(wide.loc["undefined", "conclusion_differs"]) and not wide.loc["undefined", "comparable"]
    assert wide.loc["sign only", "sign_differs"] and not wide.loc["sign only", "significance_differs"]
    assert wide.loc["opposite", "opposite_significant"] and not wide.loc["opposite", "significance_differs"]
    flagged = mb.discordant(wide.reset_index()).set_index("meta_id")["why"].to_dict()
    assert flagged == {"one significant": "significant for causal only",
                       "opposite": "significant in opposite directions"}


def discordance_table():
    """Meta-analyses where causal and REML conclusions differ and agree (2×2 tables; see the test)."""
    bcg = arms("bcg", BCG.ai, BCG.ai + BCG.bi, BCG.ci, BCG.ci + BCG.di)
    # two heterogeneous trials (the docs' worked example 2): the causal RR is significant, REML's is not
    simpson = arms("two-trials", [150, 50], [250, 250], [235, 3], [250, 250])
    no_effect = arms("no-effect", [20, 31], [200, 300], [21, 29], [200, 300])
    return pd.concat([bcg, simpson, no_effect, arms("no-control-events", [3, 5], [50, 60], [0, 0], [50, 60])],
                     ignore_index=True)


def test_cli_lists_the_discordant_meta_analyses_with_the_rule(run_cli, tmp_path, capsys):
    discordance_table().to_csv(tmp_path / "t.csv", index=False)
    assert run_cli(tmp_path / "t.csv", "--by", "meta", "--json", tmp_path / "o.json") == 0
    out = capsys.readouterr().out
    payload = json.loads((tmp_path / "o.json").read_text())
    # recompute the rule from the JSON's own intervals (null: log RR = 0)
    res = {(r["meta_id"], r["method"]): r for r in payload["results"]}
    expected = []
    for mid in ("bcg", "two-trials", "no-effect"):
        sig = [res[(mid, m)]["ci_low"] > 0 or res[(mid, m)]["ci_high"] < 0 for m in ("causal", "REML")]
        sides = [np.sign(res[(mid, m)]["estimate"]) for m in ("causal", "REML")]
        if sig[0] != sig[1] or (all(sig) and sides[0] != sides[1]):
            expected.append(mid)
    assert expected == ["two-trials"]  # the data have one discordant meta-analysis
    assert [d["meta_id"] for d in payload["discordant"]] == expected
    assert payload["discordant"][0]["why"] == "significant for causal only"
    assert payload["comparison"]["rule"] == mb.discordance_rule("RR") and "opposite sides" in mb.discordance_rule("RR")
    assert payload["comparison"]["discordant"] == 1 and payload["comparison"]["compared"] == 3
    assert "differ in 1 of 3 compared (1 not compared: causal estimate undefined)" in out
    assert f"rule: {mb.discordance_rule('RR')}" in out
    assert "discordant (1):" in out and "two-trials" in out.split("discordant (1):")[1].splitlines()[1]


# ------------------------------------------------------------------------------------------ item 16: warnings once
def _not_converged(real_batch_core, meta_index):
    def batch_core(counts, mask, measure):
        out = dict(real_batch_core(counts, mask, measure))
        out["REML_converged"] = out["REML_converged"].at[meta_index].set(0.0)
        return out
    return batch_core


def test_non_convergence_warning_is_printed_once_on_stderr(run_cli, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mb, "batch_core", _not_converged(mb.batch_core, 2))  # the third: "small"
    undefined_rr_table().to_csv(tmp_path / "t.csv", index=False)
    assert run_cli(tmp_path / "t.csv", "--by", "meta", "--json", tmp_path / "o.json") == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if "did not converge" in line]
    assert len(warned) == 1 and warned[0].startswith("mestim meta: warning: the REML τ² did not converge in 1")
    assert "small" in warned[0] and "last iterate" not in captured.out  # the warning is not repeated on stdout
    # a meta-analysis whose classical τ² did not converge is not compared either, and the summary says why
    assert "2 not compared: 1 causal estimate undefined, 1 classical τ² not converged" in captured.out
    payload = json.loads((tmp_path / "o.json").read_text())
    assert len(payload["warnings"]) == 1 and "did not converge" in payload["warnings"][0]
    assert {d["meta_id"]: d["reason"] for d in payload["not_compared"]}["small"] == "the REML τ² did not converge"
    flags = {(r["meta_id"], r["method"]): r["converged"] for r in payload["results"]}
    assert flags[("small", "REML")] is False and flags[("small", "REML_HK")] is False
    assert flags[("bcg", "REML")] is True and flags[("small", "PM")] is True


def test_single_meta_analysis_warns_once_and_records_it(monkeypatch):
    real = mc.classical_core

    def classical_core(*args, **kwargs):
        core = real(*args, **kwargs)
        for measure in core:
            core[measure]["PM_converged"] = 0.0
        return core

    monkeypatch.setattr(mc, "classical_core", classical_core)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        long, report = mb.meta_analysis(None, "OR")
    messages = [str(w.message) for w in caught if issubclass(w.category, MestimWarning)]
    assert len(messages) == 1 and "Paule–Mandel τ² did not converge" in messages[0]
    assert report["warnings"] == messages
    assert not long.set_index("method").loc["PM", "converged"] and long.set_index("method").loc["REML", "converged"]


# ------------------------------------------------------------------------------------------ issue 9: host NumPy
def test_host_helpers_compute_in_numpy_and_compile_nothing():
    """Each eager jax.numpy call compiles an XLA program; on NumPy input these helpers (and one whole classical
    meta-analysis, REML and Paule–Mandel iterations included) run in NumPy and compile nothing."""
    compiled = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiled.append(event) if event == "/jax/core/compile/backend_compile_duration"
        else None)
    counts = [BCG[c].to_numpy(float) for c in ("ai", "bi", "ci", "di")]
    before = len(compiled)
    out = cm.causal_closed_form(*counts, measure="OR")
    y, v = mc.effect_sizes(*counts, "RR")
    g = cm.contrast_gradient("RR", 0.2, 0.1)
    c = cm.contrast("OR", np.array([0.2, 0.0]), 0.1)
    cm.undefined_reason("RR", 0.0, 0.1)
    rows = mc.classical_meta(*counts, measure="OR")  # one meta-analysis: REML and PM loops run in NumPy
    assert len(compiled) == before  # no XLA program for host arithmetic
    for value in (*out.values(), y, v, *g, c):
        assert not isinstance(value, jax.Array)
    assert {r["method"] for r in rows} >= {"REML", "PM"} and all(r["converged"] for r in rows)
    assert out["estimate"] == pytest.approx(np.log(0.0056793800117474 / (1 - 0.0056793800117474))
                                            - np.log(0.00896440775023283 / (1 - 0.00896440775023283)), rel=1e-12)
    # the same functions still trace (the batch kernel vmaps them)
    traced = jax.jit(lambda a, b, c_, d: cm.causal_closed_form(a, b, c_, d, measure="OR")["estimate"])(*counts)
    assert float(traced) == pytest.approx(out["estimate"], rel=1e-14)


def test_meta_modules_import_no_heavy_library_at_module_level():
    root = pathlib.Path(__file__).parent.parent / "estimators"
    for path in ("meta_classical.py", "meta_batch.py", "causal_meta.py", "commands/meta.py"):
        tree = ast.parse((root / path).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
        heavy = [n for n in names if n.split(".")[0] in ("pandas", "scipy", "matplotlib")]
        assert not heavy, (path, heavy)


def test_command_line_single_meta_analysis_compiles_nothing(run_cli, tmp_path):
    """`mestim meta` on one meta-analysis: classical methods in NumPy, the causal sandwich in closed form — equal
    to the engine's stacked fit (which `meta_analysis(use_engine=True)` runs) to 1e-10."""
    compiled = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiled.append(event) if event == "/jax/core/compile/backend_compile_duration"
        else None)
    assert run_cli("--json", tmp_path / "o.json", "--measure", "OR") == 0
    assert compiled == []
    cli_causal = next(r for r in json.loads((tmp_path / "o.json").read_text())["results"] if r["method"] == "causal")
    engine = mb.meta_analysis(None, "OR", use_engine=True)[0].set_index("method").loc["causal"]
    assert cli_causal["estimate"] == pytest.approx(engine["estimate"], rel=1e-10)
    assert cli_causal["se"] == pytest.approx(engine["se"], rel=1e-10)
