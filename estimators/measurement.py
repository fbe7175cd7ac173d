r"""Measurement error: the Rogan–Gladen correction of a misclassified binary outcome (with sensitivity and
specificity constant or depending on covariates) and regression calibration of a mismeasured exposure.

The data stack a main sample, where only the mismeasured variable is observed, and a validation sample, where it
is observed together with the true one (``validation`` = 1). With r_i = 1 − validation_i and
m_i = I(row i in the mask)·w_i (w_i the block's ``weights``, 1 by default):

:func:`rogan_gladen` — a binary outcome Y measured as Y*, with sensitivity Se = P(Y* = 1 | Y = 1) and specificity
Sp = P(Y* = 0 | Y = 0) estimated in the validation sample; the corrected mean μ = P(Y = 1) in the main sample
(Rogan & Gladen 1978; Cole et al. 2023; delicatessen's ``ee_rogan_gladen``), θ = (μ, μ*, Se, Sp):

    ψ = m_i ( μ (Se + Sp − 1) − (μ* + Sp − 1),
              r_i (Y*_i − μ*),
              (1 − r_i) Y_i (Y*_i − Se),
              (1 − r_i)(1 − Y_i)(1 − Y*_i − Sp) ).

Transported (``sampling=``; Cole et al. 2023's fusion of a main study, a validation study and a target sample):
the main sample's rows (r_i = 1) are weighted by the inverse odds of sampling, π(W_i)/(1 − π(W_i)), from a stacked
model π(W) = P(target | W) fitted on the main and target samples, so μ* and μ are the target population's.

:func:`rogan_gladen_extended` — Se and Sp depend on covariates X through logistic models fitted in the validation
sample, and the correction is averaged over the main sample's covariates (Se, Sp transported from the validation
to the main sample; delicatessen's ``ee_rogan_gladen_extended``), θ = (μ, β_Se, β_Sp):

    ψ = m_i ( r_i [ (Y*_i + Sp(X_i) − 1)/(Se(X_i) + Sp(X_i) − 1) − μ ],
              (1 − r_i) Y_i (Y*_i − Se(X_i)) X_i,
              (1 − r_i)(1 − Y_i)(1 − Y*_i − Sp(X_i)) X_i ),     Se(x) = expit(xᵀβ_Se), Sp(x) = expit(xᵀβ_Sp).

:func:`regression_calibration` — an outcome model fitted on a mismeasured exposure A* (any block stacked in the
same fit, read for its coefficient β* of A*), and a linear calibration model E[A | A*, X] = γ₀ A* + (1, X)ᵀγ
fitted in the validation sample; the corrected coefficient is β = β*/γ₀ (Carroll et al. 2006, ch. 4; R's mecor;
delicatessen's ``ee_regression_calibration``), θ = (β, γ₀, γ):

    ψ = m_i ( β*/γ₀ − β,   (1 − r_i)(A_i − γ₀ A*_i − (1, X_i)ᵀγ)(A*_i, 1, X_i) ).

Rows of the main sample may hold NaN in the true variable, and rows of the validation sample NaN in the outcome
of a stacked model (give that model ``mask=`` the main sample).

Example (Cole et al. 2023: 680 of 950 positive by the test; validation 203/241 and 71/89)::

    >>> import numpy as np, mestim
    >>> from estimators import rogan_gladen, rogan_gladen_extended, regression_calibration
    >>> counts = [270, 680, 71, 18, 38, 203]
    >>> d = {"y_star": np.repeat([0, 1, 0, 1, 0, 1.], counts),
    ...      "y": np.repeat([np.nan, np.nan, 0, 0, 1, 1], counts),
    ...      "valid": np.repeat([0, 0, 1, 1, 1, 1.], counts)}
    >>> res = mestim.fit(rogan_gladen("rg", "y_star", "y", "valid"), d)
    >>> np.round(res.theta, 6), res.labels
    (array([0.802314, 0.715789, 0.842324, 0.797753]), ('mu', 'mu_star', 'sensitivity', 'specificity'))

References:
    Rogan WJ & Gladen B (1978). Estimating prevalence from the results of a screening test. Am J Epidemiol
    107:71–76.
    Cole SR, Edwards JK, Breskin A, et al. (2023). Illustration of 2 fusion designs and estimators. Am J Epidemiol
    192:467–474.
    Carroll RJ, Ruppert D, Stefanski LA & Crainiceanu CM (2006). *Measurement Error in Nonlinear Models*, 2nd ed.
    Zivich PN et al. (2022). Delicatessen: M-estimation in Python. arXiv:2203.11300.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.errors import DataError, SpecificationError

from .design import clean_design, design_matrix
from .generalized_linear import GLMScore
from .options import names, numeric_in_mask, row_multiplier, stacked_binomial, stacked_design

__all__ = ["rogan_gladen", "rogan_gladen_extended", "regression_calibration"]


def _binary(values, m, column, block):
    bad = np.setdiff1d(np.unique(values[m]), [0.0, 1.0])
    if bad.size:
        raise DataError(f"block '{block}': '{column}' takes values {bad[:5].tolist()} besides 0/1 on the rows used")
    return values


def _samples(cols, block, validation, mask, weights):
    """(rows used, m_i, validation indicator): both samples must have rows."""
    m, mult = row_multiplier(cols, block, mask, weights)
    v = _binary(numeric_in_mask(cols, validation, m, what="validation column"), m, validation, block)
    if not (v[m] == 1).any() or not (v[m] == 0).any():
        raise DataError(f"block '{block}': '{validation}' must mark both a validation sample (1) and a main sample "
                        "(0) among the rows used")
    return m, mult, v


def _misclassified(cols, block, y_star, y, m, v):
    """(Y*, Y): Y* binary where it is used (main sample; both in the validation sample), Y binary in the validation
    sample and 0 elsewhere (where it may be NaN)."""
    ys = _binary(numeric_in_mask(cols, y_star, m, what="measured outcome"), m, y_star, block)
    yv = _binary(numeric_in_mask(cols, y, m & (v == 1), what="true outcome"), m & (v == 1), y, block)
    for value, what in ((1.0, "Y = 1"), (0.0, "Y = 0")):
        if not (yv[m & (v == 1)] == value).any():
            raise DataError(f"block '{block}': the validation sample has no rows with {what}, so "
                            f"{'sensitivity' if value else 'specificity'} is not identified")
    return ys, yv


@dataclasses.dataclass(frozen=True)
class RoganGladenScore:
    """ψ of :func:`rogan_gladen` (``covariates`` False) or :func:`rogan_gladen_extended` (module docstring).
    Columns read: ``{name}.ystar``, ``.y``, ``.r`` (1 in the main sample), ``.mask``; extended, ``.X``; with a
    sampling model (its name and ψ in ``sampling``), its design ``.W``, ``.Woff`` on the main sample's rows."""

    name: str
    covariates: bool = False
    sampling: tuple[str, GLMScore] | None = None

    def __call__(self, theta, row, **upstream):
        n = self.name
        ys, y, r, m = row[f"{n}.ystar"], row[f"{n}.y"], row[f"{n}.r"], row[f"{n}.mask"]
        if self.sampling is not None:  # the main sample's rows weighted by the odds of the target, π/(1 − π)
            model, score = self.sampling
            target = score.mean(upstream[model], row[f"{n}.W"], row[f"{n}.Woff"])
            m = m * (1.0 - r + r * target / (1.0 - target))
        if not self.covariates:
            mu, mu_star, se, sp = theta
            return m * jnp.stack([mu * (se + sp - 1.0) - (mu_star + sp - 1.0), r * (ys - mu_star),
                                  (1.0 - r) * y * (ys - se), (1.0 - r) * (1.0 - y) * (1.0 - ys - sp)])
        x = row[f"{n}.X"]
        k = x.shape[0]
        mu, b_se, b_sp = theta[0], theta[1:1 + k], theta[1 + k:]
        se, sp = jax.nn.sigmoid(x @ b_se), jax.nn.sigmoid(x @ b_sp)
        corrected = (ys + sp - 1.0) / (se + sp - 1.0)
        return m * jnp.concatenate([jnp.atleast_1d(r * (corrected - mu)), (1.0 - r) * y * (ys - se) * x,
                                    (1.0 - r) * (1.0 - y) * (1.0 - ys - sp) * x])


