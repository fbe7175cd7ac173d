"""Exceptions that say what went wrong and what to do about it.

Every error the engine raises on bad input or failed numerics is a subclass of :class:`MestimError`
(itself a ``ValueError``), so a caller can catch one type; the command line prints its message alone.
"""


class MestimError(ValueError):
    """Base class of every error raised on bad input or a failed fit."""


class DataError(MestimError):
    """The data cannot be used as given: missing or duplicated column, NaN/inf, wrong type, empty subset."""


class SpecificationError(MestimError):
    """The estimator is ill-specified: ψ of the wrong length, init of the wrong shape, unknown block."""


class ConvergenceError(MestimError):
    """The root finder did not reach Σψ = 0 (the message gives status, iterations and residual norm)."""


class SingularBreadError(MestimError):
    """The bread -Σ∂ψ/∂θ is singular or numerically so (the message names the parameters involved)."""


class SeparationError(MestimError):
    """A logistic/multinomial block is perfectly separated: its maximum likelihood estimate does not exist."""


class MestimWarning(UserWarning):
    """A fit that ran but deserves a second look (ill-conditioned bread, extreme weights, …)."""


def check_choice(name: str, value, choices) -> None:
    """Raise :class:`SpecificationError` unless ``value`` is one of ``choices`` (the message lists them)."""
    if value in tuple(choices):
        return
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices if c is not None], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SpecificationError(f"{name}={value!r}: use one of {list(choices)}{hint}")
