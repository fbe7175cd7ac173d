"""The one solve loop: every dependency level of a stack solved by :func:`mestim.solve.solve_host` over a row source.

Level by level (:func:`mestim.blocks.solve_levels`; one level when ``solve="joint"``), each evaluation is one pass
of the source with a plan that computes the level's values and Jacobian (residual-only for backtracking). A
level's rows of the bread come from its last pass: later levels do not change the parameters they depend on.
The meat (Σ a ψψᵀ, as costly as a coloured Jacobian for a wide stack) is computed once, at θ̂, by one pass of every
block's values and the meat, where the source's passes are cheap to repeat (``source.meat_once``: data on the
device); otherwise (a stream reads its rows anew on every pass) the passes of the last level also compute every
block's values and the meat, so the pass that ends the solve holds all the sandwich needs. A source may run the
whole solve of a one-level stack and the pass at θ̂ in one compiled program (``source.solve_in_one_program``:
rows hoisted in one slab, :mod:`mestim.hoist`): the same rules (:func:`mestim.solve.solve_traced`), without a
host round trip per pass.
"""

from __future__ import annotations

import numpy as np

from .blocks import solve_levels
from .errors import ConvergenceError, SingularBreadError
from .options import FitOptions
from .solve import CONVERGED, NONFINITE, SINGULAR, STATUS, SolverOptions, State, solve_host
from .sums import Moments, plan


def solve_stack(source, init: np.ndarray, labels, options: FitOptions):
    """(θ̂, the row sums at θ̂ with the whole stack's Jacobian and meat, Newton iterations)."""
    spec = source.kernel.spec
    every = tuple(b.name for b in spec.blocks)
    levels = solve_levels(spec.blocks) if options.solve == "blockwise" else [every]
    offsets, equations = spec.offsets(), spec.equation_offsets()
    solver = SolverOptions(options.max_iter, options.xtol, options.gtol, options.method)
    theta = np.array(init, float)
    jac = np.zeros((spec.equations, spec.dim))
    iterations = 0
    once = getattr(source, "meat_once", False)
    whole = None
    for number, level in enumerate(levels):
        last = number == len(levels) - 1 and not once  # this level's passes carry every value and the meat
        idx = np.concatenate([np.arange(offsets[b].start, offsets[b].stop) for b in level])
        eqs = np.concatenate([np.arange(equations[b].start, equations[b].stop) for b in level])
        with_jac = plan(spec, values=every if last else level, jacobian=level, meat=last, sampling=options.sampling)
        residual_only = plan(spec, values=level)
        # a pass of the last level that likely ends the solve (mestim.solve.closing) also takes every value and the
        # meat, so that no pass at θ̂ follows it
        closes = once and number == len(levels) - 1
        closing_plan = plan(spec, values=every, jacobian=level, meat=True, sampling=options.sampling) if closes else None
        seen = {}  # the last evaluation with a Jacobian, by point: (its sums, whether they hold the meat at θ̂)

        def evaluate(t, want_jac, closing=False):
            full = theta.copy()
            full[idx] = t
            closing = bool(closing) and closes
            m = source.sums(full, (closing_plan if closing else with_jac) if want_jac else residual_only)
            if want_jac:
                seen.clear()
                seen[t.tobytes()] = m, closing
            return m.psi[eqs], (m.jac[np.ix_(eqs, idx)] if want_jac else None)

        # the solve and the sums at θ̂ in one program, where the source offers it (rows of a small in-memory source)
        whole = source.solve_in_one_program(theta, with_jac, plan(spec, values=every, meat=True,
                                                                  sampling=options.sampling), solver) if (
            len(levels) == 1 and once and not callable(options.root_finder)
            and hasattr(source, "solve_in_one_program")) else None
        if whole is not None:
            state, final = whole
        elif callable(options.root_finder):
            state = _external_root(options.root_finder, evaluate, theta[idx], source.sum_w, options.gtol)
        else:
            state = solve_host(evaluate, theta[idx], lambda: source.sum_w, solver)
        if state.status != CONVERGED:
            at = theta.copy()
            at[idx] = state.theta
            rows = source.nonfinite_rows(at) if state.status == NONFINITE and hasattr(source, "nonfinite_rows") else None
            raise_for_status(state, level, [labels[i] for i in idx], source.sum_w, rows)
        theta[idx] = state.theta
        with_meat = whole is not None
        if whole is None:
            final, with_meat = seen.get(np.asarray(state.theta).tobytes()) or (source.sums(theta, with_jac), False)
        jac[eqs] = final.jac[eqs]
        iterations += int(state.iterations)
    if once and not with_meat:
        final = source.sums(theta, plan(spec, values=every, meat=True, sampling=options.sampling))
    return theta, Moments(final.psi, jac, final.meat, final.sum_w), iterations