@dataclasses.dataclass(frozen=True)
class RoganGladen:
    """The options of :func:`rogan_gladen` and :func:`rogan_gladen_extended`, checked on construction;
    ``__call__`` prepares the columns."""

    name: str
    y_star: str
    y: str
    validation: str
    X: tuple[str, ...] | None = None  # None: Se, Sp constant (rogan_gladen)
    intercept: bool = True
    weights: str | None = None
    mask: object = None
    sampling: Block | None = None  # a model of P(target | W) over the main sample and the target (transport)

    def __post_init__(self):
        if self.sampling is not None:
            stacked_binomial(self.sampling, getattr(getattr(self.sampling, "prepare", None), "y", None), "rogan_gladen",
                             role="sampling")
        if self.X is not None:
            object.__setattr__(self, "X", names(self.X))
            if not self.X and not self.intercept:
                raise SpecificationError("rogan_gladen_extended: give covariates X or keep the intercept")

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, v = _samples(cols, n, self.validation, self.mask, self.weights)
        ys, y = _misclassified(cols, n, self.y_star, self.y, m, v)
        valid = m & (v == 1)
        se, sp = ys[valid & (y == 1)].mean(), 1.0 - ys[valid & (y == 0)].mean()
        mu_star = ys[m & (v == 0)].mean()
        out = {f"{n}.ystar": ys, f"{n}.y": y, f"{n}.r": 1.0 - v, f"{n}.mask": mult}
        if self.sampling is not None:
            out.update(stacked_design(n, self.sampling, cols, m & (v == 0)))
        note = (f"Rogan–Gladen correction of {self.y_star} (true {self.y}), validation sample '{self.validation}': "
                f"{int(valid.sum())} rows, main sample {int((m & (v == 0)).sum())} rows"
                + ("" if self.sampling is None else f", transported by the sampling model '{self.sampling.name}'"))
        mu = (mu_star + sp - 1.0) / (se + sp - 1.0)
        if self.X is None:
            return Prepared(out, np.array([mu, mu_star, se, sp]), ("mu", "mu_star", "sensitivity", "specificity"),
                            (note,))
        x, labels = design_matrix(cols, list(self.X), intercept=self.intercept)
        out[f"{n}.X"] = clean_design(cols, x, labels, m)
        logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
        init = np.concatenate([[mu], [logit(se)] + [0.0] * (len(labels) - 1),
                               [logit(sp)] + [0.0] * (len(labels) - 1)])
        if not self.intercept:
            init[1:] = 0.0
        plabels = ("mu",) + tuple(f"sensitivity:{lab}" for lab in labels) + tuple(
            f"specificity:{lab}" for lab in labels)
        return Prepared(out, init, plabels, (note + f", Se and Sp modelled on {labels}",))


