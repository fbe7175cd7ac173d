"""Causal meta-analysis from 2×2 tables (Berenfeld et al. 2026; spec §3) as a stack of estimating equations.

Data: for study k = 1..K, arm a ∈ {1 (treated), 0 (control)} and outcome y ∈ {1, 0}, the count n_ay(k);
n_a(k) = n_a1(k) + n_a0(k), n_k = n_1(k) + n_0(k), n = Σ n_k. In metafor's notation ai = n_11, bi = n_10,
ci = n_01, di = n_00.

Target population: a convex combination P* = Σ_k ω_k P_k of the trial populations; by default the union of the
trials, ω_k = n_k/n (the paper's choice), otherwise any user-chosen weights (``target_weights``).

    ψ̂_a(k) = n_a1(k)/n_a(k),   ψ̂_a = Σ_k ω_k ψ̂_a(k),   θ̂ = Φ(ψ̂₁, ψ̂₀)

with Φ one of (CIs are built on the scale of θ, i.e. log scale for the ratios)

    RD = ψ₁ − ψ₀,  log RR = log ψ₁ − log ψ₀,  log OR = logit ψ₁ − logit ψ₀,
    log SR = log(1−ψ₁) − log(1−ψ₀)   (survival ratio: the risk ratio of the non-event).

**As an M-estimator** on the table rows (one row per study × arm × outcome cell, the count n_ay(k) as a
frequency weight — the same answer as the table expanded to one row per participant, never built at run time).
Row i carries the study indicator vector h_i = (I(H_i = k))_k, the arm a_i and the outcome y_i. Blocks:

    shares   p ∈ R^K:    ψ = h − p                                     (P(H = k); p̂_k = n_k/n)
    risks    r ∈ R^{2K}: ψ = (h·a·(y − r₁(k)), h·(1−a)·(y − r₀(k)))_k    (ψ_a(k) = E[Y | H = k, A = a])
    target   ψ ∈ R²:     ψ = (Σ_k p_k r₁(k) − ψ₁, Σ_k p_k r₀(k) − ψ₀)
    contrast θ ∈ R:      ψ = Φ(ψ₁, ψ₀) − θ

The engine's sandwich of this stack treats the study membership H as random (P(H = k) estimated), as in the
paper's derivation. Its variance of ψ̂_a equals the paper's printed σ̂_a²/n exactly; unlike the printed formula
it also carries the covariance of ψ̂₁ and ψ̂₀ that the shared study shares induce:

    n·Var(ψ̂_a)     = Σ_k p_k (n_k/n_a(k)) ψ_a(k)(1 − ψ_a(k)) + Σ_k p_k ψ_a(k)² − ψ_a²       (= paper σ̂_a²)
    n·Cov(ψ̂₁, ψ̂₀) = Σ_k p_k ψ₁(k) ψ₀(k) − ψ₁ ψ₀                                               (paper: 0)
    Var(θ̂) = ∇Φᵀ V ∇Φ

Three variances are offered (see docs/causal_meta.md for the BCG worked example):

- ``"sandwich"`` (default): the stacked M-estimation sandwich above (H random);
- ``"paper"``: the paper's printed formula σ̂² = σ̂₁²(∂Φ/∂ψ₁)² + σ̂₀²(∂Φ/∂ψ₀)², i.e. the sandwich without the
  covariance term;
- ``"design"``: design-based, study sizes (and so the weights) held fixed: the stack without the ``shares``
  block, weights as constants: Var(ψ̂_a) = Σ_k ω_k² ψ_a(k)(1−ψ_a(k))/n_a(k), Cov(ψ̂₁, ψ̂₀) = 0.

With user-chosen target weights the weights are known constants: the sandwich is the design-based variance, and
the paper's formula (which assumes ω_k = n_k/n) is not defined (NaN).

Reference: Berenfeld, Boughdiri, Colnet, van Amsterdam, Bellet, Khellaf, Scornet & Josse (2026),
"Causal meta-analysis: rethinking the foundations of evidence-based medicine", §3 and Appendix.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from mestim import Block
from mestim.errors import DataError, MestimWarning, check_choice

from mestim.results import check_level, z_crit

from .meta_classical import array_module

CAUSAL_MEASURES = ("RD", "RR", "OR", "SR")
VARIANCES = ("sandwich", "paper", "design")
# The engine's fit of the stack checks the closed form up to this many studies (0.5 s at k = 50, 1.7 s at 100,
# 3.6 s at 200: its dense bread makes it cubic); both are exact, so they agree to rounding.
ENGINE_MAX_K = 50
ENGINE_AGREEMENT = 1e-8


def contrast(measure: str, psi1, psi0):
    """Φ(ψ₁, ψ₀) on the analysis scale: RD, log RR, log OR or log SR (NumPy on NumPy input, traceable on JAX
    input); ±inf or NaN where the measure is not defined (see :func:`undefined_reason`)."""
    check_choice("measure", measure, CAUSAL_MEASURES)
    xp = array_module(psi1, psi0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if measure == "RD":
            return psi1 - psi0
        if measure == "RR":
            return xp.log(psi1) - xp.log(psi0)
        if measure == "OR":
            return xp.log(psi1) - xp.log1p(-psi1) - xp.log(psi0) + xp.log1p(-psi0)
        return xp.log1p(-psi1) - xp.log1p(-psi0)  # SR


def contrast_gradient(measure: str, psi1, psi0):
    """(∂Φ/∂ψ₁, ∂Φ/∂ψ₀) for :func:`contrast` (NumPy on NumPy input, traceable on JAX input)."""
    check_choice("measure", measure, CAUSAL_MEASURES)
    xp = array_module(psi1, psi0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if measure == "RD":
            return xp.ones_like(psi1), -xp.ones_like(psi0)
        if measure == "RR":
            return 1 / psi1, -1 / psi0
        if measure == "OR":
            return 1 / (psi1 * (1 - psi1)), -1 / (psi0 * (1 - psi0))
        return -1 / (1 - psi1), 1 / (1 - psi0)  # SR


def undefined_reason(measure: str, psi1, psi0):
    """Why the causal ``measure`` is not defined at pooled risks (ψ̂₁, ψ̂₀) — a ratio of a risk of 0 (RR, OR) or of
    1 (OR, SR) is infinite or undefined — as an array of strings, "" where it is defined (NumPy, vectorised)."""
    psi1, psi0 = np.asarray(psi1, float), np.asarray(psi0, float)
    bad_value = {"RD": (), "RR": (0.0,), "OR": (0.0, 1.0), "SR": (1.0,)}[measure]
    words = {0.0: "no events", 1.0: "only events"}
    reason = np.full(np.broadcast(psi1, psi0).shape, "", dtype=object)
    for value in bad_value:
        for psi, arm, name in ((psi1, "treated", "ψ̂₁"), (psi0, "control", "ψ̂₀")):
            hit = (psi == value) & (reason == "")
            reason[hit] = (f"pooled risk {name} = {value:g} ({words[value]} in any {arm} arm): "
                           f"the causal {measure} is not defined")
    return reason


# ------------------------------------------------------------------------------------------ closed forms
def causal_closed_form(ai, bi, ci, di, mask=None, measure: str = "RD", target_weights=None):
    """Causal estimate and its three standard errors in closed form (NumPy on NumPy input; traceable and vmappable
    on JAX input, e.g. padded tables in :func:`estimators.meta_batch.batch_core`).

    Returns a dict: ``psi1``, ``psi0``, ``estimate`` (analysis scale), ``se_sandwich``, ``se_paper``,
    ``se_design``, ``cov10_sandwich`` (Cov(ψ̂₁, ψ̂₀)), ``n``, ``k``. Formulas: module docstring. Studies must have
    both arms non-empty where mask = 1 (padding: mask = 0). ``target_weights`` (K,) non-negative, normalised
    here over the masked studies; None means ω_k = n_k/n.
    """
    xp = array_module(ai, bi, ci, di, mask, target_weights)
    ai, bi, ci, di = (xp.asarray(x, float) for x in (ai, bi, ci, di))
    m = xp.ones_like(ai) if mask is None else xp.asarray(mask, float)
    ai, bi, ci, di = (xp.where(m > 0, x, 0.0) for x in (ai, bi, ci, di))
    n1, n0 = ai + bi, ci + di
    nk = n1 + n0
    n = nk.sum()
    n1s, n0s = xp.where(m > 0, n1, 1.0), xp.where(m > 0, n0, 1.0)
    r1, r0 = ai / n1s, ci / n0s
    sample = target_weights is None
    if sample:
        w = nk / n
    else:
        w = xp.asarray(target_weights, float) * m
        w = w / w.sum()
    psi1, psi0 = (w * r1).sum(), (w * r0).sum()
    g1, g0 = contrast_gradient(measure, psi1, psi0)
    with np.errstate(invalid="ignore"):
        # design-based: weights fixed
        vd1 = (w ** 2 * r1 * (1 - r1) / n1s).sum()
        vd0 = (w ** 2 * r0 * (1 - r0) / n0s).sum()
        se_design = xp.sqrt(g1 ** 2 * vd1 + g0 ** 2 * vd0)
        if sample:
            s1 = (w * nk / n1s * r1 * (1 - r1)).sum() + (w * r1 ** 2).sum() - psi1 ** 2  # paper σ̂₁²
            s0 = (w * nk / n0s * r0 * (1 - r0)).sum() + (w * r0 ** 2).sum() - psi0 ** 2
            c10 = (w * r1 * r0).sum() - psi1 * psi0
            se_paper = xp.sqrt((g1 ** 2 * s1 + g0 ** 2 * s0) / n)
            se_sandwich = xp.sqrt((g1 ** 2 * s1 + g0 ** 2 * s0 + 2 * g1 * g0 * c10) / n)
            cov10 = c10 / n
        else:
            se_paper = xp.full_like(se_design, np.nan)
            se_sandwich, cov10 = se_design, xp.zeros_like(se_design)
    return {"psi1": psi1, "psi0": psi0, "estimate": contrast(measure, psi1, psi0), "se_sandwich": se_sandwich,
            "se_paper": se_paper, "se_design": se_design, "cov10_sandwich": cov10, "n": n, "k": m.sum()}


def paper_variance_psi(ai, bi, ci, di):
    """The paper's printed σ̂_a² for a = 1, 0 (so Var(ψ̂_a) ≈ σ̂_a²/n), ω_k = n_k/n:
    σ̂_a² = Σ_k n_k²/(n·n_a(k)) ψ̂_a(k)(1−ψ̂_a(k)) + Σ_k (n_k/n) ψ̂_a(k)² − ψ̂_a²."""
    ai, bi, ci, di = (np.asarray(x, float) for x in (ai, bi, ci, di))
    n1, n0 = ai + bi, ci + di
    nk = n1 + n0
    n = nk.sum()
    out = []
    for ev, na in ((ai, n1), (ci, n0)):
        r = ev / na
        psi = (nk / n * r).sum()
        out.append((nk ** 2 / (n * na) * r * (1 - r)).sum() + (nk / n * r ** 2).sum() - psi ** 2)
    return tuple(out)


# ------------------------------------------------------------------------------------------ the stack
@dataclasses.dataclass(frozen=True)
class StudyShares:
    """ψ = h − p: the study shares P(H = k) (h the study indicator vector of the row)."""

    def __call__(self, p, row):
        return row["cm_study"] - p


@dataclasses.dataclass(frozen=True)
class ArmRisks:
    """ψ = (h·a·(y − r₁), h·(1−a)·(y − r₀)): the risk in each study × arm, r = (r₁(1..K), r₀(1..K))."""

    def __call__(self, r, row):
        k = r.shape[0] // 2
        h, a, y = row["cm_study"], row["cm_arm"][..., None], row["cm_event"][..., None]  # [..., None]: rows stacked too
        return array_module(r, h).concatenate([h * a * (y - r[:k]), h * (1 - a) * (y - r[k:])], axis=-1)


@dataclasses.dataclass(frozen=True)
class TargetRisks:
    """ψ = (Σ_k ω_k r₁(k) − ψ₁, Σ_k ω_k r₀(k) − ψ₀); ω = the ``shares`` block, or fixed ``weights``."""

    weights: tuple | None = None

    def __call__(self, psi, row, risks, shares=None):
        k = risks.shape[0] // 2
        xp = array_module(risks, psi)
        w = shares if self.weights is None else xp.asarray(self.weights)
        return xp.stack([w @ risks[:k] - psi[0], w @ risks[k:] - psi[1]])


@dataclasses.dataclass(frozen=True)
class CausalContrast:
    """ψ = Φ(ψ₁, ψ₀) − θ for the chosen measure (analysis scale)."""

    measure: str

    def __call__(self, theta, row, target):
        return array_module(theta, target).atleast_1d(contrast(self.measure, target[0], target[1]) - theta[0])


def causal_meta_rows(ai, bi, ci, di) -> dict:
    """The table as rows for the engine: one row per study × arm × outcome cell (4K rows), with columns
    ``cm_study`` (K-vector study indicator), ``cm_arm``, ``cm_event`` and ``cm_count`` (the frequency weight)."""
    ai, bi, ci, di = (np.asarray(x, float) for x in (ai, bi, ci, di))
    k = ai.size
    eye = np.eye(k)
    study = np.concatenate([eye, eye, eye, eye])
    arm = np.repeat([1.0, 1.0, 0.0, 0.0], k)
    event = np.repeat([1.0, 0.0, 1.0, 0.0], k)
    count = np.concatenate([ai, bi, ci, di])
    return {"cm_study": study, "cm_arm": arm, "cm_event": event, "cm_count": count}


def causal_meta_blocks(ai, bi, ci, di, measure: str = "RD", variance: str = "sandwich",
                       target_weights=None) -> list[Block]:
    """The stack (shares, risks, target, contrast) with starting values at the closed-form solution.

    ``variance="sandwich"`` with ω_k = n_k/n estimates the shares (H random); ``"design"`` or user
    ``target_weights`` drop the shares block and hold the weights fixed (the design-based variant)."""
    check_choice("measure", measure, CAUSAL_MEASURES)
    if variance not in ("sandwich", "design"):
        raise DataError(f"variance={variance!r}: the stack computes 'sandwich' or 'design' (the paper's formula "
                        "is a closed form: causal_closed_form)")
    ai, bi, ci, di = (np.asarray(x, float) for x in (ai, bi, ci, di))
    n1, n0 = ai + bi, ci + di
    nk = n1 + n0
    if target_weights is None:
        w = nk / nk.sum()
    else:
        w = np.asarray(target_weights, float)
        w = w / w.sum()
    r = np.concatenate([ai / n1, ci / n0])
    k = ai.size
    psi = np.array([w @ r[:k], w @ r[k:]])
    theta = np.atleast_1d(np.asarray(contrast(measure, psi[0], psi[1])))
    blocks = []
    estimated = variance == "sandwich" and target_weights is None
    if estimated:
        blocks.append(Block("shares", StudyShares(), init=w, labels=tuple(f"P(H={j + 1})" for j in range(k))))
    blocks.append(Block("risks", ArmRisks(), init=r,
                        labels=tuple(f"psi1({j + 1})" for j in range(k)) + tuple(f"psi0({j + 1})" for j in range(k))))
    blocks.append(Block("target", TargetRisks(None if estimated else tuple(float(x) for x in w)), init=psi,
                        reads=("risks", "shares") if estimated else ("risks",), labels=("psi1", "psi0")))
    blocks.append(Block("contrast", CausalContrast(measure), init=theta, reads=("target",),
                        labels=({"RD": "RD"}.get(measure, f"log{measure}"),)))
    return blocks


def _check_tables(ai, bi, ci, di):
    arrs = [np.atleast_1d(np.asarray(x, float)) for x in (ai, bi, ci, di)]
    if len({a.shape for a in arrs}) != 1 or arrs[0].ndim != 1:
        raise DataError("ai, bi, ci, di must be 1-D arrays of the same length (one entry per study)")
    if not all(np.isfinite(a).all() and (a >= 0).all() for a in arrs):
        raise DataError("counts must be finite and non-negative")
    n1, n0 = arrs[0] + arrs[1], arrs[2] + arrs[3]
    empty = np.flatnonzero((n1 == 0) | (n0 == 0))
    if empty.size:
        raise DataError(f"studies at positions {empty.tolist()} have an empty arm (n = 0): their arm risk is not "
                        "identified; remove them (estimators.meta_batch.standardise_tables excludes and reports them)")
    return arrs


def fit_causal_meta(ai, bi, ci, di, measure: str = "RD", variance: str = "sandwich", target_weights=None):
    """Fit the causal stack with the engine: ``mestim.fit`` on the 4K table rows with counts as frequency
    weights. Returns the :class:`mestim.Result` (parameters shares, risks, target (ψ₁, ψ₀), contrast θ).

    Example (the BCG trials' causal risk ratio, as log RR with its sandwich SE)::

        >>> import numpy as np
        >>> from estimators.meta_batch import load_bcg
        >>> bcg = load_bcg()
        >>> from estimators import fit_causal_meta
        >>> res = fit_causal_meta(bcg.ai, bcg.bi, bcg.ci, bcg.di, measure="RR")
        >>> print(res.table()[["estimate", "se"]].round(4).tail(1))
                        estimate      se
        contrast:logRR   -0.4564  0.0395
    """
    from mestim import fit  # the solver's modules, imported when a fit is asked for

    ai, bi, ci, di = _check_tables(ai, bi, ci, di)
    blocks = causal_meta_blocks(ai, bi, ci, di, measure, variance, target_weights)
    return fit(blocks, causal_meta_rows(ai, bi, ci, di), weights="cm_count")


COMPLEX_STEP = 1e-30  # ∂f/∂θ_j = Im f(θ + ih e_j)/h + O(h²): no difference is taken, so h can be this small


def stack_in_numpy(ai, bi, ci, di, measure: str = "RD", target_weights=None) -> tuple[float, float]:
    """(estimate, sandwich SE) of the contrast from the engine's stack (:func:`causal_meta_blocks`) worked out in
    NumPy, without compiling anything: the blocks' own ψ on the 4K table rows (:func:`causal_meta_rows`), the bread
    A = Σ w ∂ψ/∂θ column by column by complex steps (exact to rounding), one Newton step θ̂ = θ₀ − A⁻¹Σ wψ(θ₀) from
    the starting values (the closed form: the step is 0 to rounding when they are the root), and
    A⁻¹(Σ w ψψᵀ)A⁻ᵀ at θ₀. Independent of the closed form's algebra; O(k³) (a dense bread of 3k + 3), for
    k ≤ :data:`ENGINE_MAX_K`."""
    ai, bi, ci, di = _check_tables(ai, bi, ci, di)
    blocks = causal_meta_blocks(ai, bi, ci, di, measure, "sandwich", target_weights)
    rows = causal_meta_rows(ai, bi, ci, di)
    w = rows.pop("cm_count")
    sizes = [len(b.init) for b in blocks]
    ends = np.cumsum(sizes)

    def psi(theta):  # (rows, parameters); a block that reads no row column gives the same ψ on every row
        own = {b.name: theta[end - size:end] for b, size, end in zip(blocks, sizes, ends)}
        return np.concatenate([np.broadcast_to(b.psi(own[b.name], rows, **{r: own[r] for r in b.reads}), (w.size, size))
                               for b, size in zip(blocks, sizes)], axis=1)

    theta0 = np.concatenate([np.asarray(b.init, float) for b in blocks])
    steps = theta0 + 1j * COMPLEX_STEP * np.eye(theta0.size)
    bread = np.stack([np.einsum("r,rp->p", w, psi(t)) for t in steps], axis=1).imag / COMPLEX_STEP  # no BLAS call per step
    values = psi(theta0)
    bread_inv = np.linalg.inv(bread)
    theta = theta0 - bread_inv @ (w @ values)
    vcov = bread_inv @ ((values.T * w) @ values) @ bread_inv.T
    return float(theta[-1]), float(np.sqrt(vcov[-1, -1]))


def causal_meta(ai, bi, ci, di, measure: str = "RR", target_weights=None, level: float = 0.95,
                use_engine: bool = True) -> dict:
    """Causal meta-analysis of one set of 2×2 tables: estimate on the analysis scale (log for RR/OR/SR) with the
    sandwich SE, the paper's SE and the design-based SE, Wald CIs for each, ψ̂₁, ψ̂₀ and Cov(ψ̂₁, ψ̂₀). A ratio
    whose pooled risk is 0 or 1 is not defined: :class:`DataError` saying which (:func:`undefined_reason`).

    Every number comes from the closed form (:func:`causal_closed_form`, O(k); the ``--by`` path's too). With at
    most :data:`ENGINE_MAX_K` studies the stack computes the estimate and sandwich SE as a check (a dense bread of
    3k + 3 parameters, O(k³) time and O(k²) memory): the engine's fit (:func:`fit_causal_meta`, a compiled program)
    with ``use_engine``, otherwise the same stack in NumPy (:func:`stack_in_numpy`, milliseconds: the command
    line's). They are reported, and a disagreement with the closed form beyond :data:`ENGINE_AGREEMENT` is a
    :class:`MestimWarning` (all are exact: it would be a defect).

    Reference: Berenfeld et al. (2026), §3; formulas in this module's docstring.
    """

    check_level(level)
    ai, bi, ci, di = _check_tables(ai, bi, ci, di)
    check_choice("measure", measure, CAUSAL_MEASURES)
    cf = {k: float(v) for k, v in causal_closed_form(ai, bi, ci, di, None, measure, target_weights).items()}
    reason = undefined_reason(measure, cf["psi1"], cf["psi0"]).item()
    if reason or not np.isfinite(cf["estimate"]):
        raise DataError(reason or f"the causal {measure} is not defined: pooled risks ψ̂₁ = {cf['psi1']:.4g}, "
                        f"ψ̂₀ = {cf['psi0']:.4g}")
    out = {"method": "causal", "measure": measure, "estimate": cf["estimate"], "psi1": cf["psi1"],
           "psi0": cf["psi0"], "cov_psi10": cf["cov10_sandwich"], "n": cf["n"], "k": int(cf["k"]),
           "se": cf["se_sandwich"], "se_paper": cf["se_paper"], "se_design": cf["se_design"],
           "target": "union of trials (n_k/n)" if target_weights is None else "user weights"}
    if ai.size <= ENGINE_MAX_K:
        if use_engine:
            res = fit_causal_meta(ai, bi, ci, di, measure, "sandwich", target_weights)
            checked, by = (float(res["contrast"][0]), float(res.se[res.index("contrast")][0])), "the engine's stacked fit"
        else:
            checked, by = stack_in_numpy(ai, bi, ci, di, measure, target_weights), "the stack worked out in NumPy"
        closed = out["estimate"], out["se"]
        if not np.allclose(checked, closed, rtol=ENGINE_AGREEMENT, atol=0):
            warnings.warn(f"causal {measure}: {by} (estimate {checked[0]:.10g}, SE {checked[1]:.10g}) "
                          f"and the closed form ({closed[0]:.10g}, {closed[1]:.10g}) disagree beyond "
                          f"{ENGINE_AGREEMENT:g}: please report this", MestimWarning, stacklevel=2)
        out["estimate"], out["se"] = checked
    z = z_crit(level)
    out["ci_low"], out["ci_high"] = out["estimate"] - z * out["se"], out["estimate"] + z * out["se"]
    return out
