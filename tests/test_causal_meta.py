"""Causal meta-analysis (Berenfeld et al. 2026) as an M-estimation stack: BCG reference values, the sandwich on the
weighted table vs the expanded rows, and every SE against an independent NumPy closed form."""

import pathlib
import sys

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))  # the benchmarks' data generators

import mestim  # noqa: E402
from benchmarks.workloads import cochrane_like  # noqa: E402
from estimators import causal_meta as cm  # noqa: E402
from estimators import meta_batch as mb  # noqa: E402
from mestim.errors import DataError  # noqa: E402

BCG = mb.load_bcg()
COUNTS = [BCG[c].to_numpy(float) for c in ("ai", "bi", "ci", "di")]
# /work/shared/data/README.md: computed independently
REF_PSI1, REF_PSI0, REF_RD, REF_N = 0.0056793800117474, 0.00896440775023283, -0.00328502773848543, 357347


def numpy_causal_ses(a, b, c, d, measure):
    """Independent closed forms, written with explicit loops over studies (H random: sandwich and paper; weights
    fixed: design)."""
    K = len(a)
    n1 = [a[k] + b[k] for k in range(K)]
    n0 = [c[k] + d[k] for k in range(K)]
    nk = [n1[k] + n0[k] for k in range(K)]
    n = sum(nk)
    r1 = [a[k] / n1[k] for k in range(K)]
    r0 = [c[k] / n0[k] for k in range(K)]
    p1 = sum(nk[k] / n * r1[k] for k in range(K))
    p0 = sum(nk[k] / n * r0[k] for k in range(K))
    # Var(ψ̂) for the sandwich: influence function φ_a = r_a(H) − ψ_a + I(A=a)(Y − r_a(H))·n_H/n_a(H), summed over cells
    v = np.zeros((2, 2))
    for k in range(K):
        for arm, (ev, ne) in ((1, (a[k], b[k])), (0, (c[k], d[k]))):
            for y, cnt in ((1, ev), (0, ne)):
                phi = np.array([r1[k] - p1, r0[k] - p0])
                ra, na = (r1[k], n1[k]) if arm == 1 else (r0[k], n0[k])
                phi[1 - arm] += (y - ra) * nk[k] / na
                v += cnt * np.outer(phi, phi)
    v /= n ** 2
    g = {"RD": (1, -1), "RR": (1 / p1, -1 / p0), "OR": (1 / (p1 * (1 - p1)), -1 / (p0 * (1 - p0))),
         "SR": (-1 / (1 - p1), 1 / (1 - p0))}[measure]
    g = np.array(g, float)
    sandwich = np.sqrt(g @ v @ g)
    paper = np.sqrt(g[0] ** 2 * v[0, 0] + g[1] ** 2 * v[1, 1])
    vd1 = sum((nk[k] / n) ** 2 * r1[k] * (1 - r1[k]) / n1[k] for k in range(K))
    vd0 = sum((nk[k] / n) ** 2 * r0[k] * (1 - r0[k]) / n0[k] for k in range(K))
    design = np.sqrt(g[0] ** 2 * vd1 + g[1] ** 2 * vd0)
    return {"sandwich": sandwich, "paper": paper, "design": design, "psi1": p1, "psi0": p0, "n": n}


@pytest.fixture(scope="module")
def bcg_rd_fit():
    return cm.fit_causal_meta(*COUNTS, measure="RD")


def test_bcg_reference_values(bcg_rd_fit):
    r = bcg_rd_fit
    assert r["target"][0] == pytest.approx(REF_PSI1, rel=1e-12)
    assert r["target"][1] == pytest.approx(REF_PSI0, rel=1e-12)
    assert r["contrast"][0] == pytest.approx(REF_RD, rel=1e-12)
    assert r.n == REF_N


def test_rd_equals_sample_size_weighted_average_of_study_rds(bcg_rd_fit):
    a, b, c, d = COUNTS
    nk = a + b + c + d
    rd_k = a / (a + b) - c / (c + d)
    assert bcg_rd_fit["contrast"][0] == pytest.approx(np.sum(nk / nk.sum() * rd_k), rel=1e-12)


def test_bcg_engine_se_equals_numpy_closed_form(bcg_rd_fit):
    ref = numpy_causal_ses(*COUNTS, "RD")
    se = bcg_rd_fit.se[bcg_rd_fit.index("contrast")][0]
    assert se == pytest.approx(ref["sandwich"], rel=1e-10)
    # the engine's Var(ψ̂_a) equals the paper's printed σ̂_a²/n; its covariance term is what the paper leaves out
    s1, s0 = cm.paper_variance_psi(*COUNTS)
    v = bcg_rd_fit.vcov[np.ix_(bcg_rd_fit.index("target"), bcg_rd_fit.index("target"))]
    assert v[0, 0] == pytest.approx(s1 / REF_N, rel=1e-10)
    assert v[1, 1] == pytest.approx(s0 / REF_N, rel=1e-10)
    assert v[0, 1] > 0


