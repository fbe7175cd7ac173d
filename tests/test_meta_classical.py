"""Classical meta-analysis of 2×2 tables against R's metafor 3.8.1 (tests/data/bcg_metafor_reference.json, produced
with escalc + rma(control=list(threshold=1e-12, tol=1e-12)); see its "produced_with" field) to ≤ 1.3e-10 relative
(the largest difference, 1.27e-10 in the RD Paule–Mandel CI, is metafor's uniroot tolerance), Mantel–Haenszel
against statsmodels and textbook closed forms, and batch (vmap, padded) against one-at-a-time."""

import json
import pathlib

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.contingency_tables import StratifiedTable

import mestim  # noqa: F401
from estimators import meta_batch as mb
from estimators import meta_classical as mc

REF = json.loads((pathlib.Path(__file__).parent / "data" / "bcg_metafor_reference.json").read_text())
BCG = mb.load_bcg()
COUNTS = [BCG[c].to_numpy(float) for c in ("ai", "bi", "ci", "di")]
METHOD_NAMES = {"FE": "FE", "DL": "DL", "REML": "REML", "PM": "PM", "DL_knha": "DL_HK", "REML_knha": "REML_HK"}
FIELDS = ("estimate", "se", "ci_low", "ci_high", "tau2", "I2", "Q", "k")


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300) if b != 0 else abs(a)


@pytest.fixture(scope="module")
def core():
    return mc.classical_core(*COUNTS)


def test_reference_provenance():
    assert "metafor 3.8.1" in REF["produced_with"]
    assert set(REF["results"]) == {"RR", "OR", "RD"}


