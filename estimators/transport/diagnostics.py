"""Positivity diagnostics of the inverse-odds weights used by the weighting and doubly robust estimators.

The transported estimators reweight trial rows to the target population. With the fitted working models
(participation p, p̃_s; treatment e or ℓ; and, for the per-protocol effect, adherence), the weight of a trial row i
in arm z is

    pooled (φ_w, φ_dr, eq. 9):        w_i = I(Z_i = z) · [p(X_i)/(1 − p(X_i))] / e(z; X_i, S_i)      (S_i ∈ 𝒮)
    one trial s (ψ_w, ψ_dr, eq. 7):   w_i = I(Z_i = z) · [p̃_s(X_i)/(1 − p̃_s(X_i))] / ℓ(z; X_i, s)   (S_i = s)

(ℓ is the treatment model the stack uses for trial s: e(z; X, s) by default). For every weighting/DR estimator,
trial s (or the pooled trials) and arm z, with the sum over the n_{s,z} rows of that arm:

    total weight          W = Σ_i w_i
    largest share         max_i w_i / W                       (1/n_{s,z} for equal weights)
    top-5 weights         the five largest w_i / w̄, w̄ = W / n_{s,z}  (relative to the mean: 1 = an average row)
    Kish's effective n    ESS = (Σ_i w_i)² / Σ_i w_i²         (n_{s,z} for equal weights)

Row weights (``weights=``) are not included: these are diagnostics of the inverse-odds weights alone.
A (trial, arm) is *flagged* when ESS < 10% of n_{s,z} (:data:`ESS_FRACTION`) or one row carries more than 10%
of the arm's total weight (:data:`MAX_SHARE`): the target population is then poorly covered by that trial
(near-violation of positivity), and the weighting estimator's Wald interval is unreliable.

Everything is vectorised: the weights of all rows come from one ``jax.vmap`` of the working models' own
functions at the fitted parameters, the summaries from NumPy reductions over rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from estimators.output import json_number

from .data import label
from .estimands import WEIGHTED
from .readout import read_fit, weights_reader

ESS_FRACTION = 0.10  # flag when the effective sample size is below this fraction of the arm's rows
MAX_SHARE = 0.10  # flag when one row carries more than this share of the arm's total weight
TOP = 5
COLUMNS = ["estimator", "trial", "arm", "n", "ess", "ess_fraction", "max_share", "top_weights", "flagged"]


def inverse_odds_weights(stack, fit):
    """(pooled (n, C) or None, per-trial (n, m, C) or None): the weights w_i of every row and arm (0 off the
    group), at the fitted parameters; pooled only if a pooled weighting/DR estimator was fitted, likewise per trial.
    One compiled program (:func:`~estimators.transport.readout.read_fit`)."""
    reader, rows = weights_reader(stack, fit.blocks)
    if reader is None:
        return None, None
    return weights_of(reader, read_fit(None, reader, np.asarray(fit.theta, float), rows)[2])


def weights_of(reader, arrays) -> tuple:
    """(pooled, per-trial) weights as NumPy arrays (None where not computed) from ``read_fit``'s arrays."""
    res = [np.asarray(r) for r in arrays]
    return (res.pop(0) if reader.pooled else None), (res.pop(0) if reader.per_trial else None)


def weight_summary(w: np.ndarray, member: np.ndarray) -> dict:
    """Summaries over rows (axis 0) of weights ``w`` (n, G) for G groups with 0/1 membership ``member`` (n, G).

    Returns arrays of length G: n (rows), total, ess = (Σw)²/Σw², max_share = max w / Σw, and top (G, TOP): the
    largest weights divided by the group's mean weight (NaN past the group size)."""
    w = np.where(member > 0, w, 0.0)
    n = member.sum(0)
    total = w.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ess = total ** 2 / (w ** 2).sum(0)
        max_share = w.max(0) / total
        top = -np.sort(-w, axis=0)[:TOP].T / (total / n)[:, None]
    k = np.arange(top.shape[1])[None, :]
    top = np.where(k < n[:, None], top, np.nan)
    if top.shape[1] < TOP:
        top = np.pad(top, ((0, 0), (0, TOP - top.shape[1])), constant_values=np.nan)
    return {"n": n.astype(int), "total": total, "ess": ess, "max_share": max_share, "top": top}


