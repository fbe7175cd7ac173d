"""Average treatment effects of a binary treatment: IPW, AIPW and the g-formula, as blocks stacked on GLM blocks.

Each estimator is a block with three parameters: the counterfactual means μ₁ = E[Y(1)], μ₀ = E[Y(0)] and their
difference Δ = μ₁ − μ₀ (the ATE; ratios and odds ratios by :meth:`mestim.Result.delta`). The nuisance models are
ordinary blocks — a propensity model e(W) = P(A = 1 | W) (:func:`estimators.logistic`, or :func:`estimators.glm`
with a binomial family and any link) and an outcome model Q(A, X) = E[Y | A, X] (any :func:`estimators.glm`) —
that the estimator *reads* (a propensity model fitted in statsmodels comes in through
:func:`estimators.from_statsmodels`), so their estimation enters the sandwich (the stacked M-estimator of Lunceford &
Davidian 2004; delicatessen's ``ee_ipw``, ``ee_aipw``, ``ee_gformula``). With m_i = I(row i in the mask):

    IPW, Horvitz–Thompson   ψ = m (A Y/e − μ₁,   (1 − A) Y/(1 − e) − μ₀,   μ₁ − μ₀ − Δ)
    IPW, Hájek (default)    ψ = m (A (Y − μ₁)/e,  (1 − A)(Y − μ₀)/(1 − e),  μ₁ − μ₀ − Δ)
    AIPW                    ψ = m (A (Y − Q₁)/e + Q₁ − μ₁,  (1 − A)(Y − Q₀)/(1 − e) + Q₀ − μ₀,  μ₁ − μ₀ − Δ)
    g-formula               ψ = m (Q₁ − μ₁,  Q₀ − μ₀,  μ₁ − μ₀ − Δ)

where Q_a = Q(a, X_i) is the outcome model's prediction with the treatment set to a for every row (the design is
rebuilt with A := a, formulas keeping their coding: write interactions with the treatment in the formula,
``"~ a * w"``, since a precomputed product column would keep its observed values), and e = e(W_i) the propensity
model's. Hájek normalises each
arm's weights to sum to the sample size (it is the weighted mean of Y in each arm), which keeps the estimate inside
the outcome's range and is usually less variable than Horvitz–Thompson. IPW also takes *known* propensities (a
randomised trial; a column of P(A = 1 | W)) instead of a model: then no propensity block is stacked.

``truncate=(lo, hi)`` clips e to [lo, hi] (as delicatessen's ``truncate``): an estimator of a different, bounded
weight, not a fix for positivity violations; its derivative is zero where e is clipped, which the sandwich reflects.

AIPW is doubly robust: consistent when either the propensity or the outcome model is right (Robins, Rotnitzky &
Zhao 1994; Bang & Robins 2005). Its sandwich is valid in both cases because the nuisance models are stacked.

Example (a propensity model, then IPW; the same data give the g-formula with an outcome model)::

    >>> import numpy as np, mestim
    >>> from estimators import logistic, linear, ipw, gformula
    >>> rng = np.random.default_rng(0)
    >>> w = rng.normal(size=2000)
    >>> a = (rng.random(2000) < 1 / (1 + np.exp(-w))) * 1.0
    >>> d = {"w": w, "a": a, "y": 1.0 + 2.0 * a + w + rng.normal(size=2000)}
    >>> ps = logistic("ps", "a", ["w"])
    >>> res = mestim.fit([ps, ipw("ate", "y", "a", propensity=ps)], d)
    >>> round(float(res["ate:ATE"][0]), 2)
    2.04
    >>> om = linear("om", "y", ["a", "w"])
    >>> res = mestim.fit([om, gformula("gf", "a", outcome=om)], d)
    >>> round(float(res["gf:ATE"][0]), 2)  # = the coefficient of a in the linear model (no interaction)
    2.05
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mestim import Block, Prepared
from mestim.data import require_numeric
from mestim.errors import DataError, SpecificationError, check_choice

from .design import block_rows, clean_design, clean_in_mask, level_label
from .generalized_linear import GLMScore

IPW_ESTIMATORS = ("hajek", "horvitz-thompson")


@dataclasses.dataclass(frozen=True)
class _Model:
    """A stacked GLM block read by an estimator: its name (the keyword its θ arrives under) and its ψ."""

    name: str
    score: GLMScore


@dataclasses.dataclass(frozen=True)
class CausalScore:
    """ψ of the IPW, AIPW and g-formula blocks (module docstring); ``kind`` in {"ipw", "aipw", "gformula"}.

    Columns read (prefix ``{name}.``): ``A``, ``Y``, ``mask``; the propensity model's design ``W``/``Woff``
    (or known probabilities ``e``); the outcome model's designs with the treatment set, ``X1``/``X0``/``Xoff``.
    """

    name: str
    kind: str
    propensity: _Model | None = None  # None with IPW: known probabilities in column {name}.e
    outcome: _Model | None = None
    hajek: bool = True
    truncate: tuple[float, float] | None = None

    def _propensity(self, row, upstream):
        n = self.name
        if self.propensity is None:
            e = row[f"{n}.e"]
        else:
            e = self.propensity.score.mean(upstream[self.propensity.name], row[f"{n}.W"], row[f"{n}.Woff"])
        return e if self.truncate is None else jnp.clip(e, *self.truncate)

    def _predictions(self, row, upstream):
        beta, n = upstream[self.outcome.name], self.name
        return (self.outcome.score.mean(beta, row[f"{n}.X1"], row[f"{n}.Xoff"]),
                self.outcome.score.mean(beta, row[f"{n}.X0"], row[f"{n}.Xoff"]))

    def __call__(self, theta, row, **upstream):
        mu1, mu0, ate = theta[0], theta[1], theta[2]
        n = self.name
        m = row[f"{n}.mask"]
        if self.kind == "gformula":
            q1, q0 = self._predictions(row, upstream)
            return m * jnp.stack([q1 - mu1, q0 - mu0, mu1 - mu0 - ate])
        a, y = row[f"{n}.A"], row[f"{n}.Y"]
        e = self._propensity(row, upstream)
        w1, w0 = a / e, (1.0 - a) / (1.0 - e)  # inverse probability weights of the two arms
        if self.kind == "aipw":
            q1, q0 = self._predictions(row, upstream)
            arms = [w1 * (y - q1) + q1 - mu1, w0 * (y - q0) + q0 - mu0]
        elif self.hajek:
            arms = [w1 * (y - mu1), w0 * (y - mu0)]
        else:
            arms = [w1 * y - mu1, w0 * y - mu0]
        return m * jnp.stack(arms + [mu1 - mu0 - ate])


def _model(block, role: str, estimator: str, *, family: str | None = None, outcome_of: str | None = None):
    """The stacked GLM block behind ``role`` ('propensity' or 'outcome'), checked when the estimator is built."""
    # a GLM block, or a converted statsmodels model (its prepare has the same design interface)
    if not (isinstance(block, Block) and isinstance(block.psi, GLMScore) and hasattr(block.prepare, "design")):
        raise SpecificationError(
            f"{estimator}: {role}= must be a block from estimators.glm/logistic/linear/poisson or from_statsmodels "
            "(stacked in the same fit)"
            f"{' or the name of a column of known probabilities' if role == 'propensity' else ''}; got {block!r}")
    if family is not None and block.psi.family != family:
        raise SpecificationError(f"{estimator}: the {role} model '{block.name}' is a {block.psi.family} model; it must "
                                 f"be {family} (a model of P(A = 1 | W))")
    if outcome_of is not None and block.prepare.y != outcome_of:
        raise SpecificationError(f"{estimator}: the {role} model '{block.name}' models '{block.prepare.y}', not "
                                 f"'{outcome_of}'")
    return _Model(block.name, block.psi)


def _check_truncate(truncate, estimator):
    if truncate is None:
        return None
    try:
        lo, hi = (float(t) for t in truncate)
    except (TypeError, ValueError):
        raise SpecificationError(f"{estimator}: truncate={truncate!r} must be a pair (lo, hi)") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise SpecificationError(f"{estimator}: truncate={truncate!r} must satisfy 0 ≤ lo < hi ≤ 1")
    return lo, hi


class _CausalPrepare:
    """Host side of a causal block: treatment, outcome, mask, the nuisance models' designs on its rows."""

    def __init__(self, score: CausalScore, y, treatment, mask, propensity, outcome, values):
        self.score, self.y, self.treatment, self.mask = score, y, treatment, mask
        self.propensity, self.outcome, self.values = propensity, outcome, values

    def __call__(self, cols) -> Prepared:
        s, n = self.score, self.score.name
        m = block_rows(cols, self.mask, n)
        out = {f"{n}.mask": m.astype(float)}
        if s.kind != "gformula":
            a = clean_in_mask(require_numeric(cols, self.treatment, what="treatment"), m, self.treatment)
            bad = np.setdiff1d(np.unique(a[m]), [0.0, 1.0])
            if bad.size:
                raise DataError(f"block '{n}': treatment '{self.treatment}' takes values {bad[:5].tolist()} besides "
                                "0/1 on the rows it uses; recode it as 0/1")
            out[f"{n}.A"] = a
            out[f"{n}.Y"] = clean_in_mask(require_numeric(cols, self.y, what="outcome"), m, self.y)
            out.update(self._propensity_columns(cols, m))
        if s.outcome is not None:
            out.update(self._outcome_columns(cols, m))
        return Prepared(out, self._start(out, cols, m), self._labels(), (self._note(m),))

    def _propensity_columns(self, cols, m):
        n = self.score.name
        if isinstance(self.propensity, str):
            e = clean_in_mask(require_numeric(cols, self.propensity, what="propensity column"), m, self.propensity)
            bad = m & ((e <= 0) | (e >= 1))
            if bad.any():
                raise DataError(f"block '{n}': known propensities '{self.propensity}' must lie strictly between 0 "
                                f"and 1; {int(bad.sum())} row(s) do not (first: row {int(np.flatnonzero(bad)[0])})")
            return {f"{n}.e": np.where(m, e, 0.5)}
        design = self.propensity.prepare
        w, labels = design.design(cols)
        return {f"{n}.W": clean_design(cols, w, labels, m),
                f"{n}.Woff": np.where(m, design.offset_values(cols, m), self.score.propensity.score.safe_eta)}

    def _outcome_columns(self, cols, m):
        """The outcome model's design on this block's rows with the treatment set to each value (formulas keep
        the coding learnt from the observed data)."""
        n, design = self.score.name, self.outcome.prepare
        a1, a0 = self.values
        if self.treatment not in cols:
            raise DataError(f"treatment '{self.treatment}' is not in the data; available columns: {sorted(cols)}")
        at = {}
        for key, value in (("X1", a1), ("X0", a0)):
            counterfactual = {**cols, self.treatment: np.full(m.size, value, float)}
            x, labels = design.design(counterfactual, reference=cols)
            at[f"{n}.{key}"] = clean_design(counterfactual, x, labels, m)
        observed, _ = design.design(cols)
        if at[f"{n}.X1"].shape[1] != observed.shape[1] or np.allclose(at[f"{n}.X1"], at[f"{n}.X0"]):
            raise SpecificationError(f"block '{n}': the outcome model '{self.outcome.name}' does not use the "
                                     f"treatment '{self.treatment}' (its design is the same under both values)")
        at[f"{n}.Xoff"] = np.where(m, design.offset_values(cols, m), self.score.outcome.score.safe_eta)
        return at

    def _start(self, out, cols, m):
        """Unadjusted arm means (or the outcome's mean): the block is linear in (μ₁, μ₀, Δ), so Newton needs one
        step whatever the start."""
        n = self.score.name
        if self.score.kind == "gformula":
            y = require_numeric(cols, self.outcome.prepare.y, what="outcome")[m]
            level = float(np.mean(y[np.isfinite(y)])) if np.isfinite(y).any() else 0.0
            return np.array([level, level, 0.0])
        a, y = out[f"{n}.A"][m], out[f"{n}.Y"][m]
        mu1 = y[a == 1].mean() if (a == 1).any() else y.mean()
        mu0 = y[a == 0].mean() if (a == 0).any() else y.mean()
        return np.array([mu1, mu0, mu1 - mu0])

    def _labels(self):
        a1, a0 = (level_label(v) for v in self.values)
        return (f"E[Y({a1})]", f"E[Y({a0})]", "ATE")

    def _note(self, m):
        s = self.score
        what = {"ipw": f"IPW ({'Hájek' if s.hajek else 'Horvitz–Thompson'})", "aipw": "AIPW",
                "gformula": "g-formula"}[s.kind]
        parts = [f"{what} of treatment '{self.treatment}' over {int(m.sum())} rows"]
        if s.kind != "gformula":
            known = s.propensity is None
            parts.append(f"propensity {'known, column' if known else 'model'} "
                         f"'{self.propensity if known else s.propensity.name}'")
        if s.outcome is not None:
            parts.append(f"outcome model '{s.outcome.name}'")
        if s.truncate is not None:
            parts.append(f"propensities truncated to [{s.truncate[0]:g}, {s.truncate[1]:g}]")
        return "; ".join(parts)


