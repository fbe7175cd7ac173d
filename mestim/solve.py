"""Root finding for Σψ(θ) = 0: damped Newton with a backtracking line search, compiled as one loop.

Step: δ = -J⁻¹ r with r = Σ w ψ(θ) and J = Σ w ∂ψ/∂θ. Line search halves α until the residual norm drops
enough, ‖r(θ + αδ)‖ ≤ (1 - 10⁻⁴ α)‖r(θ)‖, which makes Newton globally robust on the smooth, monotone problems
M-estimators give (logistic, GLM) while keeping its quadratic local rate. Where J is singular (a poor start,
e.g. the ratio estimator at θ = 0) a Levenberg–Marquardt step δ = -(JᵀJ + λI)⁻¹Jᵀr replaces the Newton step:
a regularised step is fine for moving θ, never for the bread.

Converged when the full Newton step is tiny relative to θ (‖δ‖∞ ≤ xtol·(1 + ‖θ‖∞)) or the scaled residual
‖r‖∞ / Σw ≤ gtol. Status codes are returned, never raised; :mod:`mestim.fit` turns them into errors that name
the block.

Two drivers run this one algorithm:

- :func:`newton_host` (``fit``, streamed fits): the loop runs in Python around compiled sums over the rows. The
  trial point θ + δ is evaluated *with* its Jacobian, so an accepted full step costs one pass over the data
  (the common case); only backtracking uses residual-only passes. Two small programs are compiled per group,
  which keeps the first call fast for stacks of many blocks.
- :func:`newton` (traced: :mod:`mestim.pure`, vmapped over data sets or bootstrap weights): the same steps in
  ``lax.while_loop``, so a whole batch of fits is one compiled call.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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
    running = -1

    def body(state):
        theta, it, _, _ = state
        r, jac = residual_and_jacobian(theta)
        f0 = _norm(r)
        finite = jnp.isfinite(f0) & jnp.all(jnp.isfinite(jac))
        newton_step = -jnp.linalg.solve(jac, r)
        invertible = jnp.all(jnp.isfinite(newton_step))
        delta = jnp.where(invertible, newton_step, _levenberg_marquardt_step(jac, r))
        converged = finite & ((f0 / scale <= opts.gtol)
                              | (invertible & (_norm(delta) <= opts.xtol * (1.0 + _norm(theta)))))

        def ls_cond(s):
            alpha, f_new, h = s
            return (f_new > (1.0 - 1e-4 * alpha) * f0) & (h < opts.max_halvings)

        def ls_body(s):
            alpha, _, h = s
            alpha = jnp.where(h == 0, 1.0, 0.5 * alpha)
            return alpha, _norm(residual(theta + alpha * delta)), h + 1

        alpha, f_new, _ = lax.while_loop(ls_cond, ls_body, (jnp.asarray(1.0, theta.dtype), jnp.inf, 0))
        stuck = (f_new > (1.0 - 1e-4 * alpha) * f0) | ~jnp.all(jnp.isfinite(delta))
        status = jnp.select([converged, ~finite, stuck & ~invertible, stuck, it >= opts.max_iter],
                            [CONVERGED, NONFINITE, SINGULAR, LINE_SEARCH, MAX_ITER], running)
        # At convergence the (tiny) step is still taken: it polishes θ to the last bit.
        move = (status == running) | (status == CONVERGED)
        theta = jnp.where(move & ~stuck, theta + alpha * delta, theta)
        return theta, it + (status == running), status, f0

    theta, it, status, norm_r = lax.while_loop(lambda s: s[2] == running, body,
                                               (theta0, jnp.asarray(0), jnp.asarray(running), jnp.inf))
    return SolveResult(theta, status, it, norm_r)


def newton_host(residual_and_jacobian, residual, theta0, scale, options: SolverOptions) -> SolveResult:
    """Damped Newton driven from the host; ``residual_and_jacobian(θ) -> (r, J)`` and ``residual(θ) -> r``
    return host arrays (each call is one pass over the rows). Same steps and statuses as :func:`newton`.

    ``scale`` is Σw, or a function returning it (a streamed source learns Σw on its first pass).
    """
    opts = options
    theta = np.asarray(theta0, float)
    r, jac = residual_and_jacobian(theta)
    scale = scale() if callable(scale) else scale
    it = 0
    while True:
        f0 = _host_norm(r)
        if not (np.isfinite(f0) and np.all(np.isfinite(jac))):
            return SolveResult(theta, NONFINITE, it, f0)
        if f0 / scale <= opts.gtol:
            return SolveResult(theta, CONVERGED, it, f0)
        if it >= opts.max_iter:
            return SolveResult(theta, MAX_ITER, it, f0)
        try:
            delta, invertible = -np.linalg.solve(jac, r), True
        except np.linalg.LinAlgError:
            delta, invertible = None, False
        if delta is None or not np.all(np.isfinite(delta)):
            jtj = jac.T @ jac
            lam = 1e-8 * max(np.trace(jtj) / jtj.shape[0], 1e-300)
            delta, invertible = -np.linalg.solve(jtj + lam * np.eye(len(jtj)), jac.T @ r), False
        if not np.all(np.isfinite(delta)):
            return SolveResult(theta, SINGULAR, it, f0)
        step_small = invertible and _host_norm(delta) <= opts.xtol * (1.0 + _host_norm(theta))
        alpha = 1.0
        r_new, jac_new = residual_and_jacobian(theta + delta)
        for _ in range(opts.max_halvings):
            if _host_norm(r_new) <= (1.0 - 1e-4 * alpha) * f0:
                break
            alpha *= 0.5
            r_new, jac_new = residual(theta + alpha * delta), None
        if _host_norm(r_new) > (1.0 - 1e-4 * alpha) * f0:
            if step_small:  # at machine precision: no step can reduce the residual further
                return SolveResult(theta, CONVERGED, it, f0)
            return SolveResult(theta, LINE_SEARCH if invertible else SINGULAR, it, f0)
        theta, it = theta + alpha * delta, it + 1
        r, jac = (r_new, jac_new) if jac_new is not None else residual_and_jacobian(theta)
        if step_small:
            return SolveResult(theta, CONVERGED, it, _host_norm(r))


def _host_norm(r) -> float:
    return float(np.max(np.abs(r))) if np.all(np.isfinite(r)) else np.inf


def _norm(r):
    """‖r‖∞, with non-finite residuals counted as infinitely bad (so the line search backs off)."""
    return jnp.where(jnp.all(jnp.isfinite(r)), jnp.max(jnp.abs(r)), jnp.inf)


def _levenberg_marquardt_step(jac, r):
    jtj = jac.T @ jac
    lam = 1e-8 * jnp.maximum(jnp.trace(jtj) / jtj.shape[0], 1e-300)
    return -jnp.linalg.solve(jtj + lam * jnp.eye(jtj.shape[0], dtype=jtj.dtype), jac.T @ r)
