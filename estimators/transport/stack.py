"""The transport stack built from :class:`~estimators.transport.options.TransportOptions` and the data, without
fitting it: the working models the chosen estimators read, one block per estimator (:mod:`.estimands`), the
bias mean of a sensitivity analysis, the columns the fit reads and the reported contrasts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

import mestim
from mestim import Block
from mestim.errors import DataError, SpecificationError

from .data import TransportData, as_frame, label, missing_column, prepare_data
from .estimands import PER_TRIAL, PER_TRIAL_UNITS, POOLED, POOLED_UNITS, WorkingModels, reported_contrasts
from .iterated import IteratedOutcome, iterated_blocks
from .nonadherence import Adherence, add_adherence_columns, adherence_blocks
from .options import DEFAULT_WEIGHTING, TransportOptions
from .outcome import Outcome, check_arm_rows, outcome_blocks
from .participation import Participation, participation_blocks
from .sensitivity import BiasMean, bias_columns
from .treatment import ArmWeights, Treatment, known_probabilities, treatment_blocks

CONTROL_LIKE = {"placebo", "control", "controls", "ctrl", "usual care", "usual_care", "standard care", "standard",
                "soc", "sham", "untreated", "no treatment", "none", "no", "comparator", "vehicle", "reference"}


@dataclasses.dataclass
class TransportStack:
    """Everything :func:`transport` fits, built without fitting (:func:`transport_stack`).

    Attributes:
        blocks: the stack of :class:`mestim.Block` (working models, then estimands).
        data_for_fit: the columns ``mestim.fit(blocks, data_for_fit, weights=, cluster=, solve=)`` reads.
        estimands: the reported contrasts (:class:`Estimand`), in the order of ``TransportResult.table``;
            :meth:`positions` maps them to flat parameter indices once the block offsets are known.
        settings: the working models, weighting and estimand used (as in ``TransportResult.settings``).
        transport_data: the validated :class:`~estimators.transport.data.TransportData`.
    """

    blocks: list
    data_for_fit: dict
    estimands: list
    settings: dict
    transport_data: TransportData
    weights: object = None
    weight_type: str = "frequency"
    cluster: object = None
    solve: str = "blockwise"
    pairs: tuple = ()
    contrast_names: tuple = ()
    family: str = "linear"
    trial_estimators: tuple = ()
    pooled_estimators: tuple = ()
    participation: object = None  # Participation (evaluates the inverse odds)
    arm_weights: object = None  # ArmWeights (evaluates I(Z=z)/e)
    use_bias: bool = False
    bias_grid: object = None
    level: float = 0.95

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(e.label for e in self.estimands)

    def positions(self, offsets) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices (a, b) of every estimand given block offsets ``{name: slice}`` (``Result.blocks`` or
        ``problem.spec.offsets()``); b = −1 where the estimand is one parameter (the pseudo-outcome's φ)."""
        a = np.array([offsets[e.block].start + e.a for e in self.estimands], int)
        b = np.array([-1 if e.b is None else offsets[e.block].start + e.b for e in self.estimands], int)
        return a, b

    def differences(self, theta, vcov, offsets):
        """(estimate, se) of every "difference"-scale estimand from θ (…, p) and V (…, p, p): vectorised over
        any leading batch axes (replicates of a simulation). Returns arrays (…, q) and the estimands used."""
        keep = [i for i, e in enumerate(self.estimands) if e.scale == "difference"]
        a, b = self.positions(offsets)
        a, b = a[keep], b[keep]
        theta, vcov = np.asarray(theta), np.asarray(vcov)
        one = b < 0
        bb = np.where(one, a, b)
        sign = np.where(one, 0.0, 1.0)
        est = theta[..., a] - sign * theta[..., bb]
        var = (vcov[..., a, a] + sign * vcov[..., bb, bb] - 2 * sign * vcov[..., a, bb])
        return est, np.sqrt(np.maximum(var, 0.0)), [self.estimands[i] for i in keep]

    def fit(self) -> mestim.Result:
        return mestim.fit(self.blocks, self.data_for_fit, weights=self.weights, weight_type=self.weight_type,
                          cluster=self.cluster, solve=self.solve)


