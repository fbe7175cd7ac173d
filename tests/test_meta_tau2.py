"""REML and Paule–Mandel τ² against an independent SciPy reference (issue 11, item 1).

The reference maximises the restricted log-likelihood written in matrix form,

    ℓ_R(τ²) = −½ [log|V| + log|XᵀV⁻¹X| + yᵀPy],   V = diag(v + τ²), X = 1, P = V⁻¹ − V⁻¹X(XᵀV⁻¹X)⁻¹XᵀV⁻¹,

over a fine grid on [0, 4U] (U bounds every stationary point), then solves its score ½(yᵀPPy − tr P) = 0 with
``scipy.optimize.brentq`` in the bracket around the best grid point (τ² = 0 when the best grid point is 0 and
the score there is ≤ 0). Paule–Mandel: ``brentq`` on Q(τ²) − (k − 1) with Q from weighted least squares. That is
what metafor 3.8's REML and PM compute with a tight control (threshold 1e-12); R is not available here, so these
data sets — τ² on the boundary, multimodal restricted likelihoods, k = 2, zero cells and a 6-study RR analysis
shaped like the Cochrane one where 100 fixed Fisher-scoring steps gave a wrong τ² — are checked against it.
"""

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import optimize

import mestim  # noqa: F401  (float64)
from estimators import meta_batch as mb
from estimators import meta_classical as mc

RTOL = 1e-9


# ------------------------------------------------------------------------------------------ reference
def escalc(a, b, c, d, measure):
    """metafor's escalc with add = 0.5 on the four cells of a study with a zero cell (written independently)."""
    a, b, c, d = (np.asarray(x, float) for x in (a, b, c, d))
    zero = (a == 0) | (b == 0) | (c == 0) | (d == 0)
    a, b, c, d = (x + 0.5 * zero for x in (a, b, c, d))
    n1, n0 = a + b, c + d
    if measure == "RR":
        return np.log(a / n1 / (c / n0)), 1 / a - 1 / n1 + 1 / c - 1 / n0
    if measure == "OR":
        return np.log(a * d / (b * c)), 1 / a + 1 / b + 1 / c + 1 / d
    p1, p0 = a / n1, c / n0
    return p1 - p0, p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0


def _p_matrix(t, v):
    vinv = np.diag(1 / (v + t))
    x = np.ones((v.size, 1))
    return vinv - vinv @ x @ np.linalg.inv(x.T @ vinv @ x) @ x.T @ vinv, vinv, x


def ref_loglik(t, y, v):
    p, vinv, x = _p_matrix(t, v)
    return -0.5 * (np.sum(np.log(v + t)) + np.linalg.slogdet(x.T @ vinv @ x)[1] + y @ p @ y)


def ref_score(t, y, v):
    p, _, _ = _p_matrix(t, v)
    return 0.5 * (y @ p @ p @ y - np.trace(p))


def ref_local_maxima(y, v, points=1000):
    """Local maxima of ℓ_R on a fine grid over [0, 4U]: [(τ², ℓ_R)], the boundary included."""
    k = y.size
    upper = 4 * (k * np.ptp(y) ** 2 + v.max()) / (k - 1)
    grid = np.concatenate([[0.0], np.geomspace(1e-6 * v.min(), upper, points)])
    ll = np.array([ref_loglik(t, y, v) for t in grid])
    peaks = [j for j in range(1, grid.size - 1) if ll[j] > ll[j - 1] and ll[j] >= ll[j + 1]]
    peaks = ([0] if ll[0] > ll[1] else []) + peaks
    return grid, ll, [(grid[j], ll[j]) for j in peaks]


def ref_reml(y, v):
    """The global maximiser of ℓ_R over τ² ≥ 0 (grid, then brentq on the score in the best bracket)."""
    y, v = np.asarray(y, float), np.asarray(v, float)
    if y.size < 2:
        return 0.0
    grid, ll, _ = ref_local_maxima(y, v)
    j = int(np.argmax(ll))
    if j == 0 and ref_score(0.0, y, v) <= 0:
        return 0.0
    lo, hi = grid[max(j - 1, 0)], grid[j + 1]
    return optimize.brentq(ref_score, lo, hi, args=(y, v), xtol=1e-300, rtol=1e-15)


