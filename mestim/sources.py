"""Where the rows come from: a row source turns θ and a plan into host sums, one pass over its rows.

A source cuts its rows into slabs of fixed shape (:mod:`mestim.sums`) and runs the stack's one compiled program
on each, accumulating on the device; one transfer brings the sums back. :class:`InMemory` places every slab on
the device(s) once and reuses it on every pass; :class:`mestim.scale.Streamed` reads its slabs anew on every
pass. The solver (:mod:`mestim.driver`) sees only ``sums(theta, plan)``.

With several devices (a mesh), the rows are split into one contiguous part per device; slab i of every part
together form one global slab, sharded along rows, and each device sums its own part (``psum`` adds them).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from . import hoist
from .data import ALIGN, aligned_empty
from .errors import SpecificationError
from .solve import SolverOptions

from .sums import JACOBIAN, Kernel, Moments, row_leverages, row_nonfinite, row_values, slab_chunks, slab_sums


def device_mesh(devices="all") -> Mesh:
    """A one-axis mesh (axis ``"rows"``) from ``"all"``, a device count, a list of devices, or a Mesh."""
    if isinstance(devices, Mesh):
        return devices
    available = jax.devices()
    if isinstance(devices, str):
        if devices != "all":
            raise SpecificationError(f"devices={devices!r}: use 'all', a count, a list of devices or a Mesh")
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise SpecificationError(f"devices={devices}: {len(available)} device(s) are available "
                                     f"({available[0].platform})")
        chosen = available[:devices]
    else:
        try:
            chosen = list(devices)
        except TypeError:
            raise SpecificationError(f"devices={devices!r}: use 'all', a count, a list of devices or a Mesh") from None
        if not chosen:
            raise SpecificationError("devices=[]: give at least one device")
    return Mesh(np.array(chosen), ("rows",))


def layout(columns: dict, w: np.ndarray, chunk: int, parts: int = 1, capacity: int | None = None,
           aligned: bool = False):
    """Host slabs ``(rows, w, n_chunks)`` and the row count of each part.

    The rows are split into ``parts`` contiguous parts (one per device), each cut into slabs of ``capacity`` chunks
    (default: the smallest capacity that holds a part). A part's last slab is padded by repeating a real row with
    weight 0 (a repeated row keeps ψ finite where a zero row could give log(0) or 0/0, and 0·NaN is NaN); the other
    slabs are views of the columns, or with ``aligned`` and one part (for a CPU device, which then shares the slab's
    memory; several parts are concatenated, a copy anyway) aligned copies of the columns that are not contiguous and
    aligned already: a CPU device copies a strided column (a column of a 2-D array) 1.6× slower than numpy does.
    ``n_chunks`` has one entry per part: the chunks of that part's slab holding real rows.
    """
    n = w.shape[0]
    bounds = np.linspace(0, n, parts + 1).astype(int)
    sizes = np.diff(bounds)
    capacity = capacity or slab_chunks(-(-int(sizes.max()) // chunk))
    size = capacity * chunk
    n_slabs = max(1, -(-int(sizes.max()) // size))
    out = []
    for i in range(n_slabs):
        pieces = [_slab_of_part(columns, w, a + i * size, min(a + (i + 1) * size, b), size, a, aligned and parts == 1)
                  for a, b in zip(bounds[:-1], bounds[1:])]
        rows = pieces[0][0] if parts == 1 else {k: np.concatenate([p[0][k] for p in pieces]) for k in columns}
        weights = pieces[0][1] if parts == 1 else np.concatenate([p[1] for p in pieces])
        filled = np.clip(sizes - i * size, 0, size)
        out.append((rows, weights, (-(-filled // chunk)).astype(np.int32)))
    return out, sizes


def _slab_of_part(columns, w, start, stop, size, first, aligned=False):
    """Rows [start, stop) as one slab of ``size`` rows: views when full (``aligned``: see :func:`layout`), else
    padded with weight-0 copies of a row of the part (row ``first``; row 0 for an empty part)."""
    stop = max(stop, start)
    if stop - start == size:
        shared = _shared if aligned else (lambda v: v)  # noqa: E731
        return {k: shared(v[start:stop]) for k, v in columns.items()}, shared(w[start:stop])
    copy = first if first < w.shape[0] else 0
    rows = {k: _padded(v[start:stop], v[copy], size) for k, v in columns.items()}
    return rows, _padded(w[start:stop], 0.0, size)


def _shared(values):
    """``values`` as a CPU device can share them: themselves when contiguous and aligned, else an aligned copy."""
    aligned = values.flags.c_contiguous and values.ctypes.data % ALIGN == 0
    return values if aligned else _padded(values, 0, values.shape[0])


def _padded(values, fill, size):
    """``values`` followed by copies of ``fill`` up to ``size`` rows, aligned (the device shares it:
    :func:`mestim.data.aligned_empty`)."""
    out = aligned_empty((size,) + values.shape[1:], values.dtype)
    out[:values.shape[0]] = values
    out[values.shape[0]:] = fill
    return out


def place(kernel: Kernel, host_slabs):
    """Host slabs on the device (or sharded over the kernel's mesh)."""
    if kernel.mesh is None:
        return jax.device_put([(rows, w, n[0]) for rows, w, n in host_slabs])
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(list(host_slabs), NamedSharding(kernel.mesh, PartitionSpec(kernel.mesh.axis_names)))


def run_slabs(kernel: Kernel, device_slabs, theta, plan, acc=None, centre=None):
    """The accumulated row sums over device slabs (device arrays; nothing waits for the device)."""
    acc = kernel.zeros() if acc is None else acc
    for rows, w, n_chunks in device_slabs:
        acc = slab_sums(kernel, acc, theta, rows, w, n_chunks, plan, centre)
    return acc


def centres(columns: dict) -> dict:
    """Per column (and column element), the centre its float32 storage is taken from: the mean rounded to a
    multiple of the largest power of two not above the standard deviation (the value itself for a constant).

    Stored as x − c in float32 and widened to c + (x − c) in float64 on the device (:func:`mestim.sums.widen`),
    a value's rounding error is relative to its column's spread, not its offset: a covariate 1e6 + N(0, 1) keeps
    7 digits of its N(0, 1) part instead of none. A centre on that power-of-two grid keeps integer-valued
    columns (indicators, counts, years) exact."""
    out = {}
    for name, v in columns.items():
        mean, sd = v.mean(axis=0), v.std(axis=0)
        step = np.exp2(np.floor(np.log2(np.where(sd > 0, sd, 1.0))))
        out[name] = np.where(sd > 0, np.round(mean / step) * step, v[0])
    return out


def store(columns: dict, dtype, centre: dict | None) -> dict:
    """Host columns as the device stores them: ``dtype`` (float64 as given), less their centres when given."""
    if centre is None:
        return {k: v.astype(dtype, copy=False) for k, v in columns.items()}
    return {k: (v - centre[k]).astype(dtype) for k, v in columns.items()}


class InMemory:
    """Rows held on the device(s) as slabs, summed by the stack's compiled program on every pass; with
    ``kernel.hoist``, the work that does not depend on θ is done once here (:mod:`mestim.hoist`)."""

    meat_once = True  # a pass is cheap to repeat: the solver takes the meat in one pass at θ̂ (mestim.driver)

    def __init__(self, kernel: Kernel, columns: dict, w: np.ndarray, *, dtype=None, centre=None):
        """``dtype="float32"``: columns stored centred, on ``centre`` (default: their own, :func:`centres`)."""
        self.kernel, self.n_rows, self.sum_w, self.passes = kernel, int(w.shape[0]), float(np.sum(w)), 0
        self.centre = (centres(columns) if centre is None else centre) if dtype == "float32" else None
        columns = store(columns, dtype or np.float64, self.centre)
        parts = 1 if kernel.mesh is None else kernel.mesh.size
        # hoisted rows of up to hoist.ONE_PROGRAM_CHUNKS chunks a device are laid out in one slab of the chunks their
        # residuals keep (hoist.capacity), so the solve runs in one program (a slab of 64 chunks holding 10 was
        # padded, copied and placed on the device 4× its rows)
        chunks = -(-self.n_rows // (parts * kernel.chunk))  # per device
        capacity = hoist.capacity(chunks) if kernel.hoist and chunks <= hoist.ONE_PROGRAM_CHUNKS else None
        on_cpu = (jax.devices()[0] if kernel.mesh is None else kernel.mesh.devices.flat[0]).platform == "cpu"
        host, self._sizes = layout(columns, np.asarray(w, float), kernel.chunk, parts, capacity, aligned=on_cpu)
        self._filled = [int(n.max()) for _, _, n in host]  # chunks holding rows per device, per slab
        self._capacity = host[0][1].shape[0] // (parts * kernel.chunk)  # chunks per device of a slab
        self._host, self._placed = host, None
        self._layout = tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in columns.items()))
        self._hoisted = {}  # plan → residuals of every slab (None: not worth it)

    @property
    def _slabs(self):
        """The slabs on the device(s), placed on first use (a solve in one program reads the host slab directly:
        jit's own transfer costs less than a device_put of each column)."""
        if self._placed is None:
            self._placed = place(self.kernel, self._host)
        return self._placed

    def _unplaced(self):
        """The slabs as a program that reads them once takes them (the hoisting build, the solve in one program):
        the host slabs themselves, whose transfer jit makes as it runs (no copy where a slab is aligned), without a
        mesh; the placed slabs on one."""
        if self.kernel.mesh is not None:
            return self._slabs
        return [(rows, w, n_chunks[0]) for rows, w, n_chunks in self._host]

    def _residuals(self, plan: tuple):
        """(the hoisted plan that serves a requested ``plan``, the residuals of its θ-free work per slab), or None.

        The first full Jacobian pass (every block's Jacobian) makes the residuals of its plan with the meat (a
        later pass of that plan that asks for the meat needs no further residuals); a later pass that needs no more
        (a residual-only backtracking step, the values and meat at θ̂) is served by them (:func:`hoist.serves`).
        None when the kernel does not hoist, partial evaluation fails, or the residuals would not fit."""
        n_blocks = len(self.kernel.spec.blocks)
        for hoisted, residuals in self._hoisted.items():
            if hoist.serves(hoisted, plan, n_blocks):
                return (hoisted, residuals) if residuals is not None else None
        if not self.kernel.hoist or not all(mode == JACOBIAN for mode in plan[:n_blocks]):
            return None
        if self.kernel.closed_form and len(self._host) > 1:
            # closed-form Jacobians (X'WX) have no θ-free work but reading the design, which the residuals copy:
            # host-driven hoisted passes ran 1.10× the plain ones (registered logistic, n = 1e6, 7 interleaved pairs)
            return None
        key = hoist.hoisted_plan(plan, n_blocks)
        s = hoist.split(self.kernel, self._layout, key, self.centre is not None)
        # one slab keeps its filled chunks; of several, all keep a whole slab (one program for every slab)
        kept = [hoist.capacity(n) if len(self._filled) == 1 else self._capacity for n in self._filled]
        fits = s is not None and hoist.residual_bytes(s, sum(kept)) <= hoist.HOIST_BUDGET
        self._hoisted[key] = [hoist.residuals_program(self.kernel, self._layout, key, capacity, rows, w, n_chunks,
                                                      self.centre, hoist.spare_stacks(s, self.kernel, capacity))
                              for capacity, (rows, w, n_chunks) in zip(kept, self._unplaced())] if fits else None
        return (key, self._hoisted[key]) if fits else None

    def release(self) -> None:
        """Gives the residual stacks back for a later fit's build (:func:`hoist.give_back`): the fit is over, and
        a pass after this builds them anew."""
        hoisted, self._hoisted = self._hoisted, {}
        hoist.give_back([one for slabs in hoisted.values() if slabs is not None for one in slabs])

    def solve_in_one_program(self, theta0, newton, final, options: SolverOptions):
        """(the solver's last state, the row sums at θ̂: its Jacobian, and the ``final`` plan's values and meat) of
        the solve over every parameter (each evaluation a pass of the ``newton`` plan) in one compiled program
        (:func:`hoist.solve_program`); None where that does not apply. It applies to hoisted rows in one slab (up to
        ``hoist.ONE_PROGRAM_CHUNKS`` chunks a device), where a pass takes a few milliseconds and a host-driven pass's
        dispatch, transfer and host step cost as much again (W2's user ψ at n = 1e4: 1.22 → 0.95× the one-jit fit)."""
        newton, final = tuple(int(m) for m in newton), tuple(int(m) for m in final)
        n_blocks = len(self.kernel.spec.blocks)
        if not self.kernel.hoist or len(self._host) > 1:
            return None
        key = hoist.hoisted_plan(newton, n_blocks)
        s = hoist.split(self.kernel, self._layout, key, self.centre is not None)
        capacity = hoist.capacity(self._filled[0])
        if s is None or hoist.residual_bytes(s, capacity) > hoist.HOIST_BUDGET or not hoist.serves(
                key, final, n_blocks):
            return None
        rows, w, n_chunks = self._unplaced()[0]
        *solved, residuals = hoist.solve_program(
            self.kernel, self._layout, newton, final, capacity, options, rows, w, n_chunks, self.centre,
            np.asarray(theta0, float), self.sum_w, hoist.spare_stacks(s, self.kernel, capacity))
        self._hoisted[key] = [residuals]  # they serve later passes of the plan, and are given back (release)
        state, at, closed = jax.device_get(solved)
        self.passes += int(state.evaluations) + (not closed)
        return state, Moments(at.psi, state.jac, at.meat, at.sum_w)

    def sums(self, theta, plan) -> Moments:
        """The row sums at ``theta`` (host arrays), one pass over the device slabs."""
        theta = jax.device_put(np.asarray(theta, float))
        plan = tuple(int(m) for m in plan)
        hoisted = self._residuals(plan)
        if hoisted is None:
            acc = run_slabs(self.kernel, self._slabs, theta, np.asarray(plan, np.int32), centre=self.centre)
        else:
            key, residuals = hoisted
            acc = self.kernel.zeros()
            for res, (_, _, n_chunks) in zip(residuals, self._unplaced()):
                acc = hoist.sums_program(self.kernel, self._layout, key, plan, self.centre is not None, acc, theta,
                                         res, n_chunks)
        self.passes += 1
        return Moments(*jax.device_get(acc))

    def row_values(self, theta) -> np.ndarray:
        """(n_rows, K) per-row ψ at ``theta``, in the rows' original order."""
        return self._per_row(row_values, theta)

    def row_leverages(self, theta, j_inv) -> np.ndarray:
        """(n_rows, K) per-row diag(J_i J⁻¹) at ``theta`` (Fay's correction)."""
        return self._per_row(row_leverages, theta, np.asarray(j_inv))

    def nonfinite_rows(self, theta) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers where ψ, and where its derivative, is NaN or infinite at ``theta``."""
        bad = self._per_row(row_nonfinite, theta).astype(bool)
        return np.flatnonzero(bad[:, 0]), np.flatnonzero(bad[:, 1])

    def _per_row(self, program, theta, *args) -> np.ndarray:
        theta = jax.device_put(np.asarray(theta, float))
        per_slab = [np.asarray(program(self.kernel, theta, rows, *args, centre=self.centre))
                    for rows, _, _ in self._slabs]
        parts = len(self._sizes)
        by_part = np.concatenate([v.reshape(parts, -1, v.shape[-1]) for v in per_slab], axis=1)
        return np.concatenate([by_part[d, :size] for d, size in enumerate(self._sizes)])
