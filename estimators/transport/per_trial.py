"""One trial at a time: estimating functions of the transported potential-outcome means, for every trial.

Each block owns μ[s, z] = E[Y^z | S=0] as transported from trial s (z over all arms; effects are differences
μ[s, z] − μ[s, z'], the paper's ψ(z, z', s)). Notation: S0 = I(S=0), I_s = I(S=s), W_z = I(Z=z)/ℓ(z; X, s) the arm
weight (:class:`~estimators.transport.treatment.ArmWeights`), o_s(X) = p̃_s(X)/(1 − p̃_s(X)) the inverse odds of
participation (:class:`~estimators.transport.participation.Participation`), h(z, s; X) the trial-s outcome model.

- Unadjusted (trial-specific, not transported; Table 1's first column): ψ = I_s I(Z=z) (Y − μ[s, z]).
- Outcome model ψ_te (eq. 6): ψ = S0 (h(z, s; X) − μ[s, z]).
- Inverse odds weighting ψ_w (eq. 7):
    unnormalised (Horvitz–Thompson, the paper's form): ψ = I_s o_s W_z Y − S0 μ[s, z]
    normalised (Hájek, default):                       ψ = I_s o_s W_z (Y − μ[s, z])
  (normalised weights make the weighted arm mean a weighted average of the observed Y's — bounded by their range
  and invariant to adding a constant to Y — so it is the default; unnormalised is the paper's eq. 7 as printed.)
- Doubly robust (augmented):
    unnormalised: ψ = S0 (h(z, s; X) − μ[s, z]) + I_s o_s W_z (Y − h(z, s; X))
    normalised:   ψ_μ = S0 (h(z, s; X) + r[s, z] − μ[s, z]),  ψ_r = I_s o_s W_z (Y − h(z, s; X) − r[s, z])
  consistent if the outcome model is right, or if the participation and treatment models are.
  Per protocol (eAppendix C), h is the iterated-expectation model q2 of eq. C.2 and there is one weighted
  residual per regression (:mod:`~estimators.transport.iterated`):
    unnormalised: ψ = S0 (q2 − μ[s, z]) + I_s o_s [W_z (q1 − q2) + W^A_z (Y − q1)]
    normalised:   ψ_μ = S0 (q2 + r[s, z] + r^A[s, z] − μ[s, z]),  ψ_r = I_s o_s W_z (q1 − q2 − r[s, z]),
                  ψ_{r^A} = I_s o_s W^A_z (Y − q1 − r^A[s, z])
  with W_z = I(Z=z)/ℓ(z) and W^A_z = I(Z=z, A=z)/(ℓ(z) π_A(z; X, L)); the outcome-model estimator is
  ψ = S0 (q2(z, s; X) − μ[s, z]).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from .outcome import Outcome
from .participation import Participation
from .treatment import ArmWeights


@dataclasses.dataclass(frozen=True)
class TrialUnadjusted:
    """ψ = I(S=s) I(Z=z) (Y − μ[s, z]): the arm means within each trial."""

    m: int
    n_arms: int
    per_protocol: bool = False  # naive per-protocol: adherers only, I(Z=z, A=z)

    def __call__(self, mu, row):
        mu = mu.reshape(self.m, self.n_arms)
        arm = row["tr.ZAhot"] if self.per_protocol else row["tr.Zhot"]
        return (row["tr.Shot"][:, None] * arm[None, :] * (row["tr.Y"] - mu)).ravel()


@dataclasses.dataclass(frozen=True)
class TrialOutcomeModel:
    """ψ_te (eq. 6): ψ = I(S=0) (h(z, s; X) − μ[s, z])."""

    outcome: Outcome

    def __call__(self, mu, row, **up):
        o = self.outcome
        return (row["tr.S0"] * (o.trial_means(up, row) - mu.reshape(o.m, o.n_arms))).ravel()


@dataclasses.dataclass(frozen=True)
class TrialWeighting:
    """ψ_w (eq. 7), normalised (Hájek) or unnormalised (Horvitz–Thompson)."""

    participation: Participation
    weights: ArmWeights
    n_arms: int
    normalized: bool

    def __call__(self, mu, row, **up):
        m = self.participation.m
        mu = mu.reshape(m, self.n_arms)
        w = row["tr.Shot"][:, None] * self.participation.trial_odds(up, row)[:, None] * self.weights(up, row)[None, :]
        if self.normalized:
            return (w * (row["tr.Y"] - mu)).ravel()
        return (w * row["tr.Y"] - row["tr.S0"] * mu).ravel()


@dataclasses.dataclass(frozen=True)
class TrialDoublyRobust:
    """Augmented (doubly robust) one-trial estimator; normalised adds a residual-mean parameter r[s, z] per stage.

    Intention to treat: one stage, residual Y − h weighted by I_s o_s W_z. Per protocol (``adherence_weights``
    given, ``outcome`` an :class:`~estimators.transport.iterated.IteratedOutcome`): two stages, q1 − q2 weighted by
    I_s o_s I(Z=z)/ℓ(z) and Y − q1 weighted by I_s o_s I(Z=z, A=z)/(ℓ(z) π_A(z))."""

    participation: Participation
    weights: ArmWeights
    outcome: Outcome
    normalized: bool
    adherence_weights: ArmWeights | None = None

    def __call__(self, theta, row, **up):
        o = self.outcome
        m, C = o.m, o.n_arms
        h = o.trial_means(up, row)
        odds = row["tr.Shot"][:, None] * self.participation.trial_odds(up, row)[:, None]
        stages = (self.weights,) + ((self.adherence_weights,) if self.adherence_weights is not None else ())
        w = [odds * arm(up, row)[None, :] for arm in stages]
        resid = o.trial_residuals(up, row)
        if self.normalized:
            mu = theta[: m * C].reshape(m, C)
            r = [theta[(k + 1) * m * C: (k + 2) * m * C].reshape(m, C) for k in range(len(stages))]
            return jnp.concatenate([(row["tr.S0"] * (h + sum(r) - mu)).ravel()]
                                   + [(wk * (ek - rk)).ravel() for wk, ek, rk in zip(w, resid, r)])
        return (row["tr.S0"] * (h - theta.reshape(m, C)) + sum(wk * ek for wk, ek in zip(w, resid))).ravel()