def build_stack(df, opts: TransportOptions) -> TransportStack:
    """The stack of :func:`~estimators.transport.api.transport_stack` for validated options."""
    df = as_frame(df)
    data = prepare_data(df, study=opts.study, treatment=opts.treatment, outcome=opts.outcome,
                        covariates=opts.covariates, formula=opts.formula, target=opts.target,
                        outcome_family=opts.outcome_model, extra_trial_columns=[opts.received] if opts.received else [])
    family, trial_effects = outcome_family(data, opts)
    notes = list(data.notes)
    chosen = chosen_estimators(data, opts, notes)
    trial_units = [PER_TRIAL_UNITS[e] for e in chosen if e in PER_TRIAL] if opts.per_trial else []
    pooled_units = [POOLED_UNITS[e] for e in chosen if e in POOLED and (opts.pooled or e == "target_only")]
    if not (trial_units or pooled_units):
        raise SpecificationError(f"no estimator left to fit: {chosen} with "
                                 f"{'per_trial=False (--pooled-only)' if not opts.per_trial else 'pooled=False (--per-trial-only)'}"
                                 f"; per-trial estimators are {list(PER_TRIAL)}, pooled ones {list(POOLED)}")
    pairs, reference, reference_reason = arm_pairs(data, opts)
    contrast_names = tuple(f"{label(data.arms[a])} vs {label(data.arms[b])}" for a, b in pairs)
    models, blocks = working_models(df, data, opts, family, trial_effects, trial_units, pooled_units,
                                    pairs, contrast_names)
    blocks += [unit.build(models, unit) for unit in trial_units + pooled_units]
    if opts.sensitivity:
        data.columns["tr.U"] = bias_columns(data, opts.bias)
        blocks.append(Block("bias_mean", BiasMean(), init=data.columns["tr.U"][data.columns["tr.S0"] > 0].mean(0),
                            labels=tuple(label(s) for s in data.trials) + ("pooled",)))
    fit_cols, weights = fit_columns(df, data.columns, opts)
    trial_est, pooled_est = [u.name for u in trial_units], [u.name for u in pooled_units]
    settings = stack_settings(data, opts, family, trial_effects, chosen, trial_est, pooled_est, contrast_names)
    settings.update(sampling_design(weights, opts.weight_type, opts.cluster),
                    reference=None if reference is None else label(data.arms[reference]),
                    reference_reason=reference_reason, notes=notes)
    return TransportStack(blocks, fit_cols, reported_contrasts(data, trial_units, pooled_units, pairs, contrast_names),
                          settings, data, weights=weights, weight_type=opts.weight_type, cluster=opts.cluster,
                          solve=opts.solve, pairs=pairs, contrast_names=contrast_names, family=family,
                          trial_estimators=tuple(trial_est), pooled_estimators=tuple(pooled_est),
                          participation=models.participation, arm_weights=models.weights, use_bias=opts.sensitivity,
                          bias_grid=opts.bias_grid, level=opts.level)


def outcome_family(data, opts: TransportOptions) -> tuple[str, bool]:
    """(the outcome model's family, trial main effects in the pooled outcome model): "auto" is logistic for a 0/1
    outcome; trial effects default to the linear model's (a logistic model's make the risk difference differ)."""
    family = ("logistic" if data.binary_outcome else "linear") if opts.outcome_model == "auto" else opts.outcome_model
    trial_effects = family == "linear" if opts.trial_effects is None else opts.trial_effects
    if trial_effects and family == "logistic":
        raise SpecificationError("trial main effects in a logistic pooled outcome model make the risk difference differ "
                                 "between trials (no common CATE); use trial_effects=False with a logistic outcome model")
    return family, bool(trial_effects and data.m > 1)