def ref_paule_mandel(y, v):
    y, v = np.asarray(y, float), np.asarray(v, float)
    k = y.size

    def excess(t):
        w = 1 / (v + t)
        return np.sum(w * (y - np.average(y, weights=w)) ** 2) - (k - 1)

    if k < 2 or excess(0.0) <= 0:
        return 0.0
    hi = np.var(y) * k + v.max()
    while excess(hi) > 0:
        hi *= 2
    return optimize.brentq(excess, 0.0, hi, xtol=1e-300, rtol=1e-15)


def fisher_scoring_100_steps(y, v):
    """The algorithm this replaced: 100 Fisher-scoring steps from the DL estimate, truncated at 0 (no
    step-halving, no convergence test) — to show each data set below catches its failure."""
    w = 1 / v
    mu = np.sum(w * y) / w.sum()
    t = max(0.0, (np.sum(w * (y - mu) ** 2) - (y.size - 1)) / (w.sum() - np.sum(w ** 2) / w.sum()))
    for _ in range(100):
        w = 1 / (v + t)
        s1, s2, s3 = w.sum(), np.sum(w ** 2), np.sum(w ** 3)
        mu = np.sum(w * y) / s1
        t = max(0.0, t + (np.sum(w ** 2 * (y - mu) ** 2) - (s1 - s2 / s1)) / (s2 - 2 * s3 / s1 + (s2 / s1) ** 2))
    return t


def close(got, want, rtol=RTOL):
    return got == want if want == 0 else abs(got - want) <= rtol * abs(want)


def fit(y, v):
    y, v = np.asarray(y, float), np.asarray(v, float)
    reml = jax.jit(mc.tau2_reml_fit)(y, v, np.ones_like(y))
    pm = jax.jit(mc.tau2_paule_mandel_fit)(y, v, np.ones_like(y))
    return reml, pm


# ------------------------------------------------------------------------------------------ data sets
# 6 studies, RR (events/total per arm), zero cells in 5 of them: 100 fixed Fisher-scoring steps end at τ² = 0
# (they cycle through 0), where the REML maximum is 0.1426 (the Cochrane case: τ² = 0.00135 vs metafor's 0.0129)
RR6 = dict(ai=[0, 3, 341, 5, 3, 1], n1=[13, 294, 2092, 31, 204, 15], ci=[2, 0, 1, 7, 0, 0], n0=[138, 77, 20, 28, 46, 13])
# three precise studies that agree and two imprecise ones far apart: two local maxima, the global one at large τ²;
# the DL start climbs to the lower one (τ² ≈ 0.00175)
BIMODAL = (np.array([0.0, 0.05, -0.05, 3.0, -3.0]), np.array([0.001, 0.001, 0.001, 0.5, 0.5]))
# the global maximum on the boundary (τ² = 0) and a lower interior one at τ² ≈ 0.59, where the DL start ends
BOUNDARY_GLOBAL = (np.array([-0.8, -3.1, 0.1, 0.1, 0.1]), np.array([1.0, 1.0, 0.05, 0.1, 0.1]))
# RD with zero cells: global maximum at 0, a lower local one at τ² ≈ 0.0074, where the DL start ends
RD4 = dict(ai=[32, 0, 15, 0], n1=[200, 20, 50, 200], ci=[6, 2, 12, 0], n0=[20, 200, 20, 200])


def cells(t):
    a, n1, c, n0 = (np.asarray(t[x], float) for x in ("ai", "n1", "ci", "n0"))
    return a, n1 - a, c, n0 - c


# ------------------------------------------------------------------------------------------ tests
def test_reference_reproduces_the_bcg_metafor_values():
    """The SciPy reference itself equals metafor (tight control) on BCG, so agreeing with it is agreeing with
    metafor's definition."""
    import json
    import pathlib

    ref = json.loads((pathlib.Path(__file__).parent / "data" / "bcg_metafor_reference.json").read_text())
    bcg = mb.load_bcg()
    for measure in ("RR", "OR", "RD"):
        y, v = escalc(bcg.ai, bcg.bi, bcg.ci, bcg.di, measure)
        assert close(ref_reml(y, v), ref["results"][measure]["REML"]["tau2"], 1e-7)
        assert close(ref_paule_mandel(y, v), ref["results"][measure]["PM"]["tau2"], 1e-7)


