"""Reading a fitted transport stack in one compiled program: the reported contrasts with their Jacobian, and
every row's inverse-odds weights for the positivity diagnostics.

A cold ``mestim transport`` compiles two programs: the stack's (the fit) and this one. The contrasts' value and
Jacobian are the engine's delta method's (:func:`mestim.results.value_and_jacobian`, JAX's ``jacrev`` of
:class:`ReportedContrasts`; then :meth:`mestim.Estimates.delta_from` forms G V Gᵀ), so no gradient is hand-derived;
they are computed in this program beside the weights rather than by :meth:`mestim.Estimates.delta`'s own (a program
of its own would add a compilation to every cold start). Without the weights the numbers are ``fit.delta(g)``'s.
Small data on a CPU compile it for compile speed, as the stack's program is (:func:`mestim.sums.quick_compile`): on
the bundled data it compiled in 0.13 s of CPU time instead of 0.40 s. :func:`~estimators.transport.api.transport`
traces it while the stack's program compiles and compiles the two side by side (:func:`read_fit_ahead`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mestim.ahead import Ahead
from mestim.results import value_and_jacobian
from mestim.sums import QUICK_CPU_OPTIONS, little_work

from .estimands import WEIGHTED


@dataclasses.dataclass(frozen=True)
class ReportedContrasts:
    """g(θ) of the delta method for the reported contrasts: parameters a (as they are: φ, ū), a − b, log a − log b
    and logit a − logit b, each group given by its flat indices (a, b), then put back in the reported order.
    Hashable and equal for equal stacks, so a second analysis of the same shape compiles nothing."""

    groups: tuple  # ((a indices, b indices), ...) for one parameter, difference, log ratio, log odds ratio
    order: tuple  # position of every output in the concatenated groups

    def __call__(self, theta):
        (one, _), diff, rr, odds = ((theta[np.array(a, int)], theta[np.array(b, int)]) for a, b in self.groups)
        logit = lambda p: jnp.log(p / (1 - p))  # noqa: E731
        return jnp.concatenate([one, diff[0] - diff[1], jnp.log(rr[0]) - jnp.log(rr[1]),
                                logit(odds[0]) - logit(odds[1])])[np.array(self.order, int)]


@dataclasses.dataclass(frozen=True)
class InverseOddsWeights:
    """Every row's inverse-odds weights w_i for every arm, pooled (n, C) and/or per trial (n, m, C), from the
    working models' own evaluators at θ (hashable: the models, the blocks' positions in θ, which to compute)."""

    participation: object
    arm_weights: object
    blocks: tuple  # ((name, start, stop), ...)
    pooled: bool
    per_trial: bool

    @property
    def per_row(self) -> int:
        """The weights computed per row: every arm's, pooled and in every trial."""
        return self.arm_weights.treatment.n_arms * (int(self.pooled) + self.participation.m * int(self.per_trial))

    def __call__(self, theta, rows) -> tuple:
        part, armw = self.participation, self.arm_weights

        def one(row):
            up = {name: theta[a:b] for name, a, b in self.blocks}
            arm = armw(up, row)  # (C,) I(Z=z)/e(z; X, S)  (0 off the row's arm)
            out = []
            if self.pooled:
                out.append(row["tr.R"] * part.pooled_odds(up, row) * arm)
            if self.per_trial:
                out.append(row["tr.Shot"][:, None] * part.trial_odds(up, row)[:, None] * arm[None, :])
            return tuple(out)

        return jax.vmap(one)(rows)


def weights_reader(stack, blocks: dict) -> tuple[InverseOddsWeights | None, dict]:
    """(the weights to compute — None when no weighting/DR estimator was fitted —, the rows they read: the
    stack's float columns with one entry per row); ``blocks``: the fit's blocks (name → slice of θ)."""
    pooled = any(e in WEIGHTED for e in stack.pooled_estimators)
    per_trial = any(e in WEIGHTED for e in stack.trial_estimators)
    if not (pooled or per_trial):
        return None, {}
    cols = stack.transport_data.columns
    n = cols["tr.R"].shape[0]
    rows = {k: v for k, v in cols.items()
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.ndim >= 1 and v.shape[0] == n}
    where = tuple((name, sl.start, sl.stop) for name, sl in blocks.items())
    return InverseOddsWeights(stack.participation, stack.arm_weights, where, pooled, per_trial), rows


def read_fit(contrasts: ReportedContrasts | None, weights: InverseOddsWeights | None, theta, rows):
    """(g(θ), ∂g/∂θ) of the contrasts (None, None without them) and the weights' arrays (() without them), in one
    program: NumPy columns and the flat θ go in, so no eager ``jax.numpy`` call runs on the host."""
    return _program(weights, rows)(contrasts, weights, theta, rows)


def read_fit_ahead(contrasts: ReportedContrasts | None, weights: InverseOddsWeights | None, dim: int,
                   rows) -> Ahead:
    """:func:`read_fit`'s program for a θ of ``dim`` parameters, lowered now and compiled in a worker thread
    (:class:`mestim.ahead.Ahead`): given to :func:`mestim.ahead.while_compiling`, it compiles beside the stack's
    program, so a cold run does not wait for it after the fit."""
    return Ahead(_program(weights, rows), contrasts, weights, np.zeros(dim), rows)


def _program(weights, rows):
    n_rows = len(next(iter(rows.values()))) if rows else 0
    per_row = 0 if weights is None else weights.per_row
    return _quick_read if little_work(jax.devices()[0].platform, n_rows, per_row) else _read


def _read_fit(contrasts, weights, theta, rows):
    value, jacobian = (None, None) if contrasts is None else value_and_jacobian(contrasts, theta)
    return value, jacobian, (() if weights is None else weights(theta, rows))


_read = jax.jit(_read_fit, static_argnums=(0, 1))
_quick_read = jax.jit(_read_fit, static_argnums=(0, 1), compiler_options=QUICK_CPU_OPTIONS)