def chosen_estimators(data, opts: TransportOptions, notes: list) -> list[str]:
    """The estimators to fit: those given, or every one that applies — "target_only" only when the target sample
    identifies its arm means (a note says why it was skipped or what it uses)."""
    if opts.estimators is None:
        chosen = ["unadjusted", "outcome", "weighting", "dr", "pseudo_outcome"]
        if not opts.per_protocol:
            if data.target_only_problem is None:
                chosen.append("target_only")
            elif data.target_outcome_rows > 0:  # the target has Z and Y columns, but they cannot identify the means
                notes.append(f"target-only comparison skipped: {data.target_only_problem}")
    else:
        chosen = list(opts.estimators)
    if "target_only" in chosen and data.target_only_problem is not None:
        if not data.target_only_identified:
            raise DataError(f"estimator 'target_only' needs treatment and outcome in the target sample "
                            f"({opts.study}={label(data.target)}): {data.target_only_problem}")
        notes.append(f"target-only comparison: {data.target_only_problem}")
    left_out = data.n_target - data.target_outcome_rows
    if "target_only" in chosen and data.target_outcome_rows > 0 and left_out > 0:
        notes.append(f"{left_out} target row(s) without treatment or outcome are left out of the target-only "
                     f"comparison (it uses {data.target_outcome_rows} of {data.n_target})")
    return chosen


def natural_reference(arms) -> tuple[int, str]:
    """(index of the default reference arm, why): the one control-like label ("placebo", "control", "usual
    care", …) when text arms have exactly one, else the smallest level (0 of a 0/1 treatment) or the first text
    label in sorted order — stated in the output, since a wrong guess flips the sign of every contrast."""
    control = [i for i, a in enumerate(arms) if isinstance(a, str) and a.strip().lower() in CONTROL_LIKE]
    if len(control) == 1:
        return control[0], "a control-like label"
    if isinstance(arms[0], str):
        return 0, "first in sorted order"
    return 0, "the smallest level"


def arm_index(data, value) -> int:
    for i, a in enumerate(data.arms):
        if a == value or label(a) == label(value):
            return i
    raise DataError(f"treatment level {value!r} is not one of the arms {[label(a) for a in data.arms]}")


def arm_pairs(data, opts: TransportOptions) -> tuple[tuple, int | None, str]:
    """(the contrasts' arm index pairs (z, z'), the reference arm's index or None, why that reference): every
    arm against the reference, or the pairs given (each once)."""
    if opts.reference is not None:
        ref, reason = arm_index(data, opts.reference), "given"
    elif opts.contrasts is not None:
        ref, reason = None, "contrasts given"
    else:
        ref, reason = natural_reference(data.arms)
    if opts.contrasts is None:
        return tuple((c, ref) for c in range(data.n_arms) if c != ref), ref, reason
    contrasts = opts.contrasts
    if isinstance(contrasts, tuple) and len(contrasts) == 2 and not isinstance(contrasts[0], (tuple, list)):
        contrasts = [contrasts]
    pairs = []
    for a, b in contrasts:
        ia, ib = arm_index(data, a), arm_index(data, b)
        if ia == ib:
            raise SpecificationError(f"contrast ({a!r}, {b!r}) compares an arm with itself")
        pairs.append((ia, ib))
    return tuple(dict.fromkeys(pairs)), ref, reason  # a contrast given twice is reported once


