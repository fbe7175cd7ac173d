"""The sandwich covariance V = A⁻¹ M A⁻ᵀ from the row sums, and its finite-sample corrections.

With unnormalised sums A = −Σ w ∂ψ/∂θᵀ (bread) and M = Σ w ψψᵀ (meat; Σ_g U_g U_gᵀ over cluster totals
U_g = Σ_{i∈g} w_i ψ_i), V equals the textbook B⁻¹MB⁻ᵀ/n with B, M averaged over n: the n's cancel.
Corrections (as in R's geex):

- ``"df"``: V · n/(n − p), n = Σw (frequency weights), the number of rows (sampling weights) or of clusters.
- ``"fay"``: Fay & Graubard (2001) bias-corrected meat Σ_g H_g U_g U_gᵀ H_g with
  H_g = diag((1 − min(b, [A_g A⁻¹]_jj))^(−1/2)), A_g the cluster's (or row's) share of the bread, b = 0.75.

The bread is factored once (:class:`BreadFactor`: one SVD of the equilibrated bread gives its condition number,
the parameters in its null direction and its inverse). A singular or numerically singular bread raises
:class:`~mestim.errors.SingularBreadError` naming those parameters; it is never pseudo-inverted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import DataError, SingularBreadError

SINGULAR_COND = 1e13  # above this the bread's inverse has no correct digits left in float64
WARN_COND = 1e9
FAY_B = 0.75


@dataclasses.dataclass(frozen=True)
class BreadFactor:
    """The SVD of the bread equilibrated by D = diag(s): A = D E D, E = U Σ Vᵀ, so A⁻¹ = D⁻¹ V Σ⁻¹ Uᵀ D⁻¹.

    Equilibrating (s_j = √|A_jj|, or the row and column scale where A_jj = 0) keeps the units of θ from
    masquerading as collinearity.
    """

    scale: np.ndarray
    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    labels: tuple[str, ...]

    @classmethod
    def of(cls, bread: np.ndarray, labels) -> "BreadFactor":
        labels = tuple(labels)
        if not np.all(np.isfinite(bread)):
            bad = sorted({labels[j] for j in np.argwhere(~np.isfinite(bread))[:, 1]})
            raise SingularBreadError(f"the bread has non-finite entries for parameter(s) {bad}: ψ or its derivative "
                                     "is NaN or infinite at θ̂ for some rows")
        scale = equilibration(bread, np)
        u, s, vt = np.linalg.svd(bread / scale[:, None] / scale[None, :])
        return cls(scale, u, s, vt, labels)

    @property
    def condition(self) -> float:
        return np.inf if self.s[-1] <= self.s[0] * np.finfo(float).eps else float(self.s[0] / self.s[-1])

    @property
    def involved(self) -> list[str]:
        """The parameters that dominate the bread's smallest singular direction."""
        direction = np.abs(self.vt[-1])
        return [self.labels[j] for j in np.argsort(-direction) if direction[j] > 0.1 * direction.max()]

    def check(self, context: str = "") -> None:
        if self.condition > SINGULAR_COND:
            raise SingularBreadError(
                f"the bread is singular (condition number {self.condition:.3g}){context}; the parameters "
                f"{self.involved} are not identified by the data: look for a constant or collinear covariate, an "
                "empty subset of rows, or a category with no rows")

    def inverse(self) -> np.ndarray:
        return (self.vt.T / self.s) @ self.u.T / self.scale[:, None] / self.scale[None, :]


def equilibration(bread, xp):
    """s with A = D E D, D = diag(s): s_j = √|A_jj|, or √ of the row and column scale where A_jj = 0 (numpy or
    jax.numpy ``xp``: the host fit and the traced, vmapped fit equilibrate alike)."""
    diag = xp.abs(xp.diag(bread))
    cross = xp.sqrt(xp.max(xp.abs(bread), axis=0) * xp.max(xp.abs(bread), axis=1))
    return xp.sqrt(xp.where(diag > 0, diag, xp.where(cross > 0, cross, 1.0)))


def sandwich_covariance(bread_inv: np.ndarray, meat: np.ndarray) -> np.ndarray:
    v = bread_inv @ meat @ bread_inv.T
    return (v + v.T) / 2


def fay_meat(values: np.ndarray, leverages: np.ndarray, w: np.ndarray, codes: np.ndarray | None, n_clusters: int,
             b: float = FAY_B) -> np.ndarray:
    """Fay's meat from the rows' ψ_i and leverages diag(J_i J⁻¹) (J_i = ∂ψ_i/∂θ, J = Σ w J_i).

    Without clusters a row of weight w counts as w rows: Σ w_i H_i ψ_i ψ_iᵀ H_i. With clusters the leverage of
    cluster g is diag(J_g J⁻¹) = Σ_{i∈g} w_i diag(J_i J⁻¹), linear in its rows.
    """
    def h(lev):
        return (1.0 - np.minimum(b, lev)) ** -0.5

    if codes is None:
        hv = h(leverages) * values
        return (hv * w[:, None]).T @ hv
    u, lev = np.zeros((n_clusters, values.shape[1])), np.zeros((n_clusters, values.shape[1]))
    np.add.at(u, codes, w[:, None] * values)
    np.add.at(lev, codes, w[:, None] * leverages)
    hu = h(lev) * u
    return hu.T @ hu


def df_factor(n_units: float, p: int) -> float:
    if n_units <= p:
        raise DataError(f"correction='df' needs more units ({n_units:g}) than parameters ({p})")
    return n_units / (n_units - p)