def rogan_gladen(name: str, y_star: str, y: str, validation: str, *, weights: str | None = None,
                 sampling: Block | None = None, mask=None) -> Block:
    """The Rogan–Gladen corrected mean of a misclassified binary outcome (module docstring).

    Args:
        name: block name; parameters ``mu`` (corrected), ``mu_star`` (naive, main sample), ``sensitivity``,
            ``specificity``.
        y_star: the measured outcome Y* (0/1); y: the true outcome Y (0/1 in the validation sample; may be NaN
            in the main sample).
        validation: column that is 1 on the validation sample's rows and 0 on the main sample's.
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used (the main and validation samples).
        sampling: the transported form (module docstring): a stacked binomial GLM block modelling membership of a
            target sample (1) against the main sample (0) from covariates W, fitted on those two samples' rows;
            the main sample's rows are then weighted by the odds π(W)/(1 − π(W)), so μ and μ* are the target's.

    Example (the corrected prevalence is (μ* + specificity − 1) / (sensitivity + specificity − 1))::

        >>> import numpy as np, mestim
        >>> from estimators import rogan_gladen
        >>> counts = [270, 680, 71, 18, 38, 203]
        >>> d = {"y_star": np.repeat([0, 1, 0, 1, 0, 1.], counts), "y": np.repeat([np.nan, np.nan, 0, 0, 1, 1], counts),
        ...      "valid": np.repeat([0, 0, 1, 1, 1, 1.], counts)}
        >>> mu, mu_star, se, sp = mestim.fit(rogan_gladen("rg", "y_star", "y", "valid"), d).theta
        >>> round(float(mu), 6), bool(np.isclose(mu, (mu_star + sp - 1) / (se + sp - 1)))
        (0.802314, True)
    """
    options = RoganGladen(name, y_star, y, validation, None, True, weights, mask, sampling)
    score = RoganGladenScore(name, sampling=None if sampling is None else stacked_binomial(
        sampling, options.sampling.prepare.y, "rogan_gladen", role="sampling"))
    return Block(name, score, reads=() if sampling is None else (sampling.name,), prepare=options)


