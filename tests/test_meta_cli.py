"""``mestim meta``: bundled BCG default, JSON contract, column formats and mapping, batch mode, plots, and the
behaviour on malformed input (one-line error, exit 2; or excluded and reported with --drop-invalid)."""

import json
import pathlib

import numpy as np
import pandas as pd
import pytest

import estimators.cli as cli
from estimators import meta_batch as mb

REF = json.loads((pathlib.Path(__file__).parent / "data" / "bcg_metafor_reference.json").read_text())
KEYS = {"meta_id", "method", "measure", "estimate", "se", "ci_low", "ci_high", "tau2", "I2", "k"}


@pytest.fixture
def run_cli(monkeypatch):
    # only the meta subcommand (other subcommands are other modules' business)
    monkeypatch.setattr(cli, "COMMANDS", {"meta": cli.COMMANDS["meta"]})
    return lambda *argv: cli.main(["meta", *map(str, argv)])


def test_default_runs_on_bundled_bcg_and_writes_the_json_contract(run_cli, tmp_path, capsys):
    out = tmp_path / "bcg.json"
    plot = tmp_path / "forest.png"
    assert run_cli("--json", out, "--plot", plot) == 0
    payload = json.loads(out.read_text())
    rows = {r["method"]: r for r in payload["results"]}
    assert {"causal", "FE", "DL", "REML", "PM", "MH"} <= set(rows)
    for r in payload["results"]:
        assert KEYS <= set(r) and r["measure"] == "RR" and r["k"] == 13
    for m in ("FE", "DL", "REML", "PM"):
        assert rows[m]["estimate"] == pytest.approx(REF["results"]["RR"][m]["estimate"], rel=1e-6)
        assert rows[m]["tau2"] == pytest.approx(REF["results"]["RR"][m]["tau2"], rel=1e-6, abs=1e-12)
    assert rows["causal"]["exp_estimate"] == pytest.approx(0.0056793800117474 / 0.00896440775023283, rel=1e-10)
    assert plot.stat().st_size > 1000
    assert "sandwich" in capsys.readouterr().out


def test_arm_totals_and_mapped_columns_give_the_same_answer(run_cli, tmp_path):
    bcg = mb.load_bcg()
    arms = pd.DataFrame({"event.e": bcg.ai, "n.e": bcg.ai + bcg.bi, "event.c": bcg.ci, "n.c": bcg.ci + bcg.di})
    mapped = pd.DataFrame({"tx_ev": bcg.ai, "tx_n": bcg.ai + bcg.bi, "ct_ev": bcg.ci, "ct_n": bcg.ci + bcg.di})
    arms.to_csv(tmp_path / "arms.csv", index=False)
    mapped.to_csv(tmp_path / "mapped.csv", index=False)
    assert run_cli(tmp_path / "arms.csv", "--json", tmp_path / "a.json") == 0
    assert run_cli(tmp_path / "mapped.csv", "--json", tmp_path / "b.json",
                   "--columns", "event.e=tx_ev,n.e=tx_n,event.c=ct_ev,n.c=ct_n") == 0
    a = json.loads((tmp_path / "a.json").read_text())["results"]
    b = json.loads((tmp_path / "b.json").read_text())["results"]
    for ra, rb in zip(a, b):
        assert ra["method"] == rb["method"] and ra["estimate"] == pytest.approx(rb["estimate"], rel=1e-12)
    fe = next(r for r in a if r["method"] == "FE")
    assert fe["estimate"] == pytest.approx(REF["results"]["RR"]["FE"]["estimate"], rel=1e-6)


def test_batch_mode_json_and_scatter(run_cli, tmp_path, capsys):
    bcg = mb.load_bcg()
    long = pd.concat([bcg.assign(review="A"), bcg.iloc[:4].assign(review="B"), bcg.iloc[[5]].assign(review="C")])
    long.to_csv(tmp_path / "long.csv", index=False)
    assert run_cli(tmp_path / "long.csv", "--by", "review", "--measure", "RD", "--json", tmp_path / "o.json",
                   "--plot", tmp_path / "s.png") == 0
    res = json.loads((tmp_path / "o.json").read_text())["results"]
    assert {r["meta_id"] for r in res} == {"A", "B", "C"}
    a_reml = next(r for r in res if r["meta_id"] == "A" and r["method"] == "REML")
    assert a_reml["estimate"] == pytest.approx(REF["results"]["RD"]["REML"]["estimate"], rel=1e-6)
    c_rows = [r for r in res if r["meta_id"] == "C"]
    assert all(r["k"] == 1 for r in c_rows)  # a single-study meta-analysis is defined
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert "conclusions differ" in capsys.readouterr().out


@pytest.mark.parametrize("bad,needle", [
    ({"ai": -1}, "negative"), ({"ai": "x"}, "not a number"), ({"ai": None}, "missing")])
def test_malformed_rows_are_an_error_naming_the_row(run_cli, tmp_path, capsys, bad, needle):
    df = mb.load_bcg().astype(object)
    for col, val in bad.items():
        df.loc[2, col] = val
    df.to_csv(tmp_path / "bad.csv", index=False)
    assert run_cli(tmp_path / "bad.csv", "--by", "label") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err and "row 3" in err


def test_events_exceeding_totals_and_drop_invalid_reports_the_exclusion(run_cli, tmp_path, capsys):
    df = pd.DataFrame({"meta": ["a", "a", "a", "b"], "event.e": [3, 12, 2, 0], "n.e": [10, 10, 10, 0],
                       "event.c": [4, 2, 3, 2], "n.c": [10, 10, 10, 10]})
    df.to_csv(tmp_path / "t.csv", index=False)
    assert run_cli(tmp_path / "t.csv", "--by", "meta") == 2
    assert "exceeds" in capsys.readouterr().err
    assert run_cli(tmp_path / "t.csv", "--by", "meta", "--drop-invalid", "--json", tmp_path / "o.json") == 0
    payload = json.loads((tmp_path / "o.json").read_text())
    reasons = [e["reason"] for e in payload["excluded"]]
    assert any("exceeds" in r for r in reasons)  # row 2: malformed
    assert any("no participants" in r for r in reasons)  # row 4: empty treated arm
    assert any("no usable study" in r for r in reasons)  # meta-analysis b is left empty
    assert {r["meta_id"] for r in payload["results"]} == {"a"}
    assert next(r for r in payload["results"] if r["method"] == "FE")["k"] == 2


def test_unknown_columns_and_missing_file_are_one_line_errors(run_cli, tmp_path, capsys):
    pd.DataFrame({"x": [1], "y": [2]}).to_csv(tmp_path / "x.csv", index=False)
    assert run_cli(tmp_path / "x.csv") == 2
    assert "cannot find the counts" in capsys.readouterr().err
    assert run_cli(tmp_path / "nope.csv") == 2
    assert run_cli(tmp_path / "x.csv", "--by", "zzz", "--columns", "ai=x,bi=y,ci=x,di=y") == 2
    assert "zzz" in capsys.readouterr().err


def test_zero_events_in_all_control_arms_gives_an_undefined_causal_ratio_with_a_note(tmp_path):
    df = pd.DataFrame({"m": [1, 1], "ai": [2, 3], "bi": [8, 7], "ci": [0, 0], "di": [10, 10]})
    long, wide, report = mb.meta_analyses(df, "m", "RR")
    causal = long[long["method"] == "causal"].iloc[0]
    assert np.isnan(causal["estimate"]) or not np.isfinite(causal["estimate"])
    assert any("undefined" in n for n in report["notes"])
    assert np.isfinite(long[long["method"] == "FE"]["estimate"].iloc[0])  # classical: continuity correction
