"""The registry of transport estimators: each per-trial and pooled estimator one unit of the stack.

A unit names the estimator (the ``estimators=`` keyword), its block in the stack, the working models it reads
(participation, treatment, outcome) and a function building its block from the fitted-model evaluators
(:class:`WorkingModels`). :func:`~estimators.transport.api.transport_stack` builds only the working models that the
chosen units read, then one block per unit, and reports one contrast per (unit, trial, pair of arms, scale) —
:class:`Estimand` — from the unit's parameters: μ_z − μ_z' for the units whose block starts with arm means μ
(per trial, μ[s, z] in trial-major order), the pseudo-outcome's φ directly.

A new estimator is a ψ (a frozen dataclass in :mod:`~estimators.transport.per_trial` or
:mod:`~estimators.transport.pooled`), a ``_block`` function below and one entry in :data:`PER_TRIAL_UNITS` or
:data:`POOLED_UNITS`; the command line's ``--estimators``, the reported table, the tests of homogeneity, the
sensitivity sweep and the positivity diagnostics (units that read the participation model) follow from the entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from mestim import Block

from .data import label
from .outcome import Outcome
from .participation import Participation
from .per_trial import TrialDoublyRobust, TrialOutcomeModel, TrialUnadjusted, TrialWeighting
from .pooled import PooledDoublyRobust, PooledOutcomeModel, PooledPseudoOutcome, PooledWeighting, TargetOnly
from .treatment import ArmWeights

MODELS = ("participation", "treatment", "outcome")  # the working models a unit may read, in the order it reads them


@dataclasses.dataclass(frozen=True)
class WorkingModels:
    """What the estimator blocks read: the working models' evaluators, and the shapes and labels of the stack.

    ``weights`` is the arm weight of the weighting and pseudo-outcome estimators; per protocol the doubly robust
    ones weight two residuals, q1 − q2 by ``dr_weights`` (intention to treat) and Y − q1 by ``dr_adherence``."""

    participation: Participation
    weights: ArmWeights
    outcome: Outcome
    dr_weights: ArmWeights
    dr_adherence: ArmWeights | None
    normalized: bool
    per_protocol: bool
    m: int  # trials
    n_arms: int
    k: int  # columns of the covariate design (with its intercept)
    ybar: float  # starting value of every arm mean: the trials' mean outcome
    pairs: tuple  # ((a, b), ...) arm indices of the contrasts
    contrast_names: tuple
    covariates: tuple
    mean_labels: tuple  # μ[S=s, Z=z], trial-major
    arm_mean_labels: tuple  # μ[Z=z]

    def reads(self, unit: "EstimatorUnit") -> tuple[str, ...]:
        """The block names ``unit`` reads: its working models' blocks, per trial or pooled as the unit is."""
        per_trial = unit.scope == "per_trial"
        names = {"participation": self.participation.trial_blocks() if per_trial else self.participation.pooled_blocks(),
                 "treatment": self.weights.blocks(),
                 "outcome": self.outcome.trial_blocks() if per_trial else self.outcome.pooled_blocks()}
        return tuple(b for model in MODELS if model in unit.reads for b in names[model])

    def means_and_residuals(self, means: tuple, n_means: int):
        """(init, labels) of a doubly robust block: the arm means μ, then (normalised) one weighted-residual mean
        per stage — ``resid`` (Y − h; per protocol q1 − q2) and ``resid_adherent`` (Y − q1)."""
        stages = ("resid", "resid_adherent")[:2 if self.per_protocol else 1] if self.normalized else ()
        init = np.concatenate([np.full(n_means, self.ybar), np.zeros(n_means * len(stages))])
        return init, means + tuple(f"{p}[{x[3:]}" for p in stages for x in means)


@dataclasses.dataclass(frozen=True)
class EstimatorUnit:
    """One estimator of the registry: ``name`` (the ``estimators=`` keyword), ``scope`` ("per_trial": one
    transported mean per trial and arm; "pooled": one per arm, from all trials), the stack's ``block``, the working
    models it ``reads`` (of :data:`MODELS`) and ``build(models, unit) -> Block``. ``reports`` says what its
    parameters give: "means" (arm means first: contrasts μ_z − μ_z'), "phi" (one φ per contrast after its
    regression's k coefficients) — and ``sample`` which rows it describes ("trials", or "target" for the target
    sample's own comparison)."""

    name: str
    scope: str
    block: str
    reads: tuple[str, ...]
    build: Callable[[WorkingModels, "EstimatorUnit"], Block]
    display: str
    reports: str = "means"
    sample: str = "trials"


def _trial_unadjusted(w: WorkingModels, unit: EstimatorUnit) -> Block:
    return Block(unit.block, TrialUnadjusted(w.m, w.n_arms, w.per_protocol), init=np.full(w.m * w.n_arms, w.ybar),
                 labels=w.mean_labels)


def _trial_outcome(w: WorkingModels, unit: EstimatorUnit) -> Block:
    return Block(unit.block, TrialOutcomeModel(w.outcome), init=np.full(w.m * w.n_arms, w.ybar),
                 reads=w.reads(unit), labels=w.mean_labels)


def _trial_weighting(w: WorkingModels, unit: EstimatorUnit) -> Block:
    psi = TrialWeighting(w.participation, w.weights, w.n_arms, w.normalized)
    return Block(unit.block, psi, init=np.full(w.m * w.n_arms, w.ybar), reads=w.reads(unit), labels=w.mean_labels)


def _trial_dr(w: WorkingModels, unit: EstimatorUnit) -> Block:
    psi = TrialDoublyRobust(w.participation, w.dr_weights, w.outcome, w.normalized, w.dr_adherence)
    init, labels = w.means_and_residuals(w.mean_labels, w.m * w.n_arms)
    return Block(unit.block, psi, init=init, reads=w.reads(unit), labels=labels)