def working_models(df, data, opts: TransportOptions, family, trial_effects, trial_units, pooled_units, pairs,
                   contrast_names) -> tuple[WorkingModels, list]:
    """(the evaluators the estimator blocks read, the working-model blocks): only the models some chosen unit
    reads — participation, treatment (and per protocol adherence) and outcome, per trial and/or pooled."""
    reads = lambda model, units: any(model in u.reads for u in units)  # noqa: E731
    cols, C, m = data.columns, data.n_arms, data.m
    if opts.treatment_model == "known":
        cols["tr.eknown"] = known_probabilities(data, opts.treatment_probabilities)
    treat = Treatment(opts.treatment_model, C, m)
    itt_weights = ArmWeights(treat)  # I(Z=z)/e(z): the intention-to-treat arm weight
    trial_outcome, pooled_outcome = reads("outcome", trial_units), reads("outcome", pooled_units)
    if opts.per_protocol:
        regressors, post = add_adherence_columns(data, df, opts.received, opts.post_covariates,
                                                 per_trial=bool(trial_units))
        weights = ArmWeights(treat, Adherence(C))  # I(Z=z, A=z)/(e(z) π_A(z)): the per-protocol arm weight
        out = IteratedOutcome(family, C, m, trial_effects)
        check_arm_rows(data, per_trial=trial_outcome, pooled=pooled_outcome)  # the outer model, on all rows
        check_arm_rows(data, per_trial=trial_outcome, pooled=pooled_outcome, among=cols["tr.adherent"] > 0,
                       extra=post)
        outcome_model_blocks = iterated_blocks(data, out, post, per_trial=trial_outcome, pooled=pooled_outcome)
    else:
        weights, out = itt_weights, Outcome(family, C, m, trial_effects)
        check_arm_rows(data, per_trial=trial_outcome, pooled=pooled_outcome)
        outcome_model_blocks = outcome_blocks(data, family, per_trial=trial_outcome, pooled=pooled_outcome,
                                              trial_effects=trial_effects)
    covs = tuple(data.covariates)
    blocks = participation_blocks(opts.participation, m, list(covs), pooled=reads("participation", pooled_units),
                                  per_trial=reads("participation", trial_units))
    if reads("treatment", trial_units + pooled_units):
        blocks += treatment_blocks(opts.treatment_model, data, list(covs))
        blocks += adherence_blocks(data, regressors) if opts.per_protocol else []
    if opts.per_protocol:
        cols["tr.ZAhot"] = cols["tr.Zhot"] * cols["tr.Ahot"]  # adherent to the assigned arm (naive per protocol)
    arm_labels = [label(a) for a in data.arms]
    models = WorkingModels(
        Participation(opts.participation, m), weights, out,
        *((itt_weights, weights) if opts.per_protocol else (weights, None)),  # per protocol DR weights two residuals
        normalized=opts.normalized, per_protocol=opts.per_protocol, m=m, n_arms=C, k=data.k,
        ybar=float(cols["tr.Y"][cols["tr.R"] > 0].mean()), pairs=pairs, contrast_names=contrast_names,
        covariates=covs, arm_mean_labels=tuple(f"mu[{opts.treatment}={z}]" for z in arm_labels),
        mean_labels=tuple(f"mu[{opts.study}={label(s)},{opts.treatment}={z}]" for s in data.trials for z in arm_labels))
    return models, blocks + outcome_model_blocks


def fit_columns(df, cols: dict, opts: TransportOptions) -> tuple[dict, object]:
    """(the columns the fit reads, the row weights as ``mestim.fit`` takes them): the stack's columns, plus the
    weight and cluster columns named by ``weights=`` and ``cluster=`` (an array of weights as floats)."""
    fit_cols, weights = dict(cols), opts.weights
    if isinstance(weights, str):
        if weights not in df.columns:
            raise missing_column(weights, df.columns, "weight column")
        if not pd.api.types.is_numeric_dtype(df[weights]):
            raise DataError(f"weight column '{weights}' is not numeric (e.g. {df[weights].dropna().iloc[0]!r})")
        fit_cols[weights] = df[weights].to_numpy(dtype=float)
    elif weights is not None:
        weights = np.asarray(weights, float)
    if isinstance(opts.cluster, str):
        if opts.cluster not in df.columns:
            raise missing_column(opts.cluster, df.columns, "cluster column")
        fit_cols[opts.cluster] = df[opts.cluster].to_numpy()
    return fit_cols, weights