def ipw(name: str, y: str, treatment: str, *, propensity, estimator: str = "hajek", mask=None,
        truncate=None) -> Block:
    """Inverse probability weighting estimator of E[Y(1)], E[Y(0)] and the ATE (module docstring).

    Args:
        y: outcome column; treatment: 0/1 treatment column.
        propensity: a stacked binomial GLM block modelling ``treatment`` (e.g. ``logistic("ps", "a", W)``, or
            ``from_statsmodels`` of a fitted logistic model), or the name of a column of known P(A = 1 | W).
        estimator: ``"hajek"`` (normalised weights, default) or ``"horvitz-thompson"``.
        mask: rows averaged over (and weighted); truncate: clip e to (lo, hi).

    Example (the ATE by inverse probability weighting with a stacked propensity model; truth 2)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(0); w = rng.normal(size=1000)
        >>> a = (rng.random(1000) < 1 / (1 + np.exp(-w))) * 1.0
        >>> d = {"w": w, "a": a, "y": 1.0 + 2.0 * a + w + rng.normal(size=1000)}
        >>> from estimators import logistic, ipw
        >>> ps = logistic("ps", "a", ["w"])
        >>> res = mestim.fit([ps, ipw("ate", "y", "a", propensity=ps)], d)
        >>> np.round(res["ate"], 3)
        array([2.949, 0.95 , 1.999])
    """
    check_choice("estimator", estimator, IPW_ESTIMATORS)
    ps = None if isinstance(propensity, str) else _model(propensity, "propensity", "ipw", family="binomial",
                                                         outcome_of=treatment)
    score = CausalScore(name, "ipw", ps, None, estimator == "hajek", _check_truncate(truncate, "ipw"))
    return Block(name, score, reads=() if ps is None else (ps.name,),
                 prepare=_CausalPrepare(score, y, treatment, mask, propensity, None, (1, 0)))


