"""Outcome working models: E[Y | X, S, Z=z] per arm, one trial at a time or pooled across trials.

Design of every outcome model (arms z_0 (reference), z_1, …, z_{C−1}; x = (1, X)):

    [x, I(Z=z_1)·x, …, I(Z=z_{C−1})·x]   (+ trial main effects I(S=s_2), …, I(S=s_m) when pooled)

i.e. a separate regression per arm (all X-by-arm interactions), fitted as one block; linear (identity link) for a
continuous outcome and logistic for a 0/1 outcome (``outcome_model="auto"`` picks by the outcome's values).

- One trial at a time: h(z, s; X) = E[Y | X, S=s, Z=z] on rows S=s (eq. 6).
- Pooled: g(z; X, S) on all trial rows. The arm-specific part is common to all trials, so the conditional
  mean difference g(z; X, S) − g(z'; X, S) = t(z, z'; X) is the common CATE model of eq. (8) (the paper's
  τ(z, z'; X), eq. 3). With ``trial_effects=True`` (default for linear models) the trials get their own
  intercepts: the difference is unchanged by them, the level is. Trial main effects are refused with a
  logistic model, where they would make the risk difference trial-specific.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from estimators.regression import linear, logistic
from mestim.errors import DataError

from .data import label

OUTCOME_MODELS = ("auto", "linear", "logistic")


def arm_predictions(x, betas, n_arms: int):
    """Linear predictors of M arm-interaction models for every arm, (M, C): model i's coefficients ``betas[i]``
    follow the design [x, I(z=z_1)·x, …, I(z=z_{C−1})·x], so η[i, 0] = β_i0·x and η[i, c] = β_i0·x + β_ic·x —
    one matrix product for all models and arms (a loop over them would trace M·C small products)."""
    per_arm = betas[:, : n_arms * x.shape[0]].reshape(betas.shape[0], n_arms, x.shape[0]) @ x  # (M, C): β_ic·x
    return jnp.concatenate([per_arm[:, :1], per_arm[:, :1] + per_arm[:, 1:]], axis=1)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Predictions of the fitted outcome models (hashable)."""

    family: str  # "linear" | "logistic"
    n_arms: int
    m: int
    trial_effects: bool

    def link_inverse(self, eta):
        return jax.nn.sigmoid(eta) if self.family == "logistic" else eta

    def trial_blocks(self) -> tuple[str, ...]:
        return tuple(f"outcome_s{j}" for j in range(1, self.m + 1))

    def pooled_blocks(self) -> tuple[str, ...]:
        return ("outcome_pooled",)

    def trial_means(self, up, row):
        """(m, C) h(z_c, s_j; X): every trial's model's prediction for every arm."""
        return self.predict(up, row["tr.X"], self.trial_blocks(), own_trial=False)

    def pooled_means(self, up, row, own_trial: bool):
        """(C,) g(z_c; X, S): at the row's own trial (``own_trial``) or with trial effects at zero (target rows)."""
        return self.predict(up, row["tr.X"], self.pooled_blocks(), own_trial, row)[0]

    def predict(self, up, x, blocks, own_trial: bool, row=None):
        """(len(blocks), C) predictions of the arm-interaction models ``blocks`` on the design row ``x``, plus each
        model's trial effects at the row's own trial when ``own_trial`` (coefficients after the arm design)."""
        betas = jnp.stack([up[name] for name in blocks])
        eta = arm_predictions(x, betas, self.n_arms)
        if self.trial_effects and own_trial:
            eta = eta + (betas[:, self.n_arms * x.shape[0]:] @ row["tr.D"])[:, None]
        return self.link_inverse(eta)

    def trial_residuals(self, up, row):
        """(Y − h(z, s; X),) of shape (m, C): the one residual the doubly robust estimator weights."""
        return (row["tr.Y"] - self.trial_means(up, row),)

    def pooled_residuals(self, up, row):
        """(Y − g(z; X, S),) of shape (C,), at the row's own trial."""
        return (row["tr.Y"] - self.pooled_means(up, row, own_trial=True),)


def interaction_columns(data, extra=()) -> list[str]:
    """Column names of [1, X, I(Z=z_1)·(1, X), …] after the intercept, as built in :mod:`.data` (``extra``:
    further regressors after X, e.g. the per-protocol analysis' post-randomisation covariates L)."""
    regressors = list(data.covariates) + list(extra)
    names = list(regressors)
    zname = data.treatment
    for a in data.arms[1:]:
        names.append(f"[{zname}={label(a)}]")
        names += [f"[{zname}={label(a)}]*{c}" for c in regressors]
    return names


def check_arm_rows(data, *, per_trial: bool, pooled: bool, among=None, extra=()) -> None:
    """Refuse an arm with no more rows than the k = 1 + covariates parameters of its part of an outcome model: that
    part fits those rows exactly (standard errors 0: a trial arm of 4 rows with 3 covariates gave a transported
    effect of 19.9 (19.1, 20.6) where the other trials gave 1.6) or is not identified. ``among``: the rows the model
    uses (the adherent rows of the per-protocol model); ``extra``: its regressors besides the covariates."""
    k, study, treatment = data.k + len(extra), data.study, data.treatment
    used = 1.0 if among is None else np.asarray(among, float)[:, None]
    counts = (data.columns["tr.Shot"] * used).T @ data.columns["tr.Zhot"]  # (m, C): rows of each trial and arm
    what = f"intercept and {k - 1} covariate(s)" + ("" if among is None else ", adherent rows")
    for j, s in enumerate(data.trials if per_trial else []):
        for c, a in enumerate(data.arms):
            if counts[j, c] <= k:
                raise DataError(
                    f"trial {study}={label(s)}, arm {treatment}={label(a)} has {int(counts[j, c])} rows for the {k} "
                    f"parameters of its outcome model ({what}): the model would fit those rows exactly (standard "
                    "errors 0) or not be identified, and the trial's outcome-model and doubly robust estimates with "
                    f"it; drop trial {study}={label(s)}, use fewer covariates, or fit the pooled estimators only "
                    "(per_trial=False; --pooled-only on the command line)")
    for c, a in enumerate(data.arms if pooled else []):
        if counts[:, c].sum() <= k:
            raise DataError(f"arm {treatment}={label(a)} has {int(counts[:, c].sum())} rows across the trials for the "
                            f"{k} parameters of its part of the pooled outcome model ({what}): use fewer covariates")


def outcome_blocks(data, family: str, *, per_trial: bool, pooled: bool, trial_effects: bool) -> list:
    """Per-trial (``outcome_s{j}``) and pooled (``outcome_pooled``) outcome-model blocks."""
    factory = logistic if family == "logistic" else linear
    design = interaction_columns(data)
    blocks = []
    if per_trial:
        for j in range(1, data.m + 1):
            mask = (lambda c, j=j: c["tr.Shot"][:, j - 1] > 0)
            blocks.append(factory(f"outcome_s{j}", "tr.Y", design, mask=mask))
    if pooled:
        dummies = [f"[{data.study}={label(s)}]" for s in data.trials[1:]] if trial_effects else []
        mask = lambda c: c["tr.R"] > 0  # noqa: E731
        blocks.append(factory("outcome_pooled", "tr.Y", design + dummies, mask=mask))
    return blocks
