r"""The mean of an outcome with missing values, under missing at random or a specified departure from it (a
sensitivity analysis), as a block.

Y_i is observed when S_i = 1. The probability of being observed is modelled as P(S = 1 | X, Y) = H(Xᵀγ + q(Y; α)),
with H a distribution function (the inverse of a binary link) and q(Y; α) a *known* sensitivity function: q = 0 is
missing at random given X; q(Y; α) = αY makes missingness depend on the unobserved outcome itself (not missing at
random), with α fixed by the analyst and varied in a sensitivity analysis. With m_i = I(row i in the mask)·w_i
(Rotnitzky, Robins & Scharfstein 1998; Scharfstein, Rotnitzky & Robins 1999; delicatessen's
``ee_mean_sensitivity_analysis``):

    ψ_i = m_i ( S_i Y_i / H(X_iᵀγ + q(Y_i; α)) − μ,
                (S_i / H(X_iᵀγ + q(Y_i; α)) − 1) X_i ).

The second set is a calibration (balancing) equation: it makes the weighted observed rows reproduce the covariate
totals of all rows, which identifies γ even though q involves the unobserved Y (q enters only on observed rows,
where S_i = 1). θ = (μ, γ).

Example (a mean under MAR and under an assumed departure in which higher values are less often observed)::

    >>> import numpy as np, mestim
    >>> from estimators import mean_sensitivity_analysis
    >>> rng = np.random.default_rng(12)
    >>> w = rng.binomial(1, 0.5, 3000) * 1.0
    >>> y = 5.0 - 2.0 * w + rng.normal(size=3000)
    >>> s = (rng.random(3000) < 1 / (1 + np.exp(-(1.0 + w - 0.3 * y)))) * 1.0
    >>> d = {"w": w, "s": s, "y": np.where(s == 1, y, np.nan)}
    >>> fits = [mestim.fit(mean_sensitivity_analysis("m", "y", "s", ["w"], alpha=a), d) for a in (0.0, -0.3)]
    >>> [round(float(f.theta[0]), 2) for f in fits]   # the full data's mean is 4.0
    [3.87, 3.99]

References:
    Rotnitzky A, Robins JM & Scharfstein DO (1998). Semiparametric regression for repeated outcomes with
    nonignorable nonresponse. J Am Stat Assoc 93:1321–1339.
    Scharfstein DO, Rotnitzky A & Robins JM (1999). Adjusting for nonignorable drop-out using semiparametric
    nonresponse models. J Am Stat Assoc 94:1096–1120.
    Zivich PN et al. (2022). Delicatessen: M-estimation in Python. arXiv:2203.11300.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.errors import DataError, SpecificationError

from .generalized_linear import LINKS, PROBABILITY_LINKS
from .options import check_choice, check_number, numeric_in_mask, weighted_design

__all__ = ["mean_sensitivity_analysis"]


@dataclasses.dataclass(frozen=True)
class SensitivityScore:
    """ψ of :func:`mean_sensitivity_analysis` (module docstring). Columns read: ``{name}.Y`` (0 where missing),
    ``.S``, ``.q`` (q(Y; α), 0 where missing), ``.X``, ``.mask``."""

    name: str
    link: str

    def __call__(self, theta, row):
        n = self.name
        mu, gamma = theta[0], theta[1:]
        x, s = row[f"{n}.X"], row[f"{n}.S"]
        observed = LINKS[self.link].inverse(x @ gamma + row[f"{n}.q"], jnp)
        return row[f"{n}.mask"] * jnp.concatenate([jnp.atleast_1d(s * row[f"{n}.Y"] / observed - mu),
                                                   (s / observed - 1.0) * x])


@dataclasses.dataclass(frozen=True)
class MeanSensitivity:
    """The options of :func:`mean_sensitivity_analysis`, checked on construction; ``__call__`` prepares."""

    name: str
    y: str
    observed: str
    X: object = None
    alpha: float = 0.0
    q: str | None = None
    link: str = "logit"
    formula: str | None = None
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        check_choice("link", self.link, PROBABILITY_LINKS)
        object.__setattr__(self, "alpha", check_number("alpha", self.alpha))
        if self.q is not None and self.alpha != 0.0:
            raise SpecificationError("mean_sensitivity_analysis: give alpha= (q = αY) or q= (a column of q(Y)), "
                                     "not both")

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, x, labels = weighted_design(cols, n, self.X, self.formula, True, self.mask, self.weights)
        s = numeric_in_mask(cols, self.observed, m, what="observed indicator")
        if not np.isin(s[m], (0.0, 1.0)).all():
            raise DataError(f"block '{n}': '{self.observed}' must be 1 (observed) or 0 (missing)")
        seen = m & (s == 1)
        if not seen.any():
            raise DataError(f"block '{n}': no row has '{self.y}' observed")
        y = numeric_in_mask(cols, self.y, seen, what="outcome")
        q = self.alpha * y if self.q is None else numeric_in_mask(cols, self.q, seen, what="sensitivity column")
        # start: γ of a constant probability (the observed share), μ the observed mean
        share = float(np.average(s[m], weights=mult[m]))
        init = np.zeros(1 + x.shape[1])
        init[0] = float(np.average(y[seen], weights=mult[seen]))
        if labels and labels[0] in ("(Intercept)", "Intercept"):
            init[1] = float(LINKS[self.link].link(share))
        departure = (f"q = {self.alpha:g}·Y" if self.q is None else f"q from column '{self.q}'")
        note = (f"mean of {self.y} with {int((m & (s == 0)).sum())} of {int(m.sum())} missing; observation model "
                f"{self.link}({labels}) + {departure}")
        return Prepared({f"{n}.Y": y, f"{n}.S": s, f"{n}.q": q, f"{n}.X": x, f"{n}.mask": mult}, init,
                        ("mean",) + tuple(f"observed:{lab}" for lab in labels), (note,))


def mean_sensitivity_analysis(name: str, y: str, observed: str, X=None, *, alpha: float = 0.0, q: str | None = None,
                              link: str = "logit", formula: str | None = None, weights: str | None = None,
                              mask=None) -> Block:
    """The mean of ``y`` under missing at random given X (``alpha=0``) or a specified departure (module docstring).

    Args:
        name: block name; parameters ``mean``, then ``observed:<column>`` (γ of the observation model).
        y: outcome column (may be NaN where not observed); observed: 1 where y is observed, 0 where missing.
        X, formula: the observation model's design (an intercept first).
        alpha: the sensitivity parameter of q(Y; α) = αY, held fixed (0: missing at random).
        q: instead of ``alpha``, a column holding q(Y_i) of any sensitivity function (used on observed rows only).
        link: the observation model's link (its inverse is H): ``"logit"`` (default), ``"probit"``, ``"cloglog"``,
            ``"loglog"``, ``"cauchit"``.
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (the mean under MAR (α = 0) and under a departure (α = −0.3); full data 4.0)::

        >>> import numpy as np, mestim
        >>> from estimators import mean_sensitivity_analysis
        >>> rng = np.random.default_rng(12)
        >>> w = rng.binomial(1, 0.5, 1000) * 1.0; y = 5.0 - 2.0 * w + rng.normal(size=1000)
        >>> s = (rng.random(1000) < 1 / (1 + np.exp(-(1.0 + w - 0.3 * y)))) * 1.0
        >>> d = {"w": w, "s": s, "y": np.where(s == 1, y, np.nan)}
        >>> [round(float(mestim.fit(mean_sensitivity_analysis("m", "y", "s", ["w"], alpha=a), d).theta[0]), 2)
        ...  for a in (0.0, -0.3)]
        [3.9, 4.04]
    """
    options = MeanSensitivity(name, y, observed, X, alpha, q, link, formula, weights, mask)
    return Block(name, SensitivityScore(name, link), prepare=options)
