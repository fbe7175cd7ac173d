"""Treatment working models e(z; X, S) = P[Z=z | X, S, R=1] and the arm weights they give.

Options (``treatment_model=``):

- ``"trial"`` (default; the paper's e(z; X, S), eq. 9): one multinomial (for two arms: logistic) regression
  of Z on X and trial indicators, on all trial rows.
- ``"pooled"``: the same without trial indicators (one assignment mechanism for all trials).
- ``"per_trial"``: a separate model ℓ(z, s; X) = P[Z=z | X, S=s] in each trial (eq. 7); the pooled estimators
  use e(z; X, S) = ℓ(z, S; X).
- ``"known"``: known randomisation probabilities (``treatment_probabilities={z: p}`` for every trial, or
  ``{trial: {z: p}}``); no model is fitted.

Fitting the probabilities even when they are known is valid and usually more efficient (the weights then
balance the chance imbalance of the sample); ``"known"`` reproduces the textbook estimator.

Arm weights used by the weighting estimators: W_z = I(Z=z)/e(z; X, S) (intention to treat), or for the
per-protocol effect (eAppendix C) W_z = I(Z=z, A=a_z)/(e(z; X, S)·P[A=a_z | X, S, Z=z, L]).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from estimators.regression import multinomial
from mestim.errors import DataError, SpecificationError

from .data import label

TREATMENT_MODELS = ("trial", "pooled", "per_trial", "known")
PROBABILITY_SUM_TOLERANCE = 1e-6  # known randomisation probabilities of a trial must sum to 1 within this


def softmax_ref0(eta):
    """Class probabilities with class 0 as reference: (1, e^{η_1}, …)/(1 + Σ e^{η_c}), along the last axis."""
    full = jnp.concatenate([jnp.zeros(eta.shape[:-1] + (1,), eta.dtype), eta], axis=-1)
    return jax.nn.softmax(full, axis=-1)


@dataclasses.dataclass(frozen=True)
class Treatment:
    """Evaluates e(z; X, S) for every arm z on a trial row (hashable)."""

    kind: str
    n_arms: int
    m: int

    def blocks(self) -> tuple[str, ...]:
        if self.kind in ("trial", "pooled"):
            return ("treatment",)
        if self.kind == "per_trial":
            return tuple(f"treatment_s{j}" for j in range(1, self.m + 1))
        return ()

    def probs(self, up, row):
        """(C,) P[Z=z_c | X, S] at the row's own trial (1 on target rows with known probabilities)."""
        x = row["tr.X"]
        C = self.n_arms
        if self.kind == "known":
            return row["tr.eknown"]
        if self.kind == "trial":
            d = jnp.concatenate([x, row["tr.D"]])
            return softmax_ref0(up["treatment"].reshape(C - 1, d.shape[0]) @ d)
        if self.kind == "pooled":
            return softmax_ref0(up["treatment"].reshape(C - 1, x.shape[0]) @ x)
        shot = row["tr.Shot"]
        betas = jnp.stack([up[name] for name in self.blocks()])  # (m, (C − 1)·k): every trial's model
        per = softmax_ref0(betas.reshape(self.m, C - 1, x.shape[0]) @ x)
        # rows of the target get probabilities 1 (never used: their indicators are 0), so 1/e stays finite
        return shot @ per + (1.0 - shot.sum()) * jnp.ones(C)


def treatment_blocks(kind: str, data, covariates: list) -> list:
    """Working-model blocks of the treatment model ``kind``."""
    trial_rows = lambda c: c["tr.R"] > 0  # noqa: E731
    if kind in ("trial", "pooled"):
        dummies = [f"[{data.study}={label(s)}]" for s in data.trials[1:]] if kind == "trial" else []
        return [multinomial("treatment", "tr.Zcode", covariates + dummies, mask=trial_rows, reference=0.0)]
    if kind == "per_trial":
        out = []
        for j in range(1, data.m + 1):
            mask = (lambda c, j=j: c["tr.Shot"][:, j - 1] > 0)
            out.append(multinomial(f"treatment_s{j}", "tr.Zcode", covariates, reference=0.0, mask=mask))
        return out
    return []


def known_probabilities(data, probabilities) -> np.ndarray:
    """(n, C) column of known P[Z=z_c | S] from ``{z: p}`` or ``{trial: {z: p}}`` (1 on target rows)."""
    if probabilities is None:
        raise SpecificationError("treatment_model='known' needs treatment_probabilities={z: p, ...} "
                                 "(or {trial: {z: p}} when trials randomise differently)")
    cols = data.columns
    n = cols["tr.R"].shape[0]
    out = np.ones((n, data.n_arms))

    def arm_probs(d, where):
        keyed = {label(k): _probability(v, where) for k, v in d.items()}
        missing = [label(a) for a in data.arms if label(a) not in keyed]
        if missing:
            raise DataError(f"treatment_probabilities{where} gives no probability for arm(s) {missing}")
        unknown = sorted(set(keyed) - {label(a) for a in data.arms})
        if unknown:
            raise DataError(f"treatment_probabilities{where} names arm(s) {unknown} that are not arms of the trials "
                            f"({[label(a) for a in data.arms]})")
        p = np.array([keyed[label(a)] for a in data.arms])
        shown = {label(a): v for a, v in zip(data.arms, p.tolist())}
        if not np.all((p > 0) & (p < 1)):
            raise DataError(f"treatment_probabilities{where} {shown}: each randomisation probability must lie in "
                            "(0, 1) (strictly: an arm nobody can be assigned to cannot be compared)")
        if abs(p.sum() - 1) > PROBABILITY_SUM_TOLERANCE:
            raise DataError(f"treatment_probabilities{where} {shown} sum to {p.sum():.6g}; the probabilities of the "
                            "arms of a trial must sum to 1 (e.g. 0:0.5,1:0.5; fractions such as 1/3 are accepted)")
        return p

    values = list(probabilities.values())
    if values and isinstance(values[0], dict):
        keyed = {label(k): v for k, v in probabilities.items()}
        unknown = sorted(set(keyed) - {label(t) for t in data.trials})
        if unknown:
            raise DataError(f"treatment_probabilities names trial(s) {unknown} that are not in the data "
                            f"({[label(t) for t in data.trials]})")
        for j, s in enumerate(data.trials):
            if label(s) not in keyed:
                raise DataError(f"treatment_probabilities has no entry for trial {label(s)}")
            rows = cols["tr.Shot"][:, j] > 0
            out[rows] = arm_probs(keyed[label(s)], f"[{label(s)}]")
    else:
        p = arm_probs(probabilities, "")
        out[cols["tr.R"] > 0] = p
    return out


def _probability(value, where: str) -> float:
    """A probability given as a number or as text ("0.5", "1/3")."""
    try:
        return float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise DataError(f"treatment_probabilities{where}: {value!r} is not a probability (give e.g. 0.5 or 1/3)") from None


@dataclasses.dataclass(frozen=True)
class ArmWeights:
    """W_z = I(Z=z)/e(z; X, S), or the per-protocol I(Z=z, A=a_z)/(e(z)·P[A=a_z | X, S, Z=z, L])."""

    treatment: Treatment
    adherence: object = None  # nonadherence.Adherence or None

    def blocks(self) -> tuple[str, ...]:
        extra = self.adherence.blocks() if self.adherence is not None else ()
        return self.treatment.blocks() + extra

    def __call__(self, up, row):
        w = row["tr.Zhot"] / self.treatment.probs(up, row)
        if self.adherence is not None:
            w = w * self.adherence.weights(up, row)
        return w
