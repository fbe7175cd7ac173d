"""The command line's surface (issue 17): reading European CSVs, empty meta-analysis ids, tables out, JSON fields,
labels and messages, plots, progress, and the small things — each checked against the library's own answer."""

import json

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
