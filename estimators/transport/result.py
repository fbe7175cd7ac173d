"""``TransportResult``: the fitted transport stack read as contrasts, tests and a sensitivity sweep.

Every reported contrast — a difference μ_z − μ_z', for a 0/1 outcome also log(μ_z/μ_z') and
logit μ_z − logit μ_z' (reported as ratios, CIs exponentiated from the log scale), or the pseudo-outcome's φ — is one
output of a single function g of θ; the delta method gives their joint covariance G V Gᵀ with G = ∂g/∂θ by JAX's
autodiff (the engine's delta method, computed in :mod:`~estimators.transport.readout`'s program, shared with the
positivity weights). The homogeneity tests (transported effects equal across trials, m − 1 df) are Wald tests on
that covariance, and the per-trial CATE models are compared by a Wald test on θ (the paper's falsification check,
eq. 3).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

import mestim
from estimators.output import json_number, json_value, write_json
from mestim.errors import SpecificationError
from mestim.results import normal_two_sided_p, z_crit

from .data import TransportData, label
from .diagnostics import diagnostics_records, positivity_diagnostics, positivity_warnings, weights_of
from .readout import ReportedContrasts, read_fit, read_fit_ahead, weights_reader
from .stack import TransportStack

SENSITIVITY_COLUMNS = ["estimator", "trial", "contrast", "delta", "bias_mean", "estimate", "se", "ci_low", "ci_high", "n"]
TABLE_COLUMNS = ["estimator", "trial", "contrast", "scale", "estimate", "se", "ci_low", "ci_high", "n"]


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

    Example (what ``transport`` returns: the table, the tests, the joint fit)::

        >>> from estimators.transport import transport, load_transport_sim
        >>> res = transport(load_transport_sim(), covariates=["X1", "X2", "X3"], estimators=["dr"], per_trial=False)
        >>> res.fit.converged, len(res.table) > 0, sorted(res.settings)[:3]
        (True, True, ['arms', 'cluster', 'contrasts'])
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
        rows = [{"estimator": r.estimator, "trial": r.trial, "contrast": r.contrast, "scale": r.scale,
                 "estimate": json_number(r.estimate), "se": json_number(r.se), "ci_low": json_number(r.ci_low),
                 "ci_high": json_number(r.ci_high), "n": int(r.n), "p_value": json_number(wald_p_value(r))}
                for r in self.table.itertuples(index=False)]
        out = {"estimates": rows, "tests": self.tests, "settings": self.settings, "notes": self.notes,
               "warnings": self.warnings, "level": self.level, "version": mestim.__version__}
        if self.diagnostics is not None:
            out["diagnostics"] = diagnostics_records(self.diagnostics)
            out["diagnostic_warnings"] = list(self.diagnostic_warnings)
        if self.sensitivity is not None:
            out["sensitivity"] = [{k: (json_value(v) if isinstance(v, float) else v) for k, v in rec.items()}
                                  for rec in self.sensitivity.to_dict("records")]
        return out

    def to_json(self, path: str | None = None) -> str:
        """:meth:`to_dict` as JSON text, written to ``path`` when given."""
        return write_json(self.to_dict(), path)

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


def wald_p_value(row) -> float:
    """Two-sided Wald p-value of no effect: z = estimate / se for a difference, log r / (se / r) for a ratio r
    (its CI and SE are from the log scale)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = row.estimate / row.se if row.scale == "difference" else np.log(row.estimate) * row.estimate / row.se
    return float(normal_two_sided_p(z))


