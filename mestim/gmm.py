"""Over-identified estimating equations: the generalized method of moments (Hansen 1982).

With K estimating equations for P < K parameters (say, two instruments for one endogenous regressor), Σψ(θ) = 0
has no solution; GMM minimises the quadratic form Q(θ) = gᵀ W g of the summed moments g(θ) = Σ w ψ(θ):

- **two-step**: θ̂₁ with a first-step weight W₁, then θ̂ with the efficient weight W = M(θ̂₁)⁻¹, M = Σ w ψψᵀ (the
  meat);
- **iterated**: W = M(θ̂_k)⁻¹ again and again until θ̂ or the objective stops moving (Hansen, Heaton & Yaron 1996).

The first step, block by block (W₁ block-diagonal): a block that declares its instruments z (ψ = z·e(θ), the IV
block) is weighted by (Σ w z zᵀ)⁻¹, which makes θ̂₁ two-stage least squares, the first step of Stata's
``ivregress gmm`` and linearmodels' ``IVGMM``; any other block by the inverse of its moments' covariance at the
starting values. Either is invariant to the units of a moment (an instrument rescaled ×100 leaves θ̂ where it was),
which W = I is not. The result's notes say which.

With ``cluster=``, M is Σ_g U_g U_gᵀ over the cluster totals U_g of the moments, in W, the sandwich and J alike.

Each step is the solver of :mod:`mestim.solve` on the whitened moments r = Cᵀg with W = CCᵀ (Cholesky), whose
Newton step is the Gauss–Newton step of Q. With G = Σ w ∂ψ/∂θᵀ (K × P) at θ̂ and B = (GᵀWG)⁻¹GᵀW, the sandwich is
V = B M Bᵀ, which is (GᵀM⁻¹G)⁻¹ when W = M⁻¹ at θ̂; Hansen's J = gᵀWg is χ² on K − P degrees of freedom when the
over-identifying restrictions hold. An exactly identified stack gives its M-estimator whatever W.
"""

from __future__ import annotations

import numpy as np

from . import processes
from .covariance import SINGULAR_COND, BreadFactor
from .driver import raise_for_status
from .errors import ConvergenceError, SingularBreadError
from .solve import CONVERGED, SolverOptions, solve_host
from .sums import plan

METHODS = ("two-step", "iterated")
MAX_STEPS = 50  # iterated GMM: weight updates at most


def solve_gmm(source, problem, options, meat=None):
    """(θ̂, the row sums at θ̂ (Jacobian and meat of the whole stack), Newton iterations, the last weight W, notes).

    The stack is solved jointly (``solve="joint"``). ``meat(θ, sums)``: the moments' covariance that weights the
    next step (default: the row meat Σ w ψψᵀ; with clusters, Σ_g U_g U_gᵀ)."""
    spec = source.kernel.spec
    labels, equation_labels = problem.labels, problem.equation_labels
    every = tuple(b.name for b in spec.blocks)
    with_jac = plan(spec, values=every, jacobian=every, meat=True, sampling=options.sampling)
    residual_only = plan(spec, values=every)
    solver = SolverOptions(options.max_iter, options.xtol, options.gtol, options.method)
    covariance = (lambda t, sums: sums.meat) if meat is None else meat
    theta = np.array(problem.init, float)
    weight, note = _first_weight(problem, source, lambda: covariance(theta, source.sums(theta, with_jac)))
    iterations, last_step, objective = 0, 1 if options.gmm == "two-step" else MAX_STEPS - 1, None
    for step in range(last_step + 1):
        root = _cholesky(weight)
        seen = {}

        def evaluate(t, want_jac, closing):
            m = source.sums(t, with_jac if want_jac else residual_only)
            if want_jac:
                seen.clear()
                seen[t.tobytes()] = m
            return root.T @ m.psi, (root.T @ m.jac if want_jac else None)

        state = solve_host(evaluate, theta, lambda: source.sum_w, solver)
        if state.status != CONVERGED:
            raise_for_status(state, every, list(labels), source.sum_w,
                             equation_labels=[f"whitened {e}" for e in equation_labels])
        moved = np.max(np.abs(state.theta - theta)) > options.xtol * (1 + np.max(np.abs(theta)))
        theta, iterations = np.asarray(state.theta, float), iterations + int(state.iterations)
        final = seen.get(theta.tobytes()) or source.sums(theta, with_jac)
        # iterated: settled when θ no longer moves, or the objective Q = gᵀWg no longer changes (to rounding)
        previous, objective = objective, float(final.psi @ weight @ final.psi)
        settled = not moved or (previous is not None and abs(objective - previous) <= 1e-12 * max(objective, 1e-300))
        if (options.gmm == "two-step" and step == 1) or (step > 0 and settled):
            return theta, final, iterations, weight, (note,)
        weight = _inverse(covariance(theta, final), equation_labels)
    raise ConvergenceError(f"iterated GMM did not settle in {MAX_STEPS} weight updates (θ still moves by more than "
                           "xtol and the objective still changes); use gmm='two-step'")