@pytest.mark.parametrize("measure", ["RR", "OR", "RD"])
def test_effect_sizes_equal_metafor_escalc(measure):
    y, v = mc.effect_sizes(*COUNTS, measure)
    ref = REF["results"][measure]["per_study_escalc"]
    np.testing.assert_allclose(np.asarray(y), ref["yi"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(v), ref["vi"], rtol=1e-6)


@pytest.mark.parametrize("measure", ["RR", "OR", "RD"])
def test_every_method_equals_metafor(core, measure):
    rows = {r["method"]: r for r in mc.summary_rows(core[measure], measure)}
    worst = 0.0
    for ref_name, ref in REF["results"][measure].items():
        if ref_name == "per_study_escalc":
            continue
        mine = rows[METHOD_NAMES[ref_name]]
        for f in FIELDS:
            d = rel(mine[f], ref[f])
            worst = max(worst, d)
            assert d <= 1.3e-10, (measure, ref_name, f, mine[f], ref[f])
    assert worst < 1.3e-10


def test_hartung_knapp_with_paule_mandel_is_unscaled(core):
    # PM solves Q(τ²) = k − 1, so the Hartung–Knapp factor is exactly 1
    assert core["RR"]["PM_hk"] == pytest.approx(1.0, abs=1e-9)


def _strata(a, b, c, d):
    return StratifiedTable([np.array([[a[i], b[i]], [c[i], d[i]]]) for i in range(len(a))])


def test_mantel_haenszel_or_equals_statsmodels(core):
    st = _strata(*COUNTS)
    assert core["OR"]["MH_est"] == pytest.approx(st.logodds_pooled, rel=1e-10)
    assert core["OR"]["MH_se"] == pytest.approx(st.logodds_pooled_se, rel=1e-10)


def test_mantel_haenszel_rr_equals_statsmodels_and_greenland_robins(core):
    st = _strata(*COUNTS)
    assert np.exp(core["RR"]["MH_est"]) == pytest.approx(st.riskratio_pooled, rel=1e-10)
    a, b, c, d = COUNTS
    n1, n0, n = a + b, c + d, a + b + c + d
    num = sum((n1[i] * n0[i] * (a[i] + c[i]) - a[i] * c[i] * n[i]) / n[i] ** 2 for i in range(len(a)))
    r = sum(a[i] * n0[i] / n[i] for i in range(len(a)))
    s = sum(c[i] * n1[i] / n[i] for i in range(len(a)))
    assert core["RR"]["MH_se"] == pytest.approx(np.sqrt(num / (r * s)), rel=1e-10)


def test_mantel_haenszel_rd_closed_form(core):
    a, b, c, d = COUNTS
    est_num = est_den = var_num = 0.0
    for i in range(len(a)):
        n1, n0 = a[i] + b[i], c[i] + d[i]
        n = n1 + n0
        est_num += (a[i] * n0 - c[i] * n1) / n
        est_den += n1 * n0 / n
        var_num += (a[i] * b[i] * n0 ** 3 + c[i] * d[i] * n1 ** 3) / (n1 * n0 * n ** 2)
    assert core["RD"]["MH_est"] == pytest.approx(est_num / est_den, rel=1e-12)
    assert core["RD"]["MH_se"] == pytest.approx(np.sqrt(var_num) / est_den, rel=1e-12)


def test_continuity_correction_only_for_studies_with_a_zero_cell():
    y, v = mc.effect_sizes([0, 4], [10, 6], [3, 2], [7, 8], "OR")
    assert np.asarray(y)[0] == pytest.approx(np.log(0.5 * 7.5 / (10.5 * 3.5)))
    assert np.asarray(v)[0] == pytest.approx(1 / 0.5 + 1 / 10.5 + 1 / 3.5 + 1 / 7.5)
    assert np.asarray(y)[1] == pytest.approx(np.log(4 * 8 / (6 * 2)))


def test_single_study_is_defined():
    rows = {r["method"]: r for r in mc.classical_meta([4], [96], [8], [92], "RR")}
    y, v = mc.effect_sizes([4], [96], [8], [92], "RR")
    for m in ("FE", "DL", "REML", "PM"):
        assert rows[m]["estimate"] == pytest.approx(float(y[0]))
        assert rows[m]["se"] == pytest.approx(float(np.sqrt(v[0])))
        assert rows[m]["tau2"] == 0 and rows[m]["k"] == 1 and np.isnan(rows[m]["I2"])
    assert np.isnan(rows["DL_HK"]["ci_low"]) and np.isnan(rows["REML"]["pi_low"])


def test_homogeneous_studies_give_zero_tau2():
    rows = {r["method"]: r for r in mc.classical_meta([10, 20, 30], [90, 180, 270], [20, 40, 60],
                                                      [80, 160, 240], "RR")}
    for m in ("DL", "REML", "PM"):
        assert rows[m]["tau2"] == 0
        assert rows[m]["estimate"] == pytest.approx(rows["FE"]["estimate"], rel=1e-12)


def random_long_table(n_meta=40, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for m in range(n_meta):
        k = int(rng.integers(1, 12))
        for s in range(k):
            n1, n0 = rng.integers(5, 300, 2)
            p0 = rng.uniform(0.01, 0.5)
            p1 = np.clip(p0 * rng.lognormal(0, 0.6), 0.001, 0.95)
            e1, e0 = rng.binomial(n1, p1), rng.binomial(n0, p0)
            recs.append({"meta": f"m{m}", "study": s, "event.e": e1, "n.e": n1, "event.c": e0, "n.c": n0})
    return pd.DataFrame(recs)


@pytest.mark.parametrize("measure", ["RR", "OR", "RD"])
def test_batch_equals_one_at_a_time(measure):
    df = random_long_table()
    long, wide, report = mb.meta_analyses(df, "meta", measure)
    assert len(wide) == df["meta"].nunique()
    for mid, sub in list(df.groupby("meta"))[:15]:
        a, n1, c, n0 = (sub[x].to_numpy(float) for x in ("event.e", "n.e", "event.c", "n.c"))
        single = {r["method"]: r for r in mc.classical_meta(a, n1 - a, c, n0 - c, measure)}
        got = long[long["meta_id"] == mid].set_index("method")
        for meth, r in single.items():
            for f in ("estimate", "se", "ci_low", "ci_high", "tau2", "I2", "Q", "pi_low", "pi_high"):
                np.testing.assert_allclose(got.loc[meth, f], r[f], rtol=1e-9, atol=1e-14, equal_nan=True,
                                           err_msg=f"{mid} {meth} {f}")


@pytest.mark.parametrize("measure", ["RR", "OR", "RD"])
def test_batch_bcg_equals_metafor(measure):
    df = BCG.assign(meta="bcg")
    long, wide, _ = mb.meta_analyses(df, "meta", measure)
    got = long.set_index("method")
    for ref_name, ref in REF["results"][measure].items():
        if ref_name != "per_study_escalc":
            for f in FIELDS:
                assert rel(got.loc[METHOD_NAMES[ref_name], f], ref[f]) <= 1.3e-10, (ref_name, f)