def test_six_study_rr_where_fixed_fisher_scoring_failed():
    y, v = escalc(*cells(RR6), "RR")
    want = ref_reml(y, v)
    assert want == pytest.approx(0.1426, abs=1e-4)
    assert not close(fisher_scoring_100_steps(y, v), want, 1e-3)  # the old algorithm is wrong here
    reml, pm = fit(y, v)
    assert bool(reml.converged) and close(float(reml.tau2), want)
    assert bool(pm.converged) and close(float(pm.tau2), ref_paule_mandel(y, v))
    # through the table interface (continuity correction on the zero cells) and the batch path
    rows = {r["method"]: r for r in mc.classical_meta(*cells(RR6), measure="RR")}
    assert close(rows["REML"]["tau2"], want) and rows["REML"]["converged"]
    assert close(rows["PM"]["tau2"], ref_paule_mandel(y, v))


@pytest.mark.parametrize("name,data", [("bimodal", BIMODAL), ("boundary global", BOUNDARY_GLOBAL)])
def test_multimodal_restricted_likelihood_gives_the_global_maximum(name, data):
    y, v = data
    _, _, peaks = ref_local_maxima(y, v)
    assert len(peaks) == 2, peaks  # multimodal, verified numerically
    global_t = max(peaks, key=lambda p: p[1])[0]
    old = fisher_scoring_100_steps(y, v)
    lower_t = min(peaks, key=lambda p: p[1])[0]
    assert abs(old - lower_t) < 0.05 * max(lower_t, 1e-3)  # a fixed start ends at the lower maximum
    want = ref_reml(y, v)
    assert close(want, global_t, 0.01) or want == global_t == 0
    reml, _ = fit(y, v)
    assert bool(reml.converged) and int(reml.modes) == 2
    assert close(float(reml.tau2), want)
    assert ref_loglik(float(reml.tau2), y, v) >= max(p[1] for p in peaks) - 1e-12


def test_boundary_maximum_is_exactly_zero():
    # homogeneous studies: the score at 0 is negative, the maximum is on the boundary
    a, b, c, d = [10, 20, 30, 12], [90, 180, 270, 88], [20, 40, 60, 23], [80, 160, 240, 77]
    y, v = escalc(a, b, c, d, "RR")
    assert ref_score(0.0, y, v) < 0 and ref_reml(y, v) == 0
    reml, pm = fit(y, v)
    assert float(reml.tau2) == 0.0 and bool(reml.converged)
    assert float(pm.tau2) == 0.0 and bool(pm.converged)


def test_rd_with_zero_cells_and_two_local_maxima():
    y, v = escalc(*cells(RD4), "RD")
    _, _, peaks = ref_local_maxima(y, v)
    assert len(peaks) == 2 and peaks[0][0] == 0.0 and peaks[0][1] > peaks[1][1]
    assert fisher_scoring_100_steps(y, v) > 0.005  # the old algorithm: the lower, interior maximum
    rows = {r["method"]: r for r in mc.classical_meta(*cells(RD4), measure="RD")}
    assert rows["REML"]["tau2"] == 0.0 == ref_reml(y, v)
    assert close(rows["PM"]["tau2"], ref_paule_mandel(y, v))


@pytest.mark.parametrize("tables", [
    dict(ai=[12, 30], n1=[100, 120], ci=[25, 28], n0=[100, 118]),  # k = 2, heterogeneous
    dict(ai=[12, 13], n1=[100, 100], ci=[25, 26], n0=[100, 100]),  # k = 2, homogeneous: τ² = 0
    dict(ai=[0, 5], n1=[40, 60], ci=[4, 9], n0=[40, 60]),  # k = 2 with a zero cell
    dict(ai=[0, 2, 9, 0], n1=[30, 45, 80, 25], ci=[3, 7, 30, 6], n0=[30, 45, 80, 25]),  # zero cells
])
@pytest.mark.parametrize("measure", ["RR", "OR", "RD"])
def test_small_and_zero_cell_tables_equal_the_reference(tables, measure):
    y, v = escalc(*cells(tables), measure)
    rows = {r["method"]: r for r in mc.classical_meta(*cells(tables), measure=measure)}
    assert close(rows["REML"]["tau2"], ref_reml(y, v)) and rows["REML"]["converged"]
    assert close(rows["PM"]["tau2"], ref_paule_mandel(y, v)) and rows["PM"]["converged"]
    # the pooled estimate follows from τ²: inverse-variance weights 1/(v + τ²)
    w = 1 / (v + ref_reml(y, v))
    assert rows["REML"]["estimate"] == pytest.approx(np.sum(w * y) / w.sum(), rel=1e-9, abs=1e-15)


