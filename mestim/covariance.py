"""The sandwich covariance V = A⁻¹ M A⁻ᵀ from the row sums, and its finite-sample corrections.

With unnormalised sums A = −Σ w ∂ψ/∂θᵀ (bread) and M = Σ w ψψᵀ (meat; Σ_g U_g U_gᵀ over cluster totals
U_g = Σ_{i∈g} w_i ψ_i), V equals the textbook B⁻¹MB⁻ᵀ/n with B, M averaged over n: the n's cancel.
Corrections (as in R's geex):

- ``"df"``: V · n/(n − p), n = Σw (frequency weights), the number of rows (sampling weights) or of clusters.
- ``"fay"``: Fay & Graubard (2001) bias-corrected meat Σ_g H_g U_g U_gᵀ H_g with
  H_g = diag((1 − min(b, [A_g A⁻¹]_jj))^(−1/2)), A_g the cluster's (or row's) share of the bread, b = 0.75.

Weights follow two identities, under every option: frequency weights give the expanded table (a row of weight w
is w rows) and sampling weights give the unweighted fit of w written inside ψ (:func:`units`). Every entry point
(``fit``, ``sandwich``, streams, sharded devices, processes, the pure fit and so the bootstrap) forms its meat
with :func:`units` and :func:`meat` and its covariance with :func:`covariance`.

The bread is factored once (:class:`BreadFactor`: one SVD of the equilibrated bread gives its condition number,
the parameters in its null direction and its inverse). A singular or numerically singular bread raises
:class:`~mestim.errors.SingularBreadError` naming those parameters; it is never pseudo-inverted.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

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


class Units(NamedTuple):
    """The units the meat adds up: rows, or clusters. M = Σ_u c_u H_u U_u U_uᵀ H_u (H_u = I without Fay)."""

    totals: np.ndarray  # (G, K) U_u: a row's ψ, w·ψ, or a cluster's Σ w ψ
    leverages: np.ndarray | None  # (G, K) diag(J_u J⁻¹), Fay's correction only
    counts: np.ndarray  # (G,) c_u: how many units each stands for (frequency weights on rows: w; else 1)


def units(values, w, *, sampling: bool, codes=None, n_clusters: int | None = None, leverages=None, xp=np) -> Units:
    """The units of the meat from per-row ψ_i (n, K), weights and, for Fay, the rows' leverages diag(J_i J⁻¹).

    Frequency weights: a row of weight w is w identical rows (the expanded table). Sampling weights: w written
    inside ψ, ψ*_i = w_i ψ_i (so J*_i = w_i J_i and the leverage is w_i diag(J_i J⁻¹)), an unweighted row. A
    cluster is the sum of its rows under either rule: U_g = Σ_{i∈g} w_i ψ_i, leverage Σ_{i∈g} w_i diag(J_i J⁻¹).
    ``xp``: numpy on the host, jax.numpy in the traced (vmapped) fit."""
    w = w[:, None]
    if codes is None:
        if not sampling:
            return Units(values, leverages, w[:, 0])
        return Units(w * values, None if leverages is None else w * leverages, xp.ones(values.shape[0]))
    lev = None if leverages is None else cluster_sums(w * leverages, codes, n_clusters, xp)
    return Units(cluster_sums(w * values, codes, n_clusters, xp), lev, xp.ones(n_clusters))


def cluster_sums(x, codes, n_clusters: int, xp=np):
    """(G, K) per-cluster sums of the rows of ``x``."""
    if xp is np:
        out = np.zeros((n_clusters,) + x.shape[1:])
        np.add.at(out, codes, x)
        return out
    return xp.zeros((n_clusters,) + x.shape[1:], x.dtype).at[codes].add(x)


def merge_clusters(parts) -> tuple[np.ndarray, Units]:
    """The cluster units of several sets of rows (batches, processes) given as ``(labels, Units)``: units with the
    same label are one cluster (totals and leverages add). Returns the sorted labels and their units."""
    labels = np.concatenate([np.asarray(lab) for lab, _ in parts])
    merged, codes = np.unique(labels, return_inverse=True)
    g = merged.size
    totals = cluster_sums(np.concatenate([u.totals for _, u in parts]), codes, g)
    fay = parts[0][1].leverages is not None
    lev = cluster_sums(np.concatenate([u.leverages for _, u in parts]), codes, g) if fay else None
    return merged, Units(totals, lev, np.ones(g))


def meat(u: Units, b: float = FAY_B, xp=np):
    """M = Σ_u c_u H_u U_u U_uᵀ H_u; with leverages, Fay & Graubard's H_u = diag((1 − min(b, lev_u))^(−1/2))."""
    totals = u.totals if u.leverages is None else u.totals * (1.0 - xp.minimum(b, u.leverages)) ** -0.5
    return (totals * u.counts[:, None]).T @ totals


def cluster_meat(u: Units) -> tuple[np.ndarray, int]:
    """(the meat, the number of clusters) of cluster units (host), which need at least two clusters."""
    if u.totals.shape[0] < 2:
        raise DataError("the cluster column has a single cluster: the clustered meat needs at least two")
    return meat(u), u.totals.shape[0]


def n_units(weight_type: str, sum_w, n_rows, n_clusters=None):
    """n of the df correction n/(n − p): the clusters, Σw (frequency weights) or the rows (sampling weights)."""
    if n_clusters:
        return n_clusters
    return sum_w if weight_type == "frequency" else n_rows


def covariance(bread_inv, meat_, df_units=None, xp=np):
    """V = A⁻¹ M A⁻ᵀ (symmetrised; A⁻¹ may be GMM's (GᵀWG)⁻¹GᵀW), times n/(n − p) when ``df_units`` = n is given
    (``correction="df"``). Traced (``xp`` = jax.numpy), too few units give NaN instead of an error."""
    v = bread_inv @ meat_ @ bread_inv.T
    v = (v + v.T) / 2
    if df_units is None:
        return v
    p = v.shape[0]
    if xp is np:
        return v * df_factor(df_units, p)
    return v * xp.where(df_units > p, df_units / (df_units - p), xp.nan)


def df_factor(n_units: float, p: int) -> float:
    if n_units <= p:
        raise DataError(f"correction='df' needs more units ({n_units:g}) than parameters ({p})")
    return n_units / (n_units - p)