def rogan_gladen_extended(name: str, y_star: str, y: str, validation: str, X=None, *, intercept: bool = True,
                          weights: str | None = None, mask=None) -> Block:
    """The Rogan–Gladen correction with sensitivity and specificity modelled on covariates X (module docstring).

    Args:
        name: block name; parameters ``mu``, then ``sensitivity:<column>`` and ``specificity:<column>``, the
            logistic models' coefficients.
        y_star, y, validation, weights, mask: as in :func:`rogan_gladen`.
        X, intercept: covariates of the sensitivity and specificity models (an intercept first unless
            ``intercept=False``); with none, Se and Sp are constant and μ equals :func:`rogan_gladen`'s.

    Example (delicatessen's test data: Se 0.95 and Sp 0.75 where x = 1, 0.8 and 0.85 where x = 0; the corrected
    mean is 0.2·0.35/0.65 + 0.8·0.25/0.7 = 0.393407)::

        >>> import numpy as np, mestim
        >>> counts = [400, 400, 75, 25, 5, 95, 100, 100, 85, 15, 20, 80]
        >>> d = {"y_star": np.repeat([0, 1, 0, 1, 0, 1.] * 2, counts),
        ...      "y": np.repeat([np.nan, np.nan, 0, 0, 1, 1] * 2, counts),
        ...      "valid": np.repeat([0, 0, 1, 1, 1, 1.] * 2, counts), "x": np.repeat([1.] * 6 + [0.] * 6, counts)}
        >>> round(float(mestim.fit(rogan_gladen_extended("rg", "y_star", "y", "valid", ["x"]), d).theta[0]), 6)
        0.393407
    """
    options = RoganGladen(name, y_star, y, validation, names(X), intercept, weights, mask)
    return Block(name, RoganGladenScore(name, covariates=True), prepare=options)


@dataclasses.dataclass(frozen=True)
class CalibrationScore:
    """ψ of :func:`regression_calibration` (module docstring); ``index``: β*'s position in the model's θ."""

    name: str
    model: str
    index: int

    def __call__(self, theta, row, **upstream):
        n = self.name
        beta, gamma = theta[0], theta[1:]
        x, a, m = row[f"{n}.Z"], row[f"{n}.a"], row[f"{n}.mask"]
        corrected = upstream[self.model][self.index] / gamma[0] - beta
        return m * jnp.concatenate([jnp.atleast_1d(corrected), (1.0 - row[f"{n}.r"]) * (a - x @ gamma) * x])


