"""Classical meta-analysis of 2×2 tables: per-study effect sizes, inverse-variance fixed and random effects,
Hartung–Knapp, Mantel–Haenszel, heterogeneity (Q, I², τ²) and prediction intervals.

Notation (metafor's): study i has ``ai`` events and ``bi`` non-events in arm 1 (treated), ``ci`` events and
``di`` non-events in arm 0 (control); n1 = ai + bi, n0 = ci + di, n = n1 + n0.

Every core function here is a small pure function of *padded* per-study arrays and a study mask (``mask[i] = 1``
for a real study, 0 for padding), written once for two executors (:func:`array_module`, :func:`while_loop`): on
NumPy input it runs in NumPy — one meta-analysis, nothing to compile — and on JAX input it traces, so thousands of
meta-analyses run at once (``jax.vmap``, see :mod:`estimators.meta_batch`). The iterative τ² estimators are
``while_loop`` iterations with a convergence test, so under ``vmap`` every meta-analysis stops at its own
convergence (a per-meta-analysis mask) and the batch gives the one-at-a-time answer:

- REML (:func:`tau2_reml_fit`): the global maximiser of the restricted likelihood over τ² ≥ 0 — a grid spanning
  every stationary point finds the highest basin (the restricted likelihood can be multimodal), then Newton/Fisher
  scoring with step-halving and a boundary check at τ² = 0 climbs to its maximum;
- Paule–Mandel (:func:`tau2_paule_mandel_fit`): the root of Q(τ²) = k − 1 by bracketed Newton; 0 if Q(0) ≤ k − 1.

Both report ``converged`` (never a silent stop); their tolerance is metafor's tight control (a change in τ² of
1e-12, relative to τ² + min v). Critical values that depend on k (t quantiles for Hartung–Knapp) are computed on
the host.

Conventions follow R's metafor (Viechtbauer 2010, *J Stat Softw* 36(3)); the results on the BCG trials equal
metafor 3.8.1's (control threshold 1e-12) to ≤ 1.3e-10 relative (``tests/test_meta_classical.py``):

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

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mestim.errors import MestimWarning, check_choice
from mestim.results import check_level, z_crit

MEASURES = ("RD", "RR", "OR")
CONTINUITY = ("only0", "if0all", "all", "none")  # which studies get the continuity correction
RE_METHODS = ("DL", "REML", "PM")
REML_ITERATIONS = 100  # the most Newton/Fisher-scoring steps of one REML ascent
PM_ITERATIONS = 100  # the most safeguarded Newton steps for Paule–Mandel
TAU2_TOLERANCE = 1e-12  # convergence: a change in τ² ≤ 1e-12·(τ² + min v) (metafor's threshold 1e-12, made
#                         relative: then no weight 1/(v + τ²) moves by more than 1e-12 relative)
GRADIENT_TOLERANCE = 1e-8  # |score| relative to its scale at convergence (REML: tr P; PM: k − 1)
MAX_HALVINGS = 60  # step-halvings before a REML step gives up (2⁻⁶⁰: nothing left to halve)
REML_GRID_POINTS = 100  # the global check: ℓ_R on 0 and 99 geometric points up to the bound on its maxima


def array_module(*arrays):
    """``jax.numpy`` when an argument is a JAX array (traced or device code), else ``numpy``: host-side glue stays
    in NumPy, where each eager ``jax.numpy`` call would compile an XLA program of its own."""
    return jnp if any(isinstance(x, jax.Array) for x in arrays) else np


def effect_sizes(ai, bi, ci, di, measure: str, add: float = 0.5, to: str = "only0"):
    """Per-study effect sizes y and sampling variances v (metafor ``escalc``; elementwise; NumPy on NumPy input,
    traceable on JAX input).

    With p1 = ai/n1, p0 = ci/n0 (after the continuity correction):

        RR:  y = log(p1/p0),                        v = 1/ai − 1/n1 + 1/ci − 1/n0
        OR:  y = log(ai·di/(bi·ci)),                v = 1/ai + 1/bi + 1/ci + 1/di
        RD:  y = p1 − p0,                           v = p1(1−p1)/n1 + p0(1−p0)/n0

    Continuity correction (metafor's defaults): ``add`` is added to every cell of a study that has a zero cell
    (``to="only0"``), of every study if any has one (``"if0all"``), of every study (``"all"``), or never
    (``"none"``). Reference: Viechtbauer (2010); Rothman, Greenland & Lash, *Modern Epidemiology* ch. 14.
    """
    check_choice("measure", measure, MEASURES)
    check_choice("to", to, CONTINUITY)
    xp = array_module(ai, bi, ci, di)
    ai, bi, ci, di = (xp.asarray(x, float) for x in (ai, bi, ci, di))
    if to == "none" or add == 0:
        shift = xp.zeros_like(ai)
    else:
        has0 = (ai == 0) | (bi == 0) | (ci == 0) | (di == 0)
        if to == "only0":
            shift = xp.where(has0, add, 0.0)
        elif to == "if0all":
            shift = xp.where(xp.any(has0), add, 0.0) * xp.ones_like(ai)
        else:  # "all"
            shift = xp.full_like(ai, add)
    a, b, c, d = ai + shift, bi + shift, ci + shift, di + shift
    n1, n0 = a + b, c + d
    p1, p0 = a / n1, c / n0
    with np.errstate(divide="ignore", invalid="ignore"):
        if measure == "RR":
            return xp.log(p1) - xp.log(p0), 1 / a - 1 / n1 + 1 / c - 1 / n0
        if measure == "OR":
            return xp.log(a * d) - xp.log(b * c), 1 / a + 1 / b + 1 / c + 1 / d
        return p1 - p0, p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0  # RD


# ------------------------------------------------------------------------------------------ pooling
def while_loop(cond, body, state):
    """``lax.while_loop`` when the state holds JAX arrays (traced: vmaps, one compiled loop), a Python loop on
    NumPy state (the host path: nothing to compile). The same ``cond`` and ``body`` serve both."""
    if any(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(state)):
        return jax.lax.while_loop(cond, body, state)
    while cond(state):
        state = body(state)
    return state


def _clean(y, v, mask):
    """Padding made harmless: y = 0, v = 1 where mask = 0 (weights are then multiplied by the mask)."""
    xp = array_module(y, v, mask)
    m = xp.asarray(mask, float)
    return xp.where(m > 0, y, 0.0), xp.where(m > 0, v, 1.0), m


def weighted_mean(y, v, mask, tau2=0.0):
    """(μ̂, SE) with weights w = mask/(v + τ²): μ̂ = Σwy/Σw, SE = (Σw)^(-1/2)."""
    y, v, m = _clean(y, v, mask)
    xp = array_module(y, v, m, tau2)
    w = m / (v + tau2)
    s = w.sum()
    return (w * y).sum() / s, xp.sqrt(1.0 / s)


def cochran_q(y, v, mask):
    """Cochran's Q = Σ w (y − μ̂_FE)², w = 1/v (Cochran 1954)."""
    y, v, m = _clean(y, v, mask)
    w = m / v
    mu = (w * y).sum() / w.sum()
    return (w * (y - mu) ** 2).sum()


def typical_within_variance(v, mask):
    """s² = (k−1)Σw / ((Σw)² − Σw²), w = 1/v (Higgins & Thompson 2002; metafor's I² denominator)."""
    _, v, m = _clean(v, v, mask)
    xp = array_module(v, m)
    w = m / v
    k = m.sum()
    s1, s2 = w.sum(), (w ** 2).sum()
    return xp.where(k > 1, (k - 1) * s1 / xp.where(k > 1, s1 ** 2 - s2, 1.0), xp.nan)


def i_squared(tau2, v, mask):
    """I² (%) = 100·τ²/(τ² + s²) (Higgins & Thompson 2002), NaN for a single study."""
    s2 = typical_within_variance(v, mask)
    return 100.0 * tau2 / (tau2 + s2)


def tau2_dersimonian_laird(y, v, mask):
    """DerSimonian–Laird (1986) moment estimator: τ̂² = max(0, (Q − (k−1)) / (Σw − Σw²/Σw)), w = 1/v."""
    y, v, m = _clean(y, v, mask)
    xp = array_module(y, v, m)
    w = m / v
    k = m.sum()
    s1, s2 = w.sum(), (w ** 2).sum()
    q = cochran_q(y, v, m)
    denom = xp.where(k > 1, s1 - s2 / s1, 1.0)
    return xp.where(k > 1, xp.maximum(0.0, (q - (k - 1)) / denom), 0.0)


class Tau2Fit(NamedTuple):
    """An iterative τ̂² and how it was reached: ``converged`` (its convergence test passed), ``iterations``
    (steps taken) and ``modes`` (REML: local maxima of the restricted likelihood seen on the global grid;
    1 for Paule–Mandel, whose equation has one root)."""

    tau2: Any
    converged: Any
    iterations: Any
    modes: Any


def reml_loglik(tau2, y, v, mask):
    """Restricted log-likelihood of the random-effects model y_i ~ N(μ, v_i + τ²), up to a constant:

        ℓ_R(τ²) = −½ [ Σ log(v_i + τ²) + log Σw + Σ w (y − μ̂)² ],   w = 1/(v + τ²), μ̂ = Σwy/Σw.
    """
    return _reml_terms(tau2, *_clean(y, v, mask))[0]


def _reml_terms(t, y, v, m):
    """(ℓ_R, score, Fisher information, second derivative, tr P) at τ² = t (a scalar, or an array of τ²).

    With P = W − wwᵀ/Σw and e = y − μ̂ (so Py = w∘e): score ∂ℓ_R/∂τ² = ½(yᵀPPy − tr P), Fisher information
    ½ tr(PP), second derivative ½ tr(PP) − yᵀPPPy, where yᵀPPy = Σw²e², tr P = Σw − Σw²/Σw,
    tr(PP) = Σw² − 2Σw³/Σw + (Σw²/Σw)², yᵀPPPy = Σw³e² − (Σw²e)²/Σw (Harville 1977; Viechtbauer 2005).
    """
    xp = array_module(t, y, v, m)
    t = xp.asarray(t, float)[..., None]  # a grid of τ² broadcasts against the studies (last axis)
    w = m / (v + t)
    s1, s2, s3 = w.sum(-1), (w ** 2).sum(-1), (w ** 3).sum(-1)
    e = y - (w * y).sum(-1, keepdims=True) / s1[..., None]
    q = (w * e ** 2).sum(-1)
    ll = -0.5 * ((m * xp.log(v + t)).sum(-1) + xp.log(s1) + q)
    tr_p = s1 - s2 / s1
    score = 0.5 * ((w ** 2 * e ** 2).sum(-1) - tr_p)
    fisher = 0.5 * (s2 - 2 * s3 / s1 + (s2 / s1) ** 2)
    second = fisher - ((w ** 3 * e ** 2).sum(-1) - (w ** 2 * e).sum(-1) ** 2 / s1)
    return ll, score, fisher, second, tr_p


def _reml_rounding(y, v, m, upper):
    """A bound on the rounding error of ℓ_R for τ² in [0, upper] (differences below it are ties):
    1e-13·(Σ|log(v + τ²)| + |log Σw| + Q(τ²) + 1) with |log(v + τ²)| ≤ L = max(|log min v|, |log(max v + upper)|),
    |log Σw| ≤ log k + L and Q(τ²) ≤ Q(0)."""
    xp = array_module(y, v, m, upper)
    k = m.sum()
    v_min = xp.min(xp.where(m > 0, v, xp.inf))
    v_max = xp.max(xp.where(m > 0, v, 0.0))
    log_bound = xp.maximum(xp.abs(xp.log(v_min)), xp.abs(xp.log(v_max + upper)))
    return 1e-13 * ((k + 1) * log_bound + xp.log(xp.maximum(k, 1.0)) + _q_and_slope(0.0, y, v, m)[0] + 1.0)


def _reml_ascent(t0, y, v, m, noise, max_iterations):
    """Maximise ℓ_R over τ² ≥ 0 from t0 (one ``lax.while_loop``: under ``vmap`` each meta-analysis stops at its
    own convergence while the others go on).

    Step: Newton (−score/second derivative) where ℓ_R is locally concave, else Fisher scoring
    (score/information, metafor's step); both go uphill. The candidate τ² + step is truncated at 0; if ℓ_R
    decreases there by more than ``noise`` (its rounding error), the step is halved (up to ``MAX_HALVINGS``
    times) and tried again. Converged when τ² = 0 with a score ≤ 0 (a maximum on the boundary), or at a
    stationary point: the last change in τ² ≤ TAU2_TOLERANCE·(τ² + min v) and |yᵀPPy − tr P| ≤
    GRADIENT_TOLERANCE·tr P. Not converged after ``max_iterations`` accepted steps or when no step up is left.
    Returns (τ², converged, iterations); a single study (nothing to estimate) is converged at t0.
    """
    xp = array_module(t0, y, v, m, noise)
    v_min = xp.min(xp.where(m > 0, v, xp.inf))

    def assess(t, change):
        """(ℓ_R, converged, next step) at τ² = t."""
        ll, score, fisher, second, tr_p = _reml_terms(t, y, v, m)
        converged = (m.sum() <= 1) | ((t <= 0) & (score <= 0)) | (
            (change <= TAU2_TOLERANCE * (t + v_min)) & (2 * xp.abs(score) <= GRADIENT_TOLERANCE * tr_p))
        concave = second < 0
        step = xp.where(concave, -score / xp.where(concave, second, -1.0), score / fisher)
        return ll, converged, step

    def cond(state):
        _, _, _, _, it, halvings, converged = state
        return ~converged & (it <= max_iterations) & (halvings <= MAX_HALVINGS)

    def body(state):
        """Evaluate the candidate; accept it if ℓ_R did not decrease, else halve the step; propose the next."""
        cand, t, ll, step, it, halvings, _ = state
        ll_c, converged_c, step_c = assess(cand, xp.abs(cand - t))
        up = ll_c >= ll - noise
        t, ll, step = xp.where(up, cand, t), xp.where(up, ll_c, ll), xp.where(up, step_c, 0.5 * step)
        return xp.maximum(0.0, t + step), t, ll, step, it + up, xp.where(up, 0, halvings + 1), up & converged_c

    # the first candidate is t0 itself: accepted (ℓ_R > −inf), with no previous iterate (change = inf)
    state = (xp.asarray(t0, float), xp.inf, -xp.inf, 0.0, 0, 0, xp.asarray(False))
    _, t, _, _, it, _, converged = while_loop(cond, body, state)
    return t, converged, it - 1


def _reml_grid(y, v, m):
    """τ² values spanning every stationary point of ℓ_R: 0 and a geometric grid up to

        U = (k·R² + max v)/(k − 1),   R = max y − min y,

    since a stationary point satisfies τ² = Σw²((y−μ̂)² − v)/Σw² + 1/Σw ≤ R² + (max v + τ²)/k."""
    xp = array_module(y, v, m)
    k = m.sum()
    y_hi = xp.max(xp.where(m > 0, y, -xp.inf))
    y_lo = xp.min(xp.where(m > 0, y, xp.inf))
    v_max = xp.max(xp.where(m > 0, v, 0.0))
    v_min = xp.min(xp.where(m > 0, v, xp.inf))
    upper = (k * (y_hi - y_lo) ** 2 + v_max) / xp.maximum(k - 1, 1.0)
    lower = 1e-2 * xp.minimum(v_min, upper)
    frac = xp.linspace(0.0, 1.0, REML_GRID_POINTS - 1)
    return xp.concatenate([xp.zeros(1), lower * (upper / lower) ** frac])


def _count_modes(ll, noise):
    """Local maxima of a profile sampled on an increasing grid: points above both neighbours by more than
    ``noise`` (the first point: above the second)."""
    xp = array_module(ll, noise)
    d = xp.diff(ll)
    return (d[0] < -noise) + ((d[:-1] > noise) & (d[1:] < -noise)).sum()


def tau2_reml_fit(y, v, mask, iterations: int = REML_ITERATIONS) -> Tau2Fit:
    """Restricted maximum likelihood τ̂²: the global maximiser of :func:`reml_loglik` over τ² ≥ 0 (metafor's
    REML with a tight convergence control).

    ℓ_R can have several local maxima (a few precise studies that agree beside imprecise ones that do not), and
    an ascent from a fixed start (metafor's, or the DerSimonian–Laird estimate) can end at the lower one. So ℓ_R
    is first evaluated on a grid spanning every stationary point (:func:`_reml_grid`, the global check), and
    :func:`_reml_ascent` climbs from the best grid point to the maximum of its basin, which is the global one.
    ``modes`` counts the local maxima seen on the grid. Traceable and vmappable (iterations stop per
    meta-analysis). A single study: τ̂² = 0.
    """
    y, v, m = _clean(y, v, mask)
    xp = array_module(y, v, m)
    k = m.sum()
    grid = _reml_grid(y, v, m)
    ll_grid = _reml_terms(grid, y, v, m)[0]
    noise = _reml_rounding(y, v, m, grid[-1])
    t, converged, it = _reml_ascent(grid[xp.argmax(ll_grid)], y, v, m, noise, iterations)
    single = k <= 1
    return Tau2Fit(xp.where(single, 0.0, t), single | converged, xp.where(single, 0, it),
                   xp.where(single, 1, _count_modes(ll_grid, noise)))


def tau2_reml(y, v, mask, iterations: int = REML_ITERATIONS):
    """Restricted maximum likelihood τ̂² (see :func:`tau2_reml_fit`, which also says whether it converged)."""
    return tau2_reml_fit(y, v, mask, iterations).tau2


def generalised_q(tau2, y, v, mask):
    """Generalised Q(τ²) = Σw(y − μ̂_w)², w = 1/(v + τ²), μ̂_w = Σwy/Σw (Q(0) is Cochran's Q)."""
    y, v, m = _clean(y, v, mask)
    return _q_and_slope(tau2, y, v, m)[0]


def _q_and_slope(t, y, v, m):
    """(Q(τ²), dQ/dτ² = −Σw²(y − μ̂_w)²) (μ̂_w minimises Q, so only the weights move it)."""
    w = m / (v + t)
    e = y - (w * y).sum() / w.sum()
    return (w * e ** 2).sum(), -(w ** 2 * e ** 2).sum()


def tau2_paule_mandel_fit(y, v, mask, iterations: int = PM_ITERATIONS) -> Tau2Fit:
    """Paule–Mandel (1982) τ̂²: the root of Q(τ²) = k − 1 (:func:`generalised_q`); 0 when Q(0) ≤ k − 1.

    Q decreases in τ², and Q(τ²) ≤ Σw(y − ȳ)² ≤ Σ(y − ȳ)²/τ², so the root lies in [0, Σ(y − ȳ)²/(k − 1)].
    Solved by Newton's method safeguarded by that bracket (a step leaving the bracket bisects it; rtsafe of
    *Numerical Recipes* §9.4). Converged when the change in τ² ≤ TAU2_TOLERANCE·(τ² + min v) with
    |Q − (k−1)| ≤ GRADIENT_TOLERANCE·(k − 1), or when the bracket is that narrow. Traceable and vmappable.
    """
    y, v, m = _clean(y, v, mask)
    xp = array_module(y, v, m)
    k = m.sum()
    target = k - 1
    ybar = (m * y).sum() / k
    upper = 1.01 * (m * (y - ybar) ** 2).sum() / xp.maximum(k - 1, 1.0) + 1e-300
    positive = (k > 1) & (_q_and_slope(0.0, y, v, m)[0] > target)
    v_min = xp.min(xp.where(m > 0, v, xp.inf))

    def cond(state):
        _, _, _, _, it, running, _ = state
        return running & (it < iterations)

    def body(state):
        t, lo, hi, change, it, _, _ = state
        q, slope = _q_and_slope(t, y, v, m)
        excess = q - target
        lo, hi = xp.where(excess > 0, t, lo), xp.where(excess > 0, hi, t)
        tolerance = TAU2_TOLERANCE * (t + v_min)
        converged = ((change <= tolerance) & (xp.abs(excess) <= GRADIENT_TOLERANCE * target)) | (hi - lo <= tolerance)
        newton = t - excess / xp.where(slope < 0, slope, -1.0)
        t_new = xp.where((newton > lo) & (newton < hi) & (slope < 0), newton, 0.5 * (lo + hi))
        t_new = xp.where(converged, t, t_new)
        return t_new, lo, hi, xp.abs(t_new - t), it + xp.where(converged, 0, 1), ~converged, converged

    init = (xp.zeros(()), xp.zeros(()), upper, xp.inf, 0, positive, ~positive)
    t, _, _, _, it, _, converged = while_loop(cond, body, init)
    return Tau2Fit(xp.where(positive, t, 0.0), converged, it, xp.ones((), int))


def tau2_paule_mandel(y, v, mask, iterations: int = PM_ITERATIONS):
    """Paule–Mandel τ̂² (see :func:`tau2_paule_mandel_fit`, which also says whether it converged)."""
    return tau2_paule_mandel_fit(y, v, mask, iterations).tau2


TAU2_ESTIMATORS = {"DL": tau2_dersimonian_laird, "REML": tau2_reml, "PM": tau2_paule_mandel}
ITERATIVE_TAU2 = {"REML": tau2_reml_fit, "PM": tau2_paule_mandel_fit}


def hartung_knapp_factor(y, v, mask, tau2):
    """q = Σw*(y−μ̂)²/(k−1), w* = 1/(v+τ²): Hartung & Knapp (2001) / Sidik & Jonkman (2002) SE multiplier √q."""
    y, v, m = _clean(y, v, mask)
    xp = array_module(y, v, m, tau2)
    w = m / (v + tau2)
    mu = (w * y).sum() / w.sum()
    k = m.sum()
    return xp.where(k > 1, (w * (y - mu) ** 2).sum() / xp.maximum(k - 1, 1.0), xp.nan)


def pool_inverse_variance(y, v, mask):
    """Every inverse-variance summary of one (padded) meta-analysis, as a dict of scalars (traceable, vmaps).

    Keys: ``k``, ``Q``; ``FE_est``, ``FE_se``; for each of DL, REML, PM: ``{M}_est``, ``{M}_se``, ``{M}_tau2``,
    ``{M}_I2``, ``{M}_hk`` (Hartung–Knapp factor q; SE_HK = SE·√q). ``FE_I2`` = 100·max(0, (Q−(k−1))/Q).
    For the iterative τ² (REML, PM): ``{M}_converged`` (1.0 or 0.0), ``{M}_iterations``, ``{M}_modes``.
    """
    y, v, m = _clean(y, v, mask)
    xp = array_module(y, v, m)
    k = m.sum()
    q = cochran_q(y, v, m)
    out = {"k": k, "Q": q}
    out["FE_est"], out["FE_se"] = weighted_mean(y, v, m)
    out["FE_tau2"] = xp.zeros(())
    out["FE_I2"] = xp.where(k > 1, 100.0 * xp.maximum(0.0, (q - (k - 1)) / xp.where(q > 0, q, 1.0)), xp.nan)
    out["FE_I2"] = xp.where((k > 1) & (q <= 0), 0.0, out["FE_I2"])
    out["FE_hk"] = hartung_knapp_factor(y, v, m, 0.0)
    for name in RE_METHODS:
        if name in ITERATIVE_TAU2:
            fit = ITERATIVE_TAU2[name](y, v, m)
            t = fit.tau2
            out[f"{name}_converged"] = xp.asarray(fit.converged, float)
            out[f"{name}_iterations"] = xp.asarray(fit.iterations, float)
            out[f"{name}_modes"] = xp.asarray(fit.modes, float)
        else:
            t = TAU2_ESTIMATORS[name](y, v, m)
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
    check_choice("measure", measure, MEASURES)
    xp = array_module(ai, bi, ci, di, mask)
    m = xp.asarray(mask, float)
    a, b, c, d = (xp.where(m > 0, xp.asarray(x, float), 0.0) for x in (ai, bi, ci, di))
    n1, n0 = a + b, c + d
    n = xp.where(m > 0, n1 + n0, 1.0)
    if measure == "OR":
        r, s = a * d / n, b * c / n
        p, q = (a + d) / n, (b + c) / n
        R, S = r.sum(), s.sum()
        var = (p * r).sum() / (2 * R ** 2) + (p * s + q * r).sum() / (2 * R * S) + (q * s).sum() / (2 * S ** 2)
        return xp.log(R) - xp.log(S), xp.sqrt(var)
    if measure == "RR":
        R, S = (a * n0 / n).sum(), (c * n1 / n).sum()
        var = ((n1 * n0 * (a + c) - a * c * n) / n ** 2).sum() / (R * S)
        return xp.log(R) - xp.log(S), xp.sqrt(var)
    wsum = (n1 * n0 / n).sum()  # RD
    est = ((a * n0 - c * n1) / n).sum() / wsum
    safe = xp.where(m > 0, n1 * n0, 1.0)
    var = ((a * b * n0 ** 3 + c * d * n1 ** 3) / (safe * n ** 2)).sum() / wsum ** 2
    return est, xp.sqrt(var)


# ------------------------------------------------------------------------------------------ one meta-analysis
def classical_summaries(ai, bi, ci, di, mask, measure: str):
    """All classical summaries of one padded meta-analysis for one measure (:func:`pool_inverse_variance` on the
    effect sizes, plus ``MH_est``, ``MH_se``): the one kernel of both paths — NumPy on NumPy input (one
    meta-analysis: nothing to compile), traced on JAX input (the vmapped batch)."""
    y, v = effect_sizes(ai, bi, ci, di, measure)
    out = pool_inverse_variance(y, v, mask)
    out["MH_est"], out["MH_se"] = mantel_haenszel(ai, bi, ci, di, mask, measure)
    return out


def classical_core(ai, bi, ci, di, mask=None, measures=MEASURES):
    """The classical summaries of one meta-analysis: {measure: {key: float}} for each of ``measures`` (see
    :func:`pool_inverse_variance`, plus ``MH_est``, ``MH_se``). Log scale for RR and OR. Computed in NumPy."""
    arrs = [np.atleast_1d(np.asarray(x, float)) for x in (ai, bi, ci, di)]
    mask = np.ones_like(arrs[0]) if mask is None else np.asarray(mask, float)
    with np.errstate(all="ignore"):  # a single study divides 0 by 0 where the result is then masked out
        return {meas: {key: float(val) for key, val in classical_summaries(*arrs, mask, meas).items()}
                for meas in measures}


def summary_columns(core: dict, measure: str, level: float = 0.95) -> dict:
    """{method: {field: array (M,)}} from the core summaries of M meta-analyses (each core value an array (M,)):
    FE, DL, REML, PM, their Hartung–Knapp versions (``DL_HK``, ``REML_HK``, ``PM_HK``) and MH, with estimate, se,
    Wald z CI (t_{k−1} for HK), τ², I², prediction interval, ``converged`` (False where an iterative τ² did not
    converge), Q and k. Analysis scale (log for RR/OR)."""
    from scipy.special import stdtrit  # t quantiles (scipy.stats would cost half a second to import)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = z_crit(level)
        k = np.asarray(core["k"], float)
        t = np.where(k > 1, stdtrit(np.maximum(k - 1, 1), 0.5 + level / 2), np.nan)
        q = np.asarray(core["Q"], float)
        common = {"Q": q, "k": k.astype(int)}
        cols = {}
        for meth in ("FE",) + RE_METHODS:
            est, se, tau2 = (np.asarray(core[f"{meth}_{x}"], float) for x in ("est", "se", "tau2"))
            i2 = np.asarray(core[f"{meth}_I2"], float)
            converged = np.asarray(core.get(f"{meth}_converged", np.ones_like(k)), float) > 0
            pi_se = np.sqrt(se ** 2 + tau2)
            single = k <= 1
            cols[meth] = dict(estimate=est, se=se, ci_low=est - z * se, ci_high=est + z * se, tau2=tau2, I2=i2,
                              pi_low=np.where(single, np.nan, est - z * pi_se),
                              pi_high=np.where(single, np.nan, est + z * pi_se), converged=converged, **common)
            if meth != "FE":
                se_hk = se * np.sqrt(np.asarray(core[f"{meth}_hk"], float))
                pi_hk = np.sqrt(se_hk ** 2 + tau2)
                cols[f"{meth}_HK"] = dict(estimate=est, se=se_hk, ci_low=est - t * se_hk, ci_high=est + t * se_hk,
                                          tau2=tau2, I2=i2, pi_low=est - t * pi_hk, pi_high=est + t * pi_hk,
                                          converged=converged, **common)
        est, se = np.asarray(core["MH_est"], float), np.asarray(core["MH_se"], float)
        nan = np.full_like(est, np.nan)
        cols["MH"] = dict(estimate=est, se=se, ci_low=est - z * se, ci_high=est + z * se, tau2=nan,
                          I2=np.asarray(core["FE_I2"], float), pi_low=nan, pi_high=nan,
                          converged=np.ones(est.shape, bool), **common)
    return cols


def summary_rows(core: dict, measure: str, level: float = 0.95) -> list[dict]:
    """Rows (dict per method) from the core summaries of one meta-analysis (see :func:`summary_columns`)."""
    return summary_rows_arrays({k: np.atleast_1d(v) for k, v in core.items()}, measure, level)[0]


def summary_rows_arrays(core: dict, measure: str, level: float = 0.95) -> list[list[dict]]:
    """:func:`summary_columns` as rows: for each of M meta-analyses, a list of dict rows (one per method)."""
    cols = summary_columns(core, measure, level)
    m = np.atleast_1d(core["k"]).size
    return [[{"method": meth, "measure": measure, **{key: val[j].item() for key, val in c.items()}}
             for meth, c in cols.items()] for j in range(m)]


def convergence_problems(core: dict) -> dict:
    """{method: boolean array (M,)}: where REML or Paule–Mandel τ² did not converge (core values arrays (M,))."""
    return {meth: np.asarray(core[f"{meth}_converged"], float) == 0 for meth in ITERATIVE_TAU2}


def convergence_message(method: str, where: str = "") -> str:
    """The warning for a τ² estimate that did not converge."""
    name = {"REML": "REML", "PM": "Paule–Mandel"}[method]
    return (f"the {name} τ² did not converge{where}: its estimate, SE and CI (and the Hartung–Knapp ones) are "
            f"those of the last iterate (flagged converged=false); compare with DL or FE")


def classical_meta(ai, bi, ci, di, measure: str = "RR", level: float = 0.95) -> list[dict]:
    """Classical meta-analysis of one set of 2×2 tables: list of dict rows (method, estimate, se, CI, τ², I², Q,
    k, prediction interval, converged) for FE, DL, REML, PM, DL_HK, REML_HK, PM_HK and MH; log scale for RR/OR.
    A τ² that did not converge is flagged (``converged`` False) and warned about (:class:`MestimWarning`).

    Formulas: see the module docstring and :func:`effect_sizes`, :func:`pool_inverse_variance`,
    :func:`mantel_haenszel`. Reference: Viechtbauer (2010), metafor; Borenstein et al. (2009), *Introduction to
    Meta-Analysis*.

    Example (the BCG trials' log risk ratio by fixed and random effects)::

        >>> import numpy as np
        >>> from estimators.meta_batch import load_bcg
        >>> bcg = load_bcg()
        >>> from estimators import classical_meta
        >>> rows = classical_meta(bcg.ai, bcg.bi, bcg.ci, bcg.di, measure="RR")
        >>> [(r["method"], round(r["estimate"], 4)) for r in rows[:3]]
        [('FE', -0.4303), ('DL', -0.7141), ('DL_HK', -0.7141)]
    """
    check_choice("measure", measure, MEASURES)
    check_level(level)
    core = classical_core(ai, bi, ci, di, measures=(measure,))[measure]
    for meth, bad in convergence_problems({k: np.atleast_1d(v) for k, v in core.items()}).items():
        if bad.any():
            warnings.warn(convergence_message(meth), MestimWarning, stacklevel=2)
    return summary_rows(core, measure, level)
