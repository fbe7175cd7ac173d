r"""Dose–response curves (E-max, 2-, 3- and 4-parameter log-logistic) and effective doses ED(p), as blocks.

A curve f(d; θ) of the dose d is fitted to the responses y_i by least squares, so each block's estimating function
is the gradient of −½ m_i (y_i − f(d_i; θ))² (m_i = I(row i in the mask)·w_i, w_i the block's ``weights``):

    ψ_i = m_i (y_i − f(d_i; θ)) ∂f(d_i; θ)/∂θ,

written once as the curve; its gradient and Jacobian are autodiff's. The sandwich is the heteroskedasticity-robust
covariance (R's ``sandwich`` on a ``drm``/``nls`` fit).

==================  ====================  =======================================================
block               θ                     f(d; θ)
==================  ====================  =======================================================
:func:`emax`        E0, Emax, ED50        E0 + Emax d/(ED50 + d)                 (hyperbolic E-max)
:func:`log_logistic` lower, upper,        lower + (upper − lower)/(1 + (d/ED50)^steepness)
                    ED50, steepness       (drc's LL.4; ``lower=`` a number fixes it: LL.3;
                                          ``upper=`` too: LL.2)
==================  ====================  =======================================================

With steepness > 0 the log-logistic curve falls from ``upper`` at dose 0 to ``lower``; with steepness < 0 it rises.
At dose 0 the curve is its limit (``upper`` or ``lower``), with the limit's derivatives (delicatessen replaces a dose
of 0 by 10⁻⁹, which agrees to rounding).

:func:`effective_dose` stacks the doses ED(p) that reach a fraction p of the curve's effect, with
ψ_i = m_i (g_p(θ_curve) − ED(p)):

    E-max           ED(p) = p/(1 − p) · ED50              (Bonate 2011; delicatessen's ``ee_emax_ed``)
    log-logistic    ED(p) = ED50 · (p/(1 − p))^(1/|steepness|)   (drc's ``ED(…, type="relative")``)

Example (drc's ``ryegrass``, delicatessen's ``load_inderjit``: root length against ferulic acid; drc's LL.3 gives
upper 7.85543, ED50 3.26336, steepness 2.47033 and ED(5%), ED(10%), ED(50%) = 0.99088, 1.34086, 3.26336)::

    >>> import numpy as np, mestim
    >>> from estimators import log_logistic, effective_dose
    >>> ryegrass = {"dose": np.repeat([0, 0.94, 1.88, 3.75, 7.5, 15, 30], [6, 3, 3, 3, 3, 3, 3]),
    ...             "root": np.array([7.58, 8.0, 8.3285714, 7.25, 7.375, 7.9625, 8.3555556, 6.9142857, 7.75,
    ...                               6.8714286, 6.45, 5.9222222, 1.925, 2.8857143, 4.2333333, 1.1875, 0.8571429,
    ...                               1.0571429, 0.6875, 0.525, 0.825, 0.25, 0.22, 0.44])}
    >>> curve = log_logistic("ll3", "dose", "root", lower=0.0)
    >>> res = mestim.fit([curve, effective_dose("ed", curve, [0.05, 0.10, 0.50])], ryegrass)
    >>> np.round(res.theta, 4)
    array([7.8554, 3.2634, 2.4703, 0.9909, 1.3409, 3.2634])
    >>> res.labels[3:]
    ('ed:ED(0.05)', 'ed:ED(0.1)', 'ed:ED(0.5)')

References:
    Ritz C, Baty F, Streibig JC & Gerhard D (2015). Dose-response analysis using R. PLoS ONE 10:e0146021.
    Bonate PL (2011). *Pharmacokinetic-Pharmacodynamic Modeling and Simulation*, 2nd ed., ch. 1 (E-max models).
    Zivich PN et al. (2022). Delicatessen: M-estimation in Python. arXiv:2203.11300.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.errors import DataError, SpecificationError

from .options import ObjectiveScore, check_fractions, check_limits, numeric_in_mask, row_multiplier

__all__ = ["emax", "log_logistic", "effective_dose"]

CURVES = ("emax", "log-logistic")
LOG_LOGISTIC = ("lower", "upper", "ED50", "steepness")


@dataclasses.dataclass(frozen=True)
class DoseResponseScore(ObjectiveScore):
    """ψ = m (y − f(d; θ)) ∂f/∂θ of a curve (module docstring). ``lower``/``upper``: fixed limits of a log-logistic
    curve (None: estimated). Columns read: ``{name}.dose``, ``.y``, ``.mask``."""

    name: str
    curve: str
    lower: float | None = None
    upper: float | None = None

    def full(self, theta):
        """(lower, upper, ED50, steepness) of a log-logistic curve, its fixed limits filled in."""
        free = iter(theta)
        return [next(free) if fixed is None else jnp.asarray(fixed, theta.dtype)
                for fixed in (self.lower, self.upper)] + list(free)

    def response(self, theta, dose):
        if self.curve == "emax":
            e0, e_max, ed50 = theta
            return e0 + e_max * dose / (ed50 + dose)
        lower, upper, ed50, steep = self.full(theta)
        positive = dose > 0
        log_ratio = jnp.log(jnp.where(positive, dose, 1.0)) - jnp.log(ed50)
        # 1/(1 + (d/ED50)^b) = expit(−b log(d/ED50)); at d = 0 its limit, 1 (b > 0) or 0 (b < 0)
        fraction = jnp.where(positive, jax.nn.sigmoid(-steep * log_ratio), jnp.where(steep > 0, 1.0, 0.0))
        return lower + (upper - lower) * fraction

    def effective_dose(self, theta, p):
        if self.curve == "emax":
            return p / (1.0 - p) * theta[2]
        _, _, ed50, steep = self.full(theta)
        return ed50 * (p / (1.0 - p)) ** (1.0 / jnp.abs(steep))

    def objective(self, theta, row):
        """−½ (y − f(d; θ))²."""
        n = self.name
        return -0.5 * (row[f"{n}.y"] - self.response(theta, row[f"{n}.dose"])) ** 2


@dataclasses.dataclass(frozen=True)
class DoseResponse:
    """The options of :func:`emax` and :func:`log_logistic`, checked on construction; ``__call__`` prepares."""

    name: str
    dose: str
    response: str
    curve: str = "log-logistic"
    lower: float | None = None
    upper: float | None = None
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        lower, upper = check_limits(self.lower, self.upper)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    @property
    def score(self) -> DoseResponseScore:
        return DoseResponseScore(self.name, self.curve, self.lower, self.upper)

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult = row_multiplier(cols, n, self.mask, self.weights)
        dose = numeric_in_mask(cols, self.dose, m, what="dose column")
        y = numeric_in_mask(cols, self.response, m, what="response column")
        if (dose[m] < 0).any():
            raise DataError(f"block '{n}': dose '{self.dose}' has negative values on the rows it uses")
        positive = dose[m][dose[m] > 0]
        if np.unique(positive).size < 2:
            raise DataError(f"block '{n}': a dose-response curve needs at least two distinct positive doses")
        if self.curve == "emax":
            init, labels = _emax_start(dose[m], y[m], positive), ("E0", "Emax", "ED50")
        else:
            init = self._log_logistic_start(dose[m], y[m])
            keep = [self.lower is None, self.upper is None, True, True]
            init = [v for v, k in zip(init, keep) if k]
            labels = tuple(lab for lab, k in zip(LOG_LOGISTIC, keep) if k)
        note = f"{self.curve} curve of {self.response} on {self.dose}, {int(m.sum())} rows" + "".join(
            f", {lim} fixed at {getattr(self, lim):g}" for lim in ("lower", "upper") if getattr(self, lim) is not None)
        return Prepared({f"{n}.dose": dose, f"{n}.y": y, f"{n}.mask": mult}, np.array(init, float), labels, (note,))


    def _log_logistic_start(self, dose, y):
        """Limits just outside the responses' range (or the fixed ones); then ED50 and steepness from the
        linearised curve, log((upper − y)/(y − lower)) = b log d − b log ED50, by least squares over the positive
        doses (drc's self-starter)."""
        pad = 0.05 * (np.ptp(y) or 1.0)
        lower = self.lower if self.lower is not None else float(y.min()) - pad
        upper = self.upper if self.upper is not None else float(y.max()) + pad
        positive = dose > 0
        fraction = np.clip((y[positive] - lower) / (upper - lower), 0.01, 0.99)
        slope, intercept = np.polyfit(np.log(dose[positive]), np.log((1 - fraction) / fraction), 1)
        slope = slope if abs(slope) > 1e-3 else 1.0
        return [lower, upper, float(np.exp(-intercept / slope)), float(slope)]


def _emax_start(dose, y, positive):
    """For a fixed ED50 the E-max curve is linear in (E0, Emax): the least-squares (E0, Emax, ED50) over a grid of
    ED50 from a tenth of the smallest positive dose to ten times the largest."""
    best = None
    for ed50 in np.geomspace(positive.min() / 10, positive.max() * 10, 60):
        x = np.column_stack([np.ones_like(dose), dose / (ed50 + dose)])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        sse = float(np.sum((y - x @ coef) ** 2))
        if best is None or sse < best[0]:
            best = (sse, [float(coef[0]), float(coef[1]), float(ed50)])
    return best[1]


def emax(name: str, dose: str, response: str, *, weights: str | None = None, mask=None) -> Block:
    """The hyperbolic E-max curve E0 + Emax·d/(ED50 + d), fitted by least squares (module docstring).

    Args:
        name: block name; parameters ``E0``, ``Emax``, ``ED50``.
        dose: column of doses d ≥ 0; response: column of responses.
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows the curve is fitted on.

    Example (Bonate's data with a zero dose, as in delicatessen's tests; R's DoseFinding gives 1.658004,
    −40.138821, 5.739854)::

        >>> import numpy as np, mestim
        >>> d = {"d": np.array([0, 5, 5, 13, 11, 14.5, 6.8, 42.5, 37.5, 25, 38, 40, 26.5, 27.7, 27.4, 45, 61.4,
        ...                     52.8]),
        ...      "r": np.array([0, -12, -13, -28, -24, -45, -18, -26, -40, -45, -26, -29, -26, -22, -28, -36, -27,
        ...                     -48.])}
        >>> np.round(mestim.fit(emax("e", "d", "r"), d).theta, 6)
        array([  1.658004, -40.138821,   5.739854])
    """
    options = DoseResponse(name, dose, response, "emax", weights=weights, mask=mask)
    return Block(name, options.score, prepare=options)


def log_logistic(name: str, dose: str, response: str, *, lower: float | None = None, upper: float | None = None,
                 weights: str | None = None, mask=None) -> Block:
    """The log-logistic curve lower + (upper − lower)/(1 + (d/ED50)^steepness) (4 parameters; 3 with ``lower``
    fixed, 2 with both limits fixed), fitted by least squares (module docstring).

    Args:
        name: block name; parameters ``lower``, ``upper`` (those not fixed), ``ED50``, ``steepness``.
        dose: column of doses d ≥ 0; response: column of responses.
        lower, upper: fix a limit at this number (drc's ``LL.3()`` is ``lower=0``); None estimates it.
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows the curve is fitted on.

    Example (a three-parameter log-logistic curve; truth: upper 8, ED50 3, steepness 2)::

        >>> import numpy as np, mestim
        >>> dose = np.repeat([0.5, 1, 2, 4, 8, 16], 10)
        >>> d = {"dose": dose, "r": 8 / (1 + (dose / 3) ** 2) + np.random.default_rng(0).normal(0, 0.3, 60)}
        >>> from estimators import log_logistic
        >>> np.round(mestim.fit(log_logistic("ll3", "dose", "r", lower=0.0), d).theta, 2)
        array([8.06, 3.  , 1.85])
    """
    options = DoseResponse(name, dose, response, "log-logistic", lower, upper, weights, mask)
    return Block(name, options.score, prepare=options)


@dataclasses.dataclass(frozen=True)
class EffectiveDoseScore:
    """ψ = m (ED_p(θ_curve) − ED(p)) for each p (module docstring)."""

    name: str
    curve: str
    score: DoseResponseScore
    p: tuple[float, ...]

    def values(self, theta):
        return jnp.stack([self.score.effective_dose(theta, p) for p in self.p])

    def __call__(self, ed, row, **upstream):
        return row[f"{self.name}.mask"] * (self.values(upstream[self.curve]) - ed)


@dataclasses.dataclass(frozen=True)
class EffectiveDose:
    """The options of :func:`effective_dose`, checked on construction; ``__call__`` prepares the start."""

    name: str
    curve: Block
    p: tuple[float, ...]
    mask: object = None

    def __post_init__(self):
        if not (isinstance(self.curve, Block) and isinstance(self.curve.psi, DoseResponseScore)):
            raise SpecificationError(f"effective_dose '{self.name}': curve= must be a block from estimators.emax or "
                                     f"estimators.log_logistic; got {self.curve!r}")
        object.__setattr__(self, "p", check_fractions("p", self.p))

    @property
    def score(self) -> EffectiveDoseScore:
        return EffectiveDoseScore(self.name, self.curve.name, self.curve.psi, self.p)

    def __call__(self, cols) -> Prepared:
        _, mult = row_multiplier(cols, self.name, self.mask, None)
        start = self.score.values(jnp.asarray(self.curve.prepare(cols).init))
        return Prepared({f"{self.name}.mask": mult}, np.asarray(start), tuple(f"ED({p:g})" for p in self.p),
                        (f"effective doses of block '{self.curve.name}'",))


def effective_dose(name: str, curve: Block, p, *, mask=None) -> Block:
    """The doses ED(p) reaching a fraction p of the curve's effect (module docstring), stacked on ``curve``.

    Args:
        name: block name; parameters labelled ``ED(p)``.
        curve: an :func:`emax` or :func:`log_logistic` block stacked in the same fit (this block reads it).
        p: one fraction in (0, 1) or several (0.5 gives ED50 itself).
        mask: rows that carry the equations (default all; their number does not change θ̂).

    Example (the doses of 10% and 50% effect on a fitted curve; truth ED50 3, ED10 1)::

        >>> import numpy as np, mestim
        >>> dose = np.repeat([0.5, 1, 2, 4, 8, 16], 10)
        >>> d = {"dose": dose, "r": 8 / (1 + (dose / 3) ** 2) + np.random.default_rng(0).normal(0, 0.3, 60)}
        >>> from estimators import effective_dose, log_logistic
        >>> curve = log_logistic("ll3", "dose", "r", lower=0.0)
        >>> res = mestim.fit([curve, effective_dose("ed", curve, [0.1, 0.5])], d)
        >>> np.round(res["ed"], 2), res.labels[3:]
        (array([0.92, 3.  ]), ('ed:ED(0.1)', 'ed:ED(0.5)'))
    """
    options = EffectiveDose(name, curve, p, mask)
    return Block(name, options.score, reads=(curve.name,), prepare=options)
