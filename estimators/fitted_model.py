"""Estimating functions from a fitted statsmodels model (geex's ``grab_psiFUN``): an existing analysis, stacked.

``from_statsmodels(name, fitted)`` reads a fitted statsmodels GLM (or OLS/WLS, Logit, Probit, Poisson) and
returns a block with the same estimating function, parameters and labels: the GLM quasi-score of
:mod:`estimators.generalized_linear`,

    ψ = v_i (y_i − μ_i) μ'(η_i)/V(μ_i) x_i,    η_i = x_iᵀβ + offset_i + log(exposure_i),

for the model's family and link, on the model's own design matrix ``exog``, outcome ``endog``, offset and
exposure, with v_i its ``var_weights`` (binomial: × the number of trials of a two-column outcome; WLS: its
``weights``). Its θ̂ is the statsmodels estimate and its sandwich is statsmodels' ``cov_type="HC0"``; stacked
under a block of yours that reads it (``reads=(name,)``), the model's uncertainty flows into yours.

What is not in ψ:

- **Frequency weights** are rows counted several times, i.e. :func:`mestim.fit`'s ``weights=``: pass
  ``weights=fitted.model.freq_weights`` to the fit (the block's check warns when θ̂ then differs from the
  statsmodels estimate, the sign of forgotten weights or different rows).
- **Rows.** The block uses the model's arrays, row for row, so the table given to :func:`mestim.fit` (read by the
  other blocks) must hold the same rows in the same order: those statsmodels kept (a formula drops rows with
  missing values: pass ``data.loc[fitted.model.data.row_labels]``). Columns of the table named like the model's
  outcome or covariates are compared with the model's arrays, so misaligned rows are caught.
- **Families and links** outside :mod:`estimators.generalized_linear` (Tweedie, the negative binomial link, power
  links other than ±1, ±2, ½) and models other than those above are refused with the list of what is supported. The
  negative binomial GLM family keeps its fixed α; gamma gives β only (statsmodels' GLM does not estimate a shape).

Example (a statsmodels logistic fit, then a standardised risk read from it by a user block)::

    >>> import jax, jax.numpy as jnp, numpy as np, pandas as pd, statsmodels.api as sm, mestim
    >>> from estimators import from_statsmodels
    >>> rng = np.random.default_rng(2)
    >>> df = pd.DataFrame({"x": rng.normal(size=500)})
    >>> df["y"] = (rng.random(500) < 1 / (1 + np.exp(-(0.3 + df.x)))) * 1.0
    >>> fitted = sm.GLM(df.y, sm.add_constant(df[["x"]]), family=sm.families.Binomial()).fit()
    >>> model = from_statsmodels("lg", fitted)
    >>> risk = mestim.Block("risk", lambda t, r, lg: jnp.atleast_1d(jax.nn.sigmoid(lg[0] + lg[1] * r["x"]) - t[0]),
    ...                     init=[0.5], reads=("lg",))
    >>> res = mestim.fit([model, risk], df)
    >>> bool(np.allclose(res["lg"], fitted.params, rtol=1e-8)), res.labels[:2]
    (True, ('lg:const', 'lg:x'))
"""

from __future__ import annotations

import numpy as np

from mestim import Block, Prepared
from mestim.constants import partial
from mestim.data import check_finite
from mestim.errors import DataError, SpecificationError

from .generalized_linear import FAMILIES, PROBABILITY_LINKS, GLMScore, separation_check

# statsmodels class names → mestim names
SM_FAMILIES = {"Gaussian": "gaussian", "Binomial": "binomial", "Poisson": "poisson", "Gamma": "gamma",
               "InverseGaussian": "inverse_gaussian", "NegativeBinomial": "negative_binomial"}
SM_LINKS = {"Identity": "identity", "Log": "log", "Logit": "logit", "Probit": "probit", "CLogLog": "cloglog",
            "LogLog": "loglog", "Cauchy": "cauchit", "InversePower": "inverse", "InverseSquared": "inverse_squared",
            "Sqrt": "sqrt"}
SM_POWERS = {1.0: "identity", 0.5: "sqrt", -1.0: "inverse", -2.0: "inverse_squared"}  # links.Power(p)
SM_MODELS = {"OLS": ("gaussian", "identity"), "WLS": ("gaussian", "identity"), "Logit": ("binomial", "logit"),
             "Probit": ("binomial", "probit"), "Poisson": ("poisson", "log")}
