"""Participation (sampling) working models and the inverse odds of participation they imply.

Options (``participation=`` of :func:`~estimators.transport.transport`):

- ``"logistic"`` (default, as in the paper): the pooled model p(X) = P[S=0 | X] is a logistic regression on
  all rows with outcome I(S=0) (eq. 9); the one-trial models p̃_s(X) = P[S=0 | X, S ∈ {0, s}] are logistic
  regressions on the rows with S ∈ {0, s} (eq. 7). Inverse odds weights: p/(1−p) = exp(xᵀβ).
- ``"multinomial"``: one multinomial logistic model for S on all rows (target = reference class),
  η_s = log P[S=s|X]/P[S=0|X]. One-trial odds P[S=0|X]/P[S=s|X] = exp(−η_s); pooled odds
  P[S=0|X]/P[S≠0|X] = 1/Σ_s exp(η_s). One model for every estimator, so the per-trial and pooled weights
  are mutually consistent.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from estimators.regression import logistic, multinomial

PARTICIPATION_MODELS = ("logistic", "multinomial")


@dataclasses.dataclass(frozen=True)
class Participation:
    """Evaluates the inverse odds of participation from the fitted working models (hashable)."""

    kind: str
    m: int

    def pooled_blocks(self) -> tuple[str, ...]:
        return ("participation",) if self.kind == "logistic" else ("participation_multinomial",)

    def trial_blocks(self) -> tuple[str, ...]:
        if self.kind == "logistic":
            return tuple(f"participation_s{j}" for j in range(1, self.m + 1))
        return ("participation_multinomial",)

    def pooled_odds(self, up, row):
        """p(X)/(1 − p(X)) with p(X) = P[S=0 | X] (eq. 9)."""
        x = row["tr.X"]
        if self.kind == "logistic":
            return jnp.exp(x @ up["participation"])
        eta = up["participation_multinomial"].reshape(self.m, x.shape[0]) @ x
        return jnp.exp(-jnp.log(jnp.sum(jnp.exp(eta))))

    def trial_odds(self, up, row):
        """(m,) p̃_s(X)/(1 − p̃_s(X)) with p̃_s = P[S=0 | X, S ∈ {0, s}] for every trial s (eq. 7)."""
        x = row["tr.X"]
        if self.kind == "logistic":
            return jnp.exp(jnp.stack([up[name] for name in self.trial_blocks()]) @ x)
        eta = up["participation_multinomial"].reshape(self.m, x.shape[0]) @ x
        return jnp.exp(-eta)


def participation_blocks(kind: str, m: int, covariates: list, *, pooled: bool, per_trial: bool) -> list:
    """The working-model blocks for ``kind`` (only those the requested estimators read)."""
    blocks = []
    if kind == "logistic":
        if pooled:
            blocks.append(logistic("participation", "tr.S0", covariates))
        if per_trial:
            for j in range(1, m + 1):
                mask = (lambda c, j=j: (c["tr.S0"] > 0) | (c["tr.Shot"][:, j - 1] > 0))
                blocks.append(logistic(f"participation_s{j}", "tr.S0", covariates, mask=mask))
    elif pooled or per_trial:
        blocks.append(multinomial("participation_multinomial", "tr.Scode", covariates, reference=0.0))
    return blocks
