"""``transport(df, …)``: every estimator of Dahabreh et al. in one stack, one joint sandwich covariance.

One call fits, in a single stack of estimating functions solved by :func:`mestim.fit`:

- the working models (participation, treatment, outcome; every choice is an option, and the result's
  ``settings`` name what was used),
- for every trial s: unadjusted arm means, ψ_te (eq. 6), ψ_w (eq. 7) and the doubly robust estimator,
- for the collection of trials: φ_te by outcome regression and by pseudo-outcome regression (eq. 8),
  φ_w (eq. 9) and φ_dr, plus the target-only comparison when the target sample has Z and Y in every arm,
- with ``received=`` the per-protocol versions of all of them (eAppendix C),

so per-trial and pooled estimates share one covariance: homogeneity of transported effects across trials is a
Wald χ² test on m − 1 df, and the per-trial CATE models can be compared (the paper's falsification check, eq. 3).
Contrasts are differences μ_z − μ_z' for any pair of arms; for 0/1 outcomes also risk and odds ratios in the
target population (delta method, CIs on the log scale).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

import mestim
from mestim import Block
from mestim.errors import DataError, SpecificationError
from mestim.results import check_level, normal_two_sided_p, z_crit

from .data import TransportData, as_frame, label, missing_column, prepare_data
from .iterated import IteratedOutcome, iterated_blocks
from .nonadherence import Adherence, add_adherence_columns, adherence_blocks
from .outcome import OUTCOME_MODELS, Outcome, check_arm_rows, outcome_blocks
from .participation import PARTICIPATION_MODELS, Participation, participation_blocks
from .per_trial import TrialDoublyRobust, TrialOutcomeModel, TrialUnadjusted, TrialWeighting
from .pooled import PooledDoublyRobust, PooledOutcomeModel, PooledPseudoOutcome, PooledWeighting, TargetOnly
from .sensitivity import BiasMean, bias_columns
from .treatment import TREATMENT_MODELS, ArmWeights, Treatment, known_probabilities, treatment_blocks

ESTIMATORS = ("unadjusted", "outcome", "weighting", "dr", "pseudo_outcome", "target_only")
PER_TRIAL = ("unadjusted", "outcome", "weighting", "dr")
POOLED = ("outcome", "weighting", "dr", "pseudo_outcome", "target_only")
DISPLAY = {"unadjusted": "Unadjusted", "outcome": "Outcome model", "weighting": "Weighting", "dr": "Doubly robust",
           "pseudo_outcome": "Pseudo-outcome", "target_only": "Target only"}
WEIGHTING = ("normalized", "unnormalized")
WEIGHT_TYPES = ("frequency", "sampling")
SENSITIVITY_COLUMNS = ["estimator", "trial", "contrast", "delta", "bias_mean", "estimate", "se", "ci_low", "ci_high", "n"]
DEFAULT_WEIGHTING = "normalized"


@dataclasses.dataclass
class TransportResult:
    """Everything one :func:`transport` call estimated.

    Attributes:
        table: tidy DataFrame, one row per (estimator, trial, contrast, scale): estimate, se, ci_low, ci_high.
        tests: Wald tests: ``tests["homogeneity"][estimator][contrast]`` (transported effects equal across trials,
            m − 1 df) and ``tests["cate_equality"][contrast]`` (per-trial CATE models equal, eq. 3).
        sensitivity: tidy DataFrame of the bias-function sweep (eq. 11), or None.
        settings: the working models, weighting and estimand used (named in every printout).
        fit: the underlying :class:`mestim.Result` (all working-model and estimand parameters, joint covariance).
        estimates: :class:`mestim.Estimates` of every reported contrast with their joint covariance.
        diagnostics: tidy DataFrame of the positivity diagnostics of the inverse-odds weights (one row per
            weighting/DR estimator, trial or "pooled", and arm: rows, effective sample size, largest weight share,
            top-5 weights; see :mod:`~estimators.transport.diagnostics`), or None when no estimator weights.
        diagnostic_warnings: the positivity warnings (also emitted as :class:`mestim.MestimWarning`).
    """

    table: pd.DataFrame
    tests: dict
    settings: dict
    fit: mestim.Result
    estimates: mestim.Estimates
    data: TransportData
    sensitivity: pd.DataFrame | None = None
    level: float = 0.95
    diagnostics: pd.DataFrame | None = None
    diagnostic_warnings: list = dataclasses.field(default_factory=list)

    def estimate(self, estimator: str, trial="pooled", contrast=None, scale: str = "difference") -> pd.Series:
        """The row of ``table`` for one estimator, trial (label or "pooled") and contrast ("1 vs 0")."""
        t = self.table
        sel = (t.estimator == estimator) & (t.trial == (trial if trial == "pooled" else label(trial))) & (t.scale == scale)
        if contrast is not None:
            sel &= t.contrast == contrast
        if not sel.any():
            raise SpecificationError(f"no estimate for estimator={estimator!r}, trial={trial!r}, contrast={contrast!r}, "
                                     f"scale={scale!r}; estimators are {sorted(set(t.estimator))}")
        return t[sel].iloc[0]

    def homogeneity_test(self, estimator: str = "dr", contrast=None) -> mestim.WaldTest:
        """Wald χ² test that the transported effects of ``estimator`` are equal across trials (m − 1 df)."""
        tests = self.tests["homogeneity"].get(estimator)
        if not tests:
            raise SpecificationError(f"no homogeneity test for {estimator!r}; available: {sorted(self.tests['homogeneity'])}")
        key = contrast or next(iter(tests))
        d = tests[key]
        return mestim.WaldTest(d["statistic"], d["df"], d["p_value"])

    @property
    def notes(self) -> list[str]:
        """How the data were used: text covariates' coding, estimators skipped and why (also in ``settings``)."""
        return list(self.settings.get("notes", []))

    @property
    def warnings(self) -> list[str]:
        """Every warning of the analysis once: the engine's (``fit.warnings``), then the positivity warnings."""
        return list(dict.fromkeys([*self.fit.warnings, *self.diagnostic_warnings]))

    def table_with_sensitivity(self) -> pd.DataFrame:
        """``table`` with the sensitivity sweep's rows appended (scale "difference", one row per δ; columns
        ``delta`` and ``bias_mean`` empty for the estimates themselves): the command line's ``--table``."""
        if self.sensitivity is None or self.sensitivity.empty:
            return self.table
        sweep = self.sensitivity.assign(scale="difference")
        return pd.concat([self.table.assign(delta=np.nan, bias_mean=np.nan), sweep[list(self.table.columns)
                          + ["delta", "bias_mean"]]], ignore_index=True)

    def to_dict(self) -> dict:
        """{"estimates": [...], "tests": {...}, "settings": {...}} (the command line's --json)."""
        rows = []
        for r in self.table.itertuples(index=False):
            rows.append({"estimator": r.estimator, "trial": r.trial, "contrast": r.contrast, "scale": r.scale,
                         "estimate": _num(r.estimate), "se": _num(r.se), "ci_low": _num(r.ci_low),
                         "ci_high": _num(r.ci_high), "n": int(r.n), "p_value": _num(_p_value(r))})
        out = {"estimates": rows, "tests": self.tests, "settings": self.settings, "notes": self.notes,
               "warnings": self.warnings, "level": self.level, "version": mestim.__version__}
        if self.diagnostics is not None:
            from .diagnostics import diagnostics_records

            out["diagnostics"] = diagnostics_records(self.diagnostics)
            out["diagnostic_warnings"] = list(self.diagnostic_warnings)
        if self.sensitivity is not None:
            out["sensitivity"] = [{k: (_num(v) if isinstance(v, float) else v) for k, v in rec.items()}
                                  for rec in self.sensitivity.to_dict("records")]
        return out

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text + "\n")
        return text

    def summary(self, warnings: bool = True) -> str:
        """The printed report; ``warnings=False`` leaves the warnings out (the command line prints them on stderr)."""
        from .report import format_summary

        return format_summary(self, warnings)

    def plot(self, path: str | None = None, contrast=None):
        """Forest plot as the paper's Figure 1; saved to ``path`` if given; returns the matplotlib figure."""
        from .report import forest_plot

        return forest_plot(self, path, contrast)

    def plot_sensitivity(self, path: str | None = None, contrast=None, trial="pooled"):
        """The sensitivity sweep (eq. 10–11) drawn: estimate and CI against δ, one line per estimator, for
        ``trial`` ("pooled" or a trial label); saved to ``path`` if given; returns the matplotlib figure."""
        from .report import sensitivity_plot

        return sensitivity_plot(self, path, contrast, trial)

    def __repr__(self):
        return self.summary()


