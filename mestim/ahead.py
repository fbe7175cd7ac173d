"""Compiling ahead: a program lowered on this thread and compiled by XLA in a worker thread, while this thread goes
on with Python work (tracing other programs, host work). XLA's compiler releases the GIL, so on two cores a cold
start's compilations and its tracing overlap instead of adding up.

- :class:`Ahead` lowers a jitted function for given arguments and compiles it in a worker thread; after
  :meth:`Ahead.wait`, calling the jitted function with arguments of the same shapes runs the compiled program
  (JAX's caches hold it: nothing is traced or compiled again).
- :func:`while_compiling` hands the engine work to run while the stack's program compiles (the first pass of a
  fit): a library traces and lowers the programs it runs after the fit meanwhile, so they cost no time of their
  own. ``mestim transport`` compiles its read-out of the fit so (:mod:`estimators.transport.readout`).
"""

from __future__ import annotations

import contextlib
import threading

_local = threading.local()  # .work: this thread's work to run while its next stack program compiles


def _work() -> list:
    if not hasattr(_local, "work"):
        _local.work = []
    return _local.work


class Ahead:
    """``jitted`` lowered for ``args`` now, compiled in a worker thread (:meth:`wait` for it)."""

    def __init__(self, jitted, *args):
        lowered = jitted.lower(*args)
        self._thread = threading.Thread(target=self._compile, args=(lowered,), name="mestim-compile", daemon=True)
        self._thread.start()

    @staticmethod
    def _compile(lowered) -> None:
        try:
            lowered.compile()
        except Exception:  # noqa: BLE001  the call that runs the program compiles it again and raises there
            pass

    def wait(self) -> None:
        self._thread.join()


@contextlib.contextmanager
def while_compiling(work):
    """Run ``work(blocks)`` (θ's blocks: name → slice of the flat θ) on this thread while the program of the first
    pass of a fit inside the ``with`` block compiles (at once if it is compiled already; not at all if the fit runs
    no such pass: a solve in one hoisted program)."""
    _work().append(work)
    try:
        yield
    finally:
        if work in _work():
            _work().remove(work)


def run_compiling(jitted, args, blocks) -> None:
    """Compile ``jitted`` for ``args`` in a worker thread while the work given to :func:`while_compiling` runs
    (``blocks()``: θ's blocks, asked for only then: every pass of every fit calls this)."""
    pending = _work()
    if not pending:
        return
    work = list(pending)
    pending.clear()
    ahead = Ahead(jitted, *args)
    try:
        for w in work:
            w(blocks())
    finally:
        ahead.wait()
