r"""Quantile regression from smoothed estimating equations, as a block.

The q-th conditional quantile xᵀβ_q of y solves Σ_i m_i (q − 1{y_i ≤ x_iᵀβ}) x_i = 0 (Koenker & Bassett 1978), with
m_i = I(row i in the mask)·w_i (w_i the block's ``weights``). ψ is a step function of β, whose Jacobian is zero
almost everywhere, so the block is smoothed (``smooth=``, :mod:`mestim.smooth`; Horowitz 1998, Kaplan & Sun 2017):

    ψ_i = m_i (q − Φ((x_iᵀβ − y_i)/h)) x_i,

whose root β̂_h differs from the unsmoothed estimate by O(h²), and whose bread −Σ∂ψ/∂β = Σ m_i φ(r_i/h)/h x_i x_iᵀ
(r_i = y_i − x_iᵀβ̂) is Powell's (1991) kernel estimate of the conditional densities at the quantile, so the
sandwich is the usual heteroskedasticity-robust covariance of quantile regression. ``smooth="auto"`` (default)
takes h = min(sd, IQR/1.34)·n^(−1/3) of the residuals at the start (least squares, the intercept moved to the
residuals' q-th quantile); a number fixes h in y's units. delicatessen offers no smoothed version; its
``ee_percentile`` is the unsmoothed intercept-only case.

Example (the median and 0.9 quantile lines of heteroskedastic data: the 0.9 line is steeper)::

    >>> import numpy as np, mestim
    >>> from estimators import quantile_regression
    >>> rng = np.random.default_rng(8)
    >>> x = rng.uniform(0, 4, 3000)
    >>> d = {"x": x, "y": 1 + x + (0.5 + 0.5 * x) * rng.normal(size=3000)}
    >>> res = mestim.fit([quantile_regression("q50", "y", ["x"], 0.5), quantile_regression("q90", "y", ["x"], 0.9)],
    ...                  d)
    >>> np.round(res.theta, 1)   # truth: (1, 1) and (1 + 0.5·1.28, 1 + 0.5·1.28) = (1.64, 1.64)
    array([1. , 1. , 1.7, 1.6])

References:
    Koenker R & Bassett G (1978). Regression quantiles. Econometrica 46:33–50.
    Horowitz JL (1998). Bootstrap methods for median regression models. Econometrica 66:1327–1351.
    Kaplan DM & Sun Y (2017). Smoothed estimating equations for instrumental variables quantile regression.
    Econometric Theory 33:105–157.
    Powell JL (1991). Estimation of monotonic regression models under quantile restrictions. In *Nonparametric and
    Semiparametric Methods in Econometrics*, 357–384.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared

from .descriptive import check_smooth
from .options import check_number, numeric_in_mask, weighted_design

__all__ = ["quantile_regression"]


@dataclasses.dataclass(frozen=True)
class QuantileScore:
    """ψ = m (q − 1{y ≤ xᵀβ}) x, smoothed by the engine. Columns read: ``{name}.X``, ``.y``, ``.mask``."""

    name: str
    q: float

    def __call__(self, beta, row):
        n = self.name
        x = row[f"{n}.X"]
        return row[f"{n}.mask"] * (self.q - jnp.where(row[f"{n}.y"] <= x @ beta, 1.0, 0.0)) * x


@dataclasses.dataclass(frozen=True)
class QuantileRegression:
    """The options of :func:`quantile_regression`, checked on construction; ``__call__`` prepares the columns."""

    name: str
    y: str
    X: object
    q: float
    smooth: object = "auto"
    formula: str | None = None
    intercept: bool = True
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        object.__setattr__(self, "q", check_number("q", self.q, low=0.0, high=1.0))
        object.__setattr__(self, "smooth", check_smooth(self.smooth))

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, x, labels = weighted_design(cols, n, self.X, self.formula, self.intercept, self.mask, self.weights)
        y = numeric_in_mask(cols, self.y, m, what="outcome")
        beta, *_ = np.linalg.lstsq(x[m], y[m], rcond=None)
        if self.intercept:
            beta[0] += np.quantile(y[m] - x[m] @ beta, self.q)
        note = f"{self.q:g} quantile regression of {self.y} on {labels}, {int(m.sum())} rows"
        return Prepared({f"{n}.X": x, f"{n}.y": y, f"{n}.mask": mult}, beta, tuple(labels), (note,))


def quantile_regression(name: str, y: str, X=None, q: float = 0.5, *, smooth="auto", formula: str | None = None,
                        intercept: bool = True, weights: str | None = None, mask=None) -> Block:
    """Linear quantile regression of ``y`` at quantile ``q`` from smoothed estimating equations (module docstring).

    Args:
        name: block name; parameters labelled by the design's columns.
        y: outcome column; X, formula, intercept: the design (column names with an intercept first, or a formula).
        q: the quantile, in (0, 1) (default 0.5, median regression).
        smooth: ``"auto"`` (default) or a bandwidth h > 0 in y's units (:mod:`mestim.smooth`).
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (the median line; truth (1, 1))::

        >>> import numpy as np, mestim
        >>> from estimators import quantile_regression
        >>> rng = np.random.default_rng(8); x = rng.uniform(0, 4, 1000)
        >>> d = {"x": x, "y": 1 + x + rng.normal(size=1000)}
        >>> np.round(mestim.fit(quantile_regression("q50", "y", ["x"], 0.5), d).theta, 1)
        array([1., 1.])
    """
    options = QuantileRegression(name, y, X, q, smooth, formula, intercept, weights, mask)
    return Block(name, QuantileScore(name, options.q), prepare=options, smooth=options.smooth)
