"""Work that does not depend on θ, done once per fit instead of once per pass (in-memory data on a CPU).

A pass over a user's ψ spends much of its time on work that depends on the rows alone: building design vectors
from columns, broadcasts, the layout changes of the backward pass. In a Newton loop written as one program XLA
hoists that work out of the loop; across host-driven passes it cannot. :func:`split` unzips the chunk program
(:meth:`mestim.sums.Kernel.add_chunk`) by data dependence (JAX's partial evaluation, :mod:`mestim.internals`): the
*known* part (rows, weights → residuals) runs once per slab, on its filled chunks, when an in-memory source first
runs the plan; the *unknown* part (θ, residuals → sums) runs on every pass, about twice as fast as the whole chunk
program for a typical user's ψ. Both parts compute exactly the operations of the original program.

The split is made for one fixed plan (what a pass computes), the one of a Newton pass that takes every block's
Jacobian (and the meat): with the plan an argument, its branches (``lax.cond`` on the plan) would keep the θ-free
work inside them, out of reach. The same residuals serve any pass that asks for no more (:func:`serves`): the
unknown part's outputs the pass does not ask for are left unused, so XLA removes their work (a residual-only
backtracking step runs no Jacobian), and the blocks it skips are zero, as in the whole program. The residuals
take memory (W2 written as one ψ: ~85 numbers a row, 5× its columns), so hoisting is used when they fit
:data:`HOIST_BUDGET`, and only on a CPU: a GPU is bound by memory bandwidth, where reading residuals costs more
than recomputing them. Rows sharded over CPU devices are hoisted too, each device its own rows (without it,
``devices=2`` ran at 0.41× one hoisted device). Where partial evaluation is unavailable or fails, the source runs the whole chunk program
on every pass and :data:`mestim.internals.FALLBACKS` counts it.

When hoisting pays, and how: data small enough to be compiled for compile speed (:func:`mestim.sums.quick_compile`)
are not hoisted (their fit is mostly compilation); above that, on a CPU, the build costs about five hoisted passes
(W2's user ψ: 0.5 µs a row against 0.1 µs a hoisted pass and 0.6 µs a plain one), so a Newton solve of five or more
passes gains 2–3×. Hoisted rows of up to :data:`ONE_PROGRAM_CHUNKS` chunks a device are laid out in one slab and
solved in one program (:func:`solve_program`): at n = 1e4 a pass takes about a millisecond, and the host round trip
of each pass (dispatch, transfer, the solver's step) cost as much again. More rows run host-driven hoisted passes
over slabs of 64 chunks (a pass there takes tens of milliseconds or more, the round trip under one). Streams are
never hoisted: they read their rows anew on every pass.

Residuals are built over spare stacks (:func:`spare_stacks`, donated to the build): a fit gives its stacks back when
it ends (:func:`give_back`, up to :data:`SPARE_BYTES` kept in the process), and the next fit of the same shapes
writes over them instead of asking the system for new memory, which it maps and zeroes page by page. Set
``mestim.hoist.SPARE_BYTES = 0`` to keep none.
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import contractions, internals
from .solve import SolverOptions, State, solve_traced
from .sums import JACOBIAN, SLAB_CHUNKS, VALUES, Moments, pow2_ceil

HOIST_BUDGET = 1 << 30  # bytes of residuals an in-memory source may keep on the device
# hoisted rows up to this many chunks a device (one slab) are solved in one program, its residuals built over spare
# stacks (SPARE_BYTES holds W2's 256 chunks): W2 ÷ the one-jit fit went from 0.40–0.42 to 0.34–0.36 at n = 1e5 (98
# chunks) and from 0.36–0.37 to 0.32 at 2e5 (interleaved processes). Without spare stacks the program's residuals
# were new memory on every fit, and one program ran 1.04–1.2× the host-driven passes over slabs of 64 chunks
ONE_PROGRAM_CHUNKS = 256
# a hoisted pass evaluates this many chunks at once (vmapped): its contractions over 4 × 1024 rows (the meat's
# above all) ran a closing pass of W2 at 1e5 in 16 ms instead of 26, a Newton pass in 12 instead of 13
GROUP_CHUNKS = 4
# the hoisting build likewise builds 8 chunks at once: W2's build at 1e5 took 8–11 ms a slab of 64 chunks instead of
# 10–13 (the chunks past the filled ones are built from the slab's padding rows, and masked out by the passes)
BUILD_GROUP_CHUNKS = 8
# residual stacks a process keeps from finished fits, for the next build of the same shapes to write over: XLA's CPU
# client has no caching allocator, so each fit's new stacks were memory the system mapped and zeroed page by page
# (W2 at 1e5: 11,000 page faults and 15–25 ms of system time a fit)
SPARE_BYTES = 1 << 28


class Split(NamedTuple):
    known: object  # ClosedJaxpr: (row columns..., w, column centres...) → residuals
    unknown: object  # ClosedJaxpr: (residuals..., acc leaves..., θ) → Moments leaves
    residuals: tuple  # avals of the residuals of one chunk


@functools.lru_cache(maxsize=64)
def split(kernel, layout: tuple, plan: tuple, centred: bool = False) -> Split | None:
    """The chunk program of ``kernel`` for the fixed ``plan``, unzipped by data dependence, for rows of ``layout``
    ((name, shape per row, dtype) per column; ``centred``: float32 columns stored less their centres);
    None (counted in :data:`mestim.internals.FALLBACKS`) where partial evaluation is unavailable or fails."""
    k, p = kernel.shape
    c = kernel.chunk
    acc = [jax.ShapeDtypeStruct(s, jnp.float64) for s in ((k,), (k, p), (k, k), ())]
    theta = jax.ShapeDtypeStruct((p,), jnp.float64)
    rows = {name: jax.ShapeDtypeStruct((c,) + tuple(shape), np.dtype(dtype)) for name, shape, dtype in layout}
    w = jax.ShapeDtypeStruct((c,), jnp.float64)
    centre = {name: jax.ShapeDtypeStruct(tuple(shape), jnp.float64) for name, shape, _ in layout} if centred else None

    def chunk(acc, theta, rows, w, centre):
        return tuple(kernel.add_chunk(Moments(*acc), theta, rows, w, np.asarray(plan, np.int32), centre))

    closed = jax.make_jaxpr(chunk)(acc, theta, rows, w, centre)
    n_unknown = len(acc) + 1
    parts = internals.partial_eval(closed, [True] * n_unknown + [False] * (len(closed.in_avals) - n_unknown))
    if parts is None:
        return None
    known, unknown, residuals = parts
    expected = list(residuals) + list(closed.in_avals[:n_unknown])
    if [a.shape for a in unknown.in_avals] != [a.shape for a in expected]:
        internals.fell_back("JAX partial evaluation returned a program of another signature")
        return None
    return Split(known, unknown, residuals)


def hoisted_plan(plan: tuple, n_blocks: int) -> tuple:
    """The plan whose residuals a full Jacobian ``plan`` hoists: the same with the meat, so that a later pass of
    the values and meat at θ̂ is served by them too."""
    return tuple(plan[:n_blocks]) + (1, plan[-1])


def serves(hoisted: tuple, plan: tuple, n_blocks: int) -> bool:
    """Whether the residuals of the ``hoisted`` plan serve a pass of ``plan``: no block asks for more than was
    hoisted; the meat only where it was hoisted with the same weights (frequency or sampling) and the pass takes
    every block's values (a skipped block's ψ is zero in the whole program's meat)."""
    blocks = all(m <= h for m, h in zip(plan[:n_blocks], hoisted[:n_blocks]))
    meat = not plan[n_blocks] or (hoisted[n_blocks] and plan[-1] == hoisted[-1] and min(plan[:n_blocks]) >= VALUES)
    return blocks and bool(meat)