def transport_result(stack: TransportStack, fit: mestim.Result, diagnostics: bool = False,
                     step=lambda stage: None) -> TransportResult:
    """Contrasts by the delta method, the homogeneity and CATE-equality tests, the sensitivity sweep; with
    ``diagnostics`` the positivity diagnostics, whose weights come from the contrasts' program (``step`` is
    told when they start: a progress bar's)."""
    contrasts, labels, reader, rows = readout(stack, fit.blocks, diagnostics)
    value, jacobian, weights = read_fit(contrasts, reader, np.asarray(fit.theta, float), rows)
    every = fit.delta_from(value, jacobian, labels)  # the delta method: G V Gᵀ
    n = len(stack.estimands)
    est = mestim.Estimates(every.theta[:n], every.vcov[:n, :n], every.labels[:n])
    several = stack.transport_data.m >= 2
    tests = {"homogeneity": homogeneity_tests(stack, est) if several else {},
             "cate_equality": cate_equality_tests(stack, fit) if several else {}}
    sens = sensitivity_sweep(stack, every) if stack.use_bias else None
    settings = dict(stack.settings, n_clusters=fit.n_clusters)
    settings["variance"] += design_text(settings)
    res = TransportResult(contrast_table(stack, est), tests, settings, fit, est, stack.transport_data, sens,
                          stack.level)
    if diagnostics:
        step("positivity diagnostics")
    if reader is not None:
        res.diagnostics = positivity_diagnostics(stack, fit, weights_of(reader, weights))
        res.diagnostic_warnings = positivity_warnings(res.diagnostics, stack.settings)
    return res


def readout(stack: TransportStack, blocks: dict, diagnostics: bool):
    """(contrasts g, their labels, the weights reader or None, the rows it reads): what :func:`transport_result`
    reads off a fit whose blocks (name → slice of θ) are ``blocks``."""
    reader, rows = weights_reader(stack, blocks) if diagnostics else (None, {})
    return *contrast_function(stack, blocks), reader, rows


def read_ahead(stack: TransportStack, diagnostics: bool, started: list):
    """Work for :func:`mestim.ahead.while_compiling`: :func:`transport_result`'s program traced while the stack's
    program compiles, and compiled beside it (its handle appended to ``started``)."""
    def work(blocks):
        contrasts, _, reader, rows = readout(stack, blocks, diagnostics)
        started.append(read_fit_ahead(contrasts, reader, sum(s.stop - s.start for s in blocks.values()), rows))
    return work


def contrast_function(stack: TransportStack, blocks: dict) -> tuple[ReportedContrasts, list[str]]:
    """(g, labels): every reported contrast on its analysis scale (difference, log risk ratio, log odds ratio; φ
    as it is), then (with a sensitivity analysis) the bias means, as one function of the flat θ whose blocks (name
    → slice) are ``blocks``."""
    ia, ib = stack.positions(blocks)
    scales = [e.scale for e in stack.estimands]
    if stack.use_bias:  # the bias means ū, one parameter each
        n_bias = stack.transport_data.m + 1
        ia = np.concatenate([ia, blocks["bias_mean"].start + np.arange(n_bias)])
        ib = np.concatenate([ib, np.full(n_bias, -1)])
        scales += ["parameter"] * n_bias
    scales = np.array(scales)
    single = ib < 0  # φ or ū: one parameter, reported as it is
    groups = [np.flatnonzero(single), np.flatnonzero(~single & (scales == "difference")),
              np.flatnonzero(scales == "risk ratio"), np.flatnonzero(scales == "odds ratio")]
    g = ReportedContrasts(tuple((tuple(ia[i].tolist()), tuple(ib[i].tolist())) for i in groups),
                          tuple(np.argsort(np.concatenate(groups), kind="stable").tolist()))
    bias_labels = [f"bias_mean|{s}" for s in stack.settings["trials"] + ["pooled"]] if stack.use_bias else []
    return g, list(stack.labels) + bias_labels