def random_tables(n_meta, seed):
    rng = np.random.default_rng(seed)
    recs = []
    for m in range(n_meta):
        for s in range(int(rng.integers(2, 9))):
            n1, n0 = np.exp(rng.uniform(np.log(8), np.log(2000), 2)).astype(int)
            p0 = np.exp(rng.uniform(np.log(0.003), np.log(0.6)))
            p1 = np.clip(p0 * np.exp(rng.normal(-0.2, 0.6)), 0.001, 0.99)
            recs.append({"meta": m, "event.e": rng.binomial(n1, p1), "n.e": n1, "event.c": rng.binomial(n0, p0),
                         "n.c": n0})
    return pd.DataFrame(recs)


@pytest.mark.parametrize("measure", ["RR", "RD"])
def test_batch_equals_reference_on_many_meta_analyses(measure):
    """Padded, vmapped batch: every REML and PM τ² equals the reference (each meta-analysis stops at its own
    convergence), including the data sets above."""
    df = random_tables(40, seed={"RR": 11, "RD": 12}[measure])
    extra = [pd.DataFrame({"meta": name, "event.e": t["ai"], "n.e": t["n1"], "event.c": t["ci"], "n.c": t["n0"]})
             for name, t in (("rr6", RR6), ("rd4", RD4))]
    df = pd.concat([df, *extra], ignore_index=True)
    long, _, report = mb.meta_analyses(df, "meta", measure)
    got = long.set_index(["meta_id", "method"])
    for mid, sub in df.groupby("meta", sort=False):
        a, n1, c, n0 = (sub[x].to_numpy(float) for x in ("event.e", "n.e", "event.c", "n.c"))
        y, v = escalc(a, n1 - a, c, n0 - c, measure)
        assert close(got.loc[(mid, "REML"), "tau2"], ref_reml(y, v)), mid
        assert close(got.loc[(mid, "PM"), "tau2"], ref_paule_mandel(y, v)), mid
    assert got.xs("REML", level="method")["converged"].all() and not report["warnings"]


def test_iteration_limit_is_reported_as_not_converged():
    y, v = BIMODAL
    ones = np.ones_like(y)
    reml = jax.jit(mc.tau2_reml_fit, static_argnames="iterations")(y, v, ones, iterations=1)
    pm = jax.jit(mc.tau2_paule_mandel_fit, static_argnames="iterations")(y, v, ones, iterations=1)
    assert not bool(reml.converged) and not bool(pm.converged)
    reml, pm = fit(y, v)
    assert bool(reml.converged) and bool(pm.converged)


def test_single_study_is_converged_at_zero():
    reml, pm = fit([0.3], [0.1])
    assert float(reml.tau2) == 0 == float(pm.tau2) and bool(reml.converged) and bool(pm.converged)


def test_restricted_loglik_equals_the_matrix_form():
    y, v = BIMODAL
    for t in (0.0, 0.01, 1.0, 3.0):
        assert float(mc.reml_loglik(t, y, v, np.ones_like(y))) == pytest.approx(ref_loglik(t, y, v), rel=1e-12)


def test_paule_mandel_solves_its_equation():
    """At the PM estimate the generalised Q equals k − 1 (so the Hartung–Knapp factor with PM is 1)."""
    y, v = BIMODAL
    ones = np.ones_like(y)
    t = float(mc.tau2_paule_mandel(y, v, ones))
    assert float(mc.generalised_q(t, y, v, ones)) == pytest.approx(y.size - 1, rel=1e-10)
    assert float(mc.generalised_q(0.0, y, v, ones)) == pytest.approx(
        np.sum((y - np.average(y, weights=1 / v)) ** 2 / v), rel=1e-12)  # Cochran's Q