def _num(v):
    v = float(v)
    return v if np.isfinite(v) else None


def _p_value(row) -> float:
    """Two-sided Wald p-value of no effect: z = estimate / se for a difference, log r / (se / r) for a ratio r
    (its CI and SE are from the log scale)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = row.estimate / row.se if row.scale == "difference" else np.log(row.estimate) * row.estimate / row.se
    return float(normal_two_sided_p(z))


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


CONTROL_LIKE = {"placebo", "control", "controls", "ctrl", "usual care", "usual_care", "standard care", "standard",
                "soc", "sham", "untreated", "no treatment", "none", "no", "comparator", "vehicle", "reference"}


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


def check_bias_grid(grid) -> np.ndarray:
    """The multipliers δ of the sensitivity analysis: finite numbers (default [1])."""
    values = np.atleast_1d(np.asarray([1.0] if grid is None else grid, dtype=float))
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise SpecificationError(f"bias_grid={grid!r}: give a list of finite multipliers δ, e.g. [-0.5, 0, 0.5]")
    return values


def transport(df=None, study: str = "S", treatment: str = "Z", outcome: str = "Y", covariates=None, *, sites=None,
              formula: str | None = None, target=0, estimators: Sequence[str] | None = None,
              per_trial: bool = True, pooled: bool = True, contrasts=None,
              participation: str = "logistic", treatment_model: str = "trial", treatment_probabilities=None,
              outcome_model: str = "auto", trial_effects: bool | None = None, weighting: str = DEFAULT_WEIGHTING,
              reference=None, received: str | None = None, post_covariates=None, bias=None, bias_grid=None,
              weights=None, weight_type: str = "frequency", cluster=None, level: float = 0.95,
              solve: str = "blockwise", diagnostics: bool = True, progress: bool | None = False) -> TransportResult:
    """Transport treatment effects from a collection of trials to a target population (Dahabreh et al.).

    Args:
        df: one row per person: study label, treatment, outcome, covariates (a pandas or polars DataFrame, or a
            dict of columns). Rows with ``study == target`` are the target sample (S=0 in the paper); their
            treatment and outcome may be NaN or placeholders: only the target-only comparison reads them.
        study, treatment, outcome: column names (S, Z, Y).
        covariates: list of covariate columns X: numbers, or text (coded as indicators against the first level in
            sorted order; the coding is listed in ``result.notes``). Or give ``formula="~ X1 + C(sex) + I(X1**2)"``
            (formulaic; text columns are categorical).
        target: label of the target sample in ``study``.
        estimators: subset of ``("unadjusted", "outcome", "weighting", "dr", "pseudo_outcome", "target_only")``;
            default all that apply: "target_only" only when the target sample has Z and Y in every arm and an
            outcome that varies (else it is skipped with a note saying why; asked for explicitly, it runs when
            every arm is present and is refused otherwise).
        per_trial, pooled: fit the one-trial-at-a-time estimators (eq. 6–7) and/or the pooled ones (eq. 8–9).
        contrasts: list of pairs (z, z') of arms; default (z, z_0) for every arm z ≠ the reference z_0.
        reference: the reference arm z_0 of the default contrasts. Default: the one control-like text label
            ("placebo", "control", "usual care", …), else the smallest level (0 of a 0/1 treatment), else the first
            text label in sorted order; ``settings["reference"]`` and ``settings["reference_reason"]`` say which
            and why, and the summary's first line states it.
        participation: ``"logistic"`` (paper: P[S=0|X] pooled, P[S=0|X, S∈{0,s}] per trial) or ``"multinomial"``.
        treatment_model: ``"trial"`` (paper's e(z; X, S), default), ``"pooled"``, ``"per_trial"`` or ``"known"``
            (then ``treatment_probabilities={z: p}`` or ``{trial: {z: p}}``: each p in (0, 1), summing to 1 per
            trial; numbers or text such as "1/3").
        outcome_model: ``"auto"`` (logistic for a 0/1 outcome, else linear), ``"linear"`` or ``"logistic"``.
        trial_effects: trial main effects in the pooled outcome model (default: True for linear, False for logistic).
        weighting: ``"normalized"`` (Hájek; default) or ``"unnormalized"`` (the paper's eq. 7 and 9 as printed).
        received, post_covariates: treatment received A and post-randomisation covariates L: estimate the
            per-protocol effect (eAppendix C): weighting and pseudo-outcome (eq. C.6–C.7), outcome model by
            iterated expectation (eq. C.2) and doubly robust (both, one trial at a time and pooled).
        bias, bias_grid: sensitivity analysis (eq. 11): bias function u (number, covariate name, or ``u(X, trial)``)
            and multipliers δ; each estimate is reported at ψ̂ + δ·mean_{S=0} u.
        weights: row weights (a column name or an array), passed to :func:`mestim.fit`.
        weight_type: how ``weights`` are read: ``"frequency"`` (default: a row of weight w counts as w rows, the
            same answer as the expanded table) or ``"sampling"`` (survey / inverse-probability weights, e.g. on the
            target sample: every ψ is multiplied by w, meat Σ w²ψψᵀ, n = rows).
        cluster: cluster labels (a column name or an array): cluster-robust sandwich over cluster totals, for
            trials recruited by site. The result's ``settings`` and summary name the weights and clusters used.
        level: confidence level of the Wald intervals, in (0, 1).
        solve: how the engine solves the stack: ``"blockwise"`` (default: one Newton per dependency level —
            working models first, then the estimands that read them) or ``"joint"`` (one Newton on the whole stack).
        diagnostics: compute the positivity diagnostics of the inverse-odds weights (``result.diagnostics``) and
            warn (:class:`mestim.MestimWarning`) on extreme weights; see :mod:`~estimators.transport.diagnostics`.
        progress: a progress bar over the analysis's stages on stderr: True, False (default), or None (only when
            stderr is a terminal; the command line's default, off with ``--quiet``).

        sites: ``{"trial1": t1, …, "target": t0}`` in place of ``df``: the same fit over sites that keep their
            rows (:mod:`~estimators.transport.federated`, a simulated federation: no positivity diagnostics).

    Returns:
        :class:`TransportResult`.
    """
    from estimators.progress import stages

    if (df is None) == (sites is None):
        raise SpecificationError("give the data as df= (one table) or as sites= ({'site': table, ...}), not both")
    if sites is not None:
        from .federated import pooled_frame

        df, origin = pooled_frame(sites)
        diagnostics = False

    with stages("mestim transport", ["checking the data", "fitting the stack", "contrasts and tests",
                                     "positivity diagnostics"][:3 + bool(diagnostics)], progress) as step:
        step("checking the data")
        stack = transport_stack(df, study=study, treatment=treatment, outcome=outcome, covariates=covariates,
                                formula=formula, target=target, estimators=estimators, per_trial=per_trial,
                                pooled=pooled, contrasts=contrasts, participation=participation,
                                treatment_model=treatment_model, treatment_probabilities=treatment_probabilities,
                                outcome_model=outcome_model, trial_effects=trial_effects, weighting=weighting,
                                reference=reference, received=received, post_covariates=post_covariates, bias=bias,
                                bias_grid=bias_grid, weights=weights, weight_type=weight_type, cluster=cluster,
                                level=level, solve=solve)
        step("fitting the stack")
        if sites is None:
            fit = stack.fit()
        else:
            from .federated import fit_sites

            fit = fit_sites(stack, origin)
        step("contrasts and tests")
        res = _result(stack, fit)
        if diagnostics:
            from .diagnostics import positivity_diagnostics, positivity_warnings

            step("positivity diagnostics")
            res.diagnostics = positivity_diagnostics(stack, fit)
            if res.diagnostics is not None:
                res.diagnostic_warnings = positivity_warnings(res.diagnostics, stack.settings)
    import warnings as _warnings

    for msg in res.diagnostic_warnings:
        _warnings.warn(msg, mestim.MestimWarning, stacklevel=2)
    return res


def transport_stack(df, study: str = "S", treatment: str = "Z", outcome: str = "Y", covariates=None, *,
                    formula: str | None = None, target=0, estimators: Sequence[str] | None = None,
                    per_trial: bool = True, pooled: bool = True, contrasts=None,
                    participation: str = "logistic", treatment_model: str = "trial", treatment_probabilities=None,
                    outcome_model: str = "auto", trial_effects: bool | None = None,
                    weighting: str = DEFAULT_WEIGHTING, reference=None, received: str | None = None,
                    post_covariates=None, bias=None,
                    bias_grid=None, weights=None, weight_type: str = "frequency", cluster=None, level: float = 0.95,
                    solve: str = "blockwise") -> TransportStack:
    """The stack :func:`transport` fits, without fitting it (same arguments; see :func:`transport`).

    ``stack.fit()`` is ``mestim.fit(stack.blocks, stack.data_for_fit, ...)``; a simulation study instead hands
    ``stack.blocks`` and ``stack.data_for_fit`` to :func:`mestim.pure.fit_function` and vmaps the pure fit over
    replicates, then reads the reported contrasts with :meth:`TransportStack.differences`.
    """
    if solve not in ("blockwise", "joint"):
        raise SpecificationError(f"solve={solve!r}: use 'blockwise' or 'joint'")
    if participation not in PARTICIPATION_MODELS:
        raise SpecificationError(f"participation={participation!r}: use one of {PARTICIPATION_MODELS}")
    if treatment_model not in TREATMENT_MODELS:
        raise SpecificationError(f"treatment_model={treatment_model!r}: use one of {TREATMENT_MODELS}")
    if outcome_model not in OUTCOME_MODELS:
        raise SpecificationError(f"outcome_model={outcome_model!r}: use one of {OUTCOME_MODELS}")
    if weighting not in WEIGHTING:
        raise SpecificationError(f"weighting={weighting!r}: use one of {WEIGHTING}")
    if weight_type not in WEIGHT_TYPES:
        raise SpecificationError(f"weight_type={weight_type!r}: use one of {WEIGHT_TYPES}")
    if not (per_trial or pooled):
        raise SpecificationError("per_trial and pooled are both False: nothing to estimate")
    level = check_level(level)
    df = as_frame(df)
    extra = [received] if received else []
    data = prepare_data(df, study=study, treatment=treatment, outcome=outcome, covariates=covariates, formula=formula,
                        target=target, outcome_family=outcome_model, extra_trial_columns=extra)
    cols = data.columns
    family = ("logistic" if data.binary_outcome else "linear") if outcome_model == "auto" else outcome_model
    if trial_effects is None:
        trial_effects = family == "linear"
    if trial_effects and family == "logistic":
        raise SpecificationError("trial main effects in a logistic pooled outcome model make the risk difference differ "
                                 "between trials (no common CATE); use trial_effects=False with a logistic outcome model")
    trial_effects = bool(trial_effects and data.m > 1)
    per_protocol = received is not None
    if post_covariates and not per_protocol:
        raise SpecificationError("post_covariates are used only for the per-protocol analysis: give received= too")

    # ------------------------------------------------------------------ which estimators
    notes = list(data.notes)
    if estimators is None:
        chosen = ["unadjusted", "outcome", "weighting", "dr", "pseudo_outcome"]
        if not per_protocol:
            if data.target_only_problem is None:
                chosen.append("target_only")
            elif data.target_outcome_rows > 0:  # the target has Z and Y columns, but they cannot identify the means
                notes.append(f"target-only comparison skipped: {data.target_only_problem}")
    else:
        chosen = [estimators] if isinstance(estimators, str) else list(estimators)
        unknown = [e for e in chosen if e not in ESTIMATORS]
        if unknown:
            raise SpecificationError(f"unknown estimator(s) {unknown}; choose from {ESTIMATORS}")
        chosen = list(dict.fromkeys(chosen))
    if per_protocol and "target_only" in chosen:
        raise SpecificationError("estimator 'target_only' is not available for the per-protocol effect (eAppendix C): "
                                 "the target sample has no treatment received; use 'unadjusted', 'outcome', "
                                 "'weighting', 'dr' and 'pseudo_outcome'")
    if "target_only" in chosen and data.target_only_problem is not None:
        if not data.target_only_identified:
            raise DataError(f"estimator 'target_only' needs treatment and outcome in the target sample "
                            f"({study}={label(data.target)}): {data.target_only_problem}")
        notes.append(f"target-only comparison: {data.target_only_problem}")
    left_out = data.n_target - data.target_outcome_rows
    if "target_only" in chosen and data.target_outcome_rows > 0 and left_out > 0:
        notes.append(f"{left_out} target row(s) without treatment or outcome are left out of the target-only "
                     f"comparison (it uses {data.target_outcome_rows} of {data.n_target})")
    trial_est = [e for e in chosen if e in PER_TRIAL] if per_trial else []
    pooled_est = [e for e in chosen if e in POOLED and (pooled or e == "target_only")]
    if not pooled:
        pooled_est = [e for e in pooled_est if e == "target_only"]
    if not (trial_est or pooled_est):
        raise SpecificationError(f"no estimator left to fit: {chosen} with "
                                 f"{'per_trial=False (--pooled-only)' if not per_trial else 'pooled=False (--per-trial-only)'}"
                                 f"; per-trial estimators are {list(PER_TRIAL)}, pooled ones {list(POOLED)}")

    # ------------------------------------------------------------------ contrasts
    C = data.n_arms
    if contrasts is not None and reference is not None:
        raise SpecificationError("give reference= (every arm against it) or contrasts= (explicit pairs), not both")
    ref, reference_reason = ((_arm_index(data, reference), "given") if reference is not None else
                             (None, "contrasts given") if contrasts is not None else natural_reference(data.arms))
    if contrasts is None:
        pairs = [(c, ref) for c in range(C) if c != ref]
    else:
        if isinstance(contrasts, tuple) and len(contrasts) == 2 and not isinstance(contrasts[0], (tuple, list)):
            contrasts = [contrasts]
        pairs = []
        for a, b in contrasts:
            ia, ib = (_arm_index(data, a), _arm_index(data, b))
            if ia == ib:
                raise SpecificationError(f"contrast ({a!r}, {b!r}) compares an arm with itself")
            pairs.append((ia, ib))
        pairs = list(dict.fromkeys(pairs))  # a contrast given twice is reported once
    contrast_names = [f"{label(data.arms[a])} vs {label(data.arms[b])}" for a, b in pairs]

    # ------------------------------------------------------------------ working models
    part = Participation(participation, data.m)
    treat = Treatment(treatment_model, C, data.m)
    covs = list(data.covariates)
    blocks: list[Block] = []
    if treatment_model == "known":
        cols["tr.eknown"] = known_probabilities(data, treatment_probabilities)
    elif treatment_probabilities is not None:
        raise SpecificationError("treatment_probabilities are used only with treatment_model='known' "
                                 "(--treatment-model known)")
    trial_outcome = any(e in ("outcome", "dr") for e in trial_est)
    pooled_outcome = any(e in ("outcome", "dr") for e in pooled_est)
    itt_weights = ArmWeights(treat)  # I(Z=z)/e(z): the intention-to-treat arm weight
    if per_protocol:
        regressors, post = add_adherence_columns(data, df, received, post_covariates,
                                                 per_trial=bool(trial_est))
        armw = ArmWeights(treat, Adherence(C))  # I(Z=z, A=z)/(e(z) π_A(z)): the per-protocol arm weight
        out = IteratedOutcome(family, C, data.m, trial_effects)
        check_arm_rows(data, per_trial=trial_outcome, pooled=pooled_outcome)  # the outer model, on all rows
        check_arm_rows(data, per_trial=trial_outcome, pooled=pooled_outcome, among=cols["tr.adherent"] > 0,
                       extra=post)
        outcome_model_blocks = iterated_blocks(data, out, post, per_trial=trial_outcome, pooled=pooled_outcome)
    else:
        armw = itt_weights
        out = Outcome(family, C, data.m, trial_effects)
        check_arm_rows(data, per_trial=trial_outcome, pooled=pooled_outcome)
        outcome_model_blocks = outcome_blocks(data, family, per_trial=trial_outcome, pooled=pooled_outcome,
                                              trial_effects=trial_effects)
    # per protocol, DR weights two residuals: q1 − q2 by the ITT weight and Y − q1 by the per-protocol one
    dr_weights, dr_adherence = (itt_weights, armw) if per_protocol else (armw, None)
    n_resid = 2 if per_protocol else 1
    needs_weights = any(e in ("weighting", "dr") for e in trial_est) or any(
        e in ("weighting", "dr", "pseudo_outcome") for e in pooled_est)
    blocks += participation_blocks(participation, data.m, covs,
                                   pooled=any(e in ("weighting", "dr") for e in pooled_est),
                                   per_trial=any(e in ("weighting", "dr") for e in trial_est))
    if needs_weights:
        blocks += treatment_blocks(treatment_model, data, covs)
        if per_protocol:
            blocks += adherence_blocks(data, regressors)
    blocks += outcome_model_blocks

    # ------------------------------------------------------------------ estimands
    m = data.m
    normalized = weighting == "normalized"
    trial_labels = [label(s) for s in data.trials]
    arm_labels = [label(a) for a in data.arms]
    mean_labels = tuple(f"mu[{study}={s},{treatment}={z}]" for s in trial_labels for z in arm_labels)
    arm_mean_labels = tuple(f"mu[{treatment}={z}]" for z in arm_labels)
    ybar = float(cols["tr.Y"][cols["tr.R"] > 0].mean())

    def dr_labels(means):
        """μ, then (normalised) the weighted-residual means: resid (Y − h; per protocol q1 − q2), resid_adherent."""
        if not normalized:
            return means
        prefixes = ("resid", "resid_adherent")[:n_resid]
        return means + tuple(f"{p}[{x[3:]}" for p in prefixes for x in means)

    if per_protocol:
        cols["tr.ZAhot"] = cols["tr.Zhot"] * cols["tr.Ahot"]
    for e in trial_est:
        if e == "unadjusted":
            psi = TrialUnadjusted(m, C, per_protocol)
            blocks.append(Block("unadjusted", psi, init=np.full(m * C, ybar), labels=mean_labels))
        elif e == "outcome":
            blocks.append(Block("outcome_trials", TrialOutcomeModel(out), init=np.full(m * C, ybar),
                                reads=out.trial_blocks(), labels=mean_labels))
        elif e == "weighting":
            blocks.append(Block("weighting_trials", TrialWeighting(part, armw, C, normalized), init=np.full(m * C, ybar),
                                reads=part.trial_blocks() + armw.blocks(), labels=mean_labels))
        elif e == "dr":
            blocks.append(Block("dr_trials", TrialDoublyRobust(part, dr_weights, out, normalized, dr_adherence),
                                init=np.concatenate([np.full(m * C, ybar), np.zeros(m * C * n_resid if normalized else 0)]),
                                reads=part.trial_blocks() + armw.blocks() + out.trial_blocks(),
                                labels=dr_labels(mean_labels)))
    k = data.k
    for e in pooled_est:
        if e == "target_only":
            blocks.append(Block("target_only", TargetOnly(C), init=np.full(C, ybar), labels=arm_mean_labels))
        elif e == "outcome":
            blocks.append(Block("outcome_pooled_mean", PooledOutcomeModel(out), init=np.full(C, ybar),
                                reads=out.pooled_blocks(), labels=arm_mean_labels))
        elif e == "weighting":
            blocks.append(Block("weighting_pooled", PooledWeighting(part, armw, normalized), init=np.full(C, ybar),
                                reads=part.pooled_blocks() + armw.blocks(), labels=arm_mean_labels))
        elif e == "dr":
            blocks.append(Block("dr_pooled", PooledDoublyRobust(part, dr_weights, out, normalized, dr_adherence),
                                init=np.concatenate([np.full(C, ybar), np.zeros(C * n_resid if normalized else 0)]),
                                reads=part.pooled_blocks() + armw.blocks() + out.pooled_blocks(),
                                labels=dr_labels(arm_mean_labels)))
        elif e == "pseudo_outcome":
            lab = tuple(f"{cn}:{p}" for cn in contrast_names for p in ["(Intercept)", *covs, "phi"])
            blocks.append(Block("pseudo_outcome", PooledPseudoOutcome(armw, tuple(pairs), k),
                                init=np.zeros(len(pairs) * (k + 1)), reads=armw.blocks(), labels=lab))
    use_bias = bias is not None or bias_grid is not None
    if use_bias:
        bias_grid = check_bias_grid(bias_grid)
        cols["tr.U"] = bias_columns(data, bias)
        blocks.append(Block("bias_mean", BiasMean(), init=cols["tr.U"][cols["tr.S0"] > 0].mean(0),
                            labels=tuple(trial_labels) + ("pooled",)))

    fit_cols = {name: v for name, v in cols.items()}
    if weights is not None and not isinstance(weights, str):
        weights = np.asarray(weights, float)
    elif isinstance(weights, str):
        if weights not in df.columns:
            raise missing_column(weights, df.columns, "weight column")
        if not pd.api.types.is_numeric_dtype(df[weights]):
            raise DataError(f"weight column '{weights}' is not numeric (e.g. {df[weights].dropna().iloc[0]!r})")
        fit_cols[weights] = df[weights].to_numpy(dtype=float)
    if isinstance(cluster, str):
        if cluster not in df.columns:
            raise missing_column(cluster, df.columns, "cluster column")
        fit_cols[cluster] = df[cluster].to_numpy()

    # ------------------------------------------------------------------ the reported contrasts (positions in blocks)
    estimands: list[Estimand] = []
    n_rows = {label(s): data.n_trial[s] for s in data.trials}
    n_all_trials = int(sum(data.n_trial.values()))
    block_of = {"unadjusted": "unadjusted", "outcome": "outcome_trials", "weighting": "weighting_trials",
                "dr": "dr_trials"}
    pooled_block = {"outcome": "outcome_pooled_mean", "weighting": "weighting_pooled", "dr": "dr_pooled",
                    "target_only": "target_only"}
    ratios = bool(data.binary_outcome)

    def add(e, trial, ci, block, a, b, n):
        for scale in ("difference", "risk ratio", "odds ratio") if ratios else ("difference",):
            estimands.append(Estimand(e, trial, contrast_names[ci], ci, scale, block, a, b, n))

    for e in trial_est:
        for j, s in enumerate(trial_labels):
            for ci, (a, b) in enumerate(pairs):
                add(e, s, ci, block_of[e], j * C + a, j * C + b, n_rows[s])
    for e in pooled_est:
        n_e = data.target_outcome_rows if e == "target_only" else n_all_trials
        trial = label(data.target) if e == "target_only" else "pooled"
        for ci, (a, b) in enumerate(pairs):
            if e == "pseudo_outcome":
                estimands.append(Estimand(e, trial, contrast_names[ci], ci, "difference", "pseudo_outcome",
                                          ci * (k + 1) + k, None, n_e))
            else:
                add(e, trial, ci, pooled_block[e], a, b, n_e)

    settings = _settings(data, family, participation, treatment_model, treatment_probabilities, trial_effects,
                         weighting, per_protocol, received, post_covariates, chosen, trial_est, pooled_est,
                         contrast_names, level)
    settings.update(_sampling_design(weights, weight_type, cluster), reference=None if ref is None else label(data.arms[ref]),
                    reference_reason=reference_reason)
    settings["notes"] = notes
    return TransportStack(blocks, fit_cols, estimands, settings, data, weights=weights, weight_type=weight_type,
                          cluster=cluster, solve=solve,
                          pairs=tuple(pairs), contrast_names=tuple(contrast_names), family=family,
                          trial_estimators=tuple(trial_est), pooled_estimators=tuple(pooled_est), participation=part,
                          arm_weights=armw, use_bias=use_bias, bias_grid=bias_grid, level=level)


def _result(stack: TransportStack, fit: mestim.Result) -> TransportResult:
    """Contrasts by the delta method, the homogeneity and CATE-equality tests, the sensitivity sweep."""
    data, level = stack.transport_data, stack.level
    m, k = data.m, data.k
    pairs, contrast_names = stack.pairs, stack.contrast_names
    trial_est, family, use_bias = stack.trial_estimators, stack.family, stack.use_bias
    trial_labels = [label(s) for s in data.trials]
    # items: (estimator, trial label | "pooled", contrast index, scale, flat index of μ_z (or φ), of μ_z' (or None), n)
    ia, ib = stack.positions(fit.blocks)
    items = [(e.estimator, e.trial, e.contrast_index, e.scale, int(a), None if b < 0 else int(b), e.n)
             for e, a, b in zip(stack.estimands, ia, ib)]
    start = {name: sl.start for name, sl in fit.blocks.items()}
    n_items = len(items)
    extra_idx = [start["bias_mean"] + j for j in range(m + 1)] if use_bias else []
    labels = list(stack.labels)
    labels += [f"bias_mean|{s}" for s in trial_labels + ["pooled"]] if use_bias else []
    allest = _delta(fit, items, extra_idx, labels)
    est = mestim.Estimates(allest.theta[:n_items], allest.vcov[:n_items, :n_items], tuple(labels[:n_items]))

    z = z_crit(level)
    rows = []
    for i, (e, trial, ci, scale, _, _, n) in enumerate(items):
        value, se = float(est.theta[i]), float(np.sqrt(est.vcov[i, i]))
        if scale == "difference":
            rows.append((e, trial, contrast_names[ci], scale, value, se, value - z * se, value + z * se, n))
        else:  # log scale → ratio; SE by the delta method, CI exponentiated from the log scale
            r = np.exp(value)
            rows.append((e, trial, contrast_names[ci], scale, r, r * se, np.exp(value - z * se), np.exp(value + z * se), n))
    table = pd.DataFrame(rows, columns=["estimator", "trial", "contrast", "scale", "estimate", "se", "ci_low",
                                        "ci_high", "n"])

    # ------------------------------------------------------------------ tests
    tests = {"homogeneity": {}, "cate_equality": {}}
    if m >= 2:
        for e in trial_est:
            tests["homogeneity"][e] = {}
            for ci, cn in enumerate(contrast_names):
                idx = [i for i, it in enumerate(items) if it[0] == e and it[1] != "pooled" and it[2] == ci
                       and it[3] == "difference"]
                t = est.test_equal(idx)
                tests["homogeneity"][e][cn] = {"statistic": t.statistic, "df": t.df, "p_value": t.p_value,
                                               "null": ("trial-specific effects equal (conventional heterogeneity "
                                                        "test, not transported)" if e == "unadjusted" else
                                                        "transported effects equal across trials")}
        prefix = next((p for p in ("outcome_s", "pp_outer_s") if f"{p}1" in fit.blocks), None)
        for ci, (a, b) in enumerate(pairs if prefix else []):
            t = fit.wald_test(_cate_difference(fit, prefix, k, a, b, m))
            scale = "log-odds" if family == "logistic" else "mean-difference"
            null = (f"per-trial CATE models equal across trials ({scale} coefficients of the arm-by-X terms, eq. 3)"
                    if prefix == "outcome_s" else f"per-trial per-protocol CATE models equal across trials ({scale} "
                    "coefficients of the arm-by-X terms of the outer regressions, eq. C.5)")
            tests["cate_equality"][contrast_names[ci]] = {"statistic": t.statistic, "df": t.df, "p_value": t.p_value,
                                                          "null": null}

    # ------------------------------------------------------------------ sensitivity sweep
    sens = None
    if use_bias:
        grid = stack.bias_grid  # validated by check_bias_grid
        ubar_idx = {s: n_items + j for j, s in enumerate(trial_labels + ["pooled"])}
        recs = []
        for i, (e, trial, ci, scale, _, _, n) in enumerate(items):
            if scale != "difference" or e in ("unadjusted", "target_only"):
                continue
            u = ubar_idx[trial]
            for d in grid:
                value = allest.theta[i] + d * allest.theta[u]
                var = allest.vcov[i, i] + 2 * d * allest.vcov[i, u] + d * d * allest.vcov[u, u]
                se = float(np.sqrt(max(var, 0.0)))
                recs.append({"estimator": e, "trial": trial, "contrast": contrast_names[ci], "delta": float(d),
                             "bias_mean": float(d * allest.theta[u]), "estimate": float(value), "se": se,
                             "ci_low": float(value - z * se), "ci_high": float(value + z * se), "n": n})
        sens = pd.DataFrame(recs, columns=SENSITIVITY_COLUMNS)

    settings = dict(stack.settings, n_clusters=fit.n_clusters)
    settings["variance"] += _design_text(settings)
    return TransportResult(table, tests, settings, fit, est, data, sens, level)


def _arm_index(data, value) -> int:
    for i, a in enumerate(data.arms):
        if a == value or label(a) == label(value):
            return i
    raise DataError(f"treatment level {value!r} is not one of the arms {[label(a) for a in data.arms]}")


def _cate_difference(fit, prefix, k, a, b, m) -> np.ndarray:
    """L with Lθ = per-trial (arm-a minus arm-b interaction coefficients), trial j minus trial 1, j = 2..m, of the
    per-trial outcome blocks ``{prefix}{j}`` (design [x, I(Z=z_1)·x, …], k columns per arm)."""
    L = np.zeros(((m - 1) * k, fit.theta.size))

    def put(row, j, c, sign):
        if c > 0:
            L[row + np.arange(k), fit.blocks[f"{prefix}{j}"].start + c * k + np.arange(k)] += sign

    for j in range(2, m + 1):
        row = (j - 2) * k
        put(row, j, a, 1.0)
        put(row, j, b, -1.0)
        put(row, 1, a, -1.0)
        put(row, 1, b, 1.0)
    return L


def _delta(fit, items, extra_idx, labels) -> mestim.Estimates:
    """Contrasts (difference, log risk ratio, log odds ratio) with gradients in closed form: G V Gᵀ."""
    theta = fit.theta
    p = theta.size
    values, grads = [], []
    for (_, _, _, scale, ia, ib, _) in items:
        g = np.zeros(p)
        if ib is None:
            values.append(theta[ia])
            g[ia] = 1.0
        elif scale == "difference":
            values.append(theta[ia] - theta[ib])
            g[ia], g[ib] = 1.0, -1.0
        else:
            ta, tb = theta[ia], theta[ib]
            with np.errstate(invalid="ignore", divide="ignore"):
                if scale == "risk ratio":
                    values.append(np.log(ta) - np.log(tb))
                    g[ia], g[ib] = 1 / ta, -1 / tb
                else:
                    values.append(np.log(ta / (1 - ta)) - np.log(tb / (1 - tb)))
                    g[ia], g[ib] = 1 / (ta * (1 - ta)), -1 / (tb * (1 - tb))
        grads.append(g)
    for i in extra_idx:
        g = np.zeros(p)
        g[i] = 1.0
        values.append(theta[i])
        grads.append(g)
    G = np.array(grads)
    return mestim.Estimates(np.array(values, float), G @ fit.vcov @ G.T, tuple(labels))


def _sampling_design(weights, weight_type, cluster) -> dict:
    """The settings that name the row weights and clusters (None when not given)."""
    name = lambda v: None if v is None else v if isinstance(v, str) else "array"  # noqa: E731
    return {"weights": name(weights), "weight_type": weight_type, "cluster": name(cluster)}


def _design_text(settings: dict) -> str:
    """How the variance uses the row weights and clusters, for the printed "Variance:" line ('' without them)."""
    parts = []
    if settings["weights"] is not None:
        parts.append(f"{settings['weight_type']} weights '{settings['weights']}' ("
                     + ("a row of weight w counts as w rows" if settings["weight_type"] == "frequency" else
                        "survey/inverse-probability weights: each ψ multiplied by w, meat Σ w²ψψᵀ, n = rows") + ")")
    if settings["cluster"] is not None:
        parts.append(f"cluster-robust by '{settings['cluster']}' ({settings['n_clusters']} clusters)")
    return "".join(f"; {p}" for p in parts)


def _settings(data, family, participation, treatment_model, probs, trial_effects, weighting, per_protocol, received,
              post, chosen, trial_est, pooled_est, contrast_names, level):
    part = {"logistic": "logistic: P[S=0|X] on all rows (pooled); P[S=0|X, S in {0,s}] on rows S in {0,s} (per trial)",
            "multinomial": "multinomial logistic model for S on all rows (target = reference)"}[participation]
    treat = {"trial": "e(z;X,S): multinomial/logistic on X and trial indicators, trial rows (paper's default)",
             "pooled": "P[Z=z|X, R=1]: multinomial/logistic on X, trial rows (no trial indicators)",
             "per_trial": "l(z,s;X): a separate multinomial/logistic model per trial",
             "known": f"known randomisation probabilities {probs}"}[treatment_model]
    where = ("per trial on rows S=s; pooled on all trial rows "
             + ("with trial main effects" if trial_effects else "without trial main effects"))
    out = (f"{family} regression per arm (X-by-arm interactions); {where}" if not per_protocol else
           f"iterated expectation (eq. C.2): {family} regression of Y on X and L among adherent rows, then "
           f"{'fractional logistic' if family == 'logistic' else 'linear'} regression of its prediction on X among "
           f"all rows of the arm, per arm; {where}")
    return {
        "study": data.study, "treatment": data.treatment, "outcome": data.outcome,
        "covariates": list(data.covariates), "target": label(data.target),
        "trials": [label(s) for s in data.trials], "arms": [label(a) for a in data.arms],
        "n_target": data.n_target, "n_trials": {label(s): n for s, n in data.n_trial.items()},
        "estimand": ("per-protocol effect E[Y^(z,a=z) - Y^(z',a'=z') | S=target] (eAppendix C; treatment received "
                     f"'{received}', post-randomisation covariates {list(post or [])})" if per_protocol else
                     "intention-to-treat effect E[Y^z - Y^z' | S=target]"),
        "contrasts": contrast_names, "estimators": list(chosen), "per_trial_estimators": trial_est,
        "pooled_estimators": pooled_est, "participation_model": part, "treatment_model": treat,
        "outcome_model": out, "pooled_cate": "outcome regression with Z and Z-by-X terms ('outcome'); pseudo-outcome "
        "regression of [I(Z=z)/e(z) - I(Z=z')/e(z')]Y on X ('pseudo_outcome')",
        "weighting": (f"{weighting} ({'Hajek: each arm weighted mean of Y' if weighting == 'normalized' else 'Horvitz-Thompson: weighted sums / n0, as in eq. 7 and 9'})"
                      f"{' [default]' if weighting == DEFAULT_WEIGHTING else ''}"),
        "variance": "joint sandwich over all working models and estimators (one stack); Wald CIs "
                    f"at level {level}; ratios by the delta method on the log scale",
    }
