"""Meta-analysis of participant rows held by sites (issue 20): ``meta_analysis(sites=…)`` and ``mestim meta --sites``
give the results of the 2×2 tables of the pooled rows (built here independently, with pandas' crosstab), and a site
refuses what it must (a small study arm, a missing column, counts it did not allow)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from estimators import meta_batch as mb
from estimators.cli import main
from estimators.generalized_linear import glm
from estimators.meta_federated import meta_counts
from mestim import federated as F
from mestim.errors import DataError

# study: (rows in arm 1, arm 0; risk in arm 1, arm 0). Study 3 has no event in arm 1 (a zero cell, kept);
# study 5's rows are at two sites (a multicentre trial: its counts are summed).
STUDIES = {1: (40, 45, 0.2, 0.3), 2: (60, 55, 0.1, 0.25), 3: (30, 35, 0.0, 0.2), 4: (80, 70, 0.3, 0.3),
           5: (50, 50, 0.15, 0.35), 6: (25, 30, 0.4, 0.5)}
HELD = {"north": [1, 2], "south": [3, 4, 5], "east": [5, 6]}


def _participants(seed=0) -> pd.DataFrame:
    """One row per participant (study, treatment 1/0, outcome 1/0, a review id and a frequency weight 1–3)."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, (n1, n0, r1, r0) in STUDIES.items():
        for arm, n, risk in ((1, n1, r1), (0, n0, r0)):
            parts.append(pd.DataFrame({"study": k, "treatment": arm, "outcome": (rng.random(n) < risk).astype(int)}))
    rows = pd.concat(parts, ignore_index=True)
    rows["review"] = np.where(rows.study <= 3, "A", "B")
    rows["w"] = rng.integers(1, 4, len(rows))
    rows["half"] = rng.permutation(np.arange(len(rows)) % 2)  # which site holds a row of study 5
    return rows


def _sites(rows) -> dict:
    five = {"south": rows.half == 0, "east": rows.half == 1}
    return {site: rows[rows.study.isin([k for k in ks if k != 5]) | ((rows.study == 5) & five.get(site, False))]
            .drop(columns="half").reset_index(drop=True) for site, ks in HELD.items()}


def _pooled_tables(rows, weights=None, by=()) -> pd.DataFrame:
    """The 2×2 tables of the pooled rows: participants (Σw) and events (Σw·outcome) per study and arm."""
    w = rows[weights] if weights else pd.Series(1, index=rows.index)
    keys = [rows[b] for b in by] + [rows.study]
    n = pd.crosstab(keys, rows.treatment, values=w, aggfunc="sum").fillna(0)
    e = pd.crosstab(keys, rows.treatment, values=w * rows.outcome, aggfunc="sum").fillna(0)
    out = n.index.to_frame(index=False)
    out["ai"], out["bi"], out["ci"], out["di"] = e[1].values, (n[1] - e[1]).values, e[0].values, (n[0] - e[0]).values
    return out


def _same_frames(fed: pd.DataFrame, pooled: pd.DataFrame):
    assert list(fed.columns) == list(pooled.columns) and len(fed) == len(pooled)
    for c in fed.columns:
        a, b = fed[c].to_numpy(), pooled[c].to_numpy()
        if a.dtype.kind in "fiu" and b.dtype.kind in "fiu":
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=0, atol=1e-10, err_msg=c)
        else:
            assert [x if x == x else None for x in a] == [x if x == x else None for x in b], c


def test_sites_equal_the_pooled_rows_tables():
    """Every method (causal with its three SEs, FE, DL, REML, PM, HK, MH), every field, for RR and RD, with and
    without frequency weights: the sites' counts give the pooled rows' 2×2 tables exactly."""
    rows = _participants()
    sites = _sites(rows)
    sites["east"] = sites["east"].astype({"treatment": bool, "outcome": float})  # arms True/False, events 1.0/0.0
    for measure in ("RR", "RD"):
        fed, report = mb.meta_analysis(sites=sites, measure=measure)
        pooled, _ = mb.meta_analysis(_pooled_tables(rows), measure=measure)
        _same_frames(fed, pooled)
    assert report["studies"].loc[report["studies"].study == "3", "ai"].item() == 0  # a zero cell passes
    assert "from the counts of 3 site(s) (east, north, south)" in report["notes"][0]
    assert "1 stud(ies) with rows at several sites, their counts summed" in report["notes"][1]
    assert "5 (sites east, south)" in report["notes"][1]
    weighted, _ = mb.meta_analysis(sites=sites, measure="OR", columns={"weights": "w"})
    _same_frames(weighted, mb.meta_analysis(_pooled_tables(rows, "w"), measure="OR")[0])
    long, wide, _ = mb.meta_analyses(None, "review", "RR", sites=sites)
    ref_long, ref_wide, _ = mb.meta_analyses(_pooled_tables(rows, by=["review"]), "review", "RR")
    _same_frames(long, ref_long)
    _same_frames(wide, ref_wide)
    with pytest.raises(F.SpecificationError, match="not both"):
        mb.meta_analysis(_pooled_tables(rows), sites=sites)