def residual_bytes(s: Split, n_chunks: int) -> int:
    """The memory of the residuals of ``n_chunks`` chunks."""
    return n_chunks * sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in s.residuals)


def slab_residuals(s: Split, kernel, rows, w, n_chunks, capacity: int, centre, into):
    """The residuals of the first ``n_chunks`` chunks of a slab, stacked along a leading chunk axis of ``capacity``
    (at least ``n_chunks``; traceable), built :data:`BUILD_GROUP_CHUNKS` chunks at a time, written over ``into``
    (stacks of those shapes, :func:`spare_stacks`). The entries past the last group keep what was there; those
    inside it are of the slab's padding rows: neither is read (:func:`slab_sums` masks them)."""
    c = kernel.chunk
    g = min(BUILD_GROUP_CHUNKS, capacity)  # both powers of two: groups tile the capacity

    def body(i, stacked):
        cut = lambda a: lax.dynamic_slice_in_dim(a, i * g * c, g * c).reshape((g, c) + a.shape[1:])  # noqa: E731
        one = lambda rows, w: _build(s.known, *jax.tree.leaves(rows), w, *jax.tree.leaves(centre))  # noqa: E731
        out = jax.vmap(one)(jax.tree.map(cut, rows), cut(w))
        return tuple(lax.dynamic_update_slice_in_dim(r, o, i * g, 0) for r, o in zip(stacked, out))

    return lax.fori_loop(0, (n_chunks + g - 1) // g, body, tuple(into))


def _build(known, *args):
    """The θ-free program on one chunk, its sums of products as contractions (:mod:`mestim.contractions`); as
    written where that fails (counted in :data:`mestim.internals.FALLBACKS`)."""
    try:
        return contractions.evaluate(known, *args)
    except Exception as e:  # an interpreter rule this JAX's program breaks  # noqa: BLE001
        internals.fell_back(f"the hoisting build's contractions failed ({type(e).__name__}: {e})",
                            "the build runs as written")
        return internals.evaluate(known, *args)


def slab_sums(s: Split, kernel, plan: tuple, acc, theta, residuals, n_chunks):
    """``acc`` plus the sums of a pass of ``plan`` (served by ``s``, :func:`serves`) over the first ``n_chunks``
    chunks of a slab, from its residuals (traceable). The outputs the plan does not ask for are left unused (XLA
    removes their work); the rows of blocks it skips, or takes no Jacobian of, are zero as in the whole program."""
    n_blocks = len(kernel.spec.blocks)
    eq = kernel.spec.equation_offsets()

    def rows_at_least(mode):  # the equations of the blocks the plan asks ``mode`` (or more) of
        rows = np.zeros(kernel.shape[0], bool)
        for block, m in zip(kernel.spec.blocks, plan):
            rows[eq[block.name]] = m >= mode
        return rows

    def masked(x, rows):
        return x if rows.all() else jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)

    values, jacobian = rows_at_least(VALUES), rows_at_least(JACOBIAN)
    zero = [jnp.zeros(x.shape, x.dtype) for x in kernel.zeros()]
    group = min(GROUP_CHUNKS, residuals[0].shape[0])  # both powers of two: groups tile the capacity

    def chunk_sums(chunk_residuals):
        return internals.evaluate(s.unknown, *chunk_residuals, *zero, theta)

    def body(i, acc):
        moments = jax.vmap(chunk_sums)([lax.dynamic_slice_in_dim(r, i * group, group) for r in residuals])
        filled = i * group + jnp.arange(group) < n_chunks  # the last group's chunks past n_chunks hold zeros
        psi, jac, meat, sum_w = (jnp.where(filled.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0).sum(0)
                                 for x in moments)
        return Moments(acc.psi + masked(psi, values), acc.jac + masked(jac, jacobian) if jacobian.any() else acc.jac,
                       acc.meat + meat if plan[n_blocks] else acc.meat, acc.sum_w + sum_w)

    return lax.fori_loop(0, (n_chunks + group - 1) // group, body, acc)


def capacity(n_chunks: int) -> int:
    """The chunks of residuals kept for a slab of ``n_chunks`` filled chunks: the next power of two (a slab of 64
    chunks holding 10 kept 64 chunks of residuals, 5× the memory to fill), so a program serves many sizes."""
    return pow2_ceil(n_chunks)


_spares: collections.OrderedDict = collections.OrderedDict()  # (shapes, devices) → [stacks], oldest first
_spares_lock = threading.Lock()


def _stacks_key(shapes, devices) -> tuple:
    return tuple((tuple(shape), np.dtype(dtype).str) for shape, dtype in shapes), tuple(d.id for d in devices)


def spare_stacks(s: Split, kernel, capacity: int) -> tuple:
    """Stacks for the residuals of a slab of ``capacity`` chunks a device to be built over (donated to
    :func:`residuals_program`): those a finished fit gave back (:func:`give_back`), else new ones."""
    parts = 1 if kernel.mesh is None else kernel.mesh.size
    shapes = [((parts * capacity,) + tuple(a.shape), a.dtype) for a in s.residuals]
    devices = [jax.devices()[0]] if kernel.mesh is None else kernel.mesh.devices.flat
    key = _stacks_key(shapes, sorted(devices, key=lambda d: d.id))  # as give_back reads them off the stacks
    with _spares_lock:
        kept = _spares.get(key)
        if kept:
            stacks = kept.pop()
            if not kept:
                del _spares[key]
            return stacks
    where = None if kernel.mesh is None else jax.sharding.NamedSharding(
        kernel.mesh, jax.sharding.PartitionSpec(kernel.mesh.axis_names))
    # a copy of uninitialised host memory (device_put of an unaligned array copies it): the device owns it, so it
    # can be donated, and nothing in it is read
    return tuple(jax.device_put(np.empty(shape, dtype), where) for shape, dtype in shapes)


def give_back(stacks: list) -> None:
    """Keeps a finished fit's residual stacks (one tuple a slab) for later builds of the same shapes, up to
    :data:`SPARE_BYTES` in all (the oldest given up first)."""
    with _spares_lock:
        for one in stacks:
            if any(a.is_deleted() for a in one):
                continue
            key = _stacks_key([(a.shape, a.dtype) for a in one], sorted(one[0].sharding.device_set, key=lambda d: d.id))
            _spares.setdefault(key, []).append(one)
            _spares.move_to_end(key)
        total = sum(a.nbytes for kept in _spares.values() for one in kept for a in one)
        while total > SPARE_BYTES:
            key, kept = next(iter(_spares.items()))
            total -= sum(a.nbytes for a in kept.pop(0))
            if not kept:
                del _spares[key]


def _per_device(kernel, per_device, in_specs, out_specs):
    """``per_device`` run on each device of the kernel's mesh on its own rows (``"rows"``: split along the rows,
    ``"all"``: replicated), as :meth:`mestim.sums.Kernel.slab_sums` does."""
    from jax.sharding import PartitionSpec as P

    spec = {"rows": P(kernel.mesh.axis_names), "all": P()}
    return jax.shard_map(per_device, mesh=kernel.mesh, in_specs=tuple(spec[s] for s in in_specs),
                         out_specs=spec[out_specs], check_vma=False)


def _residuals(s: Split, kernel, capacity, rows, w, n_chunks, centre, into):
    """:func:`slab_residuals` of a slab (traceable); on a mesh, each device's residuals of its own rows
    (``capacity`` chunks per device, stacked along the chunk axis)."""
    if kernel.mesh is None:
        return slab_residuals(s, kernel, rows, w, n_chunks, capacity, centre, into)

    def per_device(rows, w, n_chunks, centre, into):
        return slab_residuals(s, kernel, rows, w, n_chunks[0], capacity, centre, into)

    return _per_device(kernel, per_device, ("rows", "rows", "rows", "all", "rows"), "rows")(
        rows, w, n_chunks, centre, into)


def _sums(s: Split, kernel, plan, acc, theta, residuals, n_chunks):
    """:func:`slab_sums` of a slab (traceable); on a mesh, each device on its own residuals, then ``psum``."""
    if kernel.mesh is None:
        return slab_sums(s, kernel, plan, acc, theta, residuals, n_chunks)

    def per_device(theta, residuals, n_chunks):
        zero = Moments(*(jnp.zeros(x.shape, x.dtype) for x in kernel.zeros()))
        return lax.psum(slab_sums(s, kernel, plan, zero, theta, residuals, n_chunks[0]), kernel.mesh.axis_names)

    total = _per_device(kernel, per_device, ("all", "rows", "rows"), "all")(theta, residuals, n_chunks)
    return jax.tree.map(jnp.add, acc, total)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=(8,))
