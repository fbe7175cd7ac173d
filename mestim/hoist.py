"""Work that does not depend on θ, done once per fit instead of once per pass (in-memory data on a CPU).

A pass over a user's ψ spends much of its time on work that depends on the rows alone: building design vectors
from columns, broadcasts, the layout changes of the backward pass. In a Newton loop written as one program XLA
hoists that work out of the loop; across host-driven passes it cannot. :func:`split` unzips the chunk program
(:meth:`mestim.sums.Kernel.add_chunk`) by data dependence (JAX's partial evaluation, the machinery of
``jax.linearize``): the *known* part (rows, weights → residuals) runs once per slab when an in-memory source is
built; the *unknown* part (θ, plan, residuals → sums) runs on every pass, about twice as fast as the whole chunk
program for a typical user's ψ. Both parts compute exactly the operations of the original program.

The split is made for one fixed plan (what a pass computes), the one of a Newton pass that takes every block's
Jacobian and the meat: with the plan an argument, its branches (``lax.cond`` on the plan) would keep the θ-free
work inside them, out of reach. A source hoists that plan's passes and runs any other pass (a residual-only
backtracking step) with the whole program. The residuals take memory (W2 written as one ψ: ~145 numbers a row,
8× its columns), so hoisting is used when they fit :data:`HOIST_BUDGET`, and only on a CPU: a GPU is bound by
memory bandwidth, where reading residuals costs more than recomputing them. Partial evaluation is internal JAX
machinery: if it is unavailable or fails, the source simply runs the whole chunk program on every pass.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

HOIST_BUDGET = 1 << 30  # bytes of residuals an in-memory source may keep on the device


class Split(NamedTuple):
    known: object  # ClosedJaxpr: (row columns..., w, column centres...) → residuals
    unknown: object  # ClosedJaxpr: (residuals..., acc leaves..., θ) → Moments leaves
    residuals: tuple  # avals of the residuals of one chunk


@functools.lru_cache(maxsize=64)
def split(kernel, layout: tuple, plan: tuple, centred: bool = False) -> Split | None:
    """The chunk program of ``kernel`` for the fixed ``plan``, unzipped by data dependence, for rows of ``layout``
    ((name, shape per row, dtype) per column; ``centred``: float32 columns stored less their centres);
    None where JAX's partial evaluation is unavailable or fails."""
    try:
        from jax._src.interpreters import partial_eval as pe
    except ImportError:
        return None
    k, p = kernel.shape
    c = kernel.chunk
    acc = [jax.ShapeDtypeStruct(s, jnp.float64) for s in ((k,), (k, p), (k, k), ())]
    theta = jax.ShapeDtypeStruct((p,), jnp.float64)
    rows = {name: jax.ShapeDtypeStruct((c,) + tuple(shape), np.dtype(dtype)) for name, shape, dtype in layout}
    w = jax.ShapeDtypeStruct((c,), jnp.float64)
    centre = {name: jax.ShapeDtypeStruct(tuple(shape), jnp.float64) for name, shape, _ in layout} if centred else None

    def chunk(acc, theta, rows, w, centre):
        from .sums import Moments

        return tuple(kernel.add_chunk(Moments(*acc), theta, rows, w, np.asarray(plan, np.int32), centre))

    try:
        closed = jax.make_jaxpr(chunk)(acc, theta, rows, w, centre)
        n_unknown = len(acc) + 1
        unknowns = [True] * n_unknown + [False] * (len(closed.in_avals) - n_unknown)
        known, unknown, _, residuals = pe.partial_eval_jaxpr_nounits(closed, unknowns, instantiate=True)
    except Exception:  # an internal API that moved, or a program it cannot unzip: run the whole program
        return None
    expected = list(residuals) + list(closed.in_avals[:n_unknown])
    if [a.shape for a in unknown.in_avals] != [a.shape for a in expected]:
        return None
    return Split(known, unknown, tuple(residuals))


def residual_bytes(s: Split, chunk: int, n_rows: int) -> int:
    per_chunk = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in s.residuals)
    return per_chunk * -(-n_rows // chunk)


def _eval(closed, *args):
    from jax._src.core import eval_jaxpr

    return eval_jaxpr(closed.jaxpr, closed.consts, *args)


def slab_residuals(s: Split, kernel, rows, w, centre=None):
    """The residuals of every chunk of a slab, stacked along a leading chunk axis (traceable)."""
    c = kernel.chunk
    n_chunks = w.shape[0] // c
    shaped = jax.tree.map(lambda a: a.reshape((n_chunks, c) + a.shape[1:]), (rows, w))

    def one(args):
        rows, w = args
        return tuple(_eval(s.known, *jax.tree.leaves(rows), w, *jax.tree.leaves(centre)))

    return jax.lax.map(one, shaped)


def slab_sums(s: Split, acc, theta, residuals, n_chunks):
    """``acc`` plus the sums over the first ``n_chunks`` chunks of a slab, from its residuals (traceable)."""
    from .sums import Moments

    def body(i, acc):
        return Moments(*_eval(s.unknown, *[r[i] for r in residuals], *acc, theta))

    return jax.lax.fori_loop(0, n_chunks, body, acc)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def residuals_program(kernel, layout, plan, rows, w, centre):
    """:func:`slab_residuals`, compiled once per kernel, plan and slab shape (once per fit's source)."""
    return slab_residuals(split(kernel, layout, plan, centre is not None), kernel, rows, w, centre)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def sums_program(kernel, layout, plan, centred, acc, theta, residuals, n_chunks):
    """:func:`slab_sums`, compiled once per kernel, plan and slab shape: the hoisted passes run it."""
    return slab_sums(split(kernel, layout, plan, centred), acc, theta, residuals, n_chunks)