def _target_only(w: WorkingModels, unit: EstimatorUnit) -> Block:
    return Block(unit.block, TargetOnly(w.n_arms), init=np.full(w.n_arms, w.ybar), labels=w.arm_mean_labels)


def _pooled_outcome(w: WorkingModels, unit: EstimatorUnit) -> Block:
    return Block(unit.block, PooledOutcomeModel(w.outcome), init=np.full(w.n_arms, w.ybar), reads=w.reads(unit),
                 labels=w.arm_mean_labels)


def _pooled_weighting(w: WorkingModels, unit: EstimatorUnit) -> Block:
    psi = PooledWeighting(w.participation, w.weights, w.normalized)
    return Block(unit.block, psi, init=np.full(w.n_arms, w.ybar), reads=w.reads(unit), labels=w.arm_mean_labels)


def _pooled_dr(w: WorkingModels, unit: EstimatorUnit) -> Block:
    psi = PooledDoublyRobust(w.participation, w.dr_weights, w.outcome, w.normalized, w.dr_adherence)
    init, labels = w.means_and_residuals(w.arm_mean_labels, w.n_arms)
    return Block(unit.block, psi, init=init, reads=w.reads(unit), labels=labels)


def _pseudo_outcome(w: WorkingModels, unit: EstimatorUnit) -> Block:
    labels = tuple(f"{cn}:{p}" for cn in w.contrast_names for p in ["(Intercept)", *w.covariates, "phi"])
    return Block(unit.block, PooledPseudoOutcome(w.weights, w.pairs, w.k), init=np.zeros(len(w.pairs) * (w.k + 1)),
                 reads=w.reads(unit), labels=labels)


PER_TRIAL_UNITS = {u.name: u for u in (
    EstimatorUnit("unadjusted", "per_trial", "unadjusted", (), _trial_unadjusted, "Unadjusted"),
    EstimatorUnit("outcome", "per_trial", "outcome_trials", ("outcome",), _trial_outcome, "Outcome model"),
    EstimatorUnit("weighting", "per_trial", "weighting_trials", ("participation", "treatment"), _trial_weighting,
                  "Weighting"),
    EstimatorUnit("dr", "per_trial", "dr_trials", MODELS, _trial_dr, "Doubly robust"),
)}
POOLED_UNITS = {u.name: u for u in (
    EstimatorUnit("outcome", "pooled", "outcome_pooled_mean", ("outcome",), _pooled_outcome, "Outcome model"),
    EstimatorUnit("weighting", "pooled", "weighting_pooled", ("participation", "treatment"), _pooled_weighting,
                  "Weighting"),
    EstimatorUnit("dr", "pooled", "dr_pooled", MODELS, _pooled_dr, "Doubly robust"),
    EstimatorUnit("pseudo_outcome", "pooled", "pseudo_outcome", ("treatment",), _pseudo_outcome, "Pseudo-outcome",
                  reports="phi"),
    EstimatorUnit("target_only", "pooled", "target_only", (), _target_only, "Target only", sample="target"),
)}
PER_TRIAL = tuple(PER_TRIAL_UNITS)
POOLED = tuple(POOLED_UNITS)
ESTIMATORS = tuple(dict.fromkeys(PER_TRIAL + POOLED))
DISPLAY = {u.name: u.display for u in (*PER_TRIAL_UNITS.values(), *POOLED_UNITS.values())}
# the estimators weighted by the inverse odds of participation (their weights get the positivity diagnostics)
WEIGHTED = tuple(dict.fromkeys(u.name for u in (*PER_TRIAL_UNITS.values(), *POOLED_UNITS.values())
                               if "participation" in u.reads))


@dataclasses.dataclass(frozen=True)
class Estimand:
    """One reported contrast: ``estimator`` in ``trial`` ("pooled", or the target label for "target_only"),
    contrast ``contrast`` (index ``contrast_index`` into the stack's pairs) on ``scale``; computed from the
    parameters at positions ``a`` (and ``b``, None for the pseudo-outcome's φ) *within* block ``block``."""

    estimator: str
    trial: str
    contrast: str
    contrast_index: int
    scale: str
    block: str
    a: int
    b: int | None
    n: int

    @property
    def label(self) -> str:
        return f"{self.estimator}|{self.trial}|{self.contrast}|{self.scale}"


def reported_contrasts(data, trial_units, pooled_units, pairs, contrast_names) -> list[Estimand]:
    """Every reported contrast, in the order of ``TransportResult.table``: per-trial units (each trial, each pair),
    then pooled ones; for a 0/1 outcome each arm-mean contrast also as a risk and an odds ratio."""
    scales = ("difference", "risk ratio", "odds ratio") if data.binary_outcome else ("difference",)
    C, k = data.n_arms, data.k
    out = []
    for unit in trial_units:
        for j, s in enumerate(data.trials):
            out += [Estimand(unit.name, label(s), contrast_names[ci], ci, scale, unit.block, j * C + a, j * C + b,
                             data.n_trial[s]) for ci, (a, b) in enumerate(pairs) for scale in scales]
    n_trials = int(sum(data.n_trial.values()))
    for unit in pooled_units:
        trial, n = (label(data.target), data.target_outcome_rows) if unit.sample == "target" else ("pooled", n_trials)
        for ci, (a, b) in enumerate(pairs):
            if unit.reports == "phi":
                out.append(Estimand(unit.name, trial, contrast_names[ci], ci, "difference", unit.block,
                                    ci * (k + 1) + k, None, n))
            else:
                out += [Estimand(unit.name, trial, contrast_names[ci], ci, scale, unit.block, a, b, n)
                        for scale in scales]
    return out