def residuals_program(kernel, layout, plan, capacity, rows, w, n_chunks, centre, into):
    """:func:`slab_residuals` (per device on a mesh) written over ``into`` (donated: :func:`spare_stacks`),
    compiled once per kernel, plan, slab shape and capacity."""
    return _residuals(split(kernel, layout, plan, centre is not None), kernel, capacity, rows, w, n_chunks, centre,
                      into)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def sums_program(kernel, layout, hoisted, plan, centred, acc, theta, residuals, n_chunks):
    """:func:`slab_sums` of a pass of ``plan`` from the residuals of the ``hoisted`` plan (per device on a mesh),
    compiled once per kernel, plan and slab shape: the host-driven hoisted passes run it."""
    return _sums(split(kernel, layout, hoisted, centred), kernel, plan, acc, theta, residuals, n_chunks)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5), donate_argnums=(12,))
def solve_program(kernel, layout, newton: tuple, final: tuple, capacity: int, options: SolverOptions, rows, w,
                  n_chunks, centre, theta0, scale, into) -> tuple[State, Moments, object, tuple]:
    """The solve of a one-slab source in one program: the residuals of the ``newton`` plan's θ-free work
    (``capacity`` chunks, per device on a mesh), :func:`mestim.solve.solve_traced` over every parameter with a
    hoisted pass of ``newton`` per evaluation (the one that likely ends the solve with the meat,
    :func:`mestim.solve.closing`), and the sums of the ``final`` plan at θ̂: that pass's, or a pass of the rows where
    the solve ended elsewhere. Returns (state, the sums at θ̂, whether they came from the closing pass). The rules and
    the sums are those of the host-driven passes."""
    closing = hoisted_plan(newton, len(kernel.spec.blocks))  # a Newton pass with every value and the meat
    s = split(kernel, layout, closing, centre is not None)
    residuals = _residuals(s, kernel, capacity, rows, w, n_chunks, centre, into)
    zero = Moments(*(jnp.zeros(x.shape, x.dtype) for x in kernel.zeros()))

    def evaluate(theta, last):  # a pass that likely ends the solve (mestim.solve.closing) takes the meat too
        m = lax.cond(last, lambda: _sums(s, kernel, closing, zero, theta, residuals, n_chunks),
                     lambda: _sums(s, kernel, newton, zero, theta, residuals, n_chunks))
        return m.psi, m.jac, (m, last)

    state, (m, with_meat), point = solve_traced(evaluate, theta0, scale, options, with_aux=True)
    # otherwise the values and meat at θ̂ from the rows: residuals read after the loop were copied before it (45 MB
    # at 5e4 rows)
    closed = with_meat & jnp.all(point == state.theta)
    return state, lax.cond(closed, lambda: m, lambda: kernel.slab_sums(
        zero, state.theta, rows, w, n_chunks, np.asarray(final, np.int32), centre)), closed, residuals
