r"""Regression of limited outcomes: beta regression of proportions in (0, 1), and Tobit regression of an outcome
censored at a lower and/or upper limit, as blocks fitted by maximum likelihood.

Each block's estimating function is the score of its log-likelihood, ψ_i = m_i ∂ℓ_i/∂θ, with m_i = I(row i in the
mask)·w_i (w_i the block's ``weights``); the root is the MLE and the sandwich the robust covariance. The score and
its Jacobian are autodiff's of ℓ_i, written once:

:func:`beta_regression` (Ferrari & Cribari-Neto 2004; delicatessen's ``ee_beta_regression``; statsmodels'
``BetaModel``), μ_i = expit(x_iᵀβ + offset_i), precision φ = exp(θ_φ):

    ℓ_i = log Γ(φ) − log Γ(μ_i φ) − log Γ((1 − μ_i) φ) + (μ_i φ − 1) log y_i + ((1 − μ_i) φ − 1) log(1 − y_i).

:func:`tobit` (Tobin 1958; delicatessen's ``ee_tobit``), y* = xᵀβ + σε with ε ~ N(0, 1) observed as
y = min(max(y*, lower), upper), σ = exp(θ_σ), z_i = (y_i − x_iᵀβ)/σ:

    ℓ_i = log Φ((lower − x_iᵀβ)/σ)          if y_i ≤ lower   (left-censored)
          log Φ((x_iᵀβ − upper)/σ)          if y_i ≥ upper   (right-censored)
          log φ(z_i) − log σ                otherwise.

Parameters: the design's coefficients, then ``log(precision)`` (beta) or ``log(sigma)`` (Tobit).

Example (a Tobit model of an outcome censored below at 0)::

    >>> import numpy as np, mestim
    >>> from estimators import tobit
    >>> rng = np.random.default_rng(2)
    >>> x = rng.normal(size=3000)
    >>> y = np.maximum(0.5 + 1.0 * x + rng.normal(size=3000), 0.0)       # 35% censored at 0
    >>> res = mestim.fit(tobit("tob", "y", ["x"], lower=0.0), {"x": x, "y": y})
    >>> np.round(res.theta, 2), res.labels                              # truth (0.5, 1, log 1 = 0)
    (array([ 0.54,  1.03, -0.01]), ('(Intercept)', 'x', 'log(sigma)'))

References:
    Ferrari SLP & Cribari-Neto F (2004). Beta regression for modelling rates and proportions. J Appl Stat
    31:799–815.
    Tobin J (1958). Estimation of relationships for limited dependent variables. Econometrica 26:24–36.
    Zivich PN et al. (2022). Delicatessen: M-estimation in Python. arXiv:2203.11300.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, log_ndtr

from mestim import Block, Prepared
from mestim.errors import DataError, SpecificationError

from .options import ObjectiveScore, check_limits, numeric_in_mask, weighted_design

__all__ = ["beta_regression", "tobit"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclasses.dataclass(frozen=True)
class LimitedScore(ObjectiveScore):
    """ψ = m ∂ℓ/∂θ of a beta (``kind="beta"``) or Tobit regression (module docstring). Columns read:
    ``{name}.X``, ``.y``, ``.offset`` (beta), ``.mask``."""

    name: str
    kind: str
    lower: float | None = None
    upper: float | None = None

    def objective(self, theta, row):
        """The log-likelihood ℓ_i (module docstring)."""
        n = self.name
        x, y = row[f"{n}.X"], row[f"{n}.y"]
        beta, log_scale = theta[:-1], theta[-1]
        if self.kind == "beta":
            mu, phi = jax.nn.sigmoid(x @ beta + row[f"{n}.offset"]), jnp.exp(log_scale)
            return (gammaln(phi) - gammaln(mu * phi) - gammaln((1.0 - mu) * phi)
                    + (mu * phi - 1.0) * jnp.log(y) + ((1.0 - mu) * phi - 1.0) * jnp.log1p(-y))
        eta, sigma = x @ beta, jnp.exp(log_scale)
        z = (y - eta) / sigma
        ll = -0.5 * z * z - _HALF_LOG_2PI - log_scale
        if self.lower is not None:
            ll = jnp.where(y <= self.lower, log_ndtr((self.lower - eta) / sigma), ll)
        if self.upper is not None:
            ll = jnp.where(y >= self.upper, log_ndtr((eta - self.upper) / sigma), ll)
        return ll


@dataclasses.dataclass(frozen=True)
class LimitedOutcome:
    """The options of :func:`beta_regression` and :func:`tobit`, checked on construction; ``__call__`` prepares."""

    name: str
    y: str
    X: object = None
    kind: str = "beta"
    formula: str | None = None
    intercept: bool = True
    lower: float | None = None
    upper: float | None = None
    offset: str | None = None
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        lower, upper = check_limits(self.lower, self.upper)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        if self.kind == "tobit" and self.lower is None and self.upper is None:
            raise SpecificationError("tobit: give lower= and/or upper= (the censoring limits); without them the "
                                     "model is a linear regression (estimators.linear)")

    @property
    def score(self) -> LimitedScore:
        return LimitedScore(self.name, self.kind, self.lower, self.upper)

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, x, labels = weighted_design(cols, n, self.X, self.formula, self.intercept, self.mask, self.weights)
        y = numeric_in_mask(cols, self.y, m, what="outcome")
        out = {f"{n}.X": x, f"{n}.mask": mult}
        used = y[m]
        if self.kind == "beta":
            if ((used <= 0) | (used >= 1)).any():
                raise DataError(f"block '{n}': beta regression needs outcomes strictly between 0 and 1, but "
                                f"'{self.y}' has {int(((used <= 0) | (used >= 1)).sum())} value(s) outside (0, 1)")
            y = np.where(m, y, 0.5)
            off = np.zeros(m.size) if self.offset is None else numeric_in_mask(cols, self.offset, m, what="offset")
            out[f"{n}.offset"] = off
            # start: least squares of logit(y) on x; precision by the method of moments, μ(1 − μ)/Var(y) − 1
            beta, *_ = np.linalg.lstsq(x[m], np.log(used / (1 - used)) - off[m], rcond=None)
            mu = 1 / (1 + np.exp(-(x[m] @ beta + off[m])))
            phi = max(float(np.mean(mu * (1 - mu)) / max(np.var(used - mu), 1e-12)) - 1.0, 1.0)
            init, extra = np.append(beta, math.log(phi)), "log(precision)"
            note = f"beta regression of {self.y} on {labels}, {int(m.sum())} rows"
        else:
            below = (used < self.lower).sum() if self.lower is not None else 0
            above = (used > self.upper).sum() if self.upper is not None else 0
            if below or above:
                raise DataError(f"block '{n}': '{self.y}' has {int(below + above)} value(s) outside the censoring "
                                f"limits [{self.lower}, {self.upper}]; a Tobit outcome lies within them")
            beta, *_ = np.linalg.lstsq(x[m], used, rcond=None)
            init = np.append(beta, math.log(max(float(np.std(used - x[m] @ beta)), 1e-3)))
            extra = "log(sigma)"
            censored = int(((used <= (self.lower if self.lower is not None else -np.inf))
                            | (used >= (self.upper if self.upper is not None else np.inf))).sum())
            note = f"Tobit regression of {self.y} on {labels}, {int(m.sum())} rows ({censored} censored)"
        out[f"{n}.y"] = y
        return Prepared(out, init, tuple(labels) + (extra,), (note,))


def beta_regression(name: str, y: str, X=None, *, formula: str | None = None, intercept: bool = True,
                    offset: str | None = None, weights: str | None = None, mask=None) -> Block:
    """Beta regression of a proportion y ∈ (0, 1) with a logit link and constant precision (module docstring).

    Args:
        name: block name; parameters labelled by the design's columns, then ``log(precision)``.
        y: outcome column, strictly between 0 and 1 on the rows used.
        X, formula, intercept: the design, from column names (an intercept first) or a formula's right-hand side.
        offset: column added to the linear predictor.
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (proportions with mean expit(−0.5 + x) and precision 10)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(3)
        >>> x = rng.normal(size=2000)
        >>> mu = 1 / (1 + np.exp(0.5 - x))
        >>> res = mestim.fit(beta_regression("br", "p", ["x"]), {"x": x, "p": rng.beta(10 * mu, 10 * (1 - mu))})
        >>> np.round(res.theta, 2), res.labels           # log 10 = 2.30
        (array([-0.48,  1.  ,  2.32]), ('(Intercept)', 'x', 'log(precision)'))
    """
    options = LimitedOutcome(name, y, X, "beta", formula, intercept, offset=offset, weights=weights, mask=mask)
    return Block(name, options.score, prepare=options)


def tobit(name: str, y: str, X=None, *, lower: float | None = None, upper: float | None = None,
          formula: str | None = None, intercept: bool = True, weights: str | None = None, mask=None) -> Block:
    """Tobit regression: a normal linear model of an outcome censored at ``lower`` and/or ``upper`` (module
    docstring).

    Args:
        name: block name; parameters labelled by the design's columns, then ``log(sigma)``.
        y: outcome column, within [lower, upper] on the rows used (values at a limit are censored).
        lower, upper: the censoring limits (at least one).
        X, formula, intercept: the design, from column names (an intercept first) or a formula's right-hand side.
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (an outcome censored below at 0; truth (0.5, 1, log σ = 0))::

        >>> import numpy as np, mestim
        >>> from estimators import tobit
        >>> rng = np.random.default_rng(2); x = rng.normal(size=500)
        >>> y = np.maximum(0.5 + x + rng.normal(size=500), 0.0)
        >>> np.round(mestim.fit(tobit("tob", "y", ["x"], lower=0.0), {"x": x, "y": y}).theta, 2)
        array([0.49, 1.01, 0.03])
    """
    options = LimitedOutcome(name, y, X, "tobit", formula, intercept, lower, upper, weights=weights, mask=mask)
    return Block(name, options.score, prepare=options)
