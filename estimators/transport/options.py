"""``TransportOptions``: every choice of a transport analysis, checked once, when it is made.

The keywords of :func:`~estimators.transport.transport` (and the command line's flags) land here. Construction
fails on a choice that no data could make valid — an unknown model, estimator or weighting (the message names the
argument, the allowed values and the closest one), a level outside (0, 1), options that exclude each other — before
any data is read. What depends on the data (a logistic outcome model chosen by ``outcome_model="auto"``, arms that
exist) is checked when the stack is built.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mestim.errors import SpecificationError, check_choice, did_you_mean
from mestim.results import check_level

from .estimands import ESTIMATORS
from .outcome import OUTCOME_MODELS
from .participation import PARTICIPATION_MODELS
from .treatment import TREATMENT_MODELS

WEIGHTING = ("normalized", "unnormalized")
WEIGHT_TYPES = ("frequency", "sampling")
SOLVES = ("blockwise", "joint")
DEFAULT_WEIGHTING = "normalized"


def check_bias_grid(grid) -> np.ndarray:
    """The multipliers δ of the sensitivity analysis: finite numbers (default [1])."""
    values = np.atleast_1d(np.asarray([1.0] if grid is None else grid, dtype=float))
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise SpecificationError(f"bias_grid={grid!r}: give a list of finite multipliers δ, e.g. [-0.5, 0, 0.5]")
    return values


def check_estimators(estimators) -> tuple[str, ...] | None:
    """The chosen estimators, each once in the order given (None: all that apply, decided from the data)."""
    if estimators is None:
        return None
    chosen = (estimators,) if isinstance(estimators, str) else tuple(estimators)
    unknown = [e for e in chosen if e not in ESTIMATORS]
    if unknown:
        raise SpecificationError(f"unknown estimator(s) {unknown}; choose from {ESTIMATORS}"
                                 + did_you_mean(unknown[0], ESTIMATORS))
    return tuple(dict.fromkeys(chosen))


@dataclasses.dataclass(frozen=True)
class TransportOptions:
    """The options of one transport analysis (the keywords of :func:`~estimators.transport.transport`, which
    documents each), validated on construction: ``level`` becomes a float, ``estimators`` a tuple without
    repeats (or None), ``bias_grid`` the array of multipliers δ when a sensitivity analysis is asked for (``bias``
    or ``bias_grid`` given; else None).

    Example (options are checked once, on construction)::

        >>> import mestim
        >>> from estimators.transport import TransportOptions
        >>> TransportOptions(covariates=["X1"], estimators=["dr"]).estimators
        ('dr',)
        >>> try:
        ...     TransportOptions(weighting="normalised")
        ... except mestim.SpecificationError as e:
        ...     print(e)
        ...
        weighting='normalised': use one of ['normalized', 'unnormalized']; did you mean 'normalized'?
    """

    study: str = "S"
    treatment: str = "Z"
    outcome: str = "Y"
    covariates: object = None
    formula: str | None = None
    target: object = 0
    estimators: object = None
    per_trial: bool = True
    pooled: bool = True
    contrasts: object = None
    participation: str = "logistic"
    treatment_model: str = "trial"
    treatment_probabilities: object = None
    outcome_model: str = "auto"
    trial_effects: bool | None = None
    weighting: str = DEFAULT_WEIGHTING
    reference: object = None
    received: str | None = None
    post_covariates: object = None
    bias: object = None
    bias_grid: object = None
    weights: object = None
    weight_type: str = "frequency"
    cluster: object = None
    level: float = 0.95
    solve: str = "blockwise"

    def __post_init__(self):
        check_choice("solve", self.solve, SOLVES)
        check_choice("participation", self.participation, PARTICIPATION_MODELS)
        check_choice("treatment_model", self.treatment_model, TREATMENT_MODELS)
        check_choice("outcome_model", self.outcome_model, OUTCOME_MODELS)
        check_choice("weighting", self.weighting, WEIGHTING)
        check_choice("weight_type", self.weight_type, WEIGHT_TYPES)
        if not (self.per_trial or self.pooled):
            raise SpecificationError("per_trial and pooled are both False: nothing to estimate")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen: set once, here)
        set_("level", check_level(self.level))
        set_("estimators", check_estimators(self.estimators))
        if self.post_covariates and not self.per_protocol:
            raise SpecificationError("post_covariates are used only for the per-protocol analysis: give received= too")
        if self.per_protocol and "target_only" in (self.estimators or ()):
            raise SpecificationError("estimator 'target_only' is not available for the per-protocol effect "
                                     "(eAppendix C): the target sample has no treatment received; use 'unadjusted', "
                                     "'outcome', 'weighting', 'dr' and 'pseudo_outcome'")
        if self.contrasts is not None and self.reference is not None:
            raise SpecificationError("give reference= (every arm against it) or contrasts= (explicit pairs), not both")
        if self.treatment_probabilities is not None and self.treatment_model != "known":
            raise SpecificationError("treatment_probabilities are used only with treatment_model='known' "
                                     "(--treatment-model known)")
        set_("bias_grid", check_bias_grid(self.bias_grid) if self.sensitivity else None)

    @property
    def per_protocol(self) -> bool:
        """The per-protocol effect (eAppendix C): a treatment-received column is given."""
        return self.received is not None

    @property
    def sensitivity(self) -> bool:
        """A sensitivity analysis (eq. 11) is asked for."""
        return self.bias is not None or self.bias_grid is not None

    @property
    def normalized(self) -> bool:
        return self.weighting == "normalized"