@dataclasses.dataclass(frozen=True)
class RegressionCalibration:
    """The options of :func:`regression_calibration`, checked on construction; ``__call__`` prepares the
    columns and finds the coefficient in the model's labels."""

    name: str
    model: Block
    coefficient: str
    a: str
    a_star: str
    validation: str
    X: tuple[str, ...] = ()
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        if not isinstance(self.model, Block):
            raise SpecificationError(f"regression_calibration '{self.name}': model= must be a block stacked in the "
                                     f"same fit; got {self.model!r}")
        object.__setattr__(self, "X", names(self.X))

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, v = _samples(cols, n, self.validation, self.mask, self.weights)
        labels = self.model.prepare(cols).labels if self.model.prepare is not None else self.model.labels
        if labels is None or self.coefficient not in labels:
            raise SpecificationError(f"regression_calibration '{n}': coefficient={self.coefficient!r} is not a "
                                     f"parameter of block '{self.model.name}' (its parameters: {labels})")
        valid = m & (v == 1)
        a = numeric_in_mask(cols, self.a, valid, what="true exposure")
        z, zlabels = design_matrix(cols, [self.a_star] + list(self.X), intercept=True)
        order = [1, 0] + list(range(2, z.shape[1]))  # A* first, then (1, X)
        z = clean_design(cols, z[:, order], [zlabels[j] for j in order], m)
        gamma, *_ = np.linalg.lstsq(z[valid], a[valid], rcond=None)
        psi = CalibrationScore(n, self.model.name, labels.index(self.coefficient))
        init = np.concatenate([[0.0], gamma])
        plabels = (self.coefficient, f"calibration:{self.a_star}", "calibration:(Intercept)") + tuple(
            f"calibration:{c}" for c in self.X)
        note = (f"regression calibration of '{self.coefficient}' of block '{self.model.name}': {self.a} on "
                f"{self.a_star} in {int(valid.sum())} validation rows")
        return Prepared({f"{n}.Z": z, f"{n}.a": a, f"{n}.r": 1.0 - v, f"{n}.mask": mult}, init, plabels,
                        (note,), psi=psi)


def regression_calibration(name: str, model: Block, coefficient: str, a: str, a_star: str, validation: str, X=None,
                           *, weights: str | None = None, mask=None) -> Block:
    """The coefficient of a mismeasured exposure corrected by regression calibration (module docstring).

    Args:
        name: block name; parameters: the corrected coefficient (labelled ``coefficient``), then the calibration
            model's ``calibration:<A*>``, ``calibration:(Intercept)``, ``calibration:<X>``.
        model: the outcome model fitted on A* (any block stacked in the same fit, e.g. :func:`estimators.linear`
            with ``mask=`` the main sample); coefficient: the label of A*'s coefficient in it.
        a: the true exposure A (observed in the validation sample; may be NaN elsewhere); a_star: the measured A*.
        validation: column that is 1 on the validation sample's rows and 0 on the main sample's.
        X: further covariates of the calibration model.
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (delicatessen's test data; R's mecor: naive −3.2, calibration slope 0.7, corrected −3.2/0.7)::

        >>> import numpy as np, mestim
        >>> from estimators import linear
        >>> nan = np.nan
        >>> d = {"a_star": np.r_[1, 1, 1, 1, 1, 0, 0, 0, 0, [1] * 10, [0] * 10] * 1.0,
        ...      "y": np.r_[3, 3, 5, 2, 1, 9, 6, 7, 2, [nan] * 20], "a": np.r_[[nan] * 9, [1] * 9, [0] * 9, 1, 1],
        ...      "valid": np.r_[[0] * 9, [1] * 20] * 1.0}
        >>> naive = linear("naive", "y", ["a_star"], mask=lambda c: c["valid"] == 0)
        >>> res = mestim.fit([naive, regression_calibration("rc", naive, "a_star", "a", "a_star", "valid")], d)
        >>> np.round(res["rc"], 6)
        array([-4.571429,  0.7     ,  0.2     ])
    """
    options = RegressionCalibration(name, model, coefficient, a, a_star, validation, X, weights, mask)
    return Block(name, None, reads=(model.name,), prepare=options)
