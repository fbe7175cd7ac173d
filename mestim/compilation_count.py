"""Counting compiled programs, through JAX's public monitoring events (not a private cache size).

``with mestim.compilations() as count: ...`` counts every program XLA compiled or loaded from the persistent
cache inside the block (mestim's own and any other JAX code's, eager ``jax.numpy`` calls included)::

    with mestim.compilations() as count:
        mestim.fit(psi, data, init=theta0)
    count.compiled, count.loaded  # compiled by XLA now, loaded from the persistent cache
    count.names  # which programs, e.g. ["jit(_slab_sums)"] (JAX's names: the jitted functions')
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax.monitoring

_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_active: list["CompileCount"] = []


@dataclasses.dataclass
class CompileCount:
    programs: int = 0  # every program built in the block: compiled or loaded from the persistent cache
    loaded: int = 0  # of which loaded from the persistent cache
    names: list[str] = dataclasses.field(default_factory=list)  # the programs' names, in the order they were built

    @property
    def compiled(self) -> int:
        return self.programs - self.loaded


def _on_duration(event: str, duration: float, fun_name: str = "?", **_) -> None:
    if event == _COMPILE:
        for count in _active:
            count.programs += 1
            count.names.append(fun_name)


def _on_event(event: str, **_) -> None:
    if event == _CACHE_HIT:
        for count in _active:
            count.loaded += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


@contextlib.contextmanager
def compilations():
    """Count the programs compiled (or loaded from the persistent cache) inside the ``with`` block.

    Example (one new program, compiled (or loaded from the persistent cache) inside the block)::

        >>> import jax, numpy as np, mestim
        >>> with mestim.compilations() as count:
        ...     _ = jax.jit(lambda v: v * 3.25 + 0.5)(np.arange(3.0))
        ...
        >>> count.programs, count.names
        (1, ['jit(<lambda>)'])
    """
    count = CompileCount()
    _active.append(count)
    try:
        yield count
    finally:
        _active.remove(count)
