"""Pooling the collection of trials 𝒮: estimating functions of E[Y^z | S=0] (or of the contrast) using all trials.

Notation: R = I(S ∈ 𝒮), S0 = I(S=0), o(X) = p(X)/(1 − p(X)) with p(X) = P[S=0 | X], W_z = I(Z=z)/e(z; X, S),
g(z; X, S) the pooled outcome model (common arm-specific part, optional trial intercepts).

- φ_te by outcome regression (eq. 8 with t̂ from the regression with Z·X terms): ψ = S0 (g(z; X, ·) − μ_z);
  contrasts μ_z − μ_z' = mean over S=0 of t̂(z, z'; X).
- φ_te by the paper's pseudo-outcome regression (eq. 8, t̂ regressing [W_z − W_z']·Y on X among trial rows):
  ψ_β = R ((W_z − W_z') Y − xᵀβ) x,   ψ_φ = S0 (xᵀβ − φ).  (Only the contrast is estimated.)
- φ_w (eq. 9): unnormalised ψ = R o W_z Y − S0 μ_z; normalised (Hájek, default) ψ = R o W_z (Y − μ_z).
- φ_dr (spec §2b): unnormalised ψ = S0 (g(z; X, ·) − μ_z) + R o W_z (Y − g(z; X, S));
  normalised ψ_μ = S0 (g(z; X, ·) + r_z − μ_z), ψ_r = R o W_z (Y − g(z; X, S) − r_z).
- Per protocol (eAppendix C): g is the iterated-expectation model q2 of eq. C.2 (φ_te: ψ = S0 (q2(z; X, ·) − μ_z)),
  and φ_dr weights one residual per regression: ψ = S0 (q2 − μ_z) + R o [W_z (q1 − q2) + W^A_z (Y − q1)], with
  W^A_z = I(Z=z, A=z)/(e(z) π_A(z; X, L)); normalised, each weighted residual gets its own mean parameter
  (:mod:`~estimators.transport.iterated`).
- Target only (trial emulation: the target sample has Z and Y): ψ = S0 I(Z=z, Y observed) (Y − μ_z).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from .outcome import Outcome
from .participation import Participation
from .treatment import ArmWeights


@dataclasses.dataclass(frozen=True)
class TargetOnly:
    """Arm means in the target sample where it has Z and Y: ψ = I(S=0, Z=z, Y seen) (Y − μ_z)."""

    n_arms: int

    def __call__(self, mu, row):
        return row["tr.T0hot"] * (row["tr.Y0"] - mu)


@dataclasses.dataclass(frozen=True)
class PooledOutcomeModel:
    """φ_te via the pooled outcome regression: ψ = I(S=0) (g(z; X) − μ_z)."""

    outcome: Outcome

    def __call__(self, mu, row, **up):
        return row["tr.S0"] * (self.outcome.pooled_means(up, row, own_trial=False) - mu)


@dataclasses.dataclass(frozen=True)
class PooledPseudoOutcome:
    """φ_te via the pseudo-outcome regression (eq. 8): parameters (β, φ) for each contrast (z, z')."""

    weights: ArmWeights
    contrasts: tuple  # ((c, c'), ...) arm indices
    k: int

    def __call__(self, theta, row, **up):
        x = row["tr.X"]
        w = self.weights(up, row)
        out = []
        for i, (a, b) in enumerate(self.contrasts):
            t = theta[i * (self.k + 1): (i + 1) * (self.k + 1)]
            beta, phi = t[: self.k], t[self.k]
            pseudo = (w[a] - w[b]) * row["tr.Y"]
            out.append(row["tr.R"] * (pseudo - x @ beta) * x)
            out.append(jnp.atleast_1d(row["tr.S0"] * (x @ beta - phi)))
        return jnp.concatenate(out)


@dataclasses.dataclass(frozen=True)
class PooledWeighting:
    """φ_w (eq. 9), normalised (Hájek) or unnormalised."""

    participation: Participation
    weights: ArmWeights
    normalized: bool

    def __call__(self, mu, row, **up):
        w = row["tr.R"] * self.participation.pooled_odds(up, row) * self.weights(up, row)
        if self.normalized:
            return w * (row["tr.Y"] - mu)
        return w * row["tr.Y"] - row["tr.S0"] * mu


@dataclasses.dataclass(frozen=True)
class PooledDoublyRobust:
    """φ_dr: outcome-model plug-in on S=0 plus the weighted residuals of the trials (one per stage; per protocol
    two, as :class:`~estimators.transport.per_trial.TrialDoublyRobust`)."""

    participation: Participation
    weights: ArmWeights
    outcome: Outcome
    normalized: bool
    adherence_weights: ArmWeights | None = None

    def __call__(self, theta, row, **up):
        o = self.outcome
        C = o.n_arms
        g0 = o.pooled_means(up, row, own_trial=False)
        odds = row["tr.R"] * self.participation.pooled_odds(up, row)
        stages = (self.weights,) + ((self.adherence_weights,) if self.adherence_weights is not None else ())
        w = [odds * arm(up, row) for arm in stages]
        resid = o.pooled_residuals(up, row)
        if self.normalized:
            mu = theta[:C]
            r = [theta[(k + 1) * C: (k + 2) * C] for k in range(len(stages))]
            return jnp.concatenate([row["tr.S0"] * (g0 + sum(r) - mu)] + [wk * (ek - rk) for wk, ek, rk in zip(w, resid, r)])
        return row["tr.S0"] * (g0 - theta) + sum(wk * ek for wk, ek in zip(w, resid))