@pytest.mark.parametrize("measure", ["RD", "RR", "OR", "SR"])
def test_closed_form_ses_equal_numpy(measure):
    ref = numpy_causal_ses(*COUNTS, measure)
    cf = cm.causal_closed_form(*COUNTS, measure=measure)
    for var in ("sandwich", "paper", "design"):
        assert float(cf[f"se_{var}"]) == pytest.approx(ref[var], rel=1e-10)
    assert float(cf["psi1"]) == pytest.approx(REF_PSI1, rel=1e-12)


def test_bcg_rr_engine_design_variant_equals_closed_form():
    res = cm.fit_causal_meta(*COUNTS, measure="RR", variance="design")
    ref = numpy_causal_ses(*COUNTS, "RR")
    assert res.se[res.index("contrast")][0] == pytest.approx(ref["design"], rel=1e-10)
    assert "shares" not in res.blocks


SMALL = (np.array([3.0, 0, 5]), np.array([7.0, 6, 4]), np.array([2.0, 1, 6]), np.array([9.0, 4, 2]))


def expanded(a, b, c, d):
    rows = cm.causal_meta_rows(a, b, c, d)
    cnt = rows.pop("cm_count").astype(int)
    return {k: np.repeat(v, cnt, axis=0) for k, v in rows.items()}


@pytest.mark.parametrize("measure", ["RD", "RR", "OR", "SR"])
@pytest.mark.parametrize("variance", ["sandwich", "design"])
def test_weighted_table_equals_expanded_rows(measure, variance):
    """Counts as frequency weights are the expanded rows (an identity: exact at any n), and both equal the closed
    form."""
    weighted = cm.fit_causal_meta(*SMALL, measure=measure, variance=variance)
    rows = mestim.fit(cm.causal_meta_blocks(*SMALL, measure, variance), expanded(*SMALL))
    assert rows.n_rows == int(sum(x.sum() for x in SMALL)) and weighted.n_rows == 12
    np.testing.assert_allclose(weighted.theta, rows.theta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weighted.vcov, rows.vcov, rtol=1e-10, atol=1e-16)
    assert weighted.se[-1] == pytest.approx(numpy_causal_ses(*SMALL, measure)[variance], rel=1e-10)


def test_user_target_weights():
    w = np.array([0.2, 0.5, 0.3])
    a, b, c, d = SMALL
    cf = cm.causal_closed_form(a, b, c, d, measure="RD", target_weights=w)
    r1, r0 = a / (a + b), c / (c + d)
    assert float(cf["estimate"]) == pytest.approx(w @ (r1 - r0), rel=1e-12)
    v = np.sum(w ** 2 * (r1 * (1 - r1) / (a + b) + r0 * (1 - r0) / (c + d)))
    assert float(cf["se_sandwich"]) == pytest.approx(np.sqrt(v), rel=1e-12)
    assert np.isnan(float(cf["se_paper"]))
    # the weights are normalised: any positive multiple is the same target
    cf2 = cm.causal_closed_form(a, b, c, d, measure="RD", target_weights=10 * w)
    assert float(cf2["estimate"]) == pytest.approx(float(cf["estimate"]), rel=1e-12)


def test_zero_event_arm_is_fine_for_rd_and_ratio_needs_events():
    a, b, c, d = SMALL  # study 2 has no treated events
    out = cm.causal_meta(a, b, c, d, measure="RR", use_engine=False)
    assert np.isfinite(out["estimate"]) and np.isfinite(out["se"])
    with pytest.raises(DataError, match="not defined"):
        cm.causal_meta([0, 0], [5, 5], [1, 2], [4, 3], measure="RR", use_engine=False)


def test_empty_arm_is_rejected_by_the_estimator_and_excluded_by_the_table_reader():
    with pytest.raises(DataError, match="empty arm"):
        cm.causal_meta([1, 2], [3, 0], [1, 0], [4, 0], measure="RD", use_engine=False)
    df = pd.DataFrame({"ai": [1, 2], "bi": [3, 0], "ci": [1, 0], "di": [4, 0]})
    tables, report = mb.standardise_tables(df)
    assert len(tables) == 1
    assert report["excluded"][0]["row"] == 2 and "no participants" in report["excluded"][0]["reason"]


def test_single_study_causal_is_the_study_estimate():
    out = cm.causal_meta([4], [96], [8], [92], measure="RD", use_engine=False)
    assert out["estimate"] == pytest.approx(0.04 - 0.08)
    # one study: the sandwich equals the design-based SE (no between-study variation)
    assert out["se"] == pytest.approx(out["se_design"], rel=1e-12)


def test_batch_causal_equals_single():
    recs = []
    rng = np.random.default_rng(3)
    for m in range(6):
        for s in range(int(rng.integers(1, 6))):
            n1, n0 = rng.integers(10, 200, 2)
            recs.append({"meta": m, "ai": rng.binomial(n1, 0.2), "ci": rng.binomial(n0, 0.3), "n1": n1, "n0": n0})
    df = pd.DataFrame(recs)
    df["bi"], df["di"] = df["n1"] - df["ai"], df["n0"] - df["ci"]
    long, wide, _ = mb.meta_analyses(df[["meta", "ai", "bi", "ci", "di"]], "meta", "OR")
    for mid, sub in df.groupby("meta"):
        ref = numpy_causal_ses(*(sub[x].to_numpy(float) for x in ("ai", "bi", "ci", "di")), "OR")
        row = long[(long["meta_id"] == mid) & (long["method"] == "causal")].iloc[0]
        assert row["se"] == pytest.approx(ref["sandwich"], rel=1e-10)
        assert row["se_paper"] == pytest.approx(ref["paper"], rel=1e-10)


