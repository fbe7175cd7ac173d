"""Iterated-expectation (sequential regression) outcome models for the per-protocol effect (eAppendix C, eq. C.2).

Under non-adherence the per-protocol mean of arm z transported from trial s is E[θ(z, s; X) | S=0] with

    θ(z, s; X) = E[ E[Y | X, S=s, Z=z, L, A=z] | X, S=s, Z=z ]                                     (eq. C.2)

(A the treatment received, L the post-randomisation covariates; per-protocol: a = z). It is estimated by two
regressions, one nested in the other (the g-formula by sequential regression), for every arm z at once
(arm-interaction designs: a separate regression per arm, fitted as one block):

    inner  q1(z, s; X, L): regress Y on x_L = (1, X, L) among the adherent rows {S=s, Z=z, A=z}
    outer  q2(z, s; X):    regress q1(z, s; X_i, L_i) on x = (1, X) among the rows {S=s, Z=z}
           ψ_outer = I(S=s) (q1(Z_i, s; X_i, L_i) − link⁻¹(d_iᵀγ)) d_i,  d_i = [x, I(Z_i=z_1)·x, …]

Linear regressions for a continuous outcome; for a 0/1 outcome the inner model is logistic and the outer one a
fractional logistic regression (the same estimating equation with the fitted probability q1 ∈ (0, 1) as its
outcome). Pooled over the trials (eq. C.5: a common per-protocol CATE λ(z, z'; X)) both regressions run on all
trial rows, with trial main effects when ``trial_effects`` (as the intention-to-treat outcome model), and the
target rows are predicted with the trial effects at zero.

The outcome-model estimator is then ψ = I(S=0)(q2(z, s; X) − μ[s, z]) (one trial) or I(S=0)(q2(z; X) − μ_z)
(pooled), exactly as for the intention-to-treat effect with q2 in place of h and g. The doubly robust estimator
augments the plug-in with one weighted residual per regression (:meth:`IteratedOutcome.trial_residuals`):

    ψ = I(S=0)(q2 − μ) + I_s o_s [ I(Z=z)/e(z) · (q1 − q2) + I(Z=z, A=z)/(e(z) π_A(z; X, L)) · (Y − q1) ]

(o_s the inverse odds of participation, e the treatment model, π_A = P[A=z | X, S, Z=z, L] the adherence model);
it is consistent when the two outcome regressions are right, or when the participation, treatment and adherence
models are.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from estimators.regression import linear, logistic

from .data import label
from .outcome import Outcome, interaction_columns


def observed_arm_design(x, zhot):
    """[x, I(Z=z_1)·x, …, I(Z=z_{C−1})·x] at the row's own arm (``zhot`` its arm indicators)."""
    return jnp.concatenate([x] + [x * zhot[a] for a in range(1, zhot.shape[0])])


@dataclasses.dataclass(frozen=True)
class IteratedOutcome(Outcome):
    """Predictions of the per-protocol outcome regressions q1 (inner) and q2 (outer); hashable.

    The interface of :class:`~estimators.transport.outcome.Outcome` (``trial_means``, ``pooled_means``,
    ``*_blocks``, ``*_residuals``), so the outcome-model and doubly robust estimators take either."""

    def trial_blocks(self) -> tuple[str, ...]:
        return tuple(f"pp_{stage}_s{j}" for j in range(1, self.m + 1) for stage in ("inner", "outer"))

    def pooled_blocks(self) -> tuple[str, ...]:
        return ("pp_inner_pooled", "pp_outer_pooled")

    def inner_observed(self, beta, row, pooled: bool):
        """q1 at the row's own arm and trial: the outer regression's outcome."""
        design = observed_arm_design(row["tr.XL1"], row["tr.Zhot"])
        eta = design @ beta[: design.shape[0]]
        if self.trial_effects and pooled:
            eta = eta + row["tr.D"] @ beta[design.shape[0]:]
        return self.link_inverse(eta)

    def trial_means(self, up, row):
        """(m, C) q2(z_c, s_j; X): every trial's outer regression's prediction for every arm."""
        return self.predict(up, row["tr.X"], [f"pp_outer_s{j}" for j in range(1, self.m + 1)], own_trial=False)

    def pooled_means(self, up, row, own_trial: bool):
        """(C,) q2(z_c; X, S): at the row's own trial (``own_trial``) or with trial effects at zero (target rows)."""
        return self.predict(up, row["tr.X"], ["pp_outer_pooled"], own_trial, row)[0]

    def trial_residuals(self, up, row):
        """(q1 − q2, Y − q1), each (m, C): the residuals of the outer and the inner regression, every trial and arm."""
        q1 = self.predict(up, row["tr.XL1"], [f"pp_inner_s{j}" for j in range(1, self.m + 1)], own_trial=False)
        q2 = self.trial_means(up, row)
        return q1 - q2, row["tr.Y"] - q1

    def pooled_residuals(self, up, row):
        """(q1 − q2, Y − q1), each (C,), at the row's own trial."""
        q1 = self.predict(up, row["tr.XL1"], ["pp_inner_pooled"], True, row)[0]
        return q1 - self.pooled_means(up, row, own_trial=True), row["tr.Y"] - q1


@dataclasses.dataclass(frozen=True)
class OuterRegression:
    """ψ = I(rows) (q1(Z, S; X, L) − link⁻¹(dᵀγ)) d: the outer regression of eq. C.2 (trial ``j``, 0 = pooled)."""

    model: IteratedOutcome
    j: int

    def __call__(self, gamma, row, **up):
        pooled = self.j == 0
        inner = up["pp_inner_pooled" if pooled else f"pp_inner_s{self.j}"]
        q1 = self.model.inner_observed(inner, row, pooled)
        d = observed_arm_design(row["tr.X"], row["tr.Zhot"])
        if pooled and self.model.trial_effects:
            d = jnp.concatenate([d, row["tr.D"]])
        rows = row["tr.R"] if pooled else row["tr.Shot"][self.j - 1]
        return rows * (q1 - self.model.link_inverse(d @ gamma)) * d


def iterated_blocks(data, model: IteratedOutcome, post: list, *, per_trial: bool, pooled: bool) -> list:
    """Inner (registered linear/logistic, adherent rows) and outer (:class:`OuterRegression`) blocks."""
    from mestim import Block

    factory = logistic if model.family == "logistic" else linear
    inner_design = interaction_columns(data, extra=post)
    outer_design = interaction_columns(data)
    outer_labels = ("(Intercept)", *outer_design)
    blocks = []
    if per_trial:
        for j in range(1, data.m + 1):
            mask = (lambda c, j=j: (c["tr.Shot"][:, j - 1] > 0) & (c["tr.adherent"] > 0))
            blocks.append(factory(f"pp_inner_s{j}", "tr.Y", inner_design, mask=mask))
            blocks.append(Block(f"pp_outer_s{j}", OuterRegression(model, j), init=[0.0] * len(outer_labels),
                                reads=(f"pp_inner_s{j}",), labels=outer_labels))
    if pooled:
        dummies = [f"[{data.study}={label(s)}]" for s in data.trials[1:]] if model.trial_effects else []
        mask = lambda c: (c["tr.R"] > 0) & (c["tr.adherent"] > 0)  # noqa: E731
        blocks.append(factory("pp_inner_pooled", "tr.Y", inner_design + dummies, mask=mask))
        labels = outer_labels + tuple(dummies)
        blocks.append(Block("pp_outer_pooled", OuterRegression(model, 0), init=[0.0] * len(labels),
                            reads=("pp_inner_pooled",), labels=labels))
    return blocks