AGREEMENT = 1e-3  # θ̂ further than this many statsmodels standard errors from its estimate: different rows/weights


def _link_name(link) -> str:
    cls = type(link).__name__
    if cls in SM_LINKS:
        return SM_LINKS[cls]
    if cls == "Power" and float(link.power) in SM_POWERS:
        return SM_POWERS[float(link.power)]
    raise SpecificationError(f"from_statsmodels: the link {cls} is not supported; supported links: "
                             f"{sorted(SM_LINKS)} and Power with power in {sorted(SM_POWERS)}")


def _specification(model):
    """(family, link, fixed α or None, prior weights v) of a statsmodels model."""
    kind = type(model).__name__
    n = len(model.endog)
    if kind == "GLM":
        fam = type(model.family).__name__
        if fam not in SM_FAMILIES:
            raise SpecificationError(f"from_statsmodels: the GLM family {fam} is not supported; supported families: "
                                     f"{sorted(SM_FAMILIES)}")
        family, link = SM_FAMILIES[fam], _link_name(model.family.link)
        if link not in FAMILIES[family].links:
            raise SpecificationError(f"from_statsmodels: the {family} family with the {link} link is not supported; "
                                     f"its links: {list(FAMILIES[family].links)}")
        prior = np.asarray(model.var_weights, float) * np.asarray(getattr(model, "n_trials", np.ones(n)), float)
        alpha = float(model.family.alpha) if family == "negative_binomial" else None
        return family, link, alpha, prior
    if kind in SM_MODELS:
        weights = np.asarray(getattr(model, "weights", 1.0), float) * np.ones(n)  # WLS: prior weights in ψ
        return (*SM_MODELS[kind], None, weights)
    raise SpecificationError(f"from_statsmodels: a fitted {kind} is not supported; supported models: GLM, "
                             f"{sorted(SM_MODELS)} (fitted results, e.g. sm.GLM(...).fit())")


def _offset(model, n) -> np.ndarray:
    """offset + log(exposure) (statsmodels stores the exposure's logarithm)."""
    total = np.zeros(n)
    for part in ("offset", "exposure"):
        value = getattr(model, part, None)
        if value is not None:
            total = total + np.asarray(value, float)
    return total


class FittedModelDesign:
    """The host side of a converted model: the model's own arrays as the block's columns (``prepare``), and the
    design interface of :class:`estimators.generalized_linear.GLMDesign` (``design``, ``offset_values``, ``y``), so
    that IPW and AIPW take the block as their propensity model. The design cannot be rebuilt under an intervention (A := a):
    for a g-formula or AIPW outcome model use :func:`estimators.glm` with a formula."""

    def __init__(self, score, model, exog, endog, offset, prior, labels, params, source):
        self.score, self.model, self.exog, self.endog, self.offset = score, model, exog, endog, offset
        self.prior, self.labels, self.params, self.source = prior, labels, params, source
        self.y = str(model.endog_names)

    def _check_rows(self, cols):
        where = partial(cols)
        if where is not None:  # the block holds the model's arrays of all its rows, row for row
            raise SpecificationError(
                f"block '{self.score.name}' comes from a {self.source} and holds its {len(self.endog)} rows, so "
                f"{where} it cannot be matched to part of the rows: fit it in memory (mestim.fit without devices=), "
                "or build the model with estimators.glm on the streamed or distributed rows")
        rows, n = next(iter(cols.values())).shape[0], len(self.endog)
        if rows != n:
            raise DataError(
                f"block '{self.score.name}' comes from a {self.source} fitted on {n} rows, but the data have {rows}; "
                "give fit() the rows statsmodels used, in its order (a formula drops rows with missing values: "
                "data.loc[fitted.model.data.row_labels])")
        _compare_columns(self.score.name, cols, self.model, self.exog, self.endog, self.labels)

    def design(self, cols, reference=None):
        if reference is not None:
            raise SpecificationError(
                f"block '{self.score.name}' comes from a {self.source}, whose design cannot be rebuilt with the "
                "treatment set to a value; build the outcome model with estimators.glm (a formula) instead")
        self._check_rows(cols)
        return self.exog, list(self.labels)

    def offset_values(self, cols, m):
        return np.where(m, self.offset, 0.0)

    def __call__(self, cols) -> Prepared:
        self._check_rows(cols)
        name, s = self.score.name, self.score
        for values, what in ((self.exog, "design"), (self.endog, "outcome"), (self.offset, "offset"),
                             (self.prior, "weights")):
            check_finite(values, f"{name} {what}")
        note = (f"{self.source}: {len(self.labels)} parameter(s), {len(self.endog)} rows"
                + (f", α fixed at {s.alpha:g}" if s.alpha is not None else ""))
        return Prepared({f"{name}.X": self.exog, f"{name}.y": self.endog, f"{name}.mask": self.prior,
                         f"{name}.offset": self.offset}, self.params.copy(), self.labels, (note,))