def _external_root(root_finder, evaluate, start, scale, gtol):
    """A user's root finder ``root_finder(fun, jac, x0) -> x`` on one level, its answer checked like ours."""
    x = np.asarray(root_finder(lambda t: evaluate(np.asarray(t, float), False)[0],
                               lambda t: evaluate(np.asarray(t, float), True)[1], np.array(start, float)), float)
    if x.shape != np.shape(start):
        raise ConvergenceError(f"the root finder returned shape {x.shape}; expected {np.shape(start)}")
    r, jac = evaluate(x, True)
    residual = float(np.max(np.abs(r))) if np.all(np.isfinite(r)) else float("inf")
    if not residual / scale <= gtol:
        raise ConvergenceError(f"the root finder returned θ = {np.round(x[:8], 6).tolist()} where ‖Σψ‖∞ per unit "
                               f"weight is {residual / scale:.3g} > gtol = {gtol:g}: tighten its tolerance, raise "
                               "gtol=, or use root_finder='auto'")
    return State(x, r, jac, 0.0, np.zeros_like(x), 1.0, 0, False, False, 0, 1, CONVERGED, x, False)


def raise_for_status(state, level, labels, scale, nonfinite_rows=None, equation_labels=None) -> None:
    """The error for a level that did not converge, naming its blocks, its last θ and what to try
    (``equation_labels``: of the residuals, where there are more equations than parameters)."""
    equation_labels = labels if equation_labels is None else equation_labels
    names = ", ".join(f"'{g}'" for g in level)
    text, advice = STATUS[int(state.status)]
    residual = float(state.residual) if np.all(np.isfinite(state.r)) else float("inf")
    zero = _derivative_zero(state.jac, labels)
    if zero:
        raise SingularBreadError(
            f"block(s) {names}: ψ does not vary with {zero} (its derivative is zero at θ = "
            f"{np.round(np.asarray(state.theta), 4).tolist()[:8]}): an estimating function built from indicators "
            "or step functions (a quantile, 1{y ≤ θ}) has a zero derivative almost everywhere: give its block "
            "smooth='auto' or a bandwidth (docs/nonsmooth.md); if it is smoothed already, start θ inside the data "
            "(e.g. at the sample quantile); otherwise check that ψ uses these parameters")
    if int(state.status) == SINGULAR:
        from .covariance import BreadFactor

        jac = np.asarray(state.jac)
        square = jac if jac.shape[0] == jac.shape[1] else jac.T @ jac  # GMM: GᵀG shares G's null directions
        factor = BreadFactor.of(-square, labels) if np.all(np.isfinite(jac)) else None
        cond = f" (condition number {factor.condition:.3g})" if factor is not None else ""
        involved = factor.involved if factor is not None else labels
        raise SingularBreadError(
            f"block(s) {names}: the Jacobian of Σψ became singular{cond} after {int(state.iterations)} "
            f"iteration(s); parameters {involved} are not identified: {advice.split(': ', 1)[1]}")
    where = ""
    at = "at the starting values" if int(state.iterations) == 0 else "at the last θ"
    advice = advice.format(at=at)
    if int(state.status) == NONFINITE:
        bad = sorted({labels[j] for j in np.argwhere(~np.isfinite(np.asarray(state.jac)))[:, 1]})
        bad_r = [equation_labels[j] for j in np.flatnonzero(~np.isfinite(np.asarray(state.r)))]
        where = (f"; ψ is non-finite for {bad_r}" if bad_r else "") + (
            f"; its derivative is non-finite with respect to {bad}" if bad else "")
        if bad and not bad_r:
            advice = (f"the derivative of ψ is NaN or infinite {at} where ψ itself is finite: ψ is not "
                      "differentiable there (√θ or |θ| at 0, a power below 1 at 0, a log multiplied by 0); give init= "
                      "values where ψ is differentiable, or reparametrise (e.g. θ = exp(η))")
        if nonfinite_rows is not None:
            for kind, rows in zip(("ψ", "its derivative"), nonfinite_rows):
                if rows.size:
                    where += f"; {kind} is non-finite first at row(s) {rows[:5].tolist()} ({rows.size} rows in all)"
    shown = np.round(np.asarray(state.theta)[:8], 4).tolist()
    raise ConvergenceError(
        f"block(s) {names} did not converge: {text} after {int(state.iterations)} iteration(s); final residual "
        f"‖Σψ‖∞ = {residual:.3g} (per unit weight {residual / scale:.3g}){where}; last θ for "
        f"{labels[:8]}{'…' if len(labels) > 8 else ''} = {shown}; {advice}")


def _derivative_zero(jac, labels) -> list[str]:
    """All the level's parameters when its Jacobian is exactly zero (ψ does not vary with θ), else none."""
    jac = np.asarray(jac)
    return list(labels) if jac.size and np.all(jac == 0) else []
