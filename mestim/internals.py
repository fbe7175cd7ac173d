"""The one place where mestim uses JAX internals (private modules that move between JAX releases).

Hoisting (:mod:`mestim.hoist`) unzips a program by data dependence with JAX's partial evaluation, the machinery of
``jax.linearize``, which has no public API. Every use fails soft and visibly: where the internal API is missing or
raises, the caller gets None, the reason is counted in :data:`FALLBACKS` and logged once (logger ``mestim``), and
the caller takes its plain path (the same sums, computed by the whole program on every pass). The interpreter of
:mod:`mestim.contractions` binds a jaxpr's equations here (:func:`bind`), as :func:`jax.core.eval_jaxpr` does.
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
    """The outputs of one equation of a jaxpr on ``args``, bound as :func:`jax.core.eval_jaxpr` binds it (the
    interpreter of :mod:`mestim.contractions`)."""
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
    return out if eqn.primitive.multiple_results else [out]