def positivity_diagnostics(stack, fit, weights=None) -> pd.DataFrame | None:
    """Tidy DataFrame: one row per weighting/DR estimator × (trial or "pooled") × arm, columns :data:`COLUMNS`;
    ``weights``: the (pooled, per-trial) weights when already computed (else from :func:`inverse_odds_weights`)."""
    pooled_w, trial_w = inverse_odds_weights(stack, fit) if weights is None else weights
    if pooled_w is None and trial_w is None:
        return None
    data = stack.transport_data
    cols = data.columns
    zhot = cols["tr.Zhot"] * cols["tr.R"][:, None]  # (n, C)
    arms = [label(a) for a in data.arms]
    trials = [label(s) for s in data.trials]
    groups = []  # (trial label, summary dict)
    if trial_w is not None:
        m, C = trial_w.shape[1], trial_w.shape[2]
        member = cols["tr.Shot"][:, :, None] * zhot[:, None, :]  # (n, m, C)
        summ = weight_summary(trial_w.reshape(len(trial_w), m * C), member.reshape(len(member), m * C))
        groups += [(trials[j], c, {k: v[j * C + c] for k, v in summ.items()}) for j in range(m) for c in range(C)]
    pooled_groups = []
    if pooled_w is not None:
        summ = weight_summary(pooled_w, zhot)
        pooled_groups = [("pooled", c, {k: v[c] for k, v in summ.items()}) for c in range(len(arms))]
    recs = []
    for e in WEIGHTED:
        for trial, c, g in (groups if e in stack.trial_estimators else []) + \
                (pooled_groups if e in stack.pooled_estimators else []):
            frac = g["ess"] / g["n"] if g["n"] > 0 else np.nan
            recs.append({"estimator": e, "trial": trial, "arm": arms[c], "n": int(g["n"]), "ess": float(g["ess"]),
                         "ess_fraction": float(frac), "max_share": float(g["max_share"]),
                         "top_weights": tuple(float(x) for x in g["top"]),
                         "flagged": bool(frac < ESS_FRACTION or g["max_share"] > MAX_SHARE)})
    return pd.DataFrame(recs, columns=COLUMNS)


def positivity_warnings(diag: pd.DataFrame, settings: dict) -> list[str]:
    """One message per flagged (trial or pooled, arm), naming the estimators that use those weights."""
    if diag is None or diag.empty:
        return []
    study, treatment = settings["study"], settings["treatment"]
    out = []
    flagged = diag[diag.flagged]
    for (trial, arm), g in flagged.groupby(["trial", "arm"], sort=False):
        r = g.iloc[0]
        ests = ", ".join(g.estimator)
        where = "the pooled trials" if trial == "pooled" else f"trial {study}={trial}"
        out.append(
            f"positivity: extreme inverse-odds weights in {where}, arm {treatment}={arm} (used by {ests}): "
            f"effective sample size {r.ess:.1f} of {r.n} rows ({r.ess_fraction:.0%}), the largest weight carries "
            f"{r.max_share:.0%} of the arm's total weight; the target population is poorly covered by "
            f"{'these trials' if trial == 'pooled' else 'this trial'}, so the weighting estimates and their CIs "
            "are unreliable: check covariate overlap with the target (trim or coarsen the covariates, restrict the "
            "target population), or rely on the outcome-model or doubly robust estimator")
    return out


def diagnostics_records(diag: pd.DataFrame) -> list[dict]:
    """JSON-ready records (NaN → None, top weights as a list)."""
    return [{"estimator": r.estimator, "trial": r.trial, "arm": r.arm, "n": int(r.n), "ess": json_number(r.ess),
             "ess_fraction": json_number(r.ess_fraction), "max_share": json_number(r.max_share),
             "top_weights": [json_number(x) for x in r.top_weights], "flagged": bool(r.flagged)}
            for r in diag.itertuples(index=False)]


def format_diagnostics(diag: pd.DataFrame, settings: dict, display: dict) -> list[str]:
    """Compact lines for the summary: one per estimator and trial, every arm on the line."""
    if diag is None or diag.empty:
        return []
    study, treatment = settings["study"], settings["treatment"]
    lines = [f"Positivity (inverse-odds weights per arm: effective sample size / rows, largest weight's share of "
             f"the arm total; flagged if ESS < {ESS_FRACTION:.0%} of rows or share > {MAX_SHARE:.0%}):"]
    rows = {}  # (trial, cells) → estimators: the weighting and DR estimators share their weights, listed once
    for (e, trial), g in diag.groupby(["estimator", "trial"], sort=False):
        cells = "; ".join(f"{treatment}={r.arm} ESS {r.ess:.1f}/{r.n} ({r.ess_fraction:.0%}), max {r.max_share:.1%}"
                          + (" [EXTREME]" if r.flagged else "") for r in g.itertuples())
        rows.setdefault((trial, cells), []).append(display[e])
    names = {key: ", ".join(es) for key, es in rows.items()}
    width = max(map(len, names.values()))
    order = sorted(rows, key=lambda key: key[0] == "pooled")  # trials first, pooled last (stable)
    return lines + [f"  {names[key]:<{width}}  {'pooled' if key[0] == 'pooled' else f'{study}={key[0]}':<8} "
                    f"{key[1]}" for key in order]
