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


def untraceable(block: str, error: Exception) -> SpecificationError:
    """The error for a ψ that JAX cannot trace (a JAX tracer error raised by ψ): the construct (numpy, the math module,
    Python control flow, a Python number made of a traced value), the line of ψ that used it, and the jax.numpy way."""
    import os
    import re
    import traceback

    import jax.numpy as jnp

    ours = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not (
        os.path.abspath(f.filename).startswith(ours) or re.search(r"[/\\](jax|jaxlib)[/\\]", f.filename))]
    line = (frames[-1].line or "").strip() if frames else ""
    where = f" (at {frames[-1].filename}:{frames[-1].lineno}: {line})" if frames else ""
    kind = type(error).__name__
    # numpy turns a tracer into an array; math.f and float() into a number; if/and/or/min into a bool
    called = re.search(r"\b(np|numpy)\.(\w+)" if kind == "TracerArrayConversionError" else r"\b(math)\.(\w+)", line)
    same = (f"jnp.{called.group(2)}" if called and hasattr(jnp, called.group(2)) else
            "its jax.numpy counterpart (jnp.exp, jnp.log, jnp.sqrt, jnp.array, …)")
    data = "a value that depends on θ or the data"
    if kind == "TracerArrayConversionError":
        construct = called.group(0) if called else "np.array, np.asarray or a numpy function"
        what, fix = f"uses numpy ({construct}) on {data}", f"use {same} (import jax.numpy as jnp)"
    elif called:
        what, fix = f"uses the math module ({called.group(0)}) on {data}", f"use {same} (import jax.numpy as jnp)"
    elif kind == "TracerBoolConversionError":
        what = f"uses Python control flow (if, and/or, min/max, a comparison) on {data}"
        fix = "write it with jnp.where(condition, a, b), jnp.clip, jnp.minimum/jnp.maximum or jnp.abs instead"
    else:  # ConcretizationTypeError, TracerIntegerConversionError
        conversion = re.search(r"\b(float|int|bool|round)\(", line)
        what = (f"turns {data} into a Python number "
                f"({conversion.group(1) + '()' if conversion else 'float(), int(), or a size or index'})")
        fix = "keep it an array: drop the conversion (jnp functions take arrays); sizes and indices must be constants"
    return SpecificationError(f"ψ of block '{block}' {what}{where}; ψ is traced by JAX, so {fix}")


def did_you_mean(value, choices) -> str:
    """'; did you mean 'weibull'?' for the choice closest to ``value`` (difflib, ignoring case: 'rr' finds 'RR'),
    or '' when none is close."""
    import difflib

    lowered = {str(c).lower(): c for c in choices if c is not None}
    close = difflib.get_close_matches(str(value).lower(), list(lowered), n=1)
    return f"; did you mean {str(lowered[close[0]])!r}?" if close else ""


def check_choice(name: str, value, choices, *, context: str = "") -> None:
    """Raise :class:`SpecificationError` unless ``value`` is one of ``choices``: "name=value{context}: use one of
    [...]; did you mean ...?" (``context`` says why the choices are limited, e.g. " for the binomial family")."""
    if value in tuple(choices):
        return
    raise SpecificationError(f"{name}={value!r}{context}: use one of {list(choices)}{did_you_mean(value, choices)}")
