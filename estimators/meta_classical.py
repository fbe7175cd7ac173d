"""Classical meta-analysis of 2×2 tables: per-study effect sizes, inverse-variance fixed and random effects,
Hartung–Knapp, Mantel–Haenszel, heterogeneity (Q, I², τ²) and prediction intervals.

Notation (metafor's): study i has ``ai`` events and ``bi`` non-events in arm 1 (treated), ``ci`` events and
``di`` non-events in arm 0 (control); n1 = ai + bi, n0 = ci + di, n = n1 + n0.

Every core function here is a small pure JAX function of *padded* per-study arrays and a study mask
(``mask[i] = 1`` for a real study, 0 for padding), so the same code runs on one meta-analysis (``jax.jit``)
and on thousands at once (``jax.vmap`` over meta-analyses, see :mod:`estimators.meta_batch`). Iterative
τ² estimators use fixed-iteration ``lax`` loops (Fisher scoring for REML, bisection for Paule–Mandel), so
they vmap. Critical values that depend on k (t quantiles for Hartung–Knapp) are computed on the host.

Conventions follow R's metafor (Viechtbauer 2010, *J Stat Softw* 36(3)); the results on the BCG trials equal
metafor 3.8.1's to ≤ 1e-6 relative (``tests/test_meta_classical.py``):

- effect sizes (``escalc``): log RR, log OR, RD with large-sample variances; continuity correction ``add=0.5``
  added to all four cells of a study with a zero cell (``to="only0"``), for all three measures;
- fixed effect: inverse-variance weights w = 1/v; μ̂ = Σwy/Σw, SE = (Σw)^(-1/2); Wald z CI;
- random effects: w* = 1/(v + τ̂²), μ̂ = Σw*y/Σw*, SE = (Σw*)^(-1/2); Wald z CI;
- Hartung–Knapp (metafor ``test="knha"``): SE_HK = SE·√q, q = Σw*(y−μ̂)²/(k−1), CI with t_{k−1}
  (no truncation of q at 1);
- Q = Σw(y−μ̂_FE)²; I² = 100·τ̂²/(τ̂² + s²) with s² = (k−1)Σw/((Σw)² − Σw²) (the "typical" within-study
  variance, Higgins & Thompson 2002); for FE and DL this equals 100·max(0, (Q−(k−1))/Q);
- prediction interval (metafor ``predict``): μ̂ ± c·√(SE² + τ̂²), c = z (t_{k−1} with Hartung–Knapp).

A single study (k = 1) is defined: every method returns the study's own estimate and SE, τ̂² = 0, Q = 0,
I² and the Hartung–Knapp CI / prediction interval are undefined (NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

MEASURES = ("RD", "RR", "OR")
RE_METHODS = ("DL", "REML", "PM")
REML_ITERATIONS = 100
PM_ITERATIONS = 200


# ------------------------------------------------------------------------------------------ effect sizes
def effect_sizes(ai, bi, ci, di, measure: str, add: float = 0.5, to: str = "only0"):
    """Per-study effect sizes y and sampling variances v (metafor ``escalc``; traceable, elementwise).

    With p1 = ai/n1, p0 = ci/n0 (after the continuity correction):

        RR:  y = log(p1/p0),                        v = 1/ai − 1/n1 + 1/ci − 1/n0
        OR:  y = log(ai·di/(bi·ci)),                v = 1/ai + 1/bi + 1/ci + 1/di
        RD:  y = p1 − p0,                           v = p1(1−p1)/n1 + p0(1−p0)/n0

    Continuity correction (metafor's defaults): ``add`` is added to every cell of a study that has a zero cell
    (``to="only0"``), of every study if any has one (``"if0all"``), of every study (``"all"``), or never
    (``"none"``). Reference: Viechtbauer (2010); Rothman, Greenland & Lash, *Modern Epidemiology* ch. 14.
    """
    ai, bi, ci, di = (jnp.asarray(x, float) for x in (ai, bi, ci, di))
    if to == "none" or add == 0:
        shift = jnp.zeros_like(ai)
    else:
        has0 = (ai == 0) | (bi == 0) | (ci == 0) | (di == 0)
        if to == "only0":
            shift = jnp.where(has0, add, 0.0)
        elif to == "if0all":
            shift = jnp.where(jnp.any(has0), add, 0.0) * jnp.ones_like(ai)
        elif to == "all":
            shift = jnp.full_like(ai, add)
        else:
            raise ValueError(f"to={to!r}: use 'only0', 'if0all', 'all' or 'none'")
    a, b, c, d = ai + shift, bi + shift, ci + shift, di + shift
    n1, n0 = a + b, c + d
    p1, p0 = a / n1, c / n0
    if measure == "RR":
        return jnp.log(p1) - jnp.log(p0), 1 / a - 1 / n1 + 1 / c - 1 / n0
    if measure == "OR":
        return jnp.log(a * d) - jnp.log(b * c), 1 / a + 1 / b + 1 / c + 1 / d
    if measure == "RD":
        return p1 - p0, p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0
    raise ValueError(f"measure={measure!r}: use one of {MEASURES}")


# ------------------------------------------------------------------------------------------ pooling
def _clean(y, v, mask):
    """Padding made harmless: y = 0, v = 1 where mask = 0 (weights are then multiplied by the mask)."""
    m = jnp.asarray(mask, float)
    return jnp.where(m > 0, y, 0.0), jnp.where(m > 0, v, 1.0), m


def weighted_mean(y, v, mask, tau2=0.0):
    """(μ̂, SE) with weights w = mask/(v + τ²): μ̂ = Σwy/Σw, SE = (Σw)^(-1/2)."""
    y, v, m = _clean(y, v, mask)
    w = m / (v + tau2)
    s = w.sum()
    return (w * y).sum() / s, jnp.sqrt(1.0 / s)


def cochran_q(y, v, mask):
    """Cochran's Q = Σ w (y − μ̂_FE)², w = 1/v (Cochran 1954)."""
    y, v, m = _clean(y, v, mask)
    w = m / v
    mu = (w * y).sum() / w.sum()
    return (w * (y - mu) ** 2).sum()


def typical_within_variance(v, mask):
    """s² = (k−1)Σw / ((Σw)² − Σw²), w = 1/v (Higgins & Thompson 2002; metafor's I² denominator)."""
    _, v, m = _clean(jnp.zeros_like(v), v, mask)
    w = m / v
    k = m.sum()
    s1, s2 = w.sum(), (w ** 2).sum()
    return jnp.where(k > 1, (k - 1) * s1 / jnp.where(k > 1, s1 ** 2 - s2, 1.0), jnp.nan)


def i_squared(tau2, v, mask):
    """I² (%) = 100·τ²/(τ² + s²) (Higgins & Thompson 2002), NaN for a single study."""
    s2 = typical_within_variance(v, mask)
    return 100.0 * tau2 / (tau2 + s2)


def tau2_dersimonian_laird(y, v, mask):
    """DerSimonian–Laird (1986) moment estimator: τ̂² = max(0, (Q − (k−1)) / (Σw − Σw²/Σw)), w = 1/v."""
    y, v, m = _clean(y, v, mask)
    w = m / v
    k = m.sum()
    s1, s2 = w.sum(), (w ** 2).sum()
    q = cochran_q(y, v, m)
    denom = jnp.where(k > 1, s1 - s2 / s1, 1.0)
    return jnp.where(k > 1, jnp.maximum(0.0, (q - (k - 1)) / denom), 0.0)


def tau2_reml(y, v, mask, iterations: int = REML_ITERATIONS):
    """Restricted maximum likelihood τ̂² by Fisher scoring (metafor's algorithm, Viechtbauer 2005), truncated at 0.

    With w = 1/(v+τ²), P = W − wwᵀ/Σw, the update is τ² ← max(0, τ² + (yᵀPPy − tr P)/tr(PP)); for the intercept
    model yᵀPPy = Σw²(y−μ̂)², tr P = Σw − Σw²/Σw, tr(PP) = Σw² − 2Σw³/Σw + (Σw²/Σw)². Starts at the DL estimate;
    a fixed number of iterations (``lax.fori_loop``) so it vmaps.
    """
    y, v, m = _clean(y, v, mask)
    k = m.sum()

    def step(_, t):
        w = m / (v + t)
        s1, s2, s3 = w.sum(), (w ** 2).sum(), (w ** 3).sum()
        mu = (w * y).sum() / s1
        ypy = (w ** 2 * (y - mu) ** 2).sum()
        tr_p = s1 - s2 / s1
        tr_pp = s2 - 2 * s3 / s1 + (s2 / s1) ** 2
        return jnp.maximum(0.0, t + (ypy - tr_p) / tr_pp)

    t = jax.lax.fori_loop(0, iterations, step, tau2_dersimonian_laird(y, v, m))
    return jnp.where(k > 1, t, 0.0)


def tau2_paule_mandel(y, v, mask, iterations: int = PM_ITERATIONS):
    """Paule–Mandel (1982) τ̂²: the root of Q(τ²) = Σw(y−μ̂_w)² = k−1, w = 1/(v+τ²); 0 if Q(0) ≤ k−1.

    Q(τ²) decreases in τ², and Q(τ²) ≤ Σ(y−ȳ)²/τ², so the root lies in [0, Σ(y−ȳ)²/(k−1)]; found by bisection
    with a fixed number of halvings (``lax.fori_loop``; 200 halvings reach float64 resolution).
    """
    y, v, m = _clean(y, v, mask)
    k = m.sum()

    def excess(t):
        w = m / (v + t)
        mu = (w * y).sum() / w.sum()
        return (w * (y - mu) ** 2).sum() - (k - 1)

    ybar = (m * y).sum() / k
    hi0 = (m * (y - ybar) ** 2).sum() / jnp.maximum(k - 1, 1.0) * 1.01 + 1e-300

    def step(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        pos = excess(mid) > 0
        return jnp.where(pos, mid, lo), jnp.where(pos, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, step, (jnp.zeros(()), hi0))
    return jnp.where((k > 1) & (excess(0.0) > 0), 0.5 * (lo + hi), 0.0)


TAU2_ESTIMATORS = {"DL": tau2_dersimonian_laird, "REML": tau2_reml, "PM": tau2_paule_mandel}


def hartung_knapp_factor(y, v, mask, tau2):
    """q = Σw*(y−μ̂)²/(k−1), w* = 1/(v+τ²): Hartung & Knapp (2001) / Sidik & Jonkman (2002) SE multiplier √q."""
    y, v, m = _clean(y, v, mask)
    w = m / (v + tau2)
    mu = (w * y).sum() / w.sum()
    k = m.sum()
    return jnp.where(k > 1, (w * (y - mu) ** 2).sum() / jnp.maximum(k - 1, 1.0), jnp.nan)


def pool_inverse_variance(y, v, mask):
    """Every inverse-variance summary of one (padded) meta-analysis, as a dict of scalars (traceable, vmaps).

    Keys: ``k``, ``Q``; ``FE_est``, ``FE_se``; for each of DL, REML, PM: ``{M}_est``, ``{M}_se``, ``{M}_tau2``,
    ``{M}_I2``, ``{M}_hk`` (Hartung–Knapp factor q; SE_HK = SE·√q). ``FE_I2`` = 100·max(0, (Q−(k−1))/Q).
    """
    y, v, m = _clean(y, v, mask)
    k = m.sum()
    q = cochran_q(y, v, m)
    out = {"k": k, "Q": q}
    out["FE_est"], out["FE_se"] = weighted_mean(y, v, m)
    out["FE_tau2"] = jnp.zeros(())
    out["FE_I2"] = jnp.where(k > 1, 100.0 * jnp.maximum(0.0, (q - (k - 1)) / jnp.where(q > 0, q, 1.0)), jnp.nan)
    out["FE_I2"] = jnp.where((k > 1) & (q <= 0), 0.0, out["FE_I2"])
    out["FE_hk"] = hartung_knapp_factor(y, v, m, 0.0)
    for name, estimator in TAU2_ESTIMATORS.items():
        t = estimator(y, v, m)
        out[f"{name}_tau2"] = t
        out[f"{name}_est"], out[f"{name}_se"] = weighted_mean(y, v, m, t)
        out[f"{name}_I2"] = i_squared(t, v, m)
        out[f"{name}_hk"] = hartung_knapp_factor(y, v, m, t)
    return out


# ------------------------------------------------------------------------------------------ Mantel–Haenszel
def mantel_haenszel(ai, bi, ci, di, mask, measure: str):
    """Mantel–Haenszel pooled estimate (log scale for RR/OR) and its SE, on the raw counts (no correction).

    With n1, n0, n per study:
      OR: ψ̂ = Σ(a d/n) / Σ(b c/n) (Mantel & Haenszel 1959); Var(log ψ̂) by Robins, Breslow & Greenland (1986):
          ΣPR/(2R²) + Σ(PS+QR)/(2RS) + ΣQS/(2S²), P=(a+d)/n, Q=(b+c)/n, R=ad/n, S=bc/n (sums R, S in denominators);
      RR: ψ̂ = Σ(a n0/n) / Σ(c n1/n); Var(log ψ̂) = Σ(n1 n0 (a+c) − a c n)/n² / (Σ a n0/n · Σ c n1/n)
          (Greenland & Robins 1985);
      RD: ψ̂ = Σ(a n0 − c n1)/n / Σ(n1 n0/n); Var = Σ(a b n0³ + c d n1³)/(n1 n0 n²) / (Σ n1 n0/n)²
          (Greenland & Robins 1985, the large-strata variance used by RevMan).
    """
    m = jnp.asarray(mask, float)
    a, b, c, d = (jnp.where(m > 0, jnp.asarray(x, float), 0.0) for x in (ai, bi, ci, di))
    n1, n0 = a + b, c + d
    n = jnp.where(m > 0, n1 + n0, 1.0)
    if measure == "OR":
        r, s = a * d / n, b * c / n
        p, q = (a + d) / n, (b + c) / n
        R, S = r.sum(), s.sum()
        var = (p * r).sum() / (2 * R ** 2) + (p * s + q * r).sum() / (2 * R * S) + (q * s).sum() / (2 * S ** 2)
        return jnp.log(R) - jnp.log(S), jnp.sqrt(var)
    if measure == "RR":
        R, S = (a * n0 / n).sum(), (c * n1 / n).sum()
        var = ((n1 * n0 * (a + c) - a * c * n) / n ** 2).sum() / (R * S)
        return jnp.log(R) - jnp.log(S), jnp.sqrt(var)
    if measure == "RD":
        wsum = (n1 * n0 / n).sum()
        est = ((a * n0 - c * n1) / n).sum() / wsum
        safe = jnp.where(m > 0, n1 * n0, 1.0)
        var = ((a * b * n0 ** 3 + c * d * n1 ** 3) / (safe * n ** 2)).sum() / wsum ** 2
        return est, jnp.sqrt(var)
    raise ValueError(f"measure={measure!r}: use one of {MEASURES}")


# ------------------------------------------------------------------------------------------ one meta-analysis
@jax.jit
def _core_all(ai, bi, ci, di, mask):
    out = {}
    for measure in MEASURES:
        y, v = effect_sizes(ai, bi, ci, di, measure)
        res = pool_inverse_variance(y, v, mask)
        res["MH_est"], res["MH_se"] = mantel_haenszel(ai, bi, ci, di, mask, measure)
        out[measure] = res
    return out


def classical_core(ai, bi, ci, di, mask=None):
    """The classical summaries for all measures of one meta-analysis: {measure: {key: float}} (see
    :func:`pool_inverse_variance`, plus ``MH_est``, ``MH_se``). Log scale for RR and OR."""
    arrs = [np.atleast_1d(np.asarray(x, float)) for x in (ai, bi, ci, di)]
    mask = np.ones_like(arrs[0]) if mask is None else np.asarray(mask, float)
    size = 1 << max(0, int(np.ceil(np.log2(arrs[0].size))))  # padded (mask 0) so nearby k share compiled code
    pad = lambda x: jnp.asarray(np.pad(x, (0, size - x.size)))  # noqa: E731
    res = _core_all(*(pad(x) for x in arrs), pad(mask))
    return {meas: {k: float(v) for k, v in d.items()} for meas, d in res.items()}


def summary_rows(core: dict, measure: str, level: float = 0.95) -> list[dict]:
    """Rows (dict per method) from the core summaries of one meta-analysis: FE, DL, REML, PM, their
    Hartung–Knapp versions (``DL_HK``, ``REML_HK``, ``PM_HK``) and MH; estimates on the analysis scale (log for
    RR/OR) with Wald z CIs (t_{k−1} for HK) and prediction intervals (random effects)."""
    return summary_rows_arrays({k: np.atleast_1d(v) for k, v in core.items()}, measure, level)[0]


def summary_rows_arrays(core: dict, measure: str, level: float = 0.95) -> list[list[dict]]:
    """Vectorised :func:`summary_rows` over M meta-analyses (each core value an array of shape (M,))."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return _summary_rows_arrays(core, measure, level)


def _summary_rows_arrays(core, measure, level):
    z = stats.norm.ppf(0.5 + level / 2)
    k = np.asarray(core["k"], float)
    t = np.where(k > 1, stats.t.ppf(0.5 + level / 2, np.maximum(k - 1, 1)), np.nan)
    cols = {}
    for meth in ("FE",) + RE_METHODS:
        est, se, tau2 = (np.asarray(core[f"{meth}_{x}"], float) for x in ("est", "se", "tau2"))
        i2 = np.asarray(core[f"{meth}_I2"], float)
        pi_se = np.sqrt(se ** 2 + tau2)
        single = k <= 1
        cols[meth] = dict(estimate=est, se=se, ci_low=est - z * se, ci_high=est + z * se, tau2=tau2, I2=i2,
                          pi_low=np.where(single, np.nan, est - z * pi_se),
                          pi_high=np.where(single, np.nan, est + z * pi_se))
        if meth != "FE":
            se_hk = se * np.sqrt(np.asarray(core[f"{meth}_hk"], float))
            pi_hk = np.sqrt(se_hk ** 2 + tau2)
            cols[f"{meth}_HK"] = dict(estimate=est, se=se_hk, ci_low=est - t * se_hk, ci_high=est + t * se_hk,
                                      tau2=tau2, I2=i2, pi_low=est - t * pi_hk, pi_high=est + t * pi_hk)
    est, se = np.asarray(core["MH_est"], float), np.asarray(core["MH_se"], float)
    nan = np.full_like(est, np.nan)
    cols["MH"] = dict(estimate=est, se=se, ci_low=est - z * se, ci_high=est + z * se, tau2=nan,
                      I2=np.asarray(core["FE_I2"], float), pi_low=nan, pi_high=nan)
    q = np.asarray(core["Q"], float)
    rows = []
    for j in range(k.size):
        rows.append([{"method": meth, "measure": measure, **{key: float(val[j]) for key, val in c.items()},
                      "Q": float(q[j]), "k": int(k[j])} for meth, c in cols.items()])
    return rows


def classical_meta(ai, bi, ci, di, measure: str = "RR", level: float = 0.95) -> list[dict]:
    """Classical meta-analysis of one set of 2×2 tables: list of dict rows (method, estimate, se, CI, τ², I², Q,
    k, prediction interval) for FE, DL, REML, PM, DL_HK, REML_HK, PM_HK and MH; log scale for RR/OR.

    Formulas: see the module docstring and :func:`effect_sizes`, :func:`pool_inverse_variance`,
    :func:`mantel_haenszel`. Reference: Viechtbauer (2010), metafor; Borenstein et al. (2009), *Introduction to
    Meta-Analysis*.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure={measure!r}: use one of {MEASURES}")
    return summary_rows(classical_core(ai, bi, ci, di)[measure], measure, level)
