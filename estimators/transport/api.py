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

import warnings
from collections.abc import Sequence

import mestim
from mestim.ahead import while_compiling
from mestim.errors import SpecificationError

from .estimands import DISPLAY, ESTIMATORS, PER_TRIAL, POOLED, Estimand
from .options import DEFAULT_WEIGHTING, WEIGHT_TYPES, WEIGHTING, TransportOptions, check_bias_grid
from .result import SENSITIVITY_COLUMNS, TransportResult, read_ahead, transport_result
from .stack import CONTROL_LIKE, TransportStack, build_stack, natural_reference

__all__ = ["transport", "transport_stack", "TransportResult", "TransportStack", "TransportOptions", "Estimand",
           "ESTIMATORS", "PER_TRIAL", "POOLED", "DISPLAY", "WEIGHTING", "WEIGHT_TYPES", "DEFAULT_WEIGHTING",
           "SENSITIVITY_COLUMNS", "CONTROL_LIKE", "natural_reference", "check_bias_grid"]


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
            rows (:mod:`~estimators.transport.federated`, a simulated federation: no positivity diagnostics);
            ``weights`` is then a column of every site's table, and ``cluster`` is not available.

    Returns:
        :class:`TransportResult`.

    Example (the doubly robust estimate of the bundled data's target effect (truth 2.8))::

        >>> from estimators.transport import transport, load_transport_sim
        >>> res = transport(load_transport_sim(), covariates=["X1", "X2", "X3"], estimators=["dr"], per_trial=False)
        >>> print(res.table[["estimator", "estimate", "se"]].round(4).to_string(index=False))
        estimator  estimate     se
               dr    2.7711 0.0887
    """
    from estimators.progress import stages

    if (df is None) == (sites is None):
        raise SpecificationError("give the data as df= (one table) or as sites= ({'site': table, ...}), not both")
    if sites is not None:
        from .federated import pooled_frame

        df, origin = pooled_frame(sites, weights, cluster)
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
        if sites is None:  # the read-out's program traced while the stack's compiles, and compiled beside it
            started = []
            with while_compiling(read_ahead(stack, diagnostics, started)):
                fit = stack.fit()
            for ahead in started:
                ahead.wait()
        else:
            from .federated import fit_sites

            fit = fit_sites(stack, origin)
        step("contrasts and tests")
        res = transport_result(stack, fit, diagnostics, step)
    for msg in res.diagnostic_warnings:
        warnings.warn(msg, mestim.MestimWarning, stacklevel=2)
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
    return build_stack(df, TransportOptions(
        study=study, treatment=treatment, outcome=outcome, covariates=covariates, formula=formula, target=target,
        estimators=estimators, per_trial=per_trial, pooled=pooled, contrasts=contrasts, participation=participation,
        treatment_model=treatment_model, treatment_probabilities=treatment_probabilities,
        outcome_model=outcome_model, trial_effects=trial_effects, weighting=weighting, reference=reference,
        received=received, post_covariates=post_covariates, bias=bias, bias_grid=bias_grid, weights=weights,
        weight_type=weight_type, cluster=cluster, level=level, solve=solve))
