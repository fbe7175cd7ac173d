"""Over-identified estimating equations: the generalized method of moments (Hansen 1982).

With K estimating equations for P < K parameters (say, two instruments for one endogenous regressor), Σψ(θ) = 0
has no solution; GMM minimises the quadratic form Q(θ) = gᵀ W g of the summed moments g(θ) = Σ w ψ(θ):

- **two-step**: θ̂₁ with W = I, then θ̂ with the efficient weight W = M(θ̂₁)⁻¹, M = Σ w ψψᵀ (the meat);
- **iterated**: W = M(θ̂_k)⁻¹ again and again until θ̂ stops moving (Hansen, Heaton & Yaron 1996).

With ``cluster=``, M is Σ_g U_g U_gᵀ over the cluster totals U_g of the moments, in W, the sandwich and J alike.

Each step is the solver of :mod:`mestim.solve` on the whitened moments r = Cᵀg with W = CCᵀ (Cholesky), whose
Newton step is the Gauss–Newton step of Q. With G = Σ w ∂ψ/∂θᵀ (K × P) at θ̂ and B = (GᵀWG)⁻¹GᵀW, the sandwich is
V = B M Bᵀ, which is (GᵀM⁻¹G)⁻¹ when W = M⁻¹ at θ̂; Hansen's J = gᵀWg is χ² on K − P degrees of freedom when the
over-identifying restrictions hold. An exactly identified stack gives its M-estimator whatever W.
"""

from __future__ import annotations

import numpy as np

from .covariance import SINGULAR_COND, BreadFactor
from .driver import raise_for_status
from .errors import ConvergenceError, SingularBreadError
from .solve import CONVERGED, SolverOptions, solve_host
from .sums import plan

METHODS = ("two-step", "iterated")
MAX_STEPS = 50  # iterated GMM: weight updates at most


def solve_gmm(source, init: np.ndarray, labels, equation_labels, options, meat=None):
    """(θ̂, the row sums at θ̂ (Jacobian and meat of the whole stack), Newton iterations, the last weight W).

    The stack is solved jointly (``solve=`` does not apply). ``meat(θ, sums)``: the moments' covariance that
    weights the next step (default: the row meat Σ w ψψᵀ; with clusters, Σ_g U_g U_gᵀ)."""
    spec = source.kernel.spec
    every = tuple(b.name for b in spec.blocks)
    with_jac = plan(spec, values=every, jacobian=every, meat=True, sampling=options.sampling)
    residual_only = plan(spec, values=every)
    solver = SolverOptions(options.max_iter, options.xtol, options.gtol, options.method)
    theta, weight = np.array(init, float), np.eye(spec.equations)
    iterations, last_step = 0, 1 if options.gmm == "two-step" else MAX_STEPS - 1
    for step in range(last_step + 1):
        root = _cholesky(weight)
        seen = {}

        def evaluate(t, want_jac):
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
        if (options.gmm == "two-step" and step == 1) or (step > 0 and not moved):
            return theta, final, iterations, weight
        weight = _inverse(final.meat if meat is None else meat(theta, final), equation_labels)
    raise ConvergenceError(f"iterated GMM did not settle in {MAX_STEPS} weight updates (θ still moves by more than "
                           "xtol); use gmm='two-step'")


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