def from_statsmodels(name: str, fitted) -> Block:
    """A block with the estimating function, parameters and labels of a fitted statsmodels model (module
    docstring). ``fitted``: a results object (``sm.GLM(...).fit()``, ``sm.OLS(...).fit()``, ``sm.Logit(...).fit()``, …).

    Example (a fitted statsmodels OLS as a block: the same coefficients)::

        >>> import numpy as np, statsmodels.api as sm, mestim
        >>> from estimators import from_statsmodels
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> y = 1 + 2 * x + rng.normal(size=300)
        >>> fitted = sm.OLS(y, sm.add_constant(x)).fit()
        >>> res = mestim.fit(from_statsmodels("ols", fitted), {"const": np.ones(300), "x1": x, "y": y})
        >>> bool(np.allclose(res.theta[:2], fitted.params)), res.labels[:2]
        (True, ('const', 'x1'))
    """
    model = getattr(fitted, "model", None)
    if model is None or not hasattr(fitted, "params"):
        raise SpecificationError(f"from_statsmodels: expected fitted statsmodels results (the object .fit() "
                                 f"returns), got {type(fitted).__name__}")
    family, link, alpha, prior = _specification(model)
    exog, endog = np.asarray(model.exog, float), np.asarray(model.endog, float)
    if endog.ndim != 1:
        raise SpecificationError(f"from_statsmodels: an outcome of shape {endog.shape} is not supported")
    n, k = exog.shape
    labels = tuple(str(s) for s in model.exog_names)
    params, bse = np.asarray(fitted.params, float), np.asarray(fitted.bse, float)
    offset = _offset(model, n)
    score = GLMScore(name, family, link, alpha, shape=False)
    source = f"statsmodels {type(model).__name__} ({family}, {link} link) of {model.endog_names}"

    design = FittedModelDesign(score, model, exog, endog, offset, prior, labels, params, source)
    separation = separation_check(score, design) if family == "binomial" and link in PROBABILITY_LINKS else None

    def check(theta, cols):
        warnings = separation(theta, cols) if separation is not None else []
        gap = np.abs(theta - params) / np.where(bse > 0, bse, 1.0)
        if np.max(gap) > AGREEMENT:
            j = int(np.argmax(gap))
            weights = np.asarray(getattr(model, "freq_weights", np.ones(n)), float)
            hint = (" The model has frequency weights: pass weights=fitted.model.freq_weights to fit()."
                    if np.any(weights != 1) else " Check that fit() gets the same rows and weights as statsmodels.")
            warnings.append(f"block '{name}': θ̂ differs from the {source} estimate by {gap[j]:.3g} of its standard "
                            f"errors at '{labels[j]}' ({theta[j]:.6g} against {params[j]:.6g}).{hint}")
        return warnings

    return Block(name, score, prepare=design, check=check)


def _compare_columns(name, cols, model, exog, endog, labels):
    """Columns of the table named like the model's outcome or covariates must equal the model's arrays."""
    pairs = [(str(model.endog_names), endog)] + [(lab, exog[:, j]) for j, lab in enumerate(labels)]
    for col, values in pairs:
        data = cols.get(col)
        if data is None or data.ndim != 1 or data.dtype.kind != "f":
            continue
        differ = ~np.isclose(data, values, rtol=1e-12, atol=0, equal_nan=True)
        if differ.any():
            row = int(np.flatnonzero(differ)[0])
            raise DataError(f"block '{name}': column '{col}' of the data differs from the statsmodels model's at row "
                            f"{row} ({data[row]:.6g} against {values[row]:.6g}): fit() must get the rows statsmodels "
                            "used, in the same order")

