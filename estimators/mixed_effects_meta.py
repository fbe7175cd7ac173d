r"""Random-effects meta-regression: study estimates y_i with known within-study variances v_i, a linear model of
their mean in study-level moderators x_i, and between-study variance τ², as a block.

y_i = x_iᵀβ + u_i + e_i with u_i ~ (0, τ²) and e_i ~ (0, v_i). With w_i = 1/(v_i + τ²), r_i = y_i − x_iᵀβ,
k studies and p coefficients, and m_i = I(row i in the mask):

    ψ_i = m_i ( w_i r_i x_i,
                w_i r_i² − (1 − p/k) ),                τ² = exp(θ_τ).

The first equations are weighted least squares. The last sums to the generalized Q statistic set to its
expectation, Σ w_i r_i² = k − p: the Paule–Mandel (method of moments) estimator of τ² for meta-regression (Paule &
Mandel 1982; Viechtbauer et al. 2015; metafor's ``rma(method="PM")``). Its root is the root of delicatessen's
``ee_meta_regression``, because the leverages h_ii it uses sum to p. Here each study contributes p/k, so ψ_i is a
function of study i alone, and the sandwich (β and τ² jointly) is the robust covariance of an M-estimator. With
an intercept only, β̂ is the Paule–Mandel random-effects mean of :mod:`estimators.meta_classical`.

τ² is stacked as its logarithm, so τ̂² = 0 is not a root. When Q(0) = Σ r_i²/v_i ≤ k − p (no excess heterogeneity)
the block refuses and says so: give ``tau2=0`` for a fixed-effect (common-effect) meta-regression, or any fixed
τ² ≥ 0. Then only β is estimated.

Example (the BCG vaccine trials, Colditz et al. 1994, as in metafor's ``dat.bcg``: log risk ratios on absolute
latitude; with no moderator the block gives metafor's ``rma(method="PM")``: −0.714968 and τ² = 0.318068)::

    >>> import numpy as np, mestim
    >>> from estimators import meta_regression
    >>> tpos, tneg = np.array([[4, 6, 3, 62, 33, 180, 8, 505, 29, 17, 186, 5, 27],
    ...                        [119, 300, 228, 13536, 5036, 1361, 2537, 87886, 7470, 1699, 50448, 2493, 16886.]])
    >>> cpos, cneg = np.array([[11, 29, 11, 248, 47, 372, 10, 499, 45, 65, 141, 3, 29],
    ...                        [128, 274, 209, 12619, 5761, 1079, 619, 87892, 7232, 1600, 27197, 2338, 17825.]])
    >>> d = {"yi": np.log(tpos / (tpos + tneg)) - np.log(cpos / (cpos + cneg)),
    ...      "vi": 1 / tpos - 1 / (tpos + tneg) + 1 / cpos - 1 / (cpos + cneg),
    ...      "lat": np.array([44, 55, 42, 52, 13, 44, 19, 13, 27, 42, 18, 33, 33.])}
    >>> res = mestim.fit(meta_regression("pm", "yi", "vi"), d)
    >>> round(float(res.theta[0]), 6), round(float(np.exp(res.theta[1])), 6)
    (-0.714968, 0.318068)
    >>> res = mestim.fit(meta_regression("mr", "yi", "vi", ["lat"]), d)
    >>> np.round(res.theta, 4), res.labels
    (array([ 0.2219, -0.0286, -1.951 ]), ('(Intercept)', 'lat', 'log(tau2)'))

References:
    Colditz GA et al. (1994). Efficacy of BCG vaccine in the prevention of tuberculosis. JAMA 271:698–702.
    Paule RC & Mandel J (1982). Consensus values and weighting factors. J Res Natl Bur Stand 87:377–385.
    Viechtbauer W, López-López JA, Sánchez-Meca J & Marín-Martínez F (2015). A comparison of procedures to test for
    moderators in mixed-effects meta-regression models. Psychol Methods 20:360–374.
    Zivich PN et al. (2022). Delicatessen: M-estimation in Python. arXiv:2203.11300.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.errors import DataError

from .options import check_number, numeric_in_mask, weighted_design

__all__ = ["meta_regression"]


@dataclasses.dataclass(frozen=True)
class MetaRegressionScore:
    """ψ of :func:`meta_regression` (module docstring). ``tau2``: a fixed τ² (None: log τ² is the last
    parameter). Columns read: ``{name}.X``, ``.y``, ``.v``, ``.mask``, ``.share`` (1 − p/k)."""

    name: str
    tau2: float | None = None

    def __call__(self, theta, row):
        n = self.name
        x, m = row[f"{n}.X"], row[f"{n}.mask"]
        beta, tau2 = (theta, self.tau2) if self.tau2 is not None else (theta[:-1], jnp.exp(theta[-1]))
        w = 1.0 / (row[f"{n}.v"] + tau2)
        r = row[f"{n}.y"] - x @ beta
        if self.tau2 is not None:
            return m * w * r * x
        return m * jnp.append(w * r * x, w * r * r - row[f"{n}.share"])


def _wls(x, y, w):
    return np.linalg.solve((x * w[:, None]).T @ x, (x * w[:, None]).T @ y)


@dataclasses.dataclass(frozen=True)
class MetaRegression:
    """The options of :func:`meta_regression`, checked on construction; ``__call__`` prepares the columns."""

    name: str
    estimate: str
    variance: str
    X: object = None
    formula: str | None = None
    tau2: float | None = None
    mask: object = None

    def __post_init__(self):
        if self.tau2 is not None:
            object.__setattr__(self, "tau2", check_number("tau2", self.tau2, low=0.0, inclusive=True))

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, x, labels = weighted_design(cols, n, self.X, self.formula, True, self.mask, None)
        y = numeric_in_mask(cols, self.estimate, m, what="study estimates")
        v = numeric_in_mask(cols, self.variance, m, what="within-study variances")
        if (v[m] <= 0).any():
            raise DataError(f"block '{n}': within-study variances '{self.variance}' must be positive")
        k, p = int(m.sum()), x.shape[1]
        if k <= p + (self.tau2 is None):
            raise DataError(f"block '{n}': {k} studies for {p} coefficients" + ("" if self.tau2 is not None else
                                                                              " and τ²"))
        v = np.where(m, v, 1.0)
        xm, ym, vm = x[m], y[m], v[m]
        out = {f"{n}.X": x, f"{n}.y": y, f"{n}.v": v, f"{n}.mask": mult}
        if self.tau2 is not None:
            note = f"meta-regression of {self.estimate} on {labels}, τ² fixed at {self.tau2:g}, {k} studies"
            return Prepared(out, _wls(xm, ym, 1 / (vm + self.tau2)), tuple(labels), (note,))
        q0 = float(np.sum((ym - xm @ _wls(xm, ym, 1 / vm)) ** 2 / vm))
        if q0 <= k - p:
            raise DataError(f"block '{n}': no heterogeneity beyond the within-study variances (Q = {q0:.4g} ≤ "
                            f"k − p = {k - p}), so the Paule–Mandel τ̂² is 0, on the boundary of log τ²: give tau2=0 "
                            "(a fixed-effect meta-regression) or another fixed τ²")
        # start: the method-of-moments τ² of the residual heterogeneity at the fixed-effect fit (DerSimonian–Laird)
        w = 1 / vm
        trace = np.sum(w) - np.trace(np.linalg.solve((xm * w[:, None]).T @ xm, (xm * (w**2)[:, None]).T @ xm))
        tau2 = max((q0 - (k - p)) / trace, 1e-4 * float(np.mean(vm)))
        out[f"{n}.share"] = np.full(m.size, 1.0 - p / k)
        note = f"random-effects (Paule–Mandel) meta-regression of {self.estimate} on {labels}, {k} studies"
        return Prepared(out, np.append(_wls(xm, ym, 1 / (vm + tau2)), math.log(tau2)), tuple(labels) + ("log(tau2)",),
                        (note,))


def meta_regression(name: str, estimate: str, variance: str, X=None, *, formula: str | None = None,
                    tau2: float | None = None, mask=None) -> Block:
    """A random-effects meta-regression with the Paule–Mandel τ² (module docstring).

    Args:
        name: block name; parameters labelled by the design's columns (an intercept first), then ``log(tau2)``.
        estimate: column of the study estimates y_i; variance: column of their within-study variances v_i > 0.
        X, formula: study-level moderators (none: a random-effects meta-analysis of the mean).
        tau2: hold τ² fixed at this value ≥ 0 (0: a fixed-effect meta-regression); None estimates it.
        mask: studies used.

    Example (the BCG trials' log risk ratios; metafor's rma(method='PM'): −0.714968, τ² = 0.318068)::

        >>> import numpy as np
        >>> from estimators.meta_batch import load_bcg
        >>> bcg = load_bcg()
        >>> import mestim
        >>> from estimators import meta_regression
        >>> d = {"yi": np.log(bcg.ai / (bcg.ai + bcg.bi)) - np.log(bcg.ci / (bcg.ci + bcg.di)),
        ...      "vi": 1 / bcg.ai - 1 / (bcg.ai + bcg.bi) + 1 / bcg.ci - 1 / (bcg.ci + bcg.di)}
        >>> res = mestim.fit(meta_regression("pm", "yi", "vi"), d)
        >>> round(float(res.theta[0]), 6), round(float(np.exp(res.theta[1])), 6)
        (-0.714968, 0.318068)
    """
    options = MetaRegression(name, estimate, variance, X, formula, tau2, mask)
    return Block(name, MetaRegressionScore(name, options.tau2), prepare=options)
