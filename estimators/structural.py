r"""Structural models of a binary treatment A: marginal structural models by inverse probability weighting, and
structural nested mean models by g-estimation, stacked on a propensity model e(W) = P(A = 1 | W).

The propensity model is an ordinary stacked binomial GLM block (:func:`estimators.logistic`), which these blocks
*read*, so its estimation enters the sandwich. With m_i = I(row i in the mask)·w_i (w_i the block's ``weights``):

:func:`ipw_msm` — a marginal structural model E[Y(a) | V] = g⁻¹(v(a)ᵀα) for the counterfactual outcome (Robins,
Hernán & Brumback 2000; delicatessen's ``ee_ipw_msm``): a GLM of Y on the design V (which includes A) weighted by
the inverse probability of the treatment received,

    ψ_i = m_i · [A_i/e(W_i) + (1 − A_i)/(1 − e(W_i))] · (Y_i − μ_i) μ'(η_i)/V(μ_i) · v_i,     η_i = v_iᵀα,

with the families and links of :func:`estimators.glm`. With V = (1, A) and the identity link, α = (E[Y(0)], ATE) of
the Hájek IPW estimator (:func:`estimators.ipw`).

:func:`g_estimation` — a structural nested mean model E[Y(a) − Y(0) | A = a, V] = a·vᵀφ (``model="linear"``) or
E[Y(a) | A = a, V]/E[Y(0) | A = a, V] = exp(a·vᵀφ) (``model="poisson"``, a multiplicative model) by g-estimation
(Robins 1994; Vansteelandt & Joffe 2014; delicatessen's ``ee_gestimation_snmm``). The blipped-down outcome
H(φ) = Y − A vᵀφ (or Y exp(−A vᵀφ)) is independent of A given W under no unmeasured confounding, so

    ψ_i = m_i ( (A_i − e(W_i)) (H_i(φ) − ĥ(X_i)) v_i,    [ m_i (H_i(φ) − ĥ(X_i; β)) X_i ] ),

where ĥ is an optional working model E[H(φ) | X] = X β (linear; exp(Xβ) for ``"poisson"``) stacked in the same
block, which makes the estimator doubly robust (consistent if either e or ĥ is right); without it ĥ = 0.

Example (a linear SNMM with effect 1.5 + 0.5·v, confounded by w)::

    >>> import numpy as np, mestim
    >>> from estimators import logistic, g_estimation, ipw_msm
    >>> rng = np.random.default_rng(6)
    >>> w, v = rng.normal(size=(2, 4000))
    >>> a = (rng.random(4000) < 1 / (1 + np.exp(-w))) * 1.0
    >>> d = {"w": w, "v": v, "a": a, "y": 1 + w + a * (1.5 + 0.5 * v) + rng.normal(size=4000)}
    >>> ps = logistic("ps", "a", ["w"])
    >>> res = mestim.fit([ps, g_estimation("snmm", "y", "a", ["v"], propensity=ps, X=["w", "v"])], d)
    >>> np.round(res["snmm"], 2)
    array([1.45, 0.43, 1.03, 1.02, 0.04])
    >>> res.labels[2:4]
    ('snmm:psi:(Intercept)', 'snmm:psi:v')
    >>> res = mestim.fit([ps, ipw_msm("msm", "y", "a", formula="~ a * v", propensity=ps)], d)
    >>> np.round(res["msm"], 2)                       # E[Y(a) | v] = 1 + a (1.5 + 0.5 v): (1, 1.5, 0, 0.5)
    array([1.04, 1.47, 0.08, 0.37])

References:
    Robins JM, Hernán MA & Brumback B (2000). Marginal structural models and causal inference in epidemiology.
    Epidemiology 11:550–560.
    Robins JM (1994). Correcting for non-compliance in randomized trials using structural nested mean models.
    Commun Stat Theory Methods 23:2379–2412.
    Vansteelandt S & Joffe M (2014). Structural nested models and G-estimation: the partially realized promise.
    Stat Sci 29:707–731.
    Zivich PN et al. (2022). Delicatessen: M-estimation in Python. arXiv:2203.11300.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.errors import DataError, SpecificationError

from .design import clean_design, design_matrix
from .generalized_linear import FAMILIES, LINKS, GLMScore, resolve
from .options import (check_choice, check_number, names, numeric_in_mask, stacked_binomial, stacked_design,
                      weighted_design)

__all__ = ["ipw_msm", "g_estimation"]

SNMM_MODELS = ("linear", "poisson")


def _treatment(cols, name, treatment, m):
    a = numeric_in_mask(cols, treatment, m, what="treatment")
    bad = np.setdiff1d(np.unique(a[m]), [0.0, 1.0])
    if bad.size:
        raise DataError(f"block '{name}': treatment '{treatment}' takes values {bad[:5].tolist()} besides 0/1")
    return a


@dataclasses.dataclass(frozen=True)
class MSMScore:
    """ψ of :func:`ipw_msm` (module docstring). Columns read: ``{name}.V``, ``.Y``, ``.A``, ``.W``, ``.Woff``,
    ``.mask``."""

    name: str
    propensity: str
    ps_score: GLMScore
    msm: GLMScore
    truncate: tuple[float, float] | None = None

    def __call__(self, alpha, row, **upstream):
        n = self.name
        e = self.ps_score.mean(upstream[self.propensity], row[f"{n}.W"], row[f"{n}.Woff"])
        if self.truncate is not None:
            e = jnp.clip(e, *self.truncate)
        a = row[f"{n}.A"]
        weight = a / e + (1.0 - a) / (1.0 - e)
        v = row[f"{n}.V"]
        return row[f"{n}.mask"] * weight * self.msm.quasi_residual(v @ alpha, row[f"{n}.Y"], None) * v


@dataclasses.dataclass(frozen=True)
class IPWMSM:
    """The options of :func:`ipw_msm`, checked on construction; ``__call__`` prepares the columns."""

    name: str
    y: str
    treatment: str
    V: object
    propensity: Block
    family: str = "gaussian"
    link: str | None = None
    alpha: float | None = None
    truncate: tuple[float, float] | None = None
    formula: str | None = None
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        family, link = resolve(self.family, self.link)
        object.__setattr__(self, "link", link)
        if (family == "negative_binomial") != (self.alpha is not None):
            raise SpecificationError("ipw_msm: alpha= (the negative binomial's dispersion, held fixed) is required "
                                     f"for family='negative_binomial' and only there; family={family!r}")
        if self.truncate is not None:
            lo, hi = (check_number("truncate", float(t), low=0.0, high=1.0, inclusive=True) for t in self.truncate)
            if not lo < hi:
                raise SpecificationError(f"truncate={self.truncate!r}: give (lo, hi) with lo < hi")
            object.__setattr__(self, "truncate", (lo, hi))
        stacked_binomial(self.propensity, self.treatment, "ipw_msm")

    @property
    def score(self) -> MSMScore:
        ps_name, ps_score = stacked_binomial(self.propensity, self.treatment, "ipw_msm")
        msm = GLMScore(self.name, self.family, self.link, self.alpha)
        return MSMScore(self.name, ps_name, ps_score, msm, self.truncate)

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, v, labels = weighted_design(cols, n, self.V, self.formula, True, self.mask, self.weights)
        if self.treatment not in labels and not any(self.treatment in lab for lab in labels):
            raise SpecificationError(f"ipw_msm '{n}': the structural model's design {labels} does not include the "
                                     f"treatment '{self.treatment}'")
        a = _treatment(cols, n, self.treatment, m)
        y = numeric_in_mask(cols, self.y, m, what="outcome")
        msm = self.score.msm
        y = np.where(m, y, LINKS[msm.link].inverse(msm.safe_eta, np))
        # start: least squares of g(μ₀) on v, μ₀ the family's starting mean (as estimators.glm starts)
        with np.errstate(all="ignore"):
            target = LINKS[msm.link].link(FAMILIES[self.family].start_mean(y[m]))
        init, *_ = np.linalg.lstsq(v[m], np.where(np.isfinite(target), target, 0.0), rcond=None)
        out = {f"{n}.V": v, f"{n}.Y": y, f"{n}.A": a, f"{n}.mask": mult,
               **stacked_design(n, self.propensity, cols, m)}
        note = (f"IPW marginal structural model ({self.family}, {self.link} link) of {self.y} on {labels}, "
                f"propensity model '{self.propensity.name}', {int(m.sum())} rows")
        return Prepared(out, init, tuple(labels), (note,))


def ipw_msm(name: str, y: str, treatment: str, V=None, *, propensity: Block, family: str = "gaussian",
            link: str | None = None, alpha: float | None = None, truncate=None, formula: str | None = None,
            weights: str | None = None, mask=None) -> Block:
    """A marginal structural model fitted by inverse probability of treatment weighting (module docstring).

    Args:
        name: block name; parameters labelled by the structural model's design columns.
        y: outcome column; treatment: the 0/1 treatment A.
        V, formula: the structural model's design (an intercept first), which must include ``treatment``, e.g.
            ``V=["a"]`` or ``formula="~ a * v"`` (effect modification by v).
        propensity: a stacked binomial GLM block of ``treatment`` (e.g. ``estimators.logistic("ps", "a", W)``).
        family, link: the structural model's GLM family and link (:func:`estimators.glm`); alpha: the negative
            binomial's fixed dispersion.
        truncate: clip e(W) to (lo, hi); weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (E[Y(a) | v] = 1 + a (1.5 + 0.5 v), weighted by a stacked propensity model)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(6); w, v = rng.normal(size=(2, 1000))
        >>> a = (rng.random(1000) < 1 / (1 + np.exp(-w))) * 1.0
        >>> d = {"w": w, "v": v, "a": a, "y": 1 + w + a * (1.5 + 0.5 * v) + rng.normal(size=1000)}
        >>> from estimators import logistic
        >>> ps = logistic("ps", "a", ["w"])
        >>> from estimators import ipw_msm
        >>> np.round(mestim.fit([ps, ipw_msm("msm", "y", "a", formula="~ a * v", propensity=ps)], d)["msm"], 2)
        array([0.99, 1.66, 0.2 , 0.42])
    """
    options = IPWMSM(name, y, treatment, V, propensity, family, link, alpha, truncate, formula, weights, mask)
    return Block(name, options.score, reads=(propensity.name,), prepare=options)


@dataclasses.dataclass(frozen=True)
class SNMMScore:
    """ψ of :func:`g_estimation` (module docstring): φ (``k`` values), then β of the working model of H when
    ``outcome`` is True. Columns read: ``{name}.V``, ``.Y``, ``.A``, ``.W``, ``.Woff``, ``.mask``, ``.X``."""

    name: str
    propensity: str
    ps_score: GLMScore
    model: str
    k: int
    outcome: bool

    def __call__(self, theta, row, **upstream):
        n = self.name
        phi, beta = theta[:self.k], theta[self.k:]
        e = self.ps_score.mean(upstream[self.propensity], row[f"{n}.W"], row[f"{n}.Woff"])
        a, y, v, m = row[f"{n}.A"], row[f"{n}.Y"], row[f"{n}.V"], row[f"{n}.mask"]
        blip = a * (v @ phi)
        h = y - blip if self.model == "linear" else y * jnp.exp(-blip)
        if not self.outcome:
            return m * (a - e) * h * v
        x = row[f"{n}.X"]
        fitted = x @ beta if self.model == "linear" else jnp.exp(x @ beta)
        return m * jnp.concatenate([(a - e) * (h - fitted) * v, (h - fitted) * x])


@dataclasses.dataclass(frozen=True)
class GEstimation:
    """The options of :func:`g_estimation`, checked on construction; ``__call__`` prepares the columns."""

    name: str
    y: str
    treatment: str
    V: tuple[str, ...]
    propensity: Block
    X: tuple[str, ...] | None = None
    model: str = "linear"
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        check_choice("model", self.model, SNMM_MODELS)
        object.__setattr__(self, "V", names(self.V))
        if self.X is not None:
            object.__setattr__(self, "X", names(self.X))
        stacked_binomial(self.propensity, self.treatment, "g_estimation")

    def score(self, k: int) -> SNMMScore:
        ps_name, ps_score = stacked_binomial(self.propensity, self.treatment, "g_estimation")
        return SNMMScore(self.name, ps_name, ps_score, self.model, k, self.X is not None)

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, v, labels = weighted_design(cols, n, self.V, None, True, self.mask, self.weights)
        a = _treatment(cols, n, self.treatment, m)
        y = numeric_in_mask(cols, self.y, m, what="outcome")
        if self.model == "poisson" and (y[m] < 0).any():
            raise DataError(f"block '{n}': a multiplicative (poisson) SNMM needs an outcome ≥ 0; '{self.y}' has "
                            "negative values")
        out = {f"{n}.V": v, f"{n}.Y": y, f"{n}.A": a, f"{n}.mask": mult,
               **stacked_design(n, self.propensity, cols, m)}
        # start: least squares of Y on (A·V, X), the blip's coefficients as φ (log scale for the poisson model)
        target = y[m] if self.model == "linear" else np.log(np.maximum(y[m], 0.5))
        plabels = tuple(f"psi:{lab}" for lab in labels)
        parts = [v[m] * a[m][:, None]]
        if self.X is not None:
            x, xlabels = design_matrix(cols, list(self.X))
            out[f"{n}.X"] = clean_design(cols, x, xlabels, m)
            parts.append(out[f"{n}.X"][m])
            plabels += tuple(f"outcome:{lab}" for lab in xlabels)
        else:
            parts.append(np.ones((int(m.sum()), 1)))
        coef, *_ = np.linalg.lstsq(np.hstack(parts), target, rcond=None)
        init = coef if self.X is not None else coef[:v.shape[1]]
        note = (f"g-estimation of a {self.model} structural nested mean model of {self.y}, effect modifiers "
                f"{labels}, propensity model '{self.propensity.name}'"
                + ("" if self.X is None else f", outcome model on {list(self.X)}") + f", {int(m.sum())} rows")
        return Prepared(out, init, plabels, (note,), psi=self.score(v.shape[1]))


def g_estimation(name: str, y: str, treatment: str, V=None, *, propensity: Block, X=None, model: str = "linear",
                 weights: str | None = None, mask=None) -> Block:
    """g-estimation of a structural nested mean model (module docstring).

    Args:
        name: block name; parameters ``psi:<column>`` (the blip's coefficients φ: the effect is A·(1, V)ᵀφ, on the
            log scale for ``"poisson"``), then ``outcome:<column>`` of the working model of H(φ) when ``X`` is given.
        y: outcome column; treatment: the 0/1 treatment A; V: effect modifiers (an intercept first).
        propensity: a stacked binomial GLM block of ``treatment``.
        X: covariates of a working model of the blipped-down outcome (doubly robust); None: no such model.
        model: ``"linear"`` (additive effects) or ``"poisson"`` (multiplicative effects, outcome ≥ 0).
        weights: column of row weights w_i ≥ 0 multiplying ψ; mask: rows used.

    Example (a constant effect 1.5, made doubly robust by a working model of E[H(ψ) | w] = 1 + w)::

        >>> import numpy as np, mestim
        >>> from estimators import g_estimation, logistic
        >>> rng = np.random.default_rng(7); w = rng.normal(size=1000)
        >>> a = (rng.random(1000) < 1 / (1 + np.exp(-w))) * 1.0
        >>> d = {"w": w, "a": a, "y": 1 + w + 1.5 * a + rng.normal(size=1000)}
        >>> ps = logistic("ps", "a", ["w"])
        >>> res = mestim.fit([ps, g_estimation("snmm", "y", "a", propensity=ps, X=["w"])], d)
        >>> np.round(res["snmm"], 2), res.labels[2:]
        (array([1.53, 0.98, 1.03]), ('snmm:psi:(Intercept)', 'snmm:outcome:(Intercept)', 'snmm:outcome:w'))
    """
    options = GEstimation(name, y, treatment, V, propensity, X, model, weights, mask)
    return Block(name, None, reads=(propensity.name,), prepare=options)
