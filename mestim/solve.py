"""Root finding for Σψ(θ) = 0: damped Newton with a backtracking line search, compiled as one loop.

Step: δ = -J⁻¹ r with r = Σ w ψ(θ) and J = Σ w ∂ψ/∂θ. Line search halves α until the residual norm drops
enough, ‖r(θ + αδ)‖ ≤ (1 - 10⁻⁴ α)‖r(θ)‖ (Armijo on ½‖r‖²), which makes Newton globally robust on the
smooth, monotone problems M-estimators give (logistic, GLM) while keeping its quadratic local rate.

Where J is singular (a poor start) the minimum-norm least-squares step replaces the Newton step.
Converged when the full Newton step is tiny relative to θ (‖δ‖∞ ≤ xtol·(1 + ‖θ‖∞)) or the scaled residual
‖r‖∞ / Σw ≤ gtol. The whole loop runs inside ``lax.while_loop``: no host round trip, no recompilation per
iteration. Status codes are returned, never raised inside the compiled code; :mod:`mestim.fit` turns them
into errors that name the block.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

CONVERGED, MAX_ITER, SINGULAR, NONFINITE, LINE_SEARCH = 0, 1, 2, 3, 4
STATUS_TEXT = {
    CONVERGED: "converged",
    MAX_ITER: "reached the iteration limit",
    SINGULAR: "singular Jacobian",
    NONFINITE: "non-finite ψ or Jacobian",
    LINE_SEARCH: "line search failed to reduce the residual",
}


class SolverOptions(NamedTuple):
    max_iter: int = 100
    xtol: float = 1e-10
    gtol: float = 1e-12
    max_halvings: int = 40


class SolveResult(NamedTuple):
    theta: jax.Array
    status: jax.Array
    iterations: jax.Array
    residual: jax.Array  # ‖Σwψ‖∞ at the returned θ


def newton(residual_and_jacobian, residual, theta0, scale, options: SolverOptions) -> SolveResult:
    """Damped Newton from ``theta0``; ``residual_and_jacobian(θ) -> (r, J)``, ``residual(θ) -> r``.

    ``scale`` is Σw, which makes ``gtol`` a tolerance on the mean of ψ.
    """
    opts = options
    r0, j0 = residual_and_jacobian(theta0)

    def norm(r):
        return jnp.max(jnp.abs(r))

    def cond(state):
        _, _, _, it, status, done = state
        return (~done) & (it < opts.max_iter)

    def body(state):
        theta, r, jac, it, _, _ = state
        finite = jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(jac))
        newton_step = -jnp.linalg.solve(jac, r)
        # A singular J (e.g. the ratio estimator at θ = 0) gets the minimum-norm least-squares step instead:
        # a pseudo-inverse is fine for moving θ, never for the bread.
        invertible = jnp.all(jnp.isfinite(newton_step))
        delta = lax.cond(invertible, lambda: newton_step, lambda: -jnp.linalg.lstsq(jac, r)[0])
        singular = ~jnp.all(jnp.isfinite(delta))
        step_small = norm(delta) <= opts.xtol * (1.0 + norm(theta))
        f0 = norm(r)

        def ls_cond(s):
            alpha, f_new, h = s
            return (f_new > (1.0 - 1e-4 * alpha) * f0) & (h < opts.max_halvings)

        def ls_body(s):
            alpha, _, h = s
            alpha = alpha * 0.5
            return alpha, _safe_norm(residual(theta + alpha * delta)), h + 1

        alpha, f_new, h = lax.while_loop(
            ls_cond, ls_body, (jnp.asarray(1.0, theta.dtype), _safe_norm(residual(theta + delta)), 0))
        ls_failed = (h >= opts.max_halvings) & (f_new > f0)
        singular = singular | (ls_failed & ~invertible)
        ls_failed = ls_failed & invertible
        bad = (~finite) | singular | ls_failed
        theta_new = jnp.where(bad, theta, theta + alpha * delta)
        r_new, jac_new = residual_and_jacobian(theta_new)
        converged = (~bad) & (step_small | (norm(r_new) / scale <= opts.gtol))
        status = jnp.select([~finite, singular, ls_failed, converged], [NONFINITE, SINGULAR, LINE_SEARCH, CONVERGED],
                            MAX_ITER)
        return theta_new, r_new, jac_new, it + 1, status, converged | bad

    already = norm(r0) / scale <= opts.gtol
    init = (theta0, r0, j0, jnp.asarray(0), jnp.where(already, CONVERGED, MAX_ITER), already)
    theta, r, _, it, status, _ = lax.while_loop(cond, body, init)
    return SolveResult(theta, status, it, norm(r))


def _safe_norm(r):
    """‖r‖∞, with non-finite residuals treated as infinitely bad (so the line search backs off)."""
    return jnp.where(jnp.all(jnp.isfinite(r)), jnp.max(jnp.abs(r)), jnp.inf)