def contrast_table(stack: TransportStack, est: mestim.Estimates) -> pd.DataFrame:
    """``TransportResult.table``: a ratio r = exp(log r) with SE r·SE(log r) and its CI exponentiated."""
    z = z_crit(stack.level)
    value, se = est.theta, np.sqrt(np.diag(est.vcov))
    rows = []
    for e, v, s in zip(stack.estimands, value, se):
        v, s = float(v), float(s)
        bounds = (v, s, v - z * s, v + z * s) if e.scale == "difference" else (
            np.exp(v), np.exp(v) * s, np.exp(v - z * s), np.exp(v + z * s))
        rows.append((e.estimator, e.trial, e.contrast, e.scale, *bounds, e.n))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def homogeneity_tests(stack: TransportStack, est: mestim.Estimates) -> dict:
    """Per per-trial estimator and contrast: Wald χ² that its m trial-specific (transported) differences are equal."""
    tests = {}
    for e in stack.trial_estimators:
        tests[e] = {}
        for ci, cn in enumerate(stack.contrast_names):
            idx = [i for i, x in enumerate(stack.estimands) if x.estimator == e and x.trial != "pooled"
                   and x.contrast_index == ci and x.scale == "difference"]
            t = est.test_equal(idx)
            tests[e][cn] = {"statistic": t.statistic, "df": t.df, "p_value": t.p_value,
                            "null": ("trial-specific effects equal (conventional heterogeneity test, not "
                                     "transported)" if e == "unadjusted" else "transported effects equal across trials")}
    return tests


def cate_equality_tests(stack: TransportStack, fit: mestim.Result) -> dict:
    """Per contrast: Wald χ² that the per-trial outcome models' arm-by-X coefficients are equal across trials
    (eq. 3; per protocol those of the outer regressions, eq. C.5); {} without per-trial outcome models."""
    prefix = next((p for p in ("outcome_s", "pp_outer_s") if f"{p}1" in fit.blocks), None)
    if prefix is None:
        return {}
    data, scale = stack.transport_data, "log-odds" if stack.family == "logistic" else "mean-difference"
    null = (f"per-trial CATE models equal across trials ({scale} coefficients of the arm-by-X terms, eq. 3)"
            if prefix == "outcome_s" else f"per-trial per-protocol CATE models equal across trials ({scale} "
            "coefficients of the arm-by-X terms of the outer regressions, eq. C.5)")
    tests = {}
    for (a, b), cn in zip(stack.pairs, stack.contrast_names):
        t = fit.wald_test(cate_difference(fit, prefix, data.k, a, b, data.m))
        tests[cn] = {"statistic": t.statistic, "df": t.df, "p_value": t.p_value, "null": null}
    return tests


def cate_difference(fit, prefix, k, a, b, m) -> np.ndarray:
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


def sensitivity_sweep(stack: TransportStack, every: mestim.Estimates) -> pd.DataFrame:
    """Eq. 11: each transported difference ψ̂ + δ·ū at every multiplier δ of the grid, ū the bias mean of its trial
    (or the pooled one), with var = V_ψψ + 2δ V_ψū + δ² V_ūū from the joint covariance."""
    z, n = z_crit(stack.level), len(stack.estimands)
    bias_index = {s: n + j for j, s in enumerate(stack.settings["trials"] + ["pooled"])}
    recs = []
    for i, e in enumerate(stack.estimands):
        if e.scale != "difference" or e.estimator in ("unadjusted", "target_only"):
            continue
        u = bias_index[e.trial]
        for d in stack.bias_grid:
            value = every.theta[i] + d * every.theta[u]
            var = every.vcov[i, i] + 2 * d * every.vcov[i, u] + d * d * every.vcov[u, u]
            se = float(np.sqrt(max(var, 0.0)))
            recs.append({"estimator": e.estimator, "trial": e.trial, "contrast": e.contrast, "delta": float(d),
                         "bias_mean": float(d * every.theta[u]), "estimate": float(value), "se": se,
                         "ci_low": float(value - z * se), "ci_high": float(value + z * se), "n": e.n})
    return pd.DataFrame(recs, columns=SENSITIVITY_COLUMNS)


def design_text(settings: dict) -> str:
    """How the variance uses the row weights and clusters, for the printed "Variance:" line ('' without them)."""
    parts = []
    if settings["weights"] is not None:
        parts.append(f"{settings['weight_type']} weights '{settings['weights']}' ("
                     + ("a row of weight w counts as w rows" if settings["weight_type"] == "frequency" else
                        "survey/inverse-probability weights: each ψ multiplied by w, meat Σ w²ψψᵀ, n = rows") + ")")
    if settings["cluster"] is not None:
        parts.append(f"cluster-robust by '{settings['cluster']}' ({settings['n_clusters']} clusters)")
    return "".join(f"; {p}" for p in parts)
