"""The one place where mestim uses JAX internals (private modules that move between JAX releases).

Hoisting (:mod:`mestim.hoist`) unzips a program by data dependence with JAX's partial evaluation, the machinery of
``jax.linearize``, which has no public API. Every use fails soft and visibly: where the internal API is missing or
raises, the caller gets None, the reason is counted in :data:`FALLBACKS` and logged once (logger ``mestim``), and
the caller takes its plain path (the same sums, computed by the whole program on every pass). The jaxpr
interpreters (:mod:`mestim.colouring`, :mod:`mestim.smooth`, :mod:`mestim.contractions`) enter calls (:func:`called`)
and bind equations (:func:`bind`) here, as :func:`jax.core.eval_jaxpr` does.
"""

from __future__ import annotations

import collections
import logging

FALLBACKS: collections.Counter = collections.Counter()  # reason → times a caller fell back to its plain path
_log = logging.getLogger("mestim")


def fell_back(reason: str, instead: str = "passes run the whole chunk program") -> None:
    """Record (and, the first time, log) that a caller took its plain path (``instead``) for ``reason``."""
    if not FALLBACKS[reason]:
        _log.warning("mestim: %s; %s (same results, slower)", reason, instead)
    FALLBACKS[reason] += 1


def _partial_eval_module():
    from jax._src.interpreters import partial_eval

    return partial_eval


def partial_eval(closed, unknowns: list[bool]):
    """``closed`` (a ClosedJaxpr) unzipped into (known, unknown, residual avals): ``known`` maps the known inputs
    to the known outputs' residuals, ``unknown`` maps (residuals, unknown inputs) to every output; None (counted in
    :data:`FALLBACKS`) where the internal API is missing or fails on this program."""
    try:
        pe = _partial_eval_module()
        known, unknown, _, residuals = pe.partial_eval_jaxpr_nounits(closed, unknowns, instantiate=True)
    except Exception as e:  # an internal API that moved, or a program it cannot unzip  # noqa: BLE001
        fell_back(f"JAX partial evaluation is unavailable ({type(e).__name__}: {e})")
        return None
    return known, unknown, tuple(residuals)


def evaluate(closed, *args) -> list:
    """The outputs of a ClosedJaxpr on ``args`` (traceable; public API)."""
    from jax.core import eval_jaxpr

    return eval_jaxpr(closed.jaxpr, closed.consts, *args)


def bind(eqn, *args) -> list:
    """The outputs of one equation of a jaxpr on ``args`` (a list), bound as :func:`jax.core.eval_jaxpr` binds it
    (the interpreters of :mod:`mestim.contractions` and :mod:`mestim.smooth`)."""
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
    return out if eqn.primitive.multiple_results else [out]


# the parameter holding the program a call-like equation runs: structure only (jit, closed_call, checkpoint) ...
CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr", "remat": "jaxpr",
         "remat2": "jaxpr", "checkpoint": "jaxpr"}
# ... and a function with custom derivatives (its primal program: what it computes, not how it is differentiated)
CUSTOM = {"custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr"}


def called(eqn):
    """(jaxpr, consts) of the program a call-like equation runs (a custom_jvp/vjp function's primal program
    included), else None: what :mod:`mestim.colouring`, :mod:`mestim.smooth` and :mod:`mestim.contractions` enter."""
    name = eqn.primitive.name
    param = CALLS.get(name) or CUSTOM.get(name)
    if param is None or param not in eqn.params:
        return None
    sub = eqn.params[param]
    return (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, [])
