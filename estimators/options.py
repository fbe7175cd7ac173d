"""Checks shared by the registered estimators' options objects, and the row multiplier of a block.

Every registered estimator keeps its choices in a frozen dataclass validated in ``__post_init__`` (see
docs/architecture.md): a typo fails when the block is built, before any data is read, and the message names the
argument, the allowed values and the closest one (``distribution='weibul': use one of [...]; did you mean
'weibull'?``). :func:`check_choice` is the engine's (:func:`mestim.errors.check_choice`), re-exported here so that
every estimator imports its checks from one place.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np

from mestim.data import require_numeric
from mestim.errors import DataError, SpecificationError, check_choice

from mestim import Block

from .design import block_rows, clean_design, clean_in_mask, design_matrix
from .generalized_linear import GLMScore

__all__ = ["check_choice", "check_number", "check_fractions", "check_limits", "check_choices", "names", "row_multiplier", "numeric_in_mask",
           "weighted_design", "stacked_binomial", "stacked_design", "ObjectiveScore"]


def check_number(name: str, value, *, low=None, high=None, inclusive: bool = False, integer: bool = False):
    """``value`` as a float (an int when ``integer``), or a :class:`SpecificationError` naming the argument and the
    interval it must lie in: (low, high) open, or [low, high] when ``inclusive``; None is an unbounded side."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and np.isfinite(value)
    if ok and low is not None:
        ok = value >= low if inclusive else value > low
    if ok and high is not None:
        ok = value <= high if inclusive else value < high
    if not ok:
        lo, hi = ("[", "]") if inclusive else ("(", ")")
        interval = f"{lo}{'-∞' if low is None else low}, {'∞' if high is None else high}{hi}"
        raise SpecificationError(f"{name}={value!r}: give {'an integer' if integer else 'a number'} in {interval}")
    return int(value) if integer else float(value)


def check_fractions(name: str, values) -> tuple[float, ...]:
    """One number in (0, 1) or several (probabilities of percentiles, fractions of an effect), as a tuple."""
    values = (values,) if np.ndim(values) == 0 else tuple(values)
    if not values:
        raise SpecificationError(f"{name}=(): give one or more numbers in (0, 1)")
    return tuple(check_number(name, v, low=0.0, high=1.0) for v in values)


def check_limits(lower, upper) -> tuple[float | None, float | None]:
    """(lower, upper) as floats (None: no limit), with lower < upper when both are given."""
    lower = None if lower is None else check_number("lower", lower)
    upper = None if upper is None else check_number("upper", upper)
    if lower is not None and upper is not None and not lower < upper:
        raise SpecificationError(f"lower={lower!r}, upper={upper!r}: lower must be below upper")
    return lower, upper


def check_choices(name: str, values, choices) -> tuple:
    """A non-empty tuple of distinct values, each one of ``choices`` (a single string is a tuple of one)."""
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values:
        raise SpecificationError(f"{name}=(): give at least one of {list(choices)}")
    for value in values:
        check_choice(name, value, choices)
    if len(set(values)) < len(values):
        raise SpecificationError(f"{name}={values!r}: each value once")
    return values


def names(value) -> tuple[str, ...]:
    """Column names given as None, one name, or a sequence of names."""
    return () if value is None else ((value,) if isinstance(value, str) else tuple(value))


def row_multiplier(cols, block: str, mask, weights) -> tuple[np.ndarray, np.ndarray]:
    """(rows the block uses, m_i = I(row in mask) · w_i): ψ is multiplied by m_i, the block's own weights
    (``weights=`` a column; 1 when None), which must be ≥ 0 and finite on the rows it uses."""
    m = block_rows(cols, mask, block)
    if weights is None:
        return m, m.astype(float)
    w = numeric_in_mask(cols, weights, m, what="weights column")
    if (w[m] < 0).any():
        raise DataError(f"block '{block}': weights '{weights}' has negative values on the rows it uses")
    return m, w


def numeric_in_mask(cols, name: str, m: np.ndarray, *, what: str = "column") -> np.ndarray:
    """The numeric column ``name``, finite on the rows in ``m`` and 0 elsewhere (a DataError otherwise)."""
    return clean_in_mask(require_numeric(cols, name, what=what), m, name)


def weighted_design(cols, block: str, X, formula, intercept: bool, mask, weights):
    """(rows used, m_i, design with rows outside the mask zeroed, labels): :func:`row_multiplier` and the design
    from column names or a formula's right-hand side (:func:`estimators.design.design_matrix`)."""
    m, mult = row_multiplier(cols, block, mask, weights)
    x, labels = design_matrix(cols, None if X is None else list(names(X)), formula, intercept)
    return m, mult, clean_design(cols, x, labels, m), labels


def stacked_binomial(block, outcome: str, estimator: str, role: str = "propensity") -> tuple[str, GLMScore]:
    """(name, ψ) of a stacked binomial GLM block modelling ``outcome`` that an estimator reads (a propensity or a
    sampling model), checked when the estimator is built."""
    if not (isinstance(block, Block) and isinstance(block.psi, GLMScore) and hasattr(block.prepare, "design")):
        raise SpecificationError(f"{estimator}: {role}= must be a binomial GLM block (estimators.logistic or "
                                 f"estimators.glm(..., family='binomial')) stacked in the same fit; got {block!r}")
    if block.psi.family != "binomial" or block.prepare.y != outcome:
        raise SpecificationError(f"{estimator}: the {role} model '{block.name}' must be a binomial model of "
                                 f"'{outcome}'; it is a {block.psi.family} model of '{block.prepare.y}'")
    return block.name, block.psi


def stacked_design(prefix: str, model: Block, cols, m: np.ndarray) -> dict:
    """A stacked GLM block's design and offset on the rows in ``m`` (columns ``{prefix}.W``, ``{prefix}.Woff``),
    for a block that predicts from it; elsewhere 0 and a safe linear predictor."""
    design = model.prepare
    w, labels = design.design(cols)
    return {f"{prefix}.W": clean_design(cols, w, labels, m),
            f"{prefix}.Woff": np.where(m, design.offset_values(cols, m), model.psi.safe_eta)}


class ObjectiveScore:
    """ψ of an estimator defined by a per-row objective (a log-likelihood, minus half a squared residual): its
    gradient, ψ_i = m_i ∂objective_i/∂θ, written once. A subclass (a frozen dataclass) has ``name`` and
    ``objective(theta, row)``; ``{name}.mask`` holds m_i (the mask times the block's weights)."""

    def __call__(self, theta, row):
        return row[f"{self.name}.mask"] * jax.grad(self.objective)(theta, row)