@pytest.mark.parametrize("measure", ["RD", "RR", "OR", "SR"])
def test_small_k_engine_check_equals_the_closed_form_with_zero_cells(measure):
    """Up to ENGINE_MAX_K studies the engine's stacked fit checks the closed form: equal to 1e-10 on tables with
    zero cells and rare events, every measure."""
    counts = [cochrane_like(12, seed=5)[c].to_numpy(float) for c in ("ai", "bi", "ci", "di")]
    assert (np.stack(counts) == 0).any()
    res = cm.fit_causal_meta(*counts, measure=measure)
    cf = cm.causal_closed_form(*counts, measure=measure)
    assert res["contrast"][0] == pytest.approx(float(cf["estimate"]), rel=1e-10)
    assert res.se[res.index("contrast")][0] == pytest.approx(float(cf["se_sandwich"]), rel=1e-10)
    ref = numpy_causal_ses(*counts, measure)
    assert float(cf["se_sandwich"]) == pytest.approx(ref["sandwich"], rel=1e-10)


def test_a_meta_analysis_of_2728_studies_is_closed_form_and_fast(monkeypatch):
    """A collection read without --by (k = 2,728) never reaches the engine's cubic stack: seconds, not an 18 GB
    dense bread; the note says which SE was used; the closed form equals the independent loops."""
    import time

    monkeypatch.setattr(cm, "fit_causal_meta", lambda *a, **k: pytest.fail("the engine ran at k = 2,728"))
    df = cochrane_like(2728)
    start = time.perf_counter()
    long, report = mb.meta_analysis(df, "RR", use_engine=True)
    assert time.perf_counter() - start < 10
    causal = long.set_index("method").loc["causal"]
    assert causal["k"] == 2728 and any("closed form (2728 studies" in n for n in report["notes"])
    ref = numpy_causal_ses(*(df[c].to_numpy(float) for c in ("ai", "bi", "ci", "di")), "RR")
    assert causal["se"] == pytest.approx(ref["sandwich"], rel=1e-10)


def test_an_engine_that_disagrees_with_the_closed_form_is_a_warning(monkeypatch):
    real = cm.fit_causal_meta

    def off(*args, **kw):
        res = real(*args, **kw)
        res.vcov[-1, -1] *= 1.01
        return res

    monkeypatch.setattr(cm, "fit_causal_meta", off)
    with pytest.warns(mestim.MestimWarning, match="disagree"):
        cm.causal_meta(*SMALL, measure="RD")


@pytest.mark.parametrize("measure", ["RD", "RR", "OR", "SR"])
def test_the_stack_in_numpy_equals_the_engine_and_the_closed_form(measure):
    """The command line's check (the engine's stack worked out in NumPy, complex-step bread) gives the engine's
    estimate and SE to 1e-10 on tables with zero cells, and so the closed form's; user target weights too."""
    counts = [cochrane_like(12, seed=5)[c].to_numpy(float) for c in ("ai", "bi", "ci", "di")]
    for weights in (None, np.linspace(1.0, 2.0, 12)):
        res = cm.fit_causal_meta(*counts, measure=measure, target_weights=weights)
        estimate, se = cm.stack_in_numpy(*counts, measure=measure, target_weights=weights)
        assert estimate == pytest.approx(float(res["contrast"][0]), rel=1e-10)
        assert se == pytest.approx(float(res.se[res.index("contrast")][0]), rel=1e-10)
        cf = cm.causal_closed_form(*counts, measure=measure, target_weights=weights)
        assert se == pytest.approx(float(cf["se_sandwich"]), rel=1e-10)


def test_the_command_line_check_compiles_nothing_and_warns_on_disagreement(monkeypatch):
    """meta_analysis(use_engine=False) (what `mestim meta` runs) checks the closed form without compiling a
    program; a check that disagrees is a warning."""
    with mestim.compilations() as count:
        long, _ = mb.meta_analysis(None, "RR", use_engine=False)
    assert count.programs == 0
    engine = mb.meta_analysis(None, "RR", use_engine=True)[0].set_index("method").loc["causal"]
    causal = long.set_index("method").loc["causal"]
    assert causal["se"] == pytest.approx(engine["se"], rel=1e-10)
    real = cm.stack_in_numpy
    monkeypatch.setattr(cm, "stack_in_numpy", lambda *a, **k: (real(*a, **k)[0], 1.01 * real(*a, **k)[1]))
    with pytest.warns(mestim.MestimWarning, match="the stack worked out in NumPy.*disagree"):
        cm.causal_meta(*SMALL, measure="RD", use_engine=False)