def test_a_study_arm_under_min_rows_is_refused_naming_it_and_logged(tmp_path):
    rows = _participants()
    sites = _sites(rows)
    sites["east"] = pd.concat([sites["east"], rows[(rows.study == 2) & (rows.treatment == 0)].head(4)
                               .drop(columns="half")], ignore_index=True)  # 4 rows of study 2's control arm
    with pytest.raises(F.FederatedError, match=r"site 'east' refused the counts 'meta-2x2': disclosure control: "
                                               r"1 group\(s\) .*fewer than min_rows = 10 rows \(the rows where "
                                               r"study = 2, treatment = 0\).*leave those groups out"):
        mb.meta_analysis(sites=sites)
    counts = meta_counts()
    allowed = {n: F.Site(n, t, estimators=[counts], log=tmp_path / f"{n}.jsonl") for n, t in _sites(rows).items()}
    released = F.tabulate(counts, F.Loopback(allowed), coordinator="analyst@uni")
    log = [json.loads(line) for line in (tmp_path / "north.jsonl").read_text().splitlines()]
    assert [e["rows"] for e in log] == released[released.site == "north"].rows.tolist() == [45, 40, 55, 60]
    assert log[0]["to"] == "analyst@uni" and log[0]["what"] == ("'meta-2x2': rows, Σw and Σw·outcome where "
                                                                "study = 1, treatment = 0")


def test_a_site_missing_a_column_or_not_allowing_the_counts_refuses():
    rows = _participants()
    sites = _sites(rows)
    sites["south"] = sites["south"].rename(columns={"outcome": "died"})
    with pytest.raises(F.FederatedError, match=r"site 'south' refused .*the column\(s\) \['outcome'\] of "
                                               r"'meta-2x2' are not in this site's table"):
        mb.meta_analysis(sites=sites)
    sites = _sites(rows)
    mine = meta_counts("meta-2x2", "1", outcome="outcome")
    network = F.Loopback({n: F.Site(n, t, estimators=[mine]) for n, t in sites.items()})
    with pytest.raises(F.FederatedError, match=r"'meta-2x2' counts .*\"w\".* in the request, .*null.* here"):
        F.tabulate(meta_counts("meta-2x2", "1", weights="w"), network)
    with pytest.raises(F.FederatedError, match="'counts-v2' is not allowed at this site"):
        F.tabulate(meta_counts("counts-v2", "1"), network)
    a_fit = F.Estimator("meta-2x2", "1", [glm("m", "outcome", formula="~ treatment", family="binomial")])
    fit_only = F.Loopback({n: F.Site(n, t, estimators=[a_fit]) for n, t in sites.items()})
    with pytest.raises(F.FederatedError, match="counts .* in the request, \"an estimator fit\" here"):
        F.tabulate(mine, fit_only)
    bad = dict(sites, north=sites["north"].assign(treatment=lambda d: d.treatment + 1))
    with pytest.raises(DataError, match="treatment column 'treatment' holds \\[2\\] at the sites: code the arms"):
        mb.meta_analysis(sites=bad)
    blank = dict(sites, north=sites["north"].astype({"outcome": float}))
    blank["north"].loc[3, "outcome"] = np.nan
    with pytest.raises(F.FederatedError, match=r"site 'north' refused .*\['outcome'\] have missing values"):
        mb.meta_analysis(sites=blank)


def _numbers_equal(a, b, path="json"):
    """Every number of two JSON documents to 1e-10, everything else equal (``skip``: fields that name the input)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k not in ("source", "meta_id", "notes"):
                _numbers_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _numbers_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert math.isclose(a, b, rel_tol=0, abs_tol=1e-10), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_cli_sites_equals_cli_on_the_pooled_tables(tmp_path):
    """``mestim meta --sites sites.toml`` (sites' own column names in its [columns] table) writes the JSON of
    ``mestim meta tables.csv`` on the pooled rows' tables, one meta-analysis and with --by; --plot draws."""
    rows = _participants()
    names = {"study": "trial", "treatment": "arm", "outcome": "death"}
    for site, table in _sites(rows).items():
        table.rename(columns=names).to_csv(tmp_path / f"{site}.csv", index=False)
    (tmp_path / "sites.toml").write_text("".join(f'{s} = "{tmp_path / s}.csv"\n' for s in HELD)
                                         + "\n[columns]\n" + "".join(f'{k} = "{v}"\n' for k, v in names.items()))
    _pooled_tables(rows).to_csv(tmp_path / "tables.csv", index=False)
    _pooled_tables(rows, by=["review"]).to_csv(tmp_path / "by.csv", index=False)
    for extra, tables in (([], "tables.csv"), (["--by", "review", "--classical", "dl"], "by.csv")):
        common = ["--measure", "OR", "--quiet", *extra]
        assert main(["meta", "--sites", str(tmp_path / "sites.toml"), *common, "--json", str(tmp_path / "fed.json"),
                     "--plot", str(tmp_path / "fed.png")]) == 0
        assert main(["meta", str(tmp_path / tables), *common, "--json", str(tmp_path / "pooled.json")]) == 0
        fed, pooled = (json.loads((tmp_path / f).read_text()) for f in ("fed.json", "pooled.json"))
        assert len(fed["results"]) == (9 if not extra else 2 * 9)
        _numbers_equal(fed, pooled)
        assert fed["source"] == "3 sites (north, south, east), federated (simulated)"
        assert (tmp_path / "fed.png").stat().st_size > 0
    assert main(["meta", "--sites", str(tmp_path / "sites.toml"), "--columns", "outcome=nothere", "--quiet"]) == 2