def sampling_design(weights, weight_type, cluster) -> dict:
    """The settings that name the row weights and clusters (None when not given)."""
    name = lambda v: None if v is None else v if isinstance(v, str) else "array"  # noqa: E731
    return {"weights": name(weights), "weight_type": weight_type, "cluster": name(cluster)}


PARTICIPATION_TEXT = {
    "logistic": "logistic: P[S=0|X] on all rows (pooled); P[S=0|X, S in {0,s}] on rows S in {0,s} (per trial)",
    "multinomial": "multinomial logistic model for S on all rows (target = reference)"}
TREATMENT_TEXT = {"trial": "e(z;X,S): multinomial/logistic on X and trial indicators, trial rows (paper's default)",
                  "pooled": "P[Z=z|X, R=1]: multinomial/logistic on X, trial rows (no trial indicators)",
                  "per_trial": "l(z,s;X): a separate multinomial/logistic model per trial",
                  "known": "known randomisation probabilities {}"}


def model_texts(opts: TransportOptions, family: str, trial_effects: bool) -> dict:
    """The settings that describe the estimand, the working models and the weighting in words."""
    where = ("per trial on rows S=s; pooled on all trial rows "
             + ("with trial main effects" if trial_effects else "without trial main effects"))
    out = (f"{family} regression per arm (X-by-arm interactions); {where}" if not opts.per_protocol else
           f"iterated expectation (eq. C.2): {family} regression of Y on X and L among adherent rows, then "
           f"{'fractional logistic' if family == 'logistic' else 'linear'} regression of its prediction on X among "
           f"all rows of the arm, per arm; {where}")
    return {
        "estimand": ("per-protocol effect E[Y^(z,a=z) - Y^(z',a'=z') | S=target] (eAppendix C; treatment received "
                     f"'{opts.received}', post-randomisation covariates {list(opts.post_covariates or [])})"
                     if opts.per_protocol else "intention-to-treat effect E[Y^z - Y^z' | S=target]"),
        "participation_model": PARTICIPATION_TEXT[opts.participation],
        "treatment_model": TREATMENT_TEXT[opts.treatment_model].format(opts.treatment_probabilities),
        "outcome_model": out,
        "pooled_cate": "outcome regression with Z and Z-by-X terms ('outcome'); pseudo-outcome "
        "regression of [I(Z=z)/e(z) - I(Z=z')/e(z')]Y on X ('pseudo_outcome')",
        "weighting": (f"{opts.weighting} ({'Hajek: each arm weighted mean of Y' if opts.normalized else 'Horvitz-Thompson: weighted sums / n0, as in eq. 7 and 9'})"
                      f"{' [default]' if opts.weighting == DEFAULT_WEIGHTING else ''}"),
    }


def stack_settings(data, opts: TransportOptions, family, trial_effects, chosen, trial_est, pooled_est,
                   contrast_names) -> dict:
    """``TransportResult.settings``: the data's roles and sizes, the estimators, the models used, in words."""
    texts = model_texts(opts, family, trial_effects)
    return {
        "study": data.study, "treatment": data.treatment, "outcome": data.outcome,
        "covariates": list(data.covariates), "target": label(data.target),
        "trials": [label(s) for s in data.trials], "arms": [label(a) for a in data.arms],
        "n_target": data.n_target, "n_trials": {label(s): n for s, n in data.n_trial.items()},
        "estimand": texts.pop("estimand"),
        "contrasts": list(contrast_names), "estimators": list(chosen), "per_trial_estimators": list(trial_est),
        "pooled_estimators": list(pooled_est), **texts,
        "variance": "joint sandwich over all working models and estimators (one stack); Wald CIs "
                    f"at level {opts.level}; ratios by the delta method on the log scale",
    }