def _first_weight(problem, source, moments_covariance):
    """W₁ (block-diagonal) and a note naming its blocks: (Σ w z zᵀ)⁻¹ for blocks that declare instruments z (2SLS),
    the inverse of the moments' covariance at the starting values for the others."""
    spec, equations = problem.spec, problem.spec.equation_offsets()
    first = np.zeros((spec.equations, spec.equations))
    declared = [b.name for b in spec.blocks if b.name in problem.instruments]
    others = [b.name for b in spec.blocks if b.name not in problem.instruments]
    at_start = moments_covariance() if others else None
    if at_start is not None and not np.all(np.isfinite(np.diag(at_start))):
        bad = [problem.equation_labels[j] for j in np.flatnonzero(~np.isfinite(np.diag(at_start)))]
        raise ConvergenceError(f"GMM first step: ψ is non-finite at the starting values for {bad}: check ψ for "
                               "log(0), 1/0 or overflow, and give init= values inside its domain")
    for b in spec.blocks:
        eqs = equations[b.name]
        first[eqs, eqs] = (_instrument_moments(problem, source, problem.instruments[b.name]) if b.name in declared
                           else at_start[eqs, eqs])
    parts = ([f"2SLS for block(s) {declared} (W = (Σ w z zᵀ)⁻¹ over their instruments z, as Stata's ivregress gmm "
              "and linearmodels' IVGMM)"] if declared else []) + (
        [f"W = the inverse of the moments' covariance at the starting values for block(s) {others}"] if others else [])
    return _inverse(first, problem.equation_labels), "GMM first step: " + "; ".join(parts)


def _instrument_moments(problem, source, column) -> np.ndarray:
    """Σ w z zᵀ of a block's instruments (rows outside its mask hold z = 0), summed over processes."""
    z = np.asarray(problem.columns[column], float)
    zz = (z * problem.w[:, None]).T @ z
    if isinstance(source, processes.Distributed):  # each process holds its own rows
        zz = sum(np.asarray(part) for part in source.group.allgather_json(zz.tolist(), "Σ w z zᵀ of the instruments"))
    return zz


def _cholesky(weight):
    try:
        return np.linalg.cholesky(weight)
    except np.linalg.LinAlgError:
        raise SingularBreadError("the GMM weight (the inverse of the moments' covariance) is not positive "
                                 "definite: some moment conditions are redundant or constant") from None


def _inverse(meat: np.ndarray, equation_labels) -> np.ndarray:
    """W = M⁻¹ by the bread's factorisation (:class:`~mestim.covariance.BreadFactor`), naming redundant moments."""
    factor = BreadFactor.of(meat, equation_labels)
    if factor.condition > SINGULAR_COND:
        raise SingularBreadError(f"the moments' covariance is singular (condition number {factor.condition:.3g}): "
                                 f"moment conditions {factor.involved} are linear combinations of others; drop the "
                                 "redundant ones")
    inverse = factor.inverse()
    return (inverse + inverse.T) / 2