def aipw(name: str, y: str, treatment: str, *, propensity: Block, outcome: Block, mask=None,
         truncate=None) -> Block:
    """Augmented IPW (doubly robust) estimator of E[Y(1)], E[Y(0)] and the ATE (module docstring).

    Args:
        propensity: a stacked binomial GLM block modelling ``treatment``.
        outcome: a stacked GLM block modelling ``y`` whose design includes ``treatment`` (interactions allowed,
            e.g. ``formula="~ a * (w1 + w2)"``, which is a separate model per arm).

    Example (the doubly robust ATE; truth 2)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(0); w = rng.normal(size=1000)
        >>> a = (rng.random(1000) < 1 / (1 + np.exp(-w))) * 1.0
        >>> d = {"w": w, "a": a, "y": 1.0 + 2.0 * a + w + rng.normal(size=1000)}
        >>> from estimators import aipw, linear, logistic
        >>> ps, om = logistic("ps", "a", ["w"]), linear("om", "y", ["a", "w"])
        >>> res = mestim.fit([ps, om, aipw("dr", "y", "a", propensity=ps, outcome=om)], d)
        >>> np.round(res["dr"], 3)
        array([2.898, 0.89 , 2.008])
    """
    ps = _model(propensity, "propensity", "aipw", family="binomial", outcome_of=treatment)
    om = _model(outcome, "outcome", "aipw", outcome_of=y)
    score = CausalScore(name, "aipw", ps, om, True, _check_truncate(truncate, "aipw"))
    return Block(name, score, reads=(ps.name, om.name),
                 prepare=_CausalPrepare(score, y, treatment, mask, propensity, outcome, (1, 0)))


