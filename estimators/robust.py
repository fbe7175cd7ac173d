"""Robust regression: Huber and Tukey biweight M-estimation of a linear model, with a fixed or a stacked scale.

With residuals scaled by σ, r_i = (y_i − x_iᵀβ)/σ, the regression equations are (Huber 1973; Huber & Ronchetti
2009, ch. 7)

    ψ_β = m_i ψ_c(r_i) x_i,        m_i = I(row i in the mask),

    Huber           ψ_c(r) = max(−c, min(c, r))                   (monotone; c = 1.345 by default)
    Tukey biweight  ψ_c(r) = r (1 − (r/c)²)² for |r| < c, else 0    (redescending; c = 4.685 by default)

(the defaults give 95% efficiency at the normal, as statsmodels' ``HuberT`` and ``TukeyBiweight``).

The scale σ is, by ``scale=``:

- ``"huber"`` (default): estimated jointly, stacked as the parameter log σ with Huber's proposal 2
  (Huber & Ronchetti 2009, §7.7), the equation statsmodels' ``RLM(..., scale_est=HuberScale())`` iterates:

      ψ_σ = m_i [χ_d(r_i) − κ],  χ_d(r) = min(r², d²)/2,  κ = (n − p)/n · E_Φ χ_d(Z),  d = 2.5,

  with n the rows in the mask and p the number of coefficients. A smooth equation, so its uncertainty enters the
  sandwich.
- a number: σ held fixed at that value (known scale; delicatessen's unscaled ``ee_robust_regression`` with
  tuning constant k is σ = 1, c = k).
- ``"mad"``: σ fixed at the normalised median absolute residual of the least-squares fit, median|r_LS|/0.6745,
  which is what ``RLM(...).fit(update_scale=False)`` does. The sandwich then treats σ as known: right to first
  order for symmetric errors (ψ_β is odd in r, so ∂E[ψ_β]/∂σ = 0), not for skewed ones — prefer ``"huber"`` there.
  (The MAD itself is not smooth in the data, so it is not stacked.)

Huber's ψ is monotone: the block starts from least squares. Tukey's redescends, so Σψ = 0 has several roots: the
block starts from the Huber fit (computed on the host by iteratively reweighted least squares at the MAD scale, or
the fixed one), the usual and statsmodels-compatible choice when the Huber fit is near the LS fit. The Jacobian is autodiff's (ψ_c has a kink at |r| = c, a null set).

Example (a line with 5% gross outliers)::

    >>> import numpy as np, mestim
    >>> from estimators import robust_regression
    >>> rng = np.random.default_rng(3)
    >>> x = rng.uniform(0, 10, 400)
    >>> y = 2.0 + 0.5 * x + rng.normal(size=400)
    >>> y[:20] += 25.0
    >>> res = mestim.fit([robust_regression("rr", "y", ["x"], norm="tukey")], {"x": x, "y": y})
    >>> np.round(res.theta[:2], 2), res.labels   # least squares: (3.68, 0.43)
    (array([2.12, 0.49]), ('(Intercept)', 'x', 'log(scale)'))
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from statistics import NormalDist

from mestim import Block, Prepared
from mestim.constants import partial, require_all_rows, total
from mestim.data import require_numeric
from mestim.errors import DataError, SpecificationError, check_choice

from .design import clean_in_mask
from .generalized_linear import least_squares, prepared_design

HUBER_SCALE_D = 2.5  # tuning constant of proposal 2's χ (statsmodels' HuberScale default)
MAD_NORMAL = 0.6744897501960817  # Φ⁻¹(3/4): median |Z| of a standard normal


def _huber(r, c, xp):
    return xp.clip(r, -c, c)


def _tukey(r, c, xp):
    return xp.where(xp.abs(r) < c, r * (1.0 - (r / c) ** 2) ** 2, 0.0)


NORMS = {"huber": (_huber, 1.345), "tukey": (_tukey, 4.685)}  # ψ_c(r, c, xp) and the default c


def proposal2_kappa(d: float, n: int, p: int) -> float:
    """κ = (n − p)/n · E_Φ[min(Z², d²)/2] = (n − p)/n · [d² + (1 − d²)Φ(d) − ½ − d φ(d)]."""
    normal = NormalDist()
    return (n - p) / n * (d**2 + (1 - d**2) * normal.cdf(d) - 0.5 - d * normal.pdf(d))


@dataclasses.dataclass(frozen=True)
class RobustScore:
    """ψ of a robust regression block: log σ stacked (proposal 2, constant κ in column ``{name}.kappa``) or σ
    fixed (column ``{name}.scale``). Hashable with no data-dependent field, so a refit compiles nothing new."""

    name: str
    norm: str
    c: float
    stacked: bool

    def __call__(self, theta, row):
        n = self.name
        x, y, m = row[f"{n}.X"], row[f"{n}.y"], row[f"{n}.mask"]
        beta, sigma = (theta[:-1], jnp.exp(theta[-1])) if self.stacked else (theta, row[f"{n}.scale"])
        r = (y - x @ beta) / sigma
        psi = m * NORMS[self.norm][0](r, self.c, jnp) * x
        if not self.stacked:
            return psi
        chi = 0.5 * jnp.minimum(r * r, HUBER_SCALE_D**2)
        return jnp.append(psi, m * (chi - row[f"{n}.kappa"]))


def _mad(residuals):
    return float(np.median(np.abs(residuals)) / MAD_NORMAL)


def _positive_mad(name, residuals, y) -> float:
    """The residuals' normalised MAD, or a DataError where it is 0 (to rounding: more than half the rows fitted
    exactly), since every scaled residual would then be infinite."""
    sigma = _mad(residuals)
    if not sigma > 1e-12 * max(1.0, float(np.max(np.abs(y)))):
        raise DataError(f"block '{name}': more than half the rows are fitted exactly by least squares (MAD of the "
                        f"residuals {sigma:.3g}), so the residual scale is 0; robust regression needs a positive "
                        "scale: give scale= a number")
    return sigma


def _huber_start(x, y, beta, sigma, max_iter=100):
    """Huber's β at a fixed σ by iteratively reweighted least squares (weights ψ_c(r)/r), from ``beta``."""
    huber, c = NORMS["huber"]
    for _ in range(max_iter):
        r = (y - x @ beta) / sigma
        w = np.sqrt(np.divide(huber(r, c, np), r, out=np.ones_like(r), where=r != 0))
        new = least_squares(x * w[:, None], y * w)
        if np.max(np.abs(new - beta)) <= 1e-10 * (1 + np.max(np.abs(beta))):
            return new
        beta = new
    return beta


