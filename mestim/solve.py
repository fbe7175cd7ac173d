"""Root finding for Σψ(θ) = 0: Newton with backtracking, and Levenberg–Marquardt where Newton cannot go on.

The rules, written once (:func:`start`, :func:`advance`, over numpy or jax.numpy) and run by two loops:
:func:`solve_host` (``fit``, streamed fits: each evaluation is a pass over the rows, driven from Python) and
:func:`solve_traced` (``lax.while_loop``: :mod:`mestim.pure`, vmapped over data sets). Both visit the same
points and end with the same status.

- **Newton step** δ = −J⁻¹r (r = Σwψ, J = Σw∂ψ/∂θ), tried at θ + αδ with α = 1, ½, ¼, … while the sum of squares
  f = ‖r‖² does not fall: accepted when f(θ + αδ) ≤ (1 − 10⁻⁴α) f(θ). The first trial is evaluated with its
  Jacobian (an accepted full step is one pass over the rows); backtracking trials are residual-only.
- **Levenberg–Marquardt** takes over when J is singular or ``MAX_HALVINGS`` halvings fail: δ = −(JᵀJ + λD)⁻¹Jᵀr
  with D = diag(JᵀJ) (Marquardt's scaling: invariant to the units of θ). A trial is accepted when f falls by at
  least 10⁻⁴ of the decrease the linear model predicts (ρ ≥ 10⁻⁴); then λ shrinks (÷10 when ρ > ¾, ×2 when
  ρ < ¼) and Newton resumes once λ < 10⁻⁶; a rejected trial multiplies λ by 10. A regularised step moves θ; it
  never enters the bread.
- **Converged** when ‖r‖∞/Σw ≤ gtol, or after an accepted Newton step with ‖δ‖∞ ≤ xtol·(1 + ‖θ‖∞) (that last
  step polishes θ to the last bit; if no trial improves on θ, θ is already converged to machine precision).
- **More equations than parameters** (GMM, :mod:`mestim.gmm`): the same rules minimise f = ‖r‖², the Newton step
  being the least-squares (Gauss–Newton) step and every acceptance test relative to the decrease the linear model
  predicts; f does not reach 0, so the step test ends the solve, or the point where no step lowers f (a minimum
  of f to rounding: the GMM objective's, never a root).
- ``method``: ``"auto"`` (the above), ``"newton"`` (no Levenberg–Marquardt: a singular J or a failed line search
  stops the solve) or ``"lm"`` (Levenberg–Marquardt from the first step; λ never returns to 0).

Statuses are values, never raised: :data:`STATUS` gives each one's message and advice, and :mod:`mestim.driver`
turns a failure into an error that names the block.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

RUNNING, CONVERGED, MAX_ITER, SINGULAR, NONFINITE, NO_PROGRESS = -1, 0, 1, 2, 3, 4
STATUS = {
    CONVERGED: ("converged", ""),
    MAX_ITER: ("reached the iteration limit", "try better init= values or a larger max_iter="),
    SINGULAR: ("singular Jacobian", "the parameters are not identified: look for a constant or collinear "
               "covariate, an empty subset of rows, or perfect separation"),
    NONFINITE: ("non-finite ψ or Jacobian", "ψ is NaN or infinite {at}: check ψ for log(0), 1/0 or overflow, and "
                "give init= values inside its domain"),
    NO_PROGRESS: ("line search failed to reduce the residual", "no step reduces ‖Σψ‖: θ sits at a local minimum of "
                  "‖Σψ‖ that is not a root, or ψ is not smooth; try other init= values"),
}
STATUS_TEXT = {code: text for code, (text, _) in STATUS.items()}
MAX_HALVINGS = 5
LM_START, LM_MIN, LM_MAX = 1e-2, 1e-6, 1e16


METHODS = ("auto", "newton", "lm")


class SolverOptions(NamedTuple):
    max_iter: int = 100
    xtol: float = 1e-10
    gtol: float = 1e-12
    method: str = "auto"  # "auto": Newton, LM where it cannot go on; "newton": Newton only; "lm": LM only

    @property
    def newton(self) -> bool:
        return self.method != "lm"

    @property
    def lm(self) -> bool:
        return self.method != "newton"


class State(NamedTuple):
    """The solver between two evaluations; ``trial`` is the next point to evaluate."""

    theta: np.ndarray  # current point, with r and jac evaluated there
    r: np.ndarray
    jac: np.ndarray
    lam: float  # 0: Newton steps; > 0: Levenberg–Marquardt damping
    delta: np.ndarray  # the step of the current iteration
    alpha: float  # fraction of a Newton step being tried
    halvings: int
    small: bool  # the current Newton step is below xtol
    refresh: bool  # the last accepted trial had no Jacobian: the next evaluation is at theta, with it
    iterations: int  # accepted steps
    evaluations: int
    status: int
    trial: np.ndarray
    want_jac: bool  # does the next evaluation need the Jacobian?

    @property
    def residual(self):
        """‖Σwψ‖∞ at ``theta``."""
        return np.max(np.abs(self.r))


def start(xp, theta, r, jac, scale, options: SolverOptions) -> State:
    """The state after evaluating (r, J) at the starting point."""
    zero, false = xp.asarray(0.0), xp.asarray(False)
    state = State(theta, r, jac, zero, xp.zeros_like(theta), xp.asarray(1.0), xp.asarray(0), false, false,
                  xp.asarray(0), xp.asarray(1), xp.asarray(RUNNING), theta, xp.asarray(True))
    return _propose(xp, state, scale, options)


def advance(xp, s: State, r_t, jac_t, has_jac, scale, options: SolverOptions) -> State:
    """The state after evaluating ``s.trial``: ``r_t`` and, when ``has_jac``, ``jac_t`` there."""
    if not _is_traced(xp) and s.refresh:  # host: the Jacobian at the accepted point, then the next step
        return _propose(xp, s._replace(jac=jac_t, refresh=False, evaluations=s.evaluations + 1), scale, options)
    f0, f_t = _squares(xp, s.r), _squares(xp, r_t)
    newton = s.lam == 0
    lin = s.r + s.jac @ s.delta
    predicted = f0 - xp.sum(lin * lin)  # the decrease of f the linear model predicts (all of f when J is square)
    accept = xp.where(newton, f_t <= f0 - 1e-4 * s.alpha * predicted,
                      (f_t < f0) & (f0 - f_t >= 1e-4 * predicted))
    evaluations = s.evaluations + 1

    # accepted: move, adapt λ, and stop if the step was already below xtol
    rho = (f0 - f_t) / xp.where(predicted > 0, predicted, 1.0)
    lam = xp.where(rho > 0.75, s.lam / 10, xp.where(rho < 0.25, 2 * s.lam, s.lam))
    lam = xp.where(newton, 0.0, xp.where(lam < LM_MIN, 0.0 if options.newton else LM_MIN, lam))
    moved = s._replace(theta=s.trial, r=r_t, jac=xp.where(has_jac, jac_t, s.jac), lam=lam,
                       refresh=~xp.asarray(has_jac), iterations=s.iterations + 1, evaluations=evaluations,
                       status=xp.where(s.small, CONVERGED, RUNNING))

    # rejected: halve a Newton step (then hand over to LM), or raise λ
    halvings = s.halvings + newton
    to_lm = newton & (halvings > MAX_HALVINGS)
    done = to_lm & s.small  # no trial improves on θ: converged to machine precision
    lam_r = xp.where(to_lm, LM_START, xp.where(newton, 0.0, 10 * s.lam))
    stuck = (lam_r > LM_MAX) | (to_lm & (not options.lm))
    # more equations than parameters: no step lowers f = ‖r‖² (Newton's nor a gradient step of any length): θ is
    # a minimum of f to rounding, which is the answer; with as many, it is a minimum that is not a root
    minimum = xp.where(s.jac.shape[0] > s.jac.shape[1], CONVERGED, NO_PROGRESS)
    status_r = xp.where(done, CONVERGED, xp.where(stuck, xp.where(_newton_ok(xp, s), minimum, SINGULAR), RUNNING))
    alpha = s.alpha / 2
    retry = s._replace(lam=lam_r, alpha=alpha, halvings=halvings, trial=s.theta + alpha * s.delta,
                       want_jac=xp.asarray(False), evaluations=evaluations, status=status_r)
    retry = _select(xp, newton & ~to_lm, retry, _lm_step(xp, retry))

    out = _select(xp, accept, moved, retry)
    return _select(xp, accept & (out.status == RUNNING) & ~out.refresh, _propose(xp, out, scale, options), out)


def _propose(xp, s: State, scale, options: SolverOptions) -> State:
    """Status at ``theta``, and the next step: Newton (LM when J is singular or LM is on)."""
    finite = _finite(xp, s.r) & _finite(xp, s.jac)
    status = xp.where(~finite, NONFINITE, xp.where(
        xp.max(xp.abs(s.r)) / scale <= options.gtol, CONVERGED,
        xp.where(s.iterations >= options.max_iter, MAX_ITER, RUNNING)))
    step = -_solve(xp, s.jac, s.r)
    ok = _finite(xp, step)
    newton = (s.lam == 0) & ok & options.newton
    lam = xp.where(newton, s.lam, xp.where(s.lam == 0, LM_START, s.lam))
    # more equations than parameters: at the least-squares minimum f > 0; stop when the Gauss–Newton step
    # could lower f by no more than rounding (its predicted decrease ‖Jδ‖² ≤ 1e-14 f)
    fitted = s.jac @ xp.where(ok, step, 0.0)
    flat_enough = (s.jac.shape[0] > s.jac.shape[1]) & ok & (xp.sum(fitted * fitted) <= 1e-14 * _squares(xp, s.r))
    status = xp.where((status == RUNNING) & flat_enough, CONVERGED, status)
    s = s._replace(lam=lam, delta=step, alpha=xp.asarray(1.0), halvings=xp.asarray(0), trial=s.theta + step,
                   want_jac=xp.asarray(True), status=status,
                   small=newton & (xp.max(xp.abs(step)) <= options.xtol * (1 + xp.max(xp.abs(s.theta)))))
    s = _select(xp, newton, s, _lm_step(xp, s))
    # ψ does not vary with θ: no step can help, and a root there (a step function started where Σψ = 0) has no
    # bread either
    flat = xp.all(s.jac == 0)
    blocked = ~newton & (not options.lm)  # Newton only, and J is singular
    singular = ((status == RUNNING) & (blocked | ~_finite(xp, s.delta))) | (flat & (status != NONFINITE))
    return s._replace(status=xp.where(singular, SINGULAR, s.status))


def closing(xp, s: State, options: SolverOptions):
    """Whether the trial is likely the last evaluation: a full Newton step of at most √xtol (relative to θ), after
    which quadratic convergence leaves a residual at rounding (gtol) or a step below xtol. A source can take
    what it needs at θ̂ (the meat) in that pass; where the guess is wrong, it only computed more than needed."""
    size = xp.max(xp.abs(s.delta)) <= np.sqrt(options.xtol) * (1 + xp.max(xp.abs(s.theta)))
    return (s.lam == 0) & (s.alpha == 1) & ~xp.asarray(s.refresh) & size


def _lm_step(xp, s: State) -> State:
    """The Levenberg–Marquardt step at ``theta`` with damping ``s.lam``, evaluated with its Jacobian."""
    a = s.jac.T @ s.jac
    d = xp.diag(a)
    d = xp.maximum(d, 1e-12 * xp.max(d) + 1e-300)
    step = -_solve(xp, a + s.lam * xp.diag(d), s.jac.T @ s.r)
    return s._replace(delta=step, alpha=xp.asarray(1.0), trial=s.theta + step, small=xp.asarray(False),
                      want_jac=xp.asarray(True))


def _newton_ok(xp, s: State):
    return _finite(xp, _solve(xp, s.jac, s.r))


def _solve(xp, a, b):
    """a⁻¹b, or the least-squares solution when a has more rows than columns (over-identified GMM); NaN where a
    is singular. Traced, without LAPACK (:mod:`mestim.linalg`: vmapped LAPACK can hang XLA's CPU thread pool)."""
    if _is_traced(xp):
        from . import linalg

        return linalg.solve(a, b) if a.shape[0] == a.shape[1] else linalg.solve(a.T @ a, a.T @ b)
    if a.shape[0] != a.shape[1]:
        q, r = np.linalg.qr(a)
        d = np.abs(np.diag(r))
        if not d.min() > 1e-13 * d.max():  # rank-deficient: some parameters are not identified
            return np.full(a.shape[1:], np.nan)
        return _solve(xp, r, q.T @ b)
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.full(a.shape[1:], np.nan)


def _finite(xp, a):
    return xp.all(xp.isfinite(a))


def _squares(xp, r):
    """f = ‖r‖², with a non-finite residual counted as infinitely bad (so a step into NaN is rejected)."""
    return xp.where(_finite(xp, r), xp.sum(xp.where(xp.isfinite(r), r, 0.0) ** 2), xp.inf)


def _select(xp, cond, a: State, b: State) -> State:
    if not _is_traced(xp):
        return a if bool(cond) else b
    import jax

    return jax.tree.map(lambda x, y: xp.where(cond, x, y), a, b)


def _is_traced(xp) -> bool:
    return xp is not np


def solve_host(evaluate, theta0, scale, options: SolverOptions) -> State:
    """Run the rules from the host: ``evaluate(theta, want_jac, closing) -> (r, J or None)`` (host arrays; each call
    is one pass over the rows; ``closing``: the evaluation is likely the last, :func:`closing`); ``scale`` is Σw
    (``gtol`` is a tolerance on the mean of ψ), or a function giving it after the first pass (a stream learns Σw as
    it reads)."""
    theta = np.asarray(theta0, float)
    r, jac = evaluate(theta, True, False)
    scale = scale() if callable(scale) else scale
    with np.errstate(all="ignore"):  # the rules judge non-finite values by status; numpy need not warn
        s = start(np, theta, r, jac, scale, options)
        while s.status == RUNNING:
            point = s.theta if s.refresh else s.trial
            r, jac = evaluate(point, bool(s.want_jac or s.refresh), bool(closing(np, s, options)))
            s = advance(np, s, r, s.jac if jac is None else jac, jac is not None, scale, options)
    return s


def solve_traced(evaluate, theta0, scale, options: SolverOptions, with_aux: bool = False):
    """The same rules in one ``lax.while_loop`` (jit- and vmap-able); ``evaluate(theta) -> (r, J)``.

    ``with_aux``: ``evaluate(theta, closing) -> (r, J, aux)`` (``closing`` as in :func:`solve_host`, traced), and
    the result is (state, the aux of the last evaluation, the point it was made at)."""
    import jax.numpy as jnp
    from jax import lax

    call = evaluate if with_aux else (lambda t, _: (*evaluate(t), None))
    r, jac, aux = call(theta0, jnp.asarray(False))
    first = start(jnp, theta0, r, jac, scale, options)
    types = State(*(jnp.result_type(x) for x in first))
    fixed = lambda s: State(*(lax.convert_element_type(x, t) for x, t in zip(s, types)))  # noqa: E731

    def body(carry):
        s = carry[0]
        r, jac, aux = call(s.trial, closing(jnp, s, options))
        return fixed(advance(jnp, s, r, jac, True, scale, options)), aux, s.trial

    state, aux, point = lax.while_loop(lambda c: c[0].status == RUNNING, body, (fixed(first), aux, theta0))
    return (state, aux, point) if with_aux else state
