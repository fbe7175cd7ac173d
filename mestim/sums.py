"""Sums over rows: the one place in mestim that touches every row.

Everything the engine needs from the data is a weighted sum over rows:

    Σ_i w_i ψ_i(θ)                 estimating equations (K values)
    Σ_i w_i ∂ψ_i/∂θᵀ               minus the bread (K × P)
    Σ_i a_i ψ_i ψ_iᵀ               meat, a_i = w_i (frequency weights) or w_i² (sampling weights)
    Σ_i w_i                        checked to be the same on every pass

**One compiled program per stack.** :meth:`Kernel.slab_sums` adds the sums over one *slab* of rows to an
accumulator. A slab holds a fixed number of chunks (``SLAB_CHUNKS``: 1, 8 or 64 chunks of ``chunk`` rows), the
last chunk padded with zero-weight rows, and its number of filled chunks is an argument: the compiled shapes do
not depend on n, so data sets of any size (and every batch of a stream) reuse one program and the persistent
compilation cache. What a pass computes is an argument too (:func:`plan`, per block: skip it, its values, or
its values and Jacobian; meat or not), so the Newton passes of every dependency level, the residual-only passes
and the sandwich all run the same program. (:mod:`mestim.hoist` derives a second program from it for the full
Jacobian passes of large in-memory data.)

**Jacobians block by block, never an (n, p, p) tangent.** Block b's rows of Σw∂ψ/∂θ are non-zero only in the
columns of its own parameters and of the blocks it reads; they are taken with respect to those columns alone, on
each chunk of rows, as the Jacobian of the weighted chunk sum u ↦ Σ w ψ(u): one batched backward pass per colour
of equations (equations whose supports, read off ψ's jaxpr, are disjoint share one: :mod:`mestim.colouring`), or
one forward pass per colour of inputs where that takes fewer, or in closed form when the block's ψ offers ``chunk_sums(own, rows, w) -> (values, Σ w ∂ψ/∂own)`` (GLM scores: one matrix product). The
chunk is sized so that a block's Jacobian work stays in cache (:func:`chunk_rows`); small data are one chunk,
compiled for compile speed (:func:`quick_compile`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .ahead import run_compiling
from .blocks import StackSpec
from .internals import evaluate

SKIP, VALUES, JACOBIAN = 0, 1, 2  # what a pass computes for a block
SLAB_CHUNKS = (1, 8, 64)  # slab capacities, in chunks: a new size of data costs at most one compilation per size
# Chunk sizing: rows × (equations × inputs) of the largest block's Jacobian work per chunk, per backend.
CHUNK_BUDGET = {"cpu": 1 << 20, "default": 1 << 24}
CHUNK_LIMITS = {"cpu": (64, 8192), "default": (256, 1 << 16)}
QUICK_WORK = 1 << 23  # rows × width of a pass up to which a CPU program is compiled for compile speed
# In a quick program, a block whose Jacobian is a closed form (one matrix product) or has at most this many entries
# per row once compressed (colours × inputs) computes it on every pass, masked by the plan, instead of in a branch
# of its own: a cold `mestim transport` (10 GLM blocks, 6 small autodiff blocks of its 9) compiled 0.15–0.2 s less
# for 0.01–0.06 s more in its passes.
MASKED_JACOBIAN = 128


class Moments(NamedTuple):
    psi: np.ndarray  # (K,)   Σ w ψ
    jac: np.ndarray  # (K, P) Σ w ∂ψ/∂θ (rows of the blocks whose Jacobian the pass computed; zero elsewhere)
    meat: np.ndarray  # (K, K) Σ a ψψᵀ (zero when the pass computed no meat)
    sum_w: np.ndarray  # ()    Σ w


def plan(spec: StackSpec, values=(), jacobian=(), meat=False, sampling=False) -> np.ndarray:
    """What one pass computes: per block SKIP/VALUES/JACOBIAN (by block name), then the meat and sampling flags."""
    modes = [JACOBIAN if b.name in jacobian else VALUES if b.name in values else SKIP for b in spec.blocks]
    return np.array(modes + [int(meat), int(sampling)], np.int32)


def chunk_rows(spec: StackSpec, platform: str, n_rows: int | None = None, one_chunk: bool = True) -> int:
    """Rows per chunk, a power of two, for passes of ``n_rows`` rows (a stream's batch: ``one_chunk=False``).

    Small data (a pass of at most ``QUICK_WORK`` rows × width on a CPU) are one chunk of the next power of two rows:
    a program with no loop, compiled for compile speed (:func:`quick_compile`); padding costs at most as many rows
    again. Otherwise a block's Jacobian work on a chunk (rows × k_b × inputs_b of the largest block) stays within a
    cache-sized budget on a CPU, and is large on an accelerator (fewer, fuller kernels); never more rows than a
    pass has."""
    key = platform if platform in CHUNK_BUDGET else "default"
    lo, hi = CHUNK_LIMITS[key]
    if n_rows is not None and one_chunk and quick_compile(spec, platform, n_rows):
        return pow2_ceil(max(n_rows, lo))
    chunk = int(min(max(_pow2_floor(CHUNK_BUDGET[key] // width(spec)), lo), hi))
    return chunk if n_rows is None else min(chunk, pow2_ceil(max(n_rows, lo)))


def quick_compile(spec: StackSpec, platform: str, n_rows: int) -> bool:
    """Compile for compile speed (:data:`QUICK_CPU_OPTIONS`) when a pass is little work: on a CPU, up to
    ``QUICK_WORK`` rows × width. Most of a small fit's time is compiling; a large fit runs many passes."""
    return little_work(platform, n_rows, width(spec))


def little_work(platform: str, n_rows: int, per_row: int) -> bool:
    """Whether a program over ``n_rows`` rows of ``per_row`` work each is compiled for compile speed
    (:func:`quick_compile`'s rule, for programs other than the stack's: a library's read-out of a fit)."""
    return platform == "cpu" and pow2_ceil(max(n_rows, 1)) * per_row <= QUICK_WORK


def width(spec: StackSpec) -> int:
    """The Jacobian work of one row in the largest block: k_b equations × n_in inputs."""
    return max(max(b.equations * _n_inputs(spec, b) for b in spec.blocks), 1)


def _pow2_floor(x: int) -> int:
    return 1 << max(int(x).bit_length() - 1, 0)


def pow2_ceil(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def slab_chunks(n_chunks: int) -> int:
    """The smallest slab capacity (in chunks) that holds ``n_chunks``, or the largest (several slabs)."""
    return next((c for c in SLAB_CHUNKS if c >= n_chunks), SLAB_CHUNKS[-1])


def batch_slab_chunks(n_chunks: int) -> int:
    """The slab capacity for batches of up to ``n_chunks`` chunks streamed one after another: the largest that
    does not exceed a batch, so a full batch is whole slabs with no padding (a batch of 16 chunks padded to a
    slab of 64 held 4× its rows on the host and the device)."""
    return max((c for c in SLAB_CHUNKS if c <= n_chunks), default=SLAB_CHUNKS[0])


def _n_inputs(spec: StackSpec, block) -> int:
    dims = {b.name: b.dim for b in spec.blocks}
    return block.dim + sum(dims[r] for r in block.reads)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The row sums of one stack (hashable: the compiled programs are cached per kernel)."""

    spec: StackSpec
    chunk: int
    mesh: object = None  # jax.sharding.Mesh whose devices each sum their own rows (None: one device)
    quick: bool = False  # compile for compile speed (small data on a CPU, :func:`quick_compile`)
    hoist: bool = False  # in-memory sources do the work that does not depend on θ once (:mod:`mestim.hoist`)

    @property
    def shape(self) -> tuple[int, int]:
        return self.spec.equations, self.spec.dim

    @property
    def closed_form(self) -> bool:
        """Every block's Jacobian in closed form (``chunk_sums``): its θ-free work is reading the design."""
        return all(_closed_form(block) for block in self.spec.blocks)

    def zeros(self) -> Moments:
        k, p = self.shape
        return Moments(np.zeros(k), np.zeros((k, p)), np.zeros((k, k)), np.zeros(()))

    # ------------------------------------------------------------------------------------------ one chunk
    def _segments(self, block) -> tuple[tuple[int, int], ...]:
        """Where the block's inputs sit in θ: its own parameters, then each block it reads."""
        offs = self.spec.offsets()
        return tuple((offs[n].start, offs[n].stop) for n in (block.name,) + tuple(block.reads))

    def _inputs(self, block, theta):
        return jnp.concatenate([theta[a:z] for a, z in self._segments(block)])

    def _call(self, block, u, row):
        """ψ of one row as a function of the block's inputs u = (own parameters, then those of the blocks read)."""
        own, upstream, at = u[:block.dim], {}, block.dim
        for name, (a, z) in zip(block.reads, self._segments(block)[1:]):
            upstream[name], at = u[at:at + z - a], at + z - a
        return block(own, row, upstream)

    def pattern(self, block, rows) -> Pattern:
        """The block's Jacobian pattern for rows shaped like ``rows`` (a chunk; read once per block and layout)."""
        one_row = tuple(sorted((name, a.shape[1:], a.dtype.str) for name, a in rows.items()))
        return _pattern(self, self.spec.blocks.index(block), one_row)

    def _block(self, block, theta, rows, w, mode):
        """(values (c, k), Σ w ∂ψ/∂inputs (k, n_in)) of one block on one chunk; ``mode``: SKIP/VALUES/JACOBIAN, a
        traced value (one program for every plan) or a number (a program for one plan, :mod:`mestim.hoist`).

        A residual-only pass skips the derivative; a pass that does not need the block skips both."""
        u = self._inputs(block, theta)
        k, n_in, c = block.equations, u.shape[0], w.shape[0]
        zero_jac = jnp.zeros((k, n_in), u.dtype)

        static = isinstance(mode, (int, np.integer))

        def values(u):
            return jax.vmap(lambda row: self._call(block, u, row))(rows)

        if not (static or _closed_form(block)):  # ψ on the chunk traced once: the values branch and the
            # derivative's forward sweep evaluate one program (a cold `mestim transport` traced 0.1 s less)
            chunk_psi = jax.make_jaxpr(values)(u)
            values = lambda u: evaluate(chunk_psi, u)[0]  # noqa: E731

        def with_jacobian():
            if _closed_form(block):
                return block.psi.chunk_sums(u, rows, w)
            # Σ w ∂ψ/∂u as the Jacobian of the weighted chunk sum u ↦ Σ w ψ(u) (its per-row values ride along),
            # one backward pass per colour of equations, or one forward pass per colour of inputs (fewer wins)
            pattern = self.pattern(block, rows)

            def weighted(u):
                return w @ (v := values(u)), v

            if pattern.reverse:
                _, pullback, v = jax.vjp(weighted, u, has_aux=True)
                compressed = jax.vmap(pullback)(pattern.basis)[0]  # (colours, n_in): Σ of each colour's rows
                return v, pattern.recover(compressed)
            push = lambda t: jax.jvp(weighted, (u,), (t,), has_aux=True)  # noqa: E731
            _, compressed, v = jax.vmap(push, out_axes=(None, 0, None))(pattern.basis)
            return v, pattern.recover(compressed)  # compressed: (colours, k), Σ of each colour's columns

        skip = lambda: (jnp.zeros((c, k), u.dtype), zero_jac)  # noqa: E731
        only_values = lambda: (values(u), zero_jac)  # noqa: E731
        if static:
            return (skip, only_values, with_jacobian)[int(mode)]()
        if self.quick and (_closed_form(block) or self.pattern(block, rows).entries <= MASKED_JACOBIAN):
            # small data and a cheap Jacobian: computed on every pass and masked, cheaper than compiling a branch
            v, j = with_jacobian()
            return jnp.where(mode >= VALUES, v, 0.0), jnp.where(mode == JACOBIAN, j, 0.0)
        return lax.switch(mode, [skip, only_values, with_jacobian])

    def _spread(self, block, j):
        """The block's rows of the stack's Jacobian (k_b, P) from its (k_b, n_in) Jacobian: each segment of inputs at
        its columns of θ, zeros elsewhere. One concatenation (an ``.at[].add`` of the whole K × P matrix per segment
        was 44 more kernels to compile in a cold `mestim transport`)."""
        k, dim = j.shape[0], self.spec.dim
        segments, at = [], 0
        for a, z in self._segments(block):  # (columns of θ, where they start in u)
            segments.append((a, z, at))
            at += z - a
        pieces, end = [], 0
        for a, z, start in sorted(segments):  # disjoint column ranges: the block's own and each block it reads
            pieces += [jnp.zeros((k, a - end), j.dtype)] if a > end else []
            pieces.append(j[:, start:start + z - a])
            end = z
        pieces += [jnp.zeros((k, dim - end), j.dtype)] if end < dim else []
        return jnp.concatenate(pieces, axis=1)

    def add_chunk(self, acc: Moments, theta, rows, w, plan, centre=None) -> Moments:
        """``acc`` plus the sums over one chunk of rows (traceable; ``centre``: see :func:`widen`)."""
        rows = widen(rows, centre, theta.dtype)  # float32 storage, float64 arithmetic
        w = w.astype(theta.dtype)
        n_blocks = len(self.spec.blocks)
        static = isinstance(plan, np.ndarray)  # a program for one plan: no branches on it
        values, jac_rows = [], []
        for b, block in enumerate(self.spec.blocks):
            v, j = self._block(block, theta, rows, w, plan[b])
            values.append(v)
            jac_rows.append(self._spread(block, j))
        jac = acc.jac + jnp.concatenate(jac_rows, axis=0)  # the blocks' equations are consecutive rows
        v = jnp.concatenate(values, axis=1)
        a = w * jnp.where(plan[n_blocks + 1] > 0, w, 1.0)
        with_meat = lambda: acc.meat + (v * a[:, None]).T @ v  # noqa: E731
        meat = (with_meat() if plan[n_blocks] else acc.meat) if static else lax.cond(
            plan[n_blocks] > 0, with_meat, lambda: acc.meat)
        return Moments(acc.psi + w @ v, jac, meat, acc.sum_w + w.sum())

    # ------------------------------------------------------------------------------------------ one slab
    def slab_sums(self, acc: Moments, theta, rows, w, n_chunks, plan, centre=None) -> Moments:
        """``acc`` plus the sums over the first ``n_chunks`` chunks of a slab (traceable; rows: leading axis;
        ``centre``: the columns' centres when they are stored centred, see :func:`widen`)."""
        if self.mesh is None:
            return self._local_slab(acc, theta, rows, w, n_chunks, plan, centre)
        from jax.sharding import PartitionSpec as P

        rep, split = P(), P(self.mesh.axis_names)

        def per_device(theta, rows, w, n_chunks, plan, centre):
            zero = Moments(*(jnp.zeros(x.shape, x.dtype) for x in acc))
            local = self._local_slab(zero, theta, rows, w, n_chunks[0], plan, centre)
            return lax.psum(local, self.mesh.axis_names)

        total = jax.shard_map(per_device, mesh=self.mesh, in_specs=(rep, split, split, split, rep, rep),
                              out_specs=rep, check_vma=False)(theta, rows, w, n_chunks, plan, centre)
        return jax.tree.map(jnp.add, acc, total)

    def _local_slab(self, acc, theta, rows, w, n_chunks, plan, centre=None):
        c = self.chunk
        if w.shape[0] == c:  # a one-chunk slab needs no loop (padding and empty parts have weight 0)
            return self.add_chunk(acc, theta, rows, w, plan, centre)

        def body(i, acc):
            cut = lambda a: lax.dynamic_slice_in_dim(a, i * c, c)  # noqa: E731
            return self.add_chunk(acc, theta, jax.tree.map(cut, rows), cut(w), plan, centre)

        return lax.fori_loop(0, n_chunks, body, acc)

    def _per_row(self, theta, rows, per_chunk, centre=None):
        """(rows, K) outputs of ``per_chunk(theta, chunk_rows) -> (chunk, K)`` over a slab, chunk by chunk."""
        n = jax.tree.leaves(rows)[0].shape[0]
        shaped = jax.tree.map(lambda a: a.reshape((n // self.chunk, self.chunk) + a.shape[1:]), rows)
        return lax.map(lambda r: per_chunk(theta, widen(r, centre, theta.dtype)), shaped).reshape(n, -1)

    def row_values(self, theta, rows, centre=None):
        """(rows, K) per-row ψ of the whole stack on a slab (influence functions, cluster totals)."""
        def chunk(theta, rows):
            return jnp.concatenate([jax.vmap(lambda row: self._call(b, self._inputs(b, theta), row))(rows)
                                    for b in self.spec.blocks], axis=1)
        return self._per_row(theta, rows, chunk, centre)

    def row_leverages(self, theta, rows, j_inv, centre=None):
        """(rows, K) per-row diag(J_i J⁻¹), J_i = ∂ψ_i/∂θ, J⁻¹ given (Fay's correction), block by block."""
        eq = self.spec.equation_offsets()

        def chunk(theta, rows):
            out = []
            for b in self.spec.blocks:
                idx = np.concatenate([np.arange(a, z) for a, z in self._segments(b)])
                one = jax.jacfwd(lambda u, row: self._call(b, u, row))
                jac = jax.vmap(one, in_axes=(None, 0))(theta[idx], rows)  # (chunk, k_b, n_in)
                out.append(jnp.einsum("cel,le->ce", jac, j_inv[idx][:, eq[b.name]]))
            return jnp.concatenate(out, axis=1)
        return self._per_row(theta, rows, chunk, centre)

    def row_nonfinite(self, theta, rows, centre=None):
        """(rows, 2) per row: does ψ_i, does ∂ψ_i/∂θ hold NaN or inf? (to name the rows where a fit fails)"""
        def chunk(theta, rows):
            bad_value, bad_jac = [], []
            for b in self.spec.blocks:
                u = self._inputs(b, theta)
                one = lambda u, row, b=b: self._call(b, u, row)  # noqa: E731
                bad_value.append(~jnp.all(jnp.isfinite(jax.vmap(one, (None, 0))(u, rows)), axis=1))
                jac = jax.vmap(jax.jacfwd(one), (None, 0))(u, rows)
                bad_jac.append(~jnp.all(jnp.isfinite(jac), axis=(1, 2)))
            return jnp.stack([jnp.any(jnp.stack(bad_value), 0), jnp.any(jnp.stack(bad_jac), 0)], axis=1)
        return self._per_row(theta, rows, chunk, centre)


class Pattern(NamedTuple):
    """How a block's Jacobian is computed by colouring (:mod:`mestim.colouring`): ``basis`` (colours × k
    cotangents in reverse mode, colours × n_in tangents in forward mode), and where each entry is read back."""

    support: np.ndarray  # (k, n_in) bool: the inputs each equation may depend on
    colour: np.ndarray  # the colour of each equation (reverse) or input (forward)
    reverse: bool

    @property
    def entries(self) -> int:
        """Entries of the compressed Jacobian per row: colours × inputs (reverse) or × equations (forward)."""
        colours = int(self.colour.max()) + 1 if self.colour.size else 0
        return colours * self.support.shape[1 if self.reverse else 0]

    @property
    def basis(self):
        return np.eye(int(self.colour.max()) + 1)[:, self.colour] if self.colour.size else np.zeros((0, 0))

    def recover(self, compressed):
        """The (k, n_in) Jacobian from the compressed one: entry (e, j) is the row of e's colour (reverse) or the
        column of j's colour (forward), zero outside the support."""
        full = compressed[self.colour] if self.reverse else compressed[self.colour].T
        return full if self.support.all() else jnp.where(self.support, full, 0.0)


@functools.lru_cache(maxsize=256)
def _pattern(kernel: Kernel, index: int, one_row: tuple) -> Pattern:
    from .colouring import colours, supports

    block = kernel.spec.blocks[index]
    n_in = _n_inputs(kernel.spec, block)
    row = {name: jax.ShapeDtypeStruct(shape, np.dtype(dtype)) for name, shape, dtype in one_row}
    u = jax.ShapeDtypeStruct((n_in,), jnp.float64)
    support = supports(jax.make_jaxpr(lambda u, row: kernel._call(block, u, row))(u, row), n_in)
    by_row, by_column = colours(support), colours(support.T)
    reverse = by_row[1] < by_column[1] or (by_row[1] == by_column[1] and block.equations <= n_in)
    return Pattern(support, (by_row if reverse else by_column)[0], reverse)


def widen(rows, centre, dtype):
    """The stored columns as ψ reads them: in ``dtype`` (float64), plus each column's centre when they are stored
    centred in float32 (:func:`mestim.sources.store`): ψ sees x = c + (x − c), computed in float64."""
    if centre is None:
        return {name: v.astype(dtype) for name, v in rows.items()}
    return {name: v.astype(dtype) + centre[name] for name, v in rows.items()}


def _closed_form(block) -> bool:
    return not block.reads and block.mask is None and callable(getattr(block.psi, "chunk_sums", None))


def _slab_sums(kernel: Kernel, acc, theta, rows, w, n_chunks, plan, centre) -> Moments:
    return kernel.slab_sums(acc, theta, rows, w, n_chunks, plan, centre)


_optimized = jax.jit(_slab_sums, static_argnums=0)
# Small data on a CPU (:func:`quick_compile`): XLA's lowest optimisation level and its classic fusion code
# generator compile a stack 3–10× faster, for passes that take milliseconds either way. Large data keep XLA's
# defaults (its passes run up to 2× faster so).
QUICK_CPU_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
_quick = jax.jit(_slab_sums, static_argnums=0, compiler_options=QUICK_CPU_OPTIONS)


def slab_sums(kernel: Kernel, acc, theta, rows, w, n_chunks, plan, centre=None) -> Moments:
    """:meth:`Kernel.slab_sums`, compiled once per kernel and slab shape: every pass of every fit runs it (while it
    compiles, the work given to :func:`mestim.ahead.while_compiling` runs)."""
    program, args = (_quick if kernel.quick else _optimized), (kernel, acc, theta, rows, w, n_chunks, plan, centre)
    run_compiling(program, args, kernel.spec.offsets)
    return program(*args)


@functools.partial(jax.jit, static_argnums=0)
def row_values(kernel: Kernel, theta, rows, centre=None):
    """:meth:`Kernel.row_values`, compiled on demand (influence functions, clustered meat)."""
    return kernel.row_values(theta, rows, centre)


@functools.partial(jax.jit, static_argnums=0)
def row_nonfinite(kernel: Kernel, theta, rows, centre=None):
    """:meth:`Kernel.row_nonfinite`, compiled only when a fit fails on non-finite values."""
    return kernel.row_nonfinite(theta, rows, centre)


@functools.partial(jax.jit, static_argnums=0)
def row_leverages(kernel: Kernel, theta, rows, j_inv, centre=None):
    """:meth:`Kernel.row_leverages`, compiled on demand (Fay's correction)."""
    return kernel.row_leverages(theta, rows, j_inv, centre)
