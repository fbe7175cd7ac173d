"""Generalised linear models as blocks: families, links, and the quasi-score estimating function they share.

A GLM has a family, with variance function V(μ), and a link g, with mean μ = g⁻¹(η) of the linear predictor
η_i = x_iᵀβ + offset_i. Its block solves the quasi-score equations (McCullagh & Nelder 1989, §9.2)

    ψ_β = m_i (y_i − μ_i) μ'(η_i) / V(μ_i) · x_i,        μ'(η) = dμ/dη,

where m_i = I(row i in the mask) · v_i and v_i is the row's prior weight (``var_weights``; statsmodels'
``var_weights``, R's ``glm(weights=)``), 1 by default. For the pairs where μ' = V — gaussian–identity,
binomial–logit, poisson–log — this is ψ_β = m (y − μ) x. These are the likelihood score equations divided by the
dispersion, so β̂ is the MLE (statsmodels ``GLM``, R ``glm``) and the sandwich is the robust HC0 covariance
(statsmodels ``cov_type="HC0"``) whatever the dispersion.

=================  ===============  ===========================================================================
family             V(μ)             links (the first is the default)
=================  ===============  ===========================================================================
gaussian           1                identity, log, inverse
binomial           μ(1 − μ)         logit, probit, cloglog, loglog, cauchit, log, identity
poisson            μ                log, identity, sqrt
gamma              μ²               inverse, log, identity
inverse_gaussian   μ³               inverse_squared, inverse, log, identity
negative_binomial  μ + αμ² (NB2)    log, identity, sqrt
=================  ===============  ===========================================================================

Two families carry a parameter the mean does not fix; it is stacked in the block as its logarithm a = log α, with
the likelihood score in a as its estimating function (so θ̂ is the joint MLE and its uncertainty enters the
sandwich, as in delicatessen's ``ee_glm``):

- gamma with shape α (Var y = μ²/α): ψ_a = α [log(α y/μ) + 1 − y/μ − digamma(α)] (MASS ``gamma.shape``).
  ψ_β does not involve α. ``shape=False`` leaves it out (β only, as statsmodels' GLM).
- negative binomial with dispersion α (NB2, Var y = μ + αμ²):
  ψ_a = α⁻¹ [log(1 + αμ) − digamma(y + 1/α) + digamma(1/α)] + (y − μ)/(1 + αμ) (MASS ``glm.nb``,
  statsmodels ``NegativeBinomial``); ``alpha=`` a number holds α fixed instead (statsmodels' GLM family).

The Jacobian. Outside the three pairs above, the expected information (IRLS' −Xᵀ diag(μ'²/V) X) is not the
derivative of ψ: away from the solution ψ has a (y − μ)·d/dη(μ'/V) term. The engine needs the exact derivative
for the bread, so the closed form used here is the observed one: with u(η, a) = (y − μ) μ'/V and s the extra
parameter's score,

    Σ w ∂ψ_β/∂β = Xᵀ diag(w m ∂u/∂η) X,   Σ w ∂ψ_β/∂a = Xᵀ (w m ∂u/∂a),
    Σ w ∂ψ_a/∂β = (w m ∂s/∂η)ᵀ X,          Σ w ∂ψ_a/∂a = Σ w m ∂s/∂a,

one matrix product, with the per-row scalar derivatives from forward-mode autodiff of the elementwise u and s
(exact, and free of hand-derived second derivatives of every link). Tested against reverse-mode autodiff of ψ.

Example (delicatessen's and MASS' clotting data: a gamma GLM with log link)::

    >>> import numpy as np, mestim
    >>> from estimators import glm
    >>> u = np.array([5, 10, 15, 20, 30, 40, 60, 80, 100.])
    >>> d = {"log_u": np.log(u), "lot1": np.array([118, 58, 42, 35, 27, 25, 21, 19, 18.])}
    >>> res = mestim.fit([glm("clot", "lot1", ["log_u"], family="gamma", link="log")], d)
    >>> np.round(res.theta, 4)  # (Intercept), log_u, log(shape); MASS::gamma.shape: exp(4.0166) = 55.51
    array([ 5.5032, -0.6019,  4.0166])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np

from mestim import Block, Prepared
from mestim.data import aligned_empty, require_numeric
from mestim.errors import DataError, SpecificationError, check_choice

from .design import aligned, block_rows, clean_design, clean_in_mask, design_matrix, design_times
from .separation import SCREEN, raise_if_separated


def _sp(xp):
    """:class:`HostSpecial` on the host (numpy), jax.scipy.special in ψ: link formulas are written once for both."""
    return jsp if xp is jnp else HOST_SPECIAL


class HostSpecial:
    """Special functions on the host: the logit link's in NumPy (scipy.special costs 0.15–0.18 s to import, a tenth
    of a cold `mestim transport`, which then needs none of it), the others (probit's) from scipy.special."""

    @staticmethod
    def expit(e):
        """1/(1 + e^{−η}), as e^{η}/(1 + e^{η}) for η < 0 (no overflow)."""
        z = np.exp(-np.abs(e))
        return np.where(np.asarray(e) >= 0, 1.0, z) / (1.0 + z)

    @staticmethod
    def logit(m):
        return np.log(m) - np.log1p(-m)

    def __getattr__(self, name):
        import scipy.special

        return getattr(scipy.special, name)


HOST_SPECIAL = HostSpecial()


@dataclasses.dataclass(frozen=True)
class Link:
    """μ = g⁻¹(η), dμ/dη and 1 − μ as functions of (η, xp) for xp = numpy or jax.numpy; g itself on the host."""

    name: str
    inverse: Callable
    derivative: Callable
    complement: Callable  # 1 − μ computed from η without cancellation (binomial variance near μ = 1)
    link: Callable  # g(μ), host only (starting values)


def _one_minus_exp(u, xp):
    """1 − eᵘ (u ≤ 0), accurate in value and in its autodiff derivative: −expm1(u) near 0, where 1 − eᵘ cancels;
    1 − eᵘ below −1, where jax's derivative of expm1 (computed as expm1(u) + 1) would cancel instead."""
    return xp.where(u < -1.0, 1.0 - xp.exp(u), -xp.expm1(u))


_SQRT_2PI = float(np.sqrt(2 * np.pi))
LINKS = {link.name: link for link in (
    Link("identity", lambda e, xp: e, lambda e, xp: xp.ones_like(e), lambda e, xp: 1.0 - e, lambda m: m),
    Link("log", lambda e, xp: xp.exp(e), lambda e, xp: xp.exp(e), lambda e, xp: _one_minus_exp(e, xp), np.log),
    Link("logit", lambda e, xp: _sp(xp).expit(e), lambda e, xp: _sp(xp).expit(e) * _sp(xp).expit(-e),
         lambda e, xp: _sp(xp).expit(-e), lambda m: _sp(np).logit(m)),
    Link("probit", lambda e, xp: _sp(xp).ndtr(e), lambda e, xp: xp.exp(-0.5 * e * e) / _SQRT_2PI,
         lambda e, xp: _sp(xp).ndtr(-e), lambda m: _sp(np).ndtri(m)),
    Link("cloglog", lambda e, xp: _one_minus_exp(-xp.exp(e), xp), lambda e, xp: xp.exp(e - xp.exp(e)),
         lambda e, xp: xp.exp(-xp.exp(e)), lambda m: np.log(-np.log1p(-m))),
    Link("loglog", lambda e, xp: xp.exp(-xp.exp(-e)), lambda e, xp: xp.exp(-e - xp.exp(-e)),
         lambda e, xp: _one_minus_exp(-xp.exp(-e), xp), lambda m: -np.log(-np.log(m))),
    Link("cauchit", lambda e, xp: 0.5 + xp.arctan(e) / np.pi, lambda e, xp: 1.0 / (np.pi * (1.0 + e * e)),
         lambda e, xp: 0.5 - xp.arctan(e) / np.pi, lambda m: np.tan(np.pi * (m - 0.5))),
    Link("inverse", lambda e, xp: 1.0 / e, lambda e, xp: -1.0 / (e * e), lambda e, xp: 1.0 - 1.0 / e,
         lambda m: 1.0 / m),
    Link("inverse_squared", lambda e, xp: e ** -0.5, lambda e, xp: -0.5 * e ** -1.5, lambda e, xp: 1.0 - e ** -0.5,
         lambda m: m ** -2.0),
    Link("sqrt", lambda e, xp: e * e, lambda e, xp: 2.0 * e, lambda e, xp: 1.0 - e * e, np.sqrt),
)}


@dataclasses.dataclass(frozen=True)
class Family:
    """Variance function V(μ, 1 − μ, α), allowed links, the stacked extra parameter (if any) and host helpers."""

    name: str
    links: tuple[str, ...]  # the first is the default
    variance: Callable
    extra: str | None = None  # label of the stacked log-parameter
    start_mean: Callable = lambda y: y  # host: a starting μ from the outcome, inside the family's range
    safe_mean: float = 1.0  # a valid μ for rows outside the mask (their ψ is multiplied by 0 but must be finite)


FAMILIES = {fam.name: fam for fam in (
    Family("gaussian", ("identity", "log", "inverse"), lambda mu, q, a: jnp.ones_like(mu)),
    Family("binomial", ("logit", "probit", "cloglog", "loglog", "cauchit", "log", "identity"),
           lambda mu, q, a: mu * q, start_mean=lambda y: (y + 0.5) / 2, safe_mean=0.5),  # statsmodels' start
    Family("poisson", ("log", "identity", "sqrt"), lambda mu, q, a: mu, start_mean=lambda y: np.maximum(y, 0.5)),
    Family("gamma", ("inverse", "log", "identity"), lambda mu, q, a: mu * mu, extra="log(shape)"),
    Family("inverse_gaussian", ("inverse_squared", "inverse", "log", "identity"), lambda mu, q, a: mu ** 3),
    Family("negative_binomial", ("log", "identity", "sqrt"), lambda mu, q, a: mu + a * mu * mu, extra="log(alpha)",
           start_mean=lambda y: np.maximum(y, 0.5)),
)}
UNIT_RATIO = {("gaussian", "identity"), ("binomial", "logit"), ("poisson", "log")}  # μ'(η) = V(μ): ψ = m (y − μ) x
PROBABILITY_LINKS = ("logit", "probit", "cloglog", "loglog", "cauchit")  # onto (0, 1): MLE exists iff not separated


def resolve(family: str, link: str | None) -> tuple[str, str]:
    """(family, link) validated, the family's default link filled in; a SpecificationError lists the choices."""
    check_choice("family", family, tuple(FAMILIES))
    allowed = FAMILIES[family].links
    if link is None:
        return family, allowed[0]
    check_choice("link", link, allowed, context=f" is not available for the {family} family")
    return family, link


@dataclasses.dataclass(frozen=True)
class GLMScore:
    """ψ of a GLM block ``name``: quasi-score for β and, for gamma/negative binomial, the score of log α.

    Hashable (refits reuse compiled code). ``link`` None: the family's default. ``alpha``: the negative binomial's
    fixed α (None: estimated). ``shape``: stack the gamma shape. Columns read: ``{name}.X``, ``.y``, ``.mask``
    (the row multiplier m_i), ``.offset``.
    """

    name: str
    family: str
    link: str | None = None
    alpha: float | None = None
    shape: bool = False

    def __post_init__(self):
        object.__setattr__(self, "link", resolve(self.family, self.link)[1])

    @property
    def n_extra(self) -> int:
        stacked = (self.family == "gamma" and self.shape) or (self.family == "negative_binomial" and self.alpha is None)
        return int(stacked)

    @property
    def safe_eta(self) -> float:
        """A linear predictor with a valid mean, for rows outside a mask (their ψ is multiplied by 0)."""
        return float(LINKS[self.link].link(FAMILIES[self.family].safe_mean))

    def split(self, theta):
        """(β, a): a = log α for a stacked extra parameter, else None."""
        return (theta[:-1], theta[-1]) if self.n_extra else (theta, None)

    def mean(self, theta, x, offset=0.0):
        """Fitted mean g⁻¹(xᵀβ + offset) (used by blocks that predict from this model)."""
        return LINKS[self.link].inverse(x @ self.split(theta)[0] + offset, jnp)

    def quasi_residual(self, eta, y, a):
        """u = (y − μ) μ'(η)/V(μ), so that ψ_β = m u x."""
        link = LINKS[self.link]
        mu = link.inverse(eta, jnp)
        if (self.family, self.link) in UNIT_RATIO:
            return y - mu
        alpha = jnp.exp(a) if a is not None else self.alpha
        return (y - mu) * link.derivative(eta, jnp) / FAMILIES[self.family].variance(mu, link.complement(eta, jnp),
                                                                                     alpha)

    def extra_score(self, eta, y, a):
        """∂ℓ/∂a, a = log α (see the module docstring)."""
        mu = LINKS[self.link].inverse(eta, jnp)
        alpha = jnp.exp(a)
        if self.family == "gamma":
            return alpha * (a + jnp.log(y / mu) + 1.0 - y / mu - jsp.digamma(alpha))
        k = 1.0 / alpha
        return k * (jnp.log1p(alpha * mu) - jsp.digamma(y + k) + jsp.digamma(k)) + (y - mu) / (1.0 + alpha * mu)

    def _columns(self, rows):
        n = self.name
        return rows[f"{n}.X"], rows[f"{n}.y"], rows[f"{n}.mask"], rows[f"{n}.offset"]

    def __call__(self, theta, row):
        x, y, m, offset = self._columns(row)
        beta, a = self.split(theta)
        eta = x @ beta + offset
        psi = m * self.quasi_residual(eta, y, a) * x
        return jnp.append(psi, m * self.extra_score(eta, y, a)) if self.n_extra else psi

    def chunk_sums(self, theta, rows, w):
        """ψ of a chunk of rows and the exact Σ w ∂ψ/∂θ (module docstring): one matrix product."""
        x, y, m, offset = self._columns(rows)
        beta, a = self.split(theta)
        eta = x @ beta + offset
        wm = w * m
        ones = jnp.ones_like(eta)
        u, du_deta = jax.jvp(lambda e: self.quasi_residual(e, y, a), (eta,), (ones,))
        values = (m * u)[:, None] * x
        jac = (x * (wm * du_deta)[:, None]).T @ x
        if not self.n_extra:
            return values, jac
        one = jnp.ones_like(a)
        du_da = jax.jvp(lambda b: self.quasi_residual(eta, y, b), (a,), (one,))[1]
        s, ds_deta = jax.jvp(lambda e: self.extra_score(e, y, a), (eta,), (ones,))
        ds_da = jax.jvp(lambda b: self.extra_score(eta, y, b), (a,), (one,))[1]
        values = jnp.concatenate([values, (m * s)[:, None]], axis=1)
        jac = jnp.block([[jac, (x.T @ (wm * du_da))[:, None]],
                         [((wm * ds_deta) @ x)[None, :], jnp.sum(wm * ds_da)[None, None]]])
        return values, jac


def prepared_design(name, cols, X, formula, intercept, mask):
    """(mask, design with rows outside the mask zeroed, labels) of a registered block; errors name the block."""
    m = block_rows(cols, mask, name)
    x, labels = design_matrix(cols, X, formula, intercept)
    return m, clean_design(cols, x, labels, m), labels


class GLMDesign:
    """The host side of a GLM block: its columns, starting values and labels (``prepare``), and its design on
    other rows or counterfactual data (``design``), for blocks that predict from the model (g-formula, AIPW)."""

    def __init__(self, score: GLMScore, y, X, formula, intercept, mask, offset, var_weights):
        self.score, self.y, self.X, self.formula, self.intercept = score, y, X, formula, intercept
        self.mask, self.offset, self.var_weights = mask, offset, var_weights
        self.labels: tuple[str, ...] = ()  # the design's column labels, from the last prepare (for messages)

    def design(self, cols, reference=None):
        """(design matrix on every row, labels); ``reference``: the table a formula's coding is learnt from."""
        return design_matrix(cols, self.X, self.formula, self.intercept, reference=reference)

    def offset_values(self, cols, m) -> np.ndarray:
        if self.offset is None:
            return aligned_empty(m.size, zeros=True)
        return clean_in_mask(require_numeric(cols, self.offset, what="offset"), m, self.offset)

    def __call__(self, cols) -> Prepared:
        s = self.score
        family = FAMILIES[s.family]
        m, x, labels = prepared_design(s.name, cols, self.X, self.formula, self.intercept, self.mask)
        self.labels = tuple(labels)
        prior = aligned(m, m.size)  # the row multiplier m_i · v_i (0 outside the mask)
        if self.var_weights is not None:
            prior = clean_in_mask(require_numeric(cols, self.var_weights, what="var_weights column"), m,
                                  self.var_weights)
            if (prior[m] <= 0).any():
                raise DataError(f"block '{s.name}': var_weights '{self.var_weights}' has values ≤ 0 on the rows it "
                                "uses; prior weights must be positive (restrict the block with mask= instead)")
        y = self._outcome(cols, m, weighted=self.var_weights is not None)
        off = self.offset_values(cols, m)
        # Rows outside the mask get a valid mean (x = 0, so η = offset), keeping ψ finite where it is multiplied by 0.
        if not m.all():
            y[~m] = family.safe_mean
            off[~m] = s.safe_eta
        exact = (s.family, s.link) == ("gaussian", "identity")
        newton = (s.family, s.link) in UNIT_RATIO and not exact  # a large fit's start: Newton on drawn rows
        rows = start_rows(m, exact, min(NEWTON_ROWS, START_ROWS) if newton else START_ROWS)
        sample = x[rows], y[rows], off[rows]
        init = self._start(*sample)
        if newton and isinstance(rows, np.ndarray) and rows.dtype.kind == "i":  # the rows were drawn
            init = sample_newton(s, *sample, prior[rows], init)
        note = (f"{s.family} GLM ({s.link} link) of {self.y} on {len(labels)} design column(s), {int(m.sum())} rows"
                + (f", α fixed at {s.alpha:g}" if s.alpha is not None else ""))
        extra = (family.extra,) if s.n_extra else ()
        return Prepared({f"{s.name}.X": x, f"{s.name}.y": y, f"{s.name}.mask": prior, f"{s.name}.offset": off},
                        init, tuple(labels) + extra, (note,), rows=m)

    def _outcome(self, cols, m, weighted):
        s, y = self.score, self.y
        values = clean_in_mask(require_numeric(cols, y, what="outcome"), m, y)
        used = values if m.all() else values[m]
        if s.family == "binomial":
            bad = np.unique(used[(used < 0) | (used > 1)] if weighted else used[(used != 0) & (used != 1)])
            if bad.size:
                model = "logistic" if s.link == "logit" else f"binomial ({s.link} link)"
                allowed = "0/1 (or proportions in [0, 1] with var_weights = trials)" if not weighted else "[0, 1]"
                raise DataError(f"block '{s.name}' is a {model} model but '{y}' takes values {bad[:5].tolist()} "
                                f"outside {allowed} on the rows it uses; recode it, or use a linear/multinomial model")
        elif s.family in ("poisson", "negative_binomial") and (used < 0).any():
            raise DataError(f"block '{s.name}' is a {s.family.replace('_', ' ')} model but '{y}' has negative values")
        elif s.family in ("gamma", "inverse_gaussian") and (used <= 0).any():
            first = int(np.flatnonzero(m & (values <= 0))[0])
            raise DataError(f"block '{s.name}' is a {s.family.replace('_', ' ')} model, whose outcome must be "
                            f"positive, but '{y}' has {int((used <= 0).sum())} value(s) ≤ 0 (first at row {first}); "
                            "drop or recode them, or use another family")
        return values

    def _start(self, x, y, offset):
        """Least squares of g(μ₀) on x (exact for gaussian–identity); then a moment estimate of the extra
        parameter from the fitted means (gamma: 1/α = mean((y − μ)²/μ²); NB: α = mean(((y − μ)² − μ)/μ²))."""
        s = self.score
        family, link = FAMILIES[s.family], LINKS[s.link]
        with np.errstate(all="ignore"):
            target = link.link(family.start_mean(y))
            if not np.all(np.isfinite(target)):  # the start is outside the link's range: a constant η = g(ȳ)
                target = np.full(y.size, link.link(np.mean(y)))
        if not np.all(np.isfinite(target)):
            raise DataError(f"block '{s.name}': a {s.family} model with the {s.link} link needs a mean inside the "
                            f"link's range, but '{self.y}' has mean {np.mean(y):.4g} (range {np.min(y):.4g} to "
                            f"{np.max(y):.4g}) on the rows it uses: choose another link, or give init=")
        beta = least_squares(x, target - offset)
        if not s.n_extra:
            return beta
        mu = link.inverse(design_times(x, beta) + offset, np)
        if s.family == "gamma":
            return np.append(beta, -np.log(max(np.mean(((y - mu) / mu) ** 2), 1e-8)))
        # a judgement call: α₀ ≥ 0.05 keeps the start away from the Poisson boundary α = 0
        return np.append(beta, np.log(max(np.mean(((y - mu) ** 2 - mu) / mu**2), 0.05)))


START_ROWS = 65_536  # rows a large fit's starting values come from (above it, drawn)
NEWTON_ROWS = 16_384  # rows drawn for a start refined by Newton's method (sample_newton)
START_TOL = 1e-3  # the start's Newton stops at a step this small (relative to 1 + ‖β‖∞): see sample_newton
START_STEPS = 10  # Newton steps at most on the sample (more: separated or ill-posed there)


def start_rows(m: np.ndarray, exact: bool, size: int | None = None):
    """The rows in the mask ``m`` that starting values are computed from: all (a view of the design when that is
    every row) up to :data:`START_ROWS` or when the start is the estimate itself (``exact``: gaussian–identity),
    else ``size`` (default START_ROWS) of them drawn at random with a fixed seed (a start, not an estimate: Newton
    takes it to the same root; least squares on 10⁶ rows cost more than a Newton pass)."""
    count = int(m.sum())
    every = count == m.size
    if exact or count <= START_ROWS:
        return slice(None) if every else m
    drawn = np.sort(np.random.default_rng(0).integers(0, count, size or START_ROWS))
    return drawn if every else np.flatnonzero(m)[drawn]


def sample_newton(score: GLMScore, x, y, offset, m, beta):
    """β refined by Newton's method on the :data:`NEWTON_ROWS` rows drawn for a large fit's start (canonical
    links, where it is IRLS: β ← β + (Xᵀ diag(m μ') X)⁻¹ Xᵀ m (y − μ)), from their least-squares ``beta``.

    The full-data Newton then starts within sampling error of β̂ (≈ 1/√NEWTON_ROWS) and saves a pass over every
    row (logistic W1: 4 Jacobian passes instead of 5, at 10⁵ and 10⁶ rows) for ≈ 1 ms a step. 16,384 rows: the
    same passes were saved from 8,192 to 65,536 rows, and on 65,536 the steps cost more than the pass they save
    at 10⁵ rows (108 against 84 ms a fit). It stops at a step below :data:`START_TOL`, far inside the sampling
    error (convergence is quadratic: the error left is about the step's square). Where the sample's fit fails
    (separation or a singular design on the sample: no convergence in :data:`START_STEPS` steps, or non-finite
    values) the least-squares ``beta`` is returned: Newton on every row starts from it and decides."""
    link = LINKS[score.link]
    start = beta
    with np.errstate(all="ignore"):
        for _ in range(START_STEPS):
            # xᵀr by einsum, Xᵀ diag(m μ') X as AᵀA (syrk): on a loaded machine OpenBLAS' threaded gemv and gemm
            # took 4–40 ms a call (einsum 0.5 ms, syrk 1 ms)
            eta = design_times(x, beta) + offset
            mu = link.inverse(eta, np)
            a = x * np.sqrt(m * link.derivative(eta, np))[:, None]
            try:
                step = np.linalg.solve(a.T @ a, np.einsum("i,ij->j", m * (y - mu), x))
            except np.linalg.LinAlgError:
                return start
            beta = beta + step
            if not np.all(np.isfinite(beta)):
                return start
            if np.max(np.abs(step)) <= START_TOL * (1.0 + np.max(np.abs(beta))):
                return beta
    return start


def least_squares(x, y):
    """A starting β: the normal equations (a p × p solve; an SVD of the whole design costs 10× more at 10⁵
    rows), or least squares by SVD when the design is rank-deficient (the fit will say which columns)."""
    try:
        beta = np.linalg.solve(x.T @ x, np.einsum("i,ij->j", y, x))  # not OpenBLAS' gemv (see sample_newton)
        if np.all(np.isfinite(beta)):
            return beta
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(x, y, rcond=None)[0]


def glm(name: str, y: str, X=None, *, formula: str | None = None, family: str = "gaussian", link: str | None = None,
        mask=None, intercept: bool = True, offset: str | None = None, var_weights: str | None = None,
        alpha: float | None = None, shape: bool | None = None) -> Block:
    """GLM block: ``family`` and ``link`` from the table in the module docstring, on the rows in ``mask``.

    Args:
        name: block name; parameters are labelled by the design's columns (then ``log(shape)``/``log(alpha)``).
        y: outcome column. binomial: 0/1 (proportions in [0, 1] with ``var_weights`` = trials); poisson and
            negative binomial: ≥ 0; gamma and inverse Gaussian: > 0.
        X, formula, intercept: the design, from column names (an intercept first) or a formula's right-hand side.
        link: None for the family's default (gaussian identity, binomial logit, poisson log, gamma inverse,
            inverse Gaussian 1/μ², negative binomial log).
        mask: rows the model is fitted on (a column name, boolean array or function of the columns).
        offset: column added to the linear predictor (e.g. log exposure).
        var_weights: column of prior weights v_i multiplying ψ (statsmodels' ``var_weights``; frequency weights
            are the ``weights=`` of :func:`mestim.fit`).
        alpha: negative binomial only: hold α fixed at this value (default: estimate log α, stacked).
        shape: gamma only: stack log(shape) (default True); False gives β alone, as statsmodels' GLM.

    A binomial model with a link onto (0, 1) is checked for separation after fitting (:mod:`estimators.separation`).

    Example (a Gaussian GLM with identity link is least squares)::

        >>> import numpy as np, mestim
        >>> from estimators import glm
        >>> rng = np.random.default_rng(0); x = rng.normal(size=300)
        >>> d = {"x": x, "y": 1 + 2 * x + rng.normal(size=300)}
        >>> res = mestim.fit(glm("g", "y", ["x"], family="gaussian"), d)
        >>> bool(np.allclose(res.theta[:2], np.polyfit(x, d["y"], 1)[::-1]))
        True
    """
    family, link = resolve(family, link)
    if alpha is not None and family != "negative_binomial":
        raise SpecificationError(f"alpha= is the negative binomial dispersion; the {family} family has none")
    if alpha is not None and not (np.isfinite(alpha) and alpha > 0):
        raise SpecificationError(f"alpha={alpha!r}: the negative binomial dispersion must be a positive number")
    if shape is not None and family != "gamma":
        raise SpecificationError(f"shape= is the gamma shape; the {family} family has none")
    score = GLMScore(name, family, link, None if alpha is None else float(alpha), shape is not False)
    design = GLMDesign(score, y, X, formula, intercept, mask, offset, var_weights)
    check = separation_check(score, design) if family == "binomial" and link in PROBABILITY_LINKS else (
        _dispersion_check(score) if score.n_extra and family == "negative_binomial" else None)
    return Block(name, score, prepare=design, check=check)


def _fitted_eta(score: GLMScore, theta, cols):
    """(rows in the mask, η̂ on them): η on every row (one matrix–vector product; rows outside the mask have x = 0
    and a safe offset), then the mask's rows (selecting the design's rows first would copy it). The rows are
    ``slice(None)`` when the mask holds every row (no copies)."""
    n = score.name
    m = cols[f"{n}.mask"] > 0
    rows = slice(None) if m.all() else m
    return rows, (design_times(cols[f"{n}.X"], score.split(theta)[0]) + cols[f"{n}.offset"])[rows]


def separation_check(score: GLMScore, design: GLMDesign):
    """After the fit: a binomial model whose MLE does not exist (separation) is refused, see
    :mod:`estimators.separation`; the linear program runs when some fitted probability is within 1e-6 of its
    outcome (without separation such rows are legitimate: it then accepts the fit)."""

    def check(theta, cols):
        # the link is increasing: P(own class) ≥ 1 − SCREEN is η ≥ g(1 − SCREEN) for y = 1, η ≤ g(SCREEN) for y = 0
        link = LINKS[score.link]
        above, below = float(link.link(1.0 - SCREEN)), float(link.link(SCREEN))
        rows, eta = _fitted_eta(score, theta, cols)
        if eta.size and below < eta.min() and eta.max() < above:  # no fitted probability within SCREEN of 0 or 1
            return []
        y = cols[f"{score.name}.y"][rows]
        if np.any(((y == 1) & (eta >= above)) | ((y == 0) & (eta <= below))):
            model = "logistic" if score.link == "logit" else f"binomial ({score.link} link)"
            raise_if_separated(score.name, cols[f"{score.name}.X"][rows], (y == 1).astype(int), 2,
                               design.labels, np.flatnonzero(cols[f"{score.name}.mask"] > 0), model=model,
                               fractional=(y > 0) & (y < 1))
        return []

    return check


def _dispersion_check(score: GLMScore):
    """A negative binomial fit that drifts to α → 0 (no overdispersion: the MLE sits on the boundary) is flagged."""

    def check(theta, cols):
        _, eta = _fitted_eta(score, theta, cols)
        alpha = float(np.exp(theta[-1]))
        if alpha * np.mean(LINKS[score.link].inverse(eta, np)) < 1e-6:  # extra variance < 1e-6 of the Poisson's
            return [f"block '{score.name}': the negative binomial dispersion α̂ = {alpha:.3g} is at its boundary 0 "
                    "(no overdispersion), where the MLE and its SE are not regular; a Poisson model fits the same β"]
        return []

    return check