def robust_regression(name: str, y: str, X=None, *, formula: str | None = None, norm: str = "huber",
                      c: float | None = None, scale="huber", mask=None, intercept: bool = True) -> Block:
    """Huber or Tukey biweight regression block (module docstring).

    Args:
        norm: ``"huber"`` or ``"tukey"``; c: its tuning constant (default 1.345 or 4.685).
        scale: ``"huber"`` (stacked log σ, proposal 2), ``"mad"`` (fixed at the LS residuals' MAD) or a positive
            number (fixed).
    Parameters: the design's coefficients, then ``log(scale)`` when the scale is stacked.

    Example (a Huber line through data with 5% gross outliers; truth (2, 0.5))::

        >>> import numpy as np, mestim
        >>> from estimators import robust_regression
        >>> rng = np.random.default_rng(3); x = rng.uniform(0, 10, 200)
        >>> y = 2.0 + 0.5 * x + rng.normal(size=200); y[:10] += 25.0
        >>> np.round(mestim.fit(robust_regression("rr", "y", ["x"]), {"x": x, "y": y}).theta[:2], 2)
        array([2.18, 0.49])
    """
    check_choice("norm", norm, tuple(NORMS))
    c = NORMS[norm][1] if c is None else c
    if not (isinstance(c, (int, float)) and np.isfinite(c) and c > 0):
        raise SpecificationError(f"c={c!r}: the tuning constant must be a positive number")
    if isinstance(scale, str):
        if scale not in ("huber", "mad"):
            raise SpecificationError(f"scale={scale!r}: use 'huber' (stacked), 'mad' (fixed) or a positive number")
    elif not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
        raise SpecificationError(f"scale={scale!r}: a fixed scale must be a positive number")

    def prepare(cols):
        m, x, labels = prepared_design(name, cols, X, formula, intercept, mask)
        yv = clean_in_mask(require_numeric(cols, y, what="outcome"), m, y)
        xm, ym = x[m], yv[m]
        n, p = int(m.sum()), x.shape[1]
        if scale == "mad":
            require_all_rows(cols, f"block '{name}': scale='mad' (the median absolute residual of a least-squares "
                             "fit)", "give scale= the number (the MAD of a fit on all rows) or scale='huber' (stacked)")
        if n <= p and partial(cols) is None:
            raise DataError(f"block '{name}' has {n} rows for {p} coefficients")
        if n > p:
            beta0 = least_squares(xm, ym)
            # σ: the fixed scale given, or the MAD of the least-squares residuals (scale='mad'; the others' start)
            sigma0 = float(scale) if not isinstance(scale, str) else _positive_mad(name, ym - xm @ beta0, ym)
            if norm == "tukey":  # a redescending ψ has several roots: start from Huber's fit
                beta0 = _huber_start(xm, ym, beta0, sigma0)
        else:  # too few rows to start from, in part of the rows (a stream's last batch): the fit starts elsewhere
            beta0, sigma0 = np.zeros(p), float(scale) if not isinstance(scale, str) else 1.0
        out = {f"{name}.X": x, f"{name}.y": yv, f"{name}.mask": m.astype(float)}
        if scale == "huber":
            rows = int(total(cols, f"block '{name}': rows (κ of proposal 2)", n=n)["n"])  # of the whole fit
            out[f"{name}.kappa"] = np.full(m.size, proposal2_kappa(HUBER_SCALE_D, rows, p))
            init = np.append(beta0, np.log(_positive_mad(name, ym - xm @ beta0, ym)) if n > p else 0.0)
            extra, how = ("log(scale)",), "stacked (proposal 2)"
        else:
            out[f"{name}.scale"] = np.full(m.size, sigma0)
            init, extra = beta0, ()
            how = f"fixed at {sigma0:.6g}" + (" (MAD of LS residuals)" if scale == "mad" else "")
        note = f"{norm} regression of {y} (c = {c:g}), scale {how}, {n} rows"
        return Prepared(out, init, tuple(labels) + extra, (note,), psi=RobustScore(name, norm, float(c),
                                                                                    scale == "huber"))

    return Block(name, None, prepare=prepare)
