"""The sandwich covariance V = A⁻¹ M A⁻ᵀ from the row sums, and its finite-sample corrections.

With unnormalised sums A = -Σ w ∂ψ/∂θᵀ (bread) and M = Σ w ψψᵀ (meat; Σ_g U_g U_gᵀ with clusters), V equals
the textbook B⁻¹MB⁻ᵀ/n with B, M averaged over n: the n's cancel. Corrections (as in R's geex):

- ``"df"``: V · n/(n − p), n = Σw (frequency weights) or the number of clusters.
- ``"fay"``: Fay & Graubard (2001) bias-corrected meat Σ_g H_g U_g U_gᵀ H_g with
  H_g = diag((1 − min(b, [A_g A⁻¹]_jj))^(-1/2)), A_g the cluster's (or row's) share of the bread, b = 0.75.

The bread is checked before it is inverted: a singular or numerically singular A raises
:class:`~mestim.errors.SingularBreadError` naming the parameters in its null direction; never a pseudo-inverse.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from .errors import SingularBreadError
from .sums import DEFAULT_CHUNK, sum_chunks

SINGULAR_COND = 1e13  # above this the bread's inverse has no correct digits left in float64
WARN_COND = 1e9


def bread_condition(bread: np.ndarray, labels) -> tuple[float, list[str]]:
    """Condition number of the bread, and the labels that dominate its smallest singular direction."""
    scale = np.sqrt(np.abs(np.diag(bread))) + 1e-300  # equilibrate so units of θ do not masquerade as collinearity
    eq = bread / scale[:, None] / scale[None, :]
    try:
        u, s, vt = np.linalg.svd(eq)
    except np.linalg.LinAlgError:
        return np.inf, list(labels)
    cond = np.inf if s[-1] <= s[0] * np.finfo(float).eps else float(s[0] / s[-1])
    direction = np.abs(vt[-1])
    involved = [labels[j] for j in np.argsort(-direction) if direction[j] > 0.1 * direction.max()]
    return cond, involved


def covariance(bread: np.ndarray, meat: np.ndarray, labels, *, condition=None, context: str = "") -> np.ndarray:
    """A⁻¹ M A⁻ᵀ, after checking A; raises :class:`SingularBreadError` naming the parameters involved.

    ``condition``: :func:`bread_condition`'s result when the caller already has it (one SVD per fit)."""
    if not np.all(np.isfinite(bread)):
        bad = sorted({labels[j] for j in np.argwhere(~np.isfinite(bread))[:, 1]})
        raise SingularBreadError(f"the bread has non-finite entries for parameter(s) {bad}{context}")
    cond, involved = condition if condition is not None else bread_condition(bread, labels)
    if cond > SINGULAR_COND:
        raise SingularBreadError(
            f"the bread is singular (condition number {cond:.3g}){context}; the parameters {involved} are not "
            "identified by the data: look for a constant or collinear covariate, an empty subset of rows, or a "
            "category with no rows")
    inv = np.linalg.inv(bread)
    v = inv @ meat @ inv.T
    return (v + v.T) / 2


def fay_meat(f, theta, data, w, j_sum, *, cluster=None, n_clusters=0, b=0.75, chunk_size=DEFAULT_CHUNK):
    """Fay's bias-corrected meat (traceable). ``j_sum`` = Σ w ∂ψ/∂θ at θ, so A_g A⁻¹ = J_g J⁻¹."""
    j_inv = jnp.linalg.inv(j_sum)
    per_row = jax.vmap(lambda row: (f(theta, row), jax.jacrev(f)(theta, row)))

    def leverage(jac):  # diag(J_g J⁻¹) for a stack of (k, p) Jacobians
        return jnp.einsum("...jl,lj->...j", jac, j_inv)

    def h(jac):
        return (1.0 - jnp.minimum(b, leverage(jac))) ** -0.5

    if cluster is None:
        def chunk(c):
            psi, jac = per_row(c["rows"])
            hp = h(jac) * psi
            return (hp * c["w"][:, None]).T @ hp
        return sum_chunks(chunk, {"rows": data, "w": w}, chunk_size)

    def chunk(c):
        psi, jac = per_row(c["rows"])
        wc = c["w"]
        zero = jnp.zeros((n_clusters,) + jac.shape[1:], jac.dtype)
        return (zero.at[c["cluster"]].add(jac * wc[:, None, None]),
                jnp.zeros((n_clusters, psi.shape[1]), psi.dtype).at[c["cluster"]].add(psi * wc[:, None]))
    jac_g, u_g = sum_chunks(chunk, {"rows": data, "w": w, "cluster": cluster}, chunk_size)
    hu = h(jac_g) * u_g
    return hu.T @ hu
