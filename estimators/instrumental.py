"""Instrumental-variable regression (IV, just-identified 2SLS) as estimating equations.

The structural model y = xᵀβ + u has regressors x = (1, W, A): exogenous covariates W and endogenous ones A,
correlated with u. Instruments Z are correlated with A but not with u (relevance and exclusion), so with
z = (1, W, Z) the moment conditions E[z (y − xᵀβ)] = 0 identify β, and the block's estimating function is

    ψ = m_i z_i (y_i − x_iᵀβ),        m_i = I(row i in the mask).

With as many instruments as endogenous regressors (just identified) Σψ = 0 is square and its root is the IV
estimator β̂ = (ZᵀX)⁻¹ Zᵀy, which equals two-stage least squares (regress A on z, then y on (1, W, Â)); the sandwich
(ZᵀX)⁻¹ (Σ û² z zᵀ) (XᵀZ)⁻¹ is the heteroskedasticity-robust (HC0) covariance, and it accounts for the first
stage (naive second-stage OLS SEs do not). The Jacobian Σ w ∂ψ/∂β = −Zᵀ diag(w m) X is supplied in closed form.

More instruments than endogenous regressors (over-identified) give more moment conditions than parameters
(``IVMoments`` returns one value per instrument): fit them with ``mestim.fit(..., gmm="two-step")`` (or
``"iterated"``), the efficient GMM estimator with its sandwich and Hansen's J test of the over-identifying
restrictions (:mod:`mestim.gmm`): the block declares its instruments, so the first step is 2SLS (as Stata's
``ivregress gmm`` and linearmodels' ``IVGMM``) and the second is efficient whatever the errors.

Example (one endogenous regressor, one instrument)::

    >>> import numpy as np, mestim
    >>> from estimators import iv
    >>> rng = np.random.default_rng(1)
    >>> z, u = rng.normal(size=(2, 5000))
    >>> a = 0.8 * z + u + rng.normal(size=5000)          # A is endogenous: it shares u with y
    >>> d = {"z": z, "a": a, "y": 1.0 + 0.5 * a + u}
    >>> res = mestim.fit([iv("iv", "y", endogenous="a", instruments="z")], d)
    >>> np.round(res.theta, 2)                           # truth (1, 0.5); OLS gives a slope of 0.87
    array([0.99, 0.46])
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mestim import Block, Prepared
from mestim.data import require_numeric
from mestim.errors import SpecificationError

from .design import block_rows, clean_design, clean_in_mask, design_matrix


@dataclasses.dataclass(frozen=True)
class IVMoments:
    """ψ = m z (y − xᵀβ): one moment condition per instrument (columns ``{name}.X``, ``.Z``, ``.y``, ``.mask``)."""

    name: str

    def __call__(self, beta, row):
        n = self.name
        return row[f"{n}.mask"] * (row[f"{n}.y"] - row[f"{n}.X"] @ beta) * row[f"{n}.Z"]

    def chunk_sums(self, beta, rows, w):
        """ψ of a chunk and Σ w ∂ψ/∂β = −Zᵀ diag(w m) X (one matrix product)."""
        n = self.name
        x, z, m = rows[f"{n}.X"], rows[f"{n}.Z"], rows[f"{n}.mask"]
        values = (m * (rows[f"{n}.y"] - x @ beta))[:, None] * z
        return values, -(z * (w * m)[:, None]).T @ x


def _names(v) -> list[str]:
    return [] if v is None else ([v] if isinstance(v, str) else list(v))


def iv(name: str, y: str, endogenous, instruments, exogenous=None, *, intercept: bool = True, mask=None) -> Block:
    """IV / just-identified 2SLS block (module docstring).

    Args:
        y: outcome column.
        endogenous: column name(s) of the endogenous regressors A.
        instruments: column name(s) of the excluded instruments Z, as many as ``endogenous``.
        exogenous: column name(s) of exogenous covariates W (their own instruments).
        intercept: include an intercept in x and z.
        mask: rows used.

    Parameters are labelled ``(Intercept)``, the exogenous, then the endogenous columns.

    Example (one instrument: the slope is the Wald ratio cov(z, y) / cov(z, a))::

        >>> import numpy as np, mestim
        >>> from estimators import iv
        >>> rng = np.random.default_rng(1); z, u = rng.normal(size=(2, 500))
        >>> a = 0.8 * z + u + rng.normal(size=500); d = {"z": z, "a": a, "y": 1.0 + 0.5 * a + u}
        >>> res = mestim.fit(iv("iv", "y", endogenous="a", instruments="z"), d)
        >>> bool(np.isclose(res.theta[1], np.cov(z, d["y"])[0, 1] / np.cov(z, a)[0, 1]))
        True
    """
    endog, instr, exog = _names(endogenous), _names(instruments), _names(exogenous)
    if not endog:
        raise SpecificationError(f"iv block '{name}': give at least one endogenous regressor")
    overlap = sorted(set(instr) & set(endog + exog))
    if overlap:
        raise SpecificationError(f"iv block '{name}': {overlap} cannot be both an instrument and a regressor")
    if len(instr) < len(endog):
        raise SpecificationError(
            f"iv block '{name}' is under-identified: {len(instr)} instrument(s) for {len(endog)} endogenous "
            "regressor(s); each endogenous regressor needs an instrument")

    def prepare(cols):
        m = block_rows(cols, mask, name)
        x, labels = design_matrix(cols, exog + endog, intercept=intercept)
        z, z_labels = design_matrix(cols, exog + instr, intercept=intercept)
        x, z = clean_design(cols, x, labels, m), clean_design(cols, z, z_labels, m)
        yv = clean_in_mask(require_numeric(cols, y, what="outcome"), m, y)
        # the IV estimate itself when just identified; 2SLS, (XᵀP_Z X)⁻¹XᵀP_Z y, when over-identified
        fitted, *_ = np.linalg.lstsq(z[m], x[m], rcond=None)
        start, *_ = np.linalg.lstsq(z[m] @ fitted, yv[m], rcond=None)
        kind = ("just identified: IV = 2SLS" if len(instr) == len(endog) else
                f"over-identified: {z.shape[1]} moments for {x.shape[1]} parameters, fit with gmm=")
        note = f"IV regression of {y} on {labels} with instruments {instr} for {endog}, {int(m.sum())} rows ({kind})"
        return Prepared({f"{name}.X": x, f"{name}.Z": z, f"{name}.y": yv, f"{name}.mask": m.astype(float)}, start,
                        tuple(labels), (note,), rows=m, instruments=f"{name}.Z")

    return Block(name, IVMoments(name), prepare=prepare)
