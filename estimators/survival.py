r"""Parametric survival models, accelerated failure time models, and their predictions, as blocks.

Observed data: a time t_i = min(T_i, C_i) > 0 and an event indicator δ_i = I(T_i ≤ C_i) (right censoring). A model
with hazard h(t; θ) and cumulative hazard H(t; θ), S = exp(−H), has the log-likelihood contribution

    ℓ_i(θ) = δ_i log h(t_i; θ) − H(t_i; θ),

and each block's estimating function is its score, ψ_i = m_i ∂ℓ_i/∂θ (the root is the maximum likelihood
estimate; the sandwich is the robust covariance, R's ``sandwich(survreg(...))``), with m_i = I(row i in the mask)·w_i
and w_i the block's ``weights`` (1 by default). The score is autodiff's gradient of ℓ_i, so each model is written
once, as its hazard; its Jacobian (the bread) is autodiff's too.

:func:`parametric_survival` (delicatessen's ``ee_survival_model``; parameters on their natural scale):

==============  ============  ==========================  ==================================
distribution    θ             h(t)                        H(t)
==============  ============  ==========================  ==================================
exponential     λ             λ                           λ t
weibull         λ, γ          λ γ t^(γ−1)                 λ t^γ
gompertz        λ, γ          λ exp(γ t)                  (λ/γ)(exp(γ t) − 1)
==============  ============  ==========================  ==================================

:func:`aft` (accelerated failure time; delicatessen's ``ee_aft``, R's ``survreg``): log T = xᵀβ + σ ε, so with
z = (log t − xᵀβ)/σ the hazard is h(t | x) = h_ε(z)/(σ t) and H(t | x) = H_ε(z), where for ε

==============  ======================  =======================  ===========================
distribution    h_ε(z)                  H_ε(z)                   T | x
==============  ======================  =======================  ===========================
exponential     exp(z)                  exp(z)                   exponential (σ = 1 fixed)
weibull         exp(z)                  exp(z)                   Weibull, shape 1/σ
log-logistic    expit(z)                log(1 + exp(z))          log-logistic, shape 1/σ
log-normal      φ(z)/Φ(−z)              −log Φ(−z)               log-normal
==============  ======================  =======================  ===========================

The parameters are β (labelled by the design's columns) and log σ (``log(scale)``; delicatessen's last parameter
is −log σ, R's ``survreg`` reports σ as ``scale``). In R's Weibull terms the shape is 1/σ and the scale exp(xᵀβ).

:func:`survival_predictions` stacks, for a fitted model, S(t), h(t) and the restricted mean survival time
RMST(τ) = ∫₀^τ S(t) dt at given times (at a covariate profile ``at`` for an AFT model). Each prediction p is a
parameter with the estimating function ψ_i = m_i (g(θ_model) − p), so the delta method is the sandwich of the
stack. RMST is integrated by tanh–sinh quadrature (Takahasi & Mori 1974) on [0, τ], exact to rounding for these
survival curves, including the t^γ behaviour of a Weibull curve at 0.

Example (delicatessen's test data; R's flexsurv gives λ = 0.02600121, γ = 0.7871837 for the Gompertz model)::

    >>> import numpy as np, mestim
    >>> from estimators import parametric_survival, survival_predictions
    >>> d = {"t": np.array([1, 2, 3, 4, 5, 1, 1, 2, 2.5, 3, 4, 5]),
    ...      "delta": np.array([1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0.])}
    >>> gomp = parametric_survival("gomp", "t", "delta", distribution="gompertz")
    >>> res = mestim.fit([gomp, survival_predictions("pred", gomp, times=[2, 4], what=("survival", "rmst"))], d)
    >>> np.round(res.theta[:2], 6)
    array([0.026001, 0.787184])
    >>> res.labels[2:]
    ('pred:S(2)', 'pred:S(4)', 'pred:RMST(2)', 'pred:RMST(4)')

References:
    Collett D (2015). *Modelling Survival Data in Medical Research*, 3rd ed., ch. 5–6 (parametric and AFT models).
    Kalbfleisch JD & Prentice RL (2002). *The Statistical Analysis of Failure Time Data*, 2nd ed., §2.2, §3.5.
    Zivich PN et al. (2022). Delicatessen: M-estimation in Python. arXiv:2203.11300.
    Takahasi H & Mori M (1974). Double exponential formulas for numerical integration. Publ RIMS 9:721–741.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from mestim import Block, Prepared
from mestim.errors import DataError, SpecificationError

from .options import (ObjectiveScore, check_choice, check_choices, names, numeric_in_mask, row_multiplier,
                      weighted_design)

__all__ = ["parametric_survival", "aft", "survival_predictions"]

PARAMETRIC = {"exponential": ("lambda",), "weibull": ("lambda", "gamma"), "gompertz": ("lambda", "gamma")}
AFT_DISTRIBUTIONS = ("exponential", "weibull", "log-logistic", "log-normal")
PREDICTIONS = {"survival": "S", "hazard": "h", "rmst": "RMST"}
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _parametric_hazard(distribution, theta, t):
    """(log h(t), H(t)) of the models of :func:`parametric_survival` (module docstring)."""
    lam = theta[0]
    if distribution == "exponential":
        return jnp.log(lam), lam * t
    gamma = theta[1]
    if distribution == "weibull":
        return jnp.log(lam) + jnp.log(gamma) + (gamma - 1.0) * jnp.log(t), lam * t**gamma
    return jnp.log(lam) + gamma * t, lam * jnp.expm1(gamma * t) / gamma


def _error_hazard(distribution, z):
    """(log h_ε(z), H_ε(z)) of the AFT error distributions (module docstring)."""
    if distribution in ("exponential", "weibull"):
        return z, jnp.exp(z)
    if distribution == "log-logistic":
        return jax.nn.log_sigmoid(z), jax.nn.softplus(z)
    log_s = log_ndtr(-z)
    return -0.5 * z * z - _HALF_LOG_2PI - log_s, -log_s


@dataclasses.dataclass(frozen=True)
class HazardModel(ObjectiveScore):
    """A survival model as its hazard: ψ = m ∂ℓ/∂θ with ℓ = δ log h(t) − H(t). Hashable (no data), so refits
    reuse compiled programs. Columns read: ``{name}.t``, ``.delta``, ``.mask`` and, for an AFT model, ``.X``."""

    name: str
    distribution: str
    aft: bool = False

    def log_hazard(self, theta, t, x=None):
        """(log h(t | x), H(t | x))."""
        if not self.aft:
            return _parametric_hazard(self.distribution, theta, t)
        if self.distribution == "exponential":
            beta, log_sigma = theta, 0.0
        else:
            beta, log_sigma = theta[:-1], theta[-1]
        log_t = jnp.log(t)
        log_h, cum = _error_hazard(self.distribution, (log_t - x @ beta) * jnp.exp(-log_sigma))
        return log_h - log_sigma - log_t, cum

    def objective(self, theta, row):
        """ℓ = δ log h(t) − H(t)."""
        n = self.name
        log_h, cum = self.log_hazard(theta, row[f"{n}.t"], row[f"{n}.X"] if self.aft else None)
        return row[f"{n}.delta"] * log_h - cum


def _survival_data(cols, name, time, event, m):
    """(t, δ) with rows outside the mask set to (1, 0); a DataError for t ≤ 0 or δ ∉ {0, 1} on the rows used."""
    t = numeric_in_mask(cols, time, m, what="time column")
    delta = numeric_in_mask(cols, event, m, what="event column")
    if (t[m] <= 0).any():
        raise DataError(f"block '{name}': time '{time}' has {int((t[m] <= 0).sum())} value(s) ≤ 0 on the rows it "
                        "uses; survival times must be positive")
    bad = np.setdiff1d(np.unique(delta[m]), [0.0, 1.0])
    if bad.size:
        raise DataError(f"block '{name}': event '{event}' takes values {bad[:5].tolist()}; use 1 (event) and 0 "
                        "(censored)")
    if not delta[m].any():
        raise DataError(f"block '{name}': no events on the rows it uses; the model is not identified")
    return np.where(m, t, 1.0), delta


@dataclasses.dataclass(frozen=True)
class ParametricSurvival:
    """The options of :func:`parametric_survival`, checked on construction; ``__call__`` prepares the columns."""

    name: str
    time: str
    event: str
    distribution: str = "weibull"
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        check_choice("distribution", self.distribution, tuple(PARAMETRIC))

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult = row_multiplier(cols, n, self.mask, self.weights)
        t, delta = _survival_data(cols, n, self.time, self.event, m)
        rate = float(np.sum(mult * delta) / np.sum(mult * t))  # the exponential MLE: a start for λ
        # Weibull and Gompertz start from the exponential (γ = 1, or a Gompertz hazard that doubles over the range)
        init = {"exponential": [rate], "weibull": [rate, 1.0],
                "gompertz": [rate / 2, math.log(2) / float(np.max(t[m]))]}[self.distribution]
        note = f"{self.distribution} survival model of ({self.time}, {self.event}), {int(m.sum())} rows"
        return Prepared({f"{n}.t": t, f"{n}.delta": delta, f"{n}.mask": mult}, np.array(init),
                        PARAMETRIC[self.distribution], (note,))


def parametric_survival(name: str, time: str, event: str, *, distribution: str = "weibull", weights: str | None = None,
                        mask=None) -> Block:
    """A parametric survival model (exponential, Weibull, Gompertz) fitted by maximum likelihood.

    Args:
        name: block name; parameters ``lambda`` (and ``gamma``), see the module docstring's table.
        time: column of observed times t_i > 0; event: column of δ_i (1 event, 0 right-censored).
        distribution: ``"exponential"``, ``"weibull"`` (default) or ``"gompertz"``.
        weights: column of row weights w_i ≥ 0 multiplying ψ (delicatessen's ``weights``; :func:`mestim.fit`'s
            ``weights=`` with ``weight_type="sampling"`` is the same for a stack of one block).
        mask: rows the model is fitted on.

    Example (the exponential rate is events / total time at risk)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(0); t = rng.exponential(2.0, 300)
        >>> d = {"t": np.minimum(t, 3.0), "delta": (t < 3.0) * 1.0}
        >>> from estimators import parametric_survival
        >>> res = mestim.fit(parametric_survival("exp", "t", "delta", distribution="exponential"), d)
        >>> bool(np.isclose(res.theta[0], d["delta"].sum() / d["t"].sum())), res.labels
        (True, ('lambda',))
    """
    options = ParametricSurvival(name, time, event, distribution, weights, mask)
    return Block(name, HazardModel(name, distribution), prepare=options)


@dataclasses.dataclass(frozen=True)
class AFT:
    """The options of :func:`aft`, checked on construction; ``__call__`` prepares the columns."""

    name: str
    time: str
    event: str
    X: tuple[str, ...] = ()
    distribution: str = "weibull"
    intercept: bool = True
    weights: str | None = None
    mask: object = None

    def __post_init__(self):
        check_choice("distribution", self.distribution, AFT_DISTRIBUTIONS)
        object.__setattr__(self, "X", names(self.X))

    def __call__(self, cols) -> Prepared:
        n = self.name
        m, mult, x, labels = weighted_design(cols, n, self.X, None, self.intercept, self.mask, self.weights)
        t, delta = _survival_data(cols, n, self.time, self.event, m)
        # start: least squares of log t on x (censored times as if events); σ from the residuals
        beta, *_ = np.linalg.lstsq(x[m], np.log(t[m]), rcond=None)
        resid_sd = float(np.std(np.log(t[m]) - x[m] @ beta))
        fixed = self.distribution == "exponential"
        init = beta if fixed else np.append(beta, math.log(max(resid_sd, 1e-3)))
        note = f"{self.distribution} AFT model of ({self.time}, {self.event}) on {labels}, {int(m.sum())} rows"
        return Prepared({f"{n}.t": t, f"{n}.delta": delta, f"{n}.mask": mult, f"{n}.X": x}, init,
                        tuple(labels) + (() if fixed else ("log(scale)",)), (note,))

    def profile(self, at: dict) -> np.ndarray:
        """The design row of a covariate profile ``at`` (a value for every covariate; the intercept added)."""
        missing = [c for c in self.X if c not in at]
        unknown = sorted(set(at) - set(self.X))
        if missing or unknown:
            raise SpecificationError(f"at={at!r}: give a value for each covariate of block '{self.name}' "
                                     f"{list(self.X)} (missing {missing}, unknown {unknown})")
        return np.array(([1.0] if self.intercept else []) + [float(at[c]) for c in self.X])


def aft(name: str, time: str, event: str, X=None, *, distribution: str = "weibull", intercept: bool = True,
        weights: str | None = None, mask=None) -> Block:
    """An accelerated failure time model: log T = xᵀβ + σε (module docstring), fitted by maximum likelihood.

    Args:
        name: block name; parameters labelled by the design's columns, then ``log(scale)`` (none for
            ``"exponential"``, whose σ is 1).
        time: column of observed times t_i > 0; event: column of δ_i (1 event, 0 right-censored).
        X, intercept: covariate columns (an intercept first unless ``intercept=False``).
        distribution: ``"exponential"``, ``"weibull"`` (default), ``"log-logistic"`` or ``"log-normal"``.
        weights: column of row weights w_i ≥ 0 multiplying ψ (delicatessen's ``weights``).
        mask: rows the model is fitted on.

    Example (log T = 1 + 0.5 x + 0.8 ε with ε of the Weibull AFT, uniform censoring)::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(1)
        >>> x = rng.binomial(1, 0.5, 2000) * 1.0
        >>> t, c = np.exp(1 + 0.5 * x + 0.8 * np.log(rng.exponential(size=2000))), rng.uniform(0, 15, 2000)
        >>> res = mestim.fit(aft("wb", "t", "d", ["x"]), {"x": x, "t": np.minimum(t, c), "d": (t <= c) * 1.0})
        >>> np.round(res.theta, 2), res.labels          # log 0.8 = −0.22
        (array([ 0.97,  0.53, -0.22]), ('(Intercept)', 'x', 'log(scale)'))
    """
    options = AFT(name, time, event, X, distribution, intercept, weights, mask)
    return Block(name, HazardModel(name, distribution, aft=True), prepare=options)


def tanh_sinh(level: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Nodes u ∈ (0, 1) and weights of tanh–sinh quadrature of ∫₀¹ f(u) du, step 2^(−level) up to |k h| = 3.2:
    u = 1/(1 + exp(−π sinh(kh))), weight (π/2) h cosh(kh)/(2 cosh²((π/2) sinh(kh))). The nodes cluster
    double-exponentially at both ends, so endpoint singularities (t^γ at 0) cost no accuracy."""
    h = 2.0 ** -level
    k = np.arange(-int(3.2 / h), int(3.2 / h) + 1) * h
    s = 0.5 * np.pi * np.sinh(k)
    return 1.0 / (1.0 + np.exp(-2.0 * s)), 0.25 * np.pi * h * np.cosh(k) / np.cosh(s) ** 2


@dataclasses.dataclass(frozen=True)
class PredictionScore:
    """ψ = m (g(θ_model) − p) for each prediction g: S(t), h(t) or RMST(t) of the model block read."""

    name: str
    model: str
    hazard: HazardModel
    what: tuple[str, ...]
    times: tuple[float, ...]
    at: tuple[float, ...] | None = None

    def values(self, theta):
        x = None if self.at is None else jnp.asarray(self.at)
        times = jnp.asarray(self.times)
        log_h, cum = jax.vmap(lambda t: self.hazard.log_hazard(theta, t, x))(times)
        out = {"survival": jnp.exp(-cum), "hazard": jnp.exp(log_h)}
        if "rmst" in self.what:
            u, w = (jnp.asarray(a) for a in tanh_sinh())
            tt = times[:, None] * u[None, :]
            cum_grid = jax.vmap(jax.vmap(lambda t: self.hazard.log_hazard(theta, t, x)[1]))(tt)
            out["rmst"] = times * (jnp.exp(-cum_grid) @ w)
        return jnp.concatenate([out[k] for k in self.what])

    def __call__(self, p, row, **upstream):
        return row[f"{self.name}.mask"] * (self.values(upstream[self.model]) - p)


@dataclasses.dataclass(frozen=True)
class SurvivalPredictions:
    """The options of :func:`survival_predictions`, checked on construction; ``__call__`` prepares the start."""

    name: str
    model: Block
    times: tuple[float, ...]
    what: tuple[str, ...] = ("survival",)
    at: object = None
    mask: object = None

    def __post_init__(self):
        if not (isinstance(self.model, Block) and isinstance(self.model.psi, HazardModel)):
            raise SpecificationError(f"survival_predictions '{self.name}': model= must be a block from "
                                     f"estimators.parametric_survival or estimators.aft; got {self.model!r}")
        times = np.atleast_1d(np.asarray(self.times, dtype=float))
        if times.ndim != 1 or not times.size or not (np.isfinite(times) & (times > 0)).all():
            raise SpecificationError(f"times={self.times!r}: give one or more positive times")
        object.__setattr__(self, "times", tuple(float(t) for t in times))
        object.__setattr__(self, "what", check_choices("what", self.what, tuple(PREDICTIONS)))
        if self.model.psi.aft != (self.at is not None):
            raise SpecificationError(f"survival_predictions '{self.name}': at= (a covariate profile) is "
                                     + ("required for an AFT model" if self.model.psi.aft else
                                        "only for an AFT model"))

    @property
    def score(self) -> PredictionScore:
        at = None if self.at is None else tuple(self.model.prepare.profile(self.at))
        return PredictionScore(self.name, self.model.name, self.model.psi, self.what, self.times, at)

    def __call__(self, cols) -> Prepared:
        m, mult = row_multiplier(cols, self.name, self.mask, None)
        model_init = self.model.prepare(cols).init
        labels = tuple(f"{PREDICTIONS[k]}({t:g})" for k in self.what for t in self.times)
        note = f"predictions of block '{self.model.name}'" + ("" if self.at is None else f" at {self.at}")
        return Prepared({f"{self.name}.mask": mult}, np.asarray(self.score.values(jnp.asarray(model_init))),
                        labels, (note,))


def survival_predictions(name: str, model: Block, times, *, what=("survival",), at: dict | None = None,
                         mask=None) -> Block:
    """Survival S(t), hazard h(t) and restricted mean survival time RMST(t) = ∫₀ᵗ S(u) du of a fitted model.

    Args:
        name: block name; parameters labelled ``S(t)``, ``h(t)``, ``RMST(t)``, grouped by ``what``.
        model: a :func:`parametric_survival` or :func:`aft` block stacked in the same fit (this block reads it).
        times: one or more times t > 0.
        what: any of ``"survival"`` (default), ``"hazard"``, ``"rmst"``.
        at: for an AFT model, the covariate profile {column: value} the predictions are made at.
        mask: rows that carry the prediction equations (default all; their number does not change θ̂).

    Example (an exponential model's survival at t = 1 is exp(−λ))::

        >>> import numpy as np, mestim
        >>> rng = np.random.default_rng(0); t = rng.exponential(2.0, 300)
        >>> d = {"t": np.minimum(t, 3.0), "delta": (t < 3.0) * 1.0}
        >>> from estimators import parametric_survival, survival_predictions
        >>> model = parametric_survival("exp", "t", "delta", distribution="exponential")
        >>> res = mestim.fit([model, survival_predictions("S", model, times=[1.0])], d)
        >>> bool(np.isclose(res["S"][0], np.exp(-res["exp"][0]))), res.labels
        (True, ('exp:lambda', 'S:S(1)'))
    """
    options = SurvivalPredictions(name, model, times, what, at, mask)
    return Block(name, options.score, reads=(model.name,), prepare=options)
