r"""Descriptive parameters as blocks: the geometric mean, percentiles and the positive mean deviation.

With m_i = I(row i in the mask)·w_i (w_i the block's ``weights``, 1 by default):

    geometric mean           ψ = m_i (log y_i − log θ)                       θ = exp(Σ m log y / Σ m)
    percentiles q_1..q_K     ψ_k = m_i (q_k − 1{y_i ≤ θ_k})
    positive mean deviation  ψ = m_i ( 2 (y_i − θ_2) 1{y_i > θ_2} − θ_1,  ½ − 1{y_i ≤ θ_2} )

(delicatessen's ``ee_mean_geometric``, ``ee_percentile``, ``ee_positive_mean_deviation``). The geometric mean's
ψ is smooth, so its sandwich is the usual delta-method variance θ² Var(log y)/n. The percentiles' and the median's
ψ are step functions of θ, whose Jacobian is zero almost everywhere: these blocks are *smoothed*
(``smooth=``, :mod:`mestim.smooth`): every 1{a ≤ b} in ψ becomes Φ((b − a)/h), so θ̂ solves the smoothed equation
and the bread is n times the Gaussian kernel density estimate at θ̂ with bandwidth h (Amemiya 1985; docs/nonsmooth.md:
the error this adds is O(h²) in θ̂). ``smooth="auto"`` (default) takes h = min(sd, IQR/1.34)·n^(−1/3) of the
compared differences at the start; a number fixes h in the outcome's units.

Example (2,000 standard exponential draws: the median is log 2 = 0.69, the 0.9 quantile log 10 = 2.30, the positive
mean deviation 2 E[(Y − M) 1{Y > M}] is 1 and the geometric mean exp(−γ) = 0.56)::

    >>> import numpy as np, mestim
    >>> from estimators import percentile, positive_mean_deviation, geometric_mean
    >>> y = np.random.default_rng(0).exponential(size=2000)
    >>> res = mestim.fit([percentile("q", "y", [0.5, 0.9]), positive_mean_deviation("pmd", "y"),
    ...                   geometric_mean("gm", "y")], {"y": y})
    >>> res.labels
    ('q:q(0.5)', 'q:q(0.9)', 'pmd:positive mean deviation', 'pmd:median', 'gm:geometric mean')
    >>> np.round(res.theta, 2)
    array([0.71, 2.35, 1.01, 0.71, 0.56])

References:
    Amemiya T (1985). *Advanced Econometrics*, §4.6 (smoothed estimating equations of quantiles).
    Boos DD & Stefanski LA (2013). *Essential Statistical Inference*, ch. 7 (M-estimation of percentiles and
    mean deviations).
    Zivich PN et al. (2022). Delicatessen: M-estimation in Python. arXiv:2203.11300.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.errors import DataError, SpecificationError

from .options import check_fractions, check_number, numeric_in_mask, row_multiplier

__all__ = ["geometric_mean", "percentile", "positive_mean_deviation"]

KINDS = ("geometric mean", "percentile", "positive mean deviation")


@dataclasses.dataclass(frozen=True)
class DescriptiveScore:
    """ψ of the descriptive blocks (module docstring). Columns read: ``{name}.y``, ``{name}.mask``."""

    name: str
    kind: str
    q: tuple[float, ...] = ()

    def __call__(self, theta, row):
        y, m = row[f"{self.name}.y"], row[f"{self.name}.mask"]
        if self.kind == "geometric mean":
            return m * (jnp.log(y) - jnp.log(theta))
        if self.kind == "percentile":
            return m * (jnp.asarray(self.q) - jnp.where(y <= theta, 1.0, 0.0))
        pmd, median = theta
        return m * jnp.stack([2.0 * (y - median) * jnp.where(y > median, 1.0, 0.0) - pmd,
                              0.5 - jnp.where(y <= median, 1.0, 0.0)])


def check_smooth(smooth):
    """``smooth=`` of a smoothed block: 'auto' or a bandwidth h > 0 (:mod:`mestim.smooth`)."""
    if smooth == "auto":
        return smooth
    if isinstance(smooth, numbers.Real):
        return check_number("smooth", smooth, low=0.0)
    raise SpecificationError(f"smooth={smooth!r}: give 'auto' or a bandwidth h > 0 in the outcome's units")


@dataclasses.dataclass(frozen=True)
class Descriptive:
    """The options of the descriptive blocks, checked on construction; ``__call__`` prepares the columns."""

    name: str
    y: str
    kind: str
    q: tuple[float, ...] = ()
    smooth: object = None
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        if self.kind == "percentile":
            object.__setattr__(self, "q", check_fractions("q", self.q))
        if self.kind != "geometric mean":
            object.__setattr__(self, "smooth", check_smooth(self.smooth))

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult = row_multiplier(cols, n, self.mask, self.weights)
        y = numeric_in_mask(cols, self.y, m, what="outcome")
        used, w = y[m], mult[m]
        if self.kind == "geometric mean":
            if (used <= 0).any():
                raise DataError(f"block '{n}': the geometric mean needs positive values, but '{self.y}' has "
                                f"{int((used <= 0).sum())} value(s) ≤ 0 on the rows it uses")
            init, labels = [float(np.exp(np.average(np.log(used), weights=w)))], ("geometric mean",)
            y = np.where(m, y, 1.0)
        elif self.kind == "percentile":
            init, labels = np.quantile(used, self.q), tuple(f"q({q:g})" for q in self.q)
        else:
            median = float(np.median(used))
            init = [float(np.mean(2 * np.maximum(used - median, 0.0))), median]
            labels = ("positive mean deviation", "median")
        note = f"{self.kind} of {self.y}, {int(m.sum())} rows"
        return Prepared({f"{n}.y": y, f"{n}.mask": mult}, np.asarray(init, float), labels, (note,))


def geometric_mean(name: str, y: str, *, weights: str | None = None, mask=None) -> Block:
    """The geometric mean exp(E[log Y]) of a positive outcome (module docstring).

    Args:
        name: block name; parameter ``geometric mean``.
        y: the outcome column (> 0 on the rows used).
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (exp of the mean log)::

        >>> import numpy as np, mestim
        >>> from estimators import geometric_mean
        >>> y = np.random.default_rng(0).lognormal(1.0, 0.5, 300)
        >>> res = mestim.fit(geometric_mean("gm", "y"), {"y": y})
        >>> bool(np.isclose(res.theta[0], np.exp(np.log(y).mean())))
        True
    """
    options = Descriptive(name, y, "geometric mean", weights=weights, mask=mask)
    return Block(name, DescriptiveScore(name, options.kind), prepare=options)


def percentile(name: str, y: str, q, *, smooth="auto", weights: str | None = None, mask=None) -> Block:
    """Percentiles (quantiles) of ``y`` at probabilities ``q``, from smoothed estimating equations (module
    docstring).

    Args:
        name: block name; parameters ``q(<q>)``.
        y: the outcome column; q: one probability in (0, 1) or several.
        smooth: ``"auto"`` (default) or a bandwidth h > 0 in ``y``'s units (:mod:`mestim.smooth`).
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (quartiles of 1,000 standard normal draws; truth ±0.674)::

        >>> import numpy as np, mestim
        >>> from estimators import percentile
        >>> y = np.random.default_rng(0).normal(size=1000)
        >>> res = mestim.fit(percentile("q", "y", [0.25, 0.75]), {"y": y})
        >>> np.round(res.theta, 2), res.labels
        (array([-0.7 ,  0.62]), ('q(0.25)', 'q(0.75)'))
    """
    options = Descriptive(name, y, "percentile", q, smooth, weights, mask)
    return Block(name, DescriptiveScore(name, options.kind, options.q), prepare=options, smooth=options.smooth)


def positive_mean_deviation(name: str, y: str, *, smooth="auto", weights: str | None = None, mask=None) -> Block:
    """The positive mean deviation 2 E[(Y − M) 1{Y > M}] about the median M, with the median (module docstring).

    Args:
        name: block name; parameters ``positive mean deviation``, ``median``.
        y: the outcome column.
        smooth: ``"auto"`` (default) or a bandwidth h > 0 in ``y``'s units (:mod:`mestim.smooth`).
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (of standard exponential draws: 2 E[(Y − M) 1{Y > M}] = 1, M = log 2)::

        >>> import numpy as np, mestim
        >>> from estimators import positive_mean_deviation
        >>> y = np.random.default_rng(0).exponential(size=2000)
        >>> np.round(mestim.fit(positive_mean_deviation("pmd", "y"), {"y": y}).theta, 2)
        array([1.01, 0.71])
    """
    options = Descriptive(name, y, "positive mean deviation", smooth=smooth, weights=weights, mask=mask)
    return Block(name, DescriptiveScore(name, options.kind), prepare=options, smooth=options.smooth)
