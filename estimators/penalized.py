r"""Penalized regression (ridge, bridge, elastic net) of a linear, logistic or Poisson model, as blocks.

The estimating function is the score of the model with the derivative of a bridge penalty subtracted,
divided among the n rows the block uses (Fu 2003; delicatessen's ``ee_ridge_regression``, ``ee_bridge_regression``,
``ee_elasticnet_regression``):

    ψ_i = m_i [ (y_i − g⁻¹(x_iᵀβ)) x_i − (λ/n) · |β − c|^(γ−1) · sign(β − c) ],

elementwise in the coefficients, with m_i = I(row i in the mask)·w_i (w_i the block's ``weights``), g the
model's canonical link (identity, logit, log), λ ≥ 0 the penalty (one number, or one per coefficient: 0 leaves a
coefficient such as the intercept unpenalized) and c the centre the coefficients shrink towards (0 by default).

==================================  ======================================================================
block                                penalty term
==================================  ======================================================================
:func:`ridge_regression`            L2: γ = 2, (λ/n)(β − c)
:func:`bridge_regression`           L_γ, γ > 1 (γ < 2 is smooth except at β = c: keep estimates away from it)
:func:`elastic_net_regression`      r × L_(1+ε) + (1 − r) × L2, L1 approximated by γ = 1 + ε (ε = 0.003)
==================================  ======================================================================

:func:`additive_regression` is a ridge regression on a design that adds, for each covariate given a spline, the
terms of a (restricted) truncated power spline with knots k_1 < … < k_K (Hastie & Tibshirani 1990; delicatessen's
``ee_additive_regression``): (x − k_j)₊^a for j = 1..K, or, restricted (natural), (x − k_j)₊^a − (x − k_K)₊^a for
j < K, optionally divided by (k_K − k_1)^a; each spline term carries that spline's penalty, the linear terms none.

For the unweighted linear model, ridge has the closed form β̂ = (XᵀX + Λ)⁻¹(Xᵀy + Λc), Λ = diag(λ). The sandwich
treats λ as fixed: it is the variance of the penalized estimator around its own (biased) limit, not a confidence
statement about the unpenalized β.

Example (ridge shrinks the coefficients towards 0, the intercept left unpenalized; bridge and elastic-net
penalties; an additive model of a sine curve, with a natural cubic spline of four knots)::

    >>> import numpy as np, mestim
    >>> from estimators import additive_regression, bridge_regression, elastic_net_regression, ridge_regression
    >>> rng = np.random.default_rng(4)
    >>> x = rng.normal(size=(200, 3))
    >>> d = {"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "y": 1 + x @ [1.0, -0.5, 0.0] + rng.normal(size=200)}
    >>> res = mestim.fit(ridge_regression("r", "y", ["x1", "x2", "x3"], penalty=[0, 50, 50, 50]), d)
    >>> np.round(res.theta, 3)
    array([ 0.996,  0.778, -0.485,  0.094])
    >>> pen = [0, 50, 50, 50]
    >>> res = mestim.fit([bridge_regression("b", "y", ["x1", "x2", "x3"], penalty=pen, gamma=1.5),
    ...                   elastic_net_regression("e", "y", ["x1", "x2", "x3"], penalty=pen, ratio=0.5)], d)
    >>> np.round(res["b"], 3), np.round(res["e"], 3)
    (array([ 0.999,  0.758, -0.441,  0.06 ]), array([ 0.996,  0.765, -0.428,  0.001]))
    >>> d["x"] = rng.uniform(-2, 2, 200)
    >>> d["z"] = np.sin(2 * d["x"]) + rng.normal(scale=0.3, size=200)
    >>> res = mestim.fit(additive_regression("gam", "z", splines={"x": {"knots": [-1.5, -0.5, 0.5, 1.5],
    ...                                                                  "penalty": 1.0}}), d)
    >>> res.labels
    ('(Intercept)', 'x', 'x:spline(-1.5)', 'x:spline(-0.5)', 'x:spline(0.5)')

References:
    Hoerl AE & Kennard RW (1970). Ridge regression: biased estimation for nonorthogonal problems.
    Technometrics 12:55–67.
    Fu WJ (1998). Penalized regressions: the bridge versus the lasso. J Comput Graph Stat 7:397–416.
    Zou H & Hastie T (2005). Regularization and variable selection via the elastic net. J R Stat Soc B
    67:301–320.
    Hastie T & Tibshirani R (1990). *Generalized Additive Models*. Chapman & Hall.
    Zivich PN et al. (2022). Delicatessen: M-estimation in Python. arXiv:2203.11300.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.errors import DataError, SpecificationError

from .generalized_linear import LINKS
from .options import check_choice, check_number, numeric_in_mask, weighted_design

__all__ = ["ridge_regression", "bridge_regression", "elastic_net_regression", "additive_regression", "Spline"]

MODELS = {"linear": "identity", "logistic": "logit", "poisson": "log"}  # model → canonical link


@dataclasses.dataclass(frozen=True)
class Spline:
    """A truncated power spline of one covariate (module docstring), checked on construction.

    Attributes:
        knots: the knots (sorted; at least 2 when ``natural``); power: the polynomial degree a (3: cubic);
        natural: restricted (linear beyond the last knot for a = 3; one column fewer than knots);
        penalty: λ ≥ 0 of its terms' L2 penalty; normalized: divide the terms by (k_K − k_1)^a.

    Example (a natural cubic spline's options, checked on construction, given to additive_regression)::

        >>> import numpy as np, mestim
        >>> from estimators import Spline, additive_regression
        >>> rng = np.random.default_rng(5); x = rng.uniform(-2, 2, 200)
        >>> d = {"x": x, "y": np.sin(2 * x) + rng.normal(scale=0.3, size=200)}
        >>> spline = Spline(knots=(-1.0, 0.0, 1.0), penalty=1.0)
        >>> mestim.fit(additive_regression("gam", "y", splines={"x": spline}), d).labels
        ('(Intercept)', 'x', 'x:spline(-1)', 'x:spline(0)')
    """

    knots: tuple[float, ...]
    power: float = 3.0
    natural: bool = True
    penalty: float = 0.0
    normalized: bool = False

    def __post_init__(self):
        knots = np.sort(np.atleast_1d(np.asarray(self.knots, dtype=float)))
        if knots.ndim != 1 or not np.isfinite(knots).all() or knots.size < (2 if self.natural else 1):
            raise SpecificationError(f"knots={self.knots!r}: give {'two' if self.natural else 'one'} or more finite "
                                     "knots")
        object.__setattr__(self, "knots", tuple(float(k) for k in knots))
        object.__setattr__(self, "power", check_number("power", self.power, low=0.0))
        object.__setattr__(self, "penalty", check_number("penalty", self.penalty, low=0.0, inclusive=True))

    def basis(self, x: np.ndarray) -> np.ndarray:
        """The spline's columns at x (n, K − 1 if natural else K)."""
        terms = np.maximum(x[:, None] - np.asarray(self.knots)[None, :], 0.0) ** self.power
        if self.natural:
            terms = terms[:, :-1] - np.where(x[:, None] > np.asarray(self.knots[:-1])[None, :], terms[:, -1:], 0.0)
        divisor = (self.knots[-1] - self.knots[0] if len(self.knots) > 1 else self.knots[0]) ** self.power
        return terms / divisor if self.normalized else terms


def _bridge(d, gamma):
    """|d|^(γ−1) sign(d), the derivative of |d|^γ/γ (exactly d for γ = 2)."""
    return d if gamma == 2.0 else jnp.sign(d) * jnp.abs(d) ** (gamma - 1.0)


@dataclasses.dataclass(frozen=True)
class PenalizedScore:
    """ψ of a penalized regression (module docstring): L_γ penalties weighted by ``ratios`` (elastic net: (r, 1 − r)
    on (1 + ε, 2); ridge and bridge: (1,) on (γ,)). Columns read: ``{name}.X``, ``.y``, ``.mask``, ``.lam``
    (λ/n per coefficient), ``.centre``."""

    name: str
    model: str
    gammas: tuple[float, ...]
    ratios: tuple[float, ...]

    def __call__(self, beta, row):
        n = self.name
        x, y = row[f"{n}.X"], row[f"{n}.y"]
        d = beta - row[f"{n}.centre"]
        penalty = sum(r * _bridge(d, g) for r, g in zip(self.ratios, self.gammas))
        residual = y - LINKS[MODELS[self.model]].inverse(x @ beta, jnp)
        return row[f"{n}.mask"] * (residual * x - row[f"{n}.lam"] * penalty)


@dataclasses.dataclass(frozen=True)
class Penalized:
    """The options of the penalized regressions, checked on construction; ``__call__`` prepares the columns."""

    name: str
    y: str
    X: object
    penalty: object
    model: str = "linear"
    gammas: tuple[float, ...] = (2.0,)
    ratios: tuple[float, ...] = (1.0,)
    centre: object = 0.0
    formula: str | None = None
    intercept: bool = True
    weights: str | None = None
    mask: object = None
    splines: tuple[tuple[str, Spline], ...] = ()  # additive terms (additive_regression)

    def __post_init__(self):
        check_choice("model", self.model, tuple(MODELS))
        penalty = np.atleast_1d(np.asarray(self.penalty, dtype=float))
        if penalty.ndim != 1 or not (np.isfinite(penalty) & (penalty >= 0)).all():
            raise SpecificationError(f"penalty={self.penalty!r}: give λ ≥ 0, one number or one per coefficient")
        object.__setattr__(self, "penalty", tuple(penalty))
        object.__setattr__(self, "centre", tuple(np.atleast_1d(np.asarray(self.centre, dtype=float))))

    @property
    def score(self) -> PenalizedScore:
        return PenalizedScore(self.name, self.model, self.gammas, self.ratios)

    def _per_coefficient(self, values, what, k):
        if len(values) not in (1, k):
            raise SpecificationError(f"block '{self.name}': {what} has {len(values)} values for {k} coefficients; "
                                     "give one number or one per coefficient")
        return np.broadcast_to(np.asarray(values), (k,))

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, x, labels = weighted_design(cols, n, self.X, self.formula, self.intercept, self.mask, self.weights)
        y = numeric_in_mask(cols, self.y, m, what="outcome")
        lam = self._per_coefficient(self.penalty, "penalty", x.shape[1])
        if self.splines:
            x, labels, lam = self._add_splines(cols, m, x, labels, lam)
        k, rows = x.shape[1], int(m.sum())
        centre = self._per_coefficient(self.centre, "center", k)
        used = y[m]
        if self.model == "logistic" and not np.isin(used, (0.0, 1.0)).all():
            raise DataError(f"block '{n}': a logistic model needs a 0/1 outcome; '{self.y}' has other values")
        if self.model == "poisson" and (used < 0).any():
            raise DataError(f"block '{n}': a Poisson model needs counts ≥ 0; '{self.y}' has negative values")
        # start: the ridge solution of the linear model for g(start mean) (exact for a linear ridge)
        if self.model == "linear":
            target = used
        else:
            target = np.log((used + 0.5) / (1.5 - used) if self.model == "logistic" else np.maximum(used, 0.5))
        xw = x[m] * mult[m][:, None]
        init = np.linalg.solve(xw.T @ x[m] + np.diag(lam), xw.T @ target + lam * centre)
        out = {f"{n}.X": x, f"{n}.y": y, f"{n}.mask": mult, f"{n}.lam": np.tile(lam / rows, (m.size, 1)),
               f"{n}.centre": np.tile(centre, (m.size, 1))}
        kind = ("ridge" if self.gammas == (2.0,) else f"bridge (γ = {self.gammas[0]:g})" if len(self.gammas) == 1
                else f"elastic net (L1 ratio {self.ratios[0]:g})")
        note = f"{kind}-penalized {self.model} regression of {self.y} on {labels}, {rows} rows"
        return Prepared(out, init, tuple(labels), (note,))


    def _add_splines(self, cols, m, x, labels, lam):
        """The design with each spline's linear term and basis appended; their penalties 0 and the spline's."""
        parts, labels, lam = [x], list(labels), list(lam)
        for column, spline in self.splines:
            v = numeric_in_mask(cols, column, m, what="spline covariate")
            basis = np.where(m[:, None], spline.basis(v), 0.0)
            parts += [v[:, None], basis]
            labels += [column] + [f"{column}:spline({k:g})" for k in spline.knots[:basis.shape[1]]]
            lam += [0.0] + [spline.penalty] * basis.shape[1]
        return np.hstack(parts), labels, np.asarray(lam)


def ridge_regression(name: str, y: str, X=None, *, penalty, model: str = "linear", center=0.0,
                     formula: str | None = None, intercept: bool = True, weights: str | None = None,
                     mask=None) -> Block:
    """Ridge (L2-penalized) regression (module docstring).

    Args:
        name: block name; parameters labelled by the design's columns.
        y: outcome column; X, formula, intercept: the design (column names with an intercept first, or a formula).
        penalty: λ ≥ 0, one number or one per coefficient (0 leaves that coefficient unpenalized).
        model: ``"linear"`` (default), ``"logistic"`` or ``"poisson"``.
        center: the value(s) the coefficients shrink towards (default 0).
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (a zero penalty is least squares; a penalty shrinks the slopes)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(4); x = rng.normal(size=(200, 2))
        >>> d = {"x1": x[:, 0], "x2": x[:, 1], "y": 1 + x @ [1.0, -0.5] + rng.normal(size=200)}
        >>> from estimators import ridge_regression
        >>> [np.round(mestim.fit(ridge_regression("r", "y", ["x1", "x2"], penalty=[0, lam, lam]), d).theta, 3)
        ...  for lam in (0, 50)]
        [array([ 0.966,  0.987, -0.5  ]), array([ 0.978,  0.811, -0.403])]
    """
    options = Penalized(name, y, X, penalty, model, (2.0,), (1.0,), center, formula, intercept, weights, mask)
    return Block(name, options.score, prepare=options)


def bridge_regression(name: str, y: str, X=None, *, penalty, gamma: float, model: str = "linear", center=0.0,
                      formula: str | None = None, intercept: bool = True, weights: str | None = None,
                      mask=None) -> Block:
    """Bridge (L_γ-penalized) regression, γ > 1 (module docstring); arguments as :func:`ridge_regression`.

    Example (an L^1.5 penalty on the slopes)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(4); x = rng.normal(size=(200, 2))
        >>> d = {"x1": x[:, 0], "x2": x[:, 1], "y": 1 + x @ [1.0, -0.5] + rng.normal(size=200)}
        >>> from estimators import bridge_regression
        >>> np.round(mestim.fit(bridge_regression("b", "y", ["x1", "x2"], penalty=[0, 50, 50], gamma=1.5), d).theta, 3)
        array([ 0.979,  0.796, -0.353])
    """
    gamma = check_number("gamma", gamma, low=1.0)
    options = Penalized(name, y, X, penalty, model, (gamma,), (1.0,), center, formula, intercept, weights, mask)
    return Block(name, options.score, prepare=options)


def elastic_net_regression(name: str, y: str, X=None, *, penalty, ratio: float, epsilon: float = 3e-3,
                           model: str = "linear", center=0.0, formula: str | None = None, intercept: bool = True,
                           weights: str | None = None, mask=None) -> Block:
    """Elastic-net regression: ``ratio`` × L1 (as L_(1+ε)) + (1 − ``ratio``) × L2 (module docstring); other
    arguments as :func:`ridge_regression`.

    Example (half L1, half L2 penalty on the slopes)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(4); x = rng.normal(size=(200, 2))
        >>> d = {"x1": x[:, 0], "x2": x[:, 1], "y": 1 + x @ [1.0, -0.5] + rng.normal(size=200)}
        >>> from estimators import elastic_net_regression
        >>> net = elastic_net_regression("e", "y", ["x1", "x2"], penalty=[0, 50, 50], ratio=0.5)
        >>> np.round(mestim.fit(net, d).theta, 3)
        array([ 0.979,  0.796, -0.333])
    """
    ratio = check_number("ratio", ratio, low=0.0, high=1.0, inclusive=True)
    epsilon = check_number("epsilon", epsilon, low=0.0)
    options = Penalized(name, y, X, penalty, model, (1.0 + epsilon, 2.0), (ratio, 1.0 - ratio), center, formula,
                        intercept, weights, mask)
    return Block(name, options.score, prepare=options)


def additive_regression(name: str, y: str, X=None, *, splines: dict, model: str = "linear", penalty=0.0,
                        intercept: bool = True, weights: str | None = None, mask=None) -> Block:
    """An additive model: linear terms for ``X`` and, for each covariate in ``splines``, its linear term and a
    penalized truncated power spline (module docstring), fitted as a ridge regression.

    Args:
        name: block name; parameters ``(Intercept)``, the ``X`` columns, then per spline covariate ``<column>`` and
            ``<column>:spline(<knot>)``.
        y: outcome column; X: covariates entering linearly (unpenalized unless ``penalty``).
        splines: {column: :class:`Spline` or a dict of its fields, e.g. ``{"knots": [1, 2, 3], "penalty": 5}``}.
        model: ``"linear"`` (default), ``"logistic"`` or ``"poisson"``.
        penalty: λ of the intercept and ``X`` terms (one number or one per column; default 0).
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (a sine curve by a natural cubic spline of three knots)::

        >>> import numpy as np, mestim
        >>> from estimators import additive_regression
        >>> rng = np.random.default_rng(5); x = rng.uniform(-2, 2, 200)
        >>> d = {"x": x, "y": np.sin(2 * x) + rng.normal(scale=0.3, size=200)}
        >>> res = mestim.fit(additive_regression("gam", "y", splines={"x": {"knots": [-1, 0, 1], "penalty": 1.0}}), d)
        >>> res.labels
        ('(Intercept)', 'x', 'x:spline(-1)', 'x:spline(0)')
    """
    if not isinstance(splines, dict) or not splines:
        raise SpecificationError(f"splines={splines!r}: give {{column: Spline(knots=...)}} for one or more columns")
    specs = []
    for column, spec in splines.items():
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - {f.name for f in dataclasses.fields(Spline)})
            if unknown:
                raise SpecificationError(f"splines[{column!r}]: unknown keys {unknown}; use knots, power, natural, "
                                         "penalty, normalized")
            spec = Spline(**spec)
        if not isinstance(spec, Spline):
            raise SpecificationError(f"splines[{column!r}]={spec!r}: give a Spline or a dict of its fields")
        specs.append((column, spec))
    options = Penalized(name, y, X, penalty, model, (2.0,), (1.0,), 0.0, None, intercept, weights, mask, tuple(specs))
    return Block(name, options.score, prepare=options)