def gformula(name: str, treatment: str, *, outcome: Block, values=(1, 0), mask=None) -> Block:
    """Parametric g-formula (standardisation): the mean over the rows in ``mask`` of the outcome model's
    prediction with ``treatment`` set to ``values[0]`` and to ``values[1]`` (any two values: a dose works too).

    Args:
        outcome: a stacked GLM block whose design includes ``treatment``.

    Example (without an interaction the ATE is the outcome model's coefficient of a)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(0); w = rng.normal(size=1000)
        >>> a = (rng.random(1000) < 1 / (1 + np.exp(-w))) * 1.0
        >>> d = {"w": w, "a": a, "y": 1.0 + 2.0 * a + w + rng.normal(size=1000)}
        >>> from estimators import gformula, linear
        >>> om = linear("om", "y", ["a", "w"])
        >>> res = mestim.fit([om, gformula("gf", "a", outcome=om)], d)
        >>> bool(np.isclose(res["gf:ATE"][0], res["om:a"][0])), np.round(res["gf"], 3)
        (True, array([2.9  , 0.918, 1.982]))
    """
    om = _model(outcome, "outcome", "gformula")
    try:
        a1, a0 = (float(v) for v in values)
    except (TypeError, ValueError):
        raise SpecificationError(f"gformula: values={values!r} must be two numbers (treated, reference)") from None
    score = CausalScore(name, "gformula", None, om)
    return Block(name, score, reads=(om.name,),
                 prepare=_CausalPrepare(score, outcome.prepare.y, treatment, mask, None, outcome, (a1, a0)))
