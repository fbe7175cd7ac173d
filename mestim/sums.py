"""Sums over rows: the one place in mestim that touches every row.

Everything the engine needs from the data is a weighted sum over rows, evaluated chunk by chunk so that peak
memory is O(chunk · p · width of ψ's intermediates), never O(n · p²):

    Σ_i w_i ψ_i(θ)                 (estimating equations)
    Σ_i w_i ∂ψ_i/∂θᵀ               (minus the bread; reverse mode over the chunk sum: one forward pass and one
                                    vmapped backward pass, no (n, p, p) tangent)
    Σ_i w_i ψ_i ψ_iᵀ               (meat with frequency weights; w_i² with sampling weights)
    U_g = Σ_{i∈g} w_i ψ_i          (cluster totals, for the clustered meat Σ_g U_g U_gᵀ)

:func:`chunk_moments` is the kernel on one chunk of rows; :func:`moments` scans it over in-memory data inside
one compiled function. Streaming from host memory or files and sharding over devices (:mod:`mestim.scale`)
reuse the same kernel, so all three give the same sums.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

DEFAULT_CHUNK = 8192  # rows per chunk: big enough to keep the BLAS busy, small enough for O(chunk·p²) memory


class Moments(NamedTuple):
    psi: jax.Array  # (k,)    Σ w ψ
    jac: jax.Array | None  # (k, p)  Σ w ∂ψ/∂θ
    meat: jax.Array | None  # (k, k)  Σ w ψψᵀ (or Σ w² ψψᵀ for sampling weights)
    cluster: jax.Array | None  # (G, k)  cluster totals of w ψ


def chunk_moments(f, theta, rows, w, *, jac=True, meat=True, sampling=False, cluster=None,
                  n_clusters=0) -> Moments:
    """Weighted sums of ψ, its Jacobian and outer products over one chunk of rows.

    Args:
        f: ``f(theta, row) -> (k,)``, the stacked estimating function of one row, or a tuple of such functions
            (one per block), whose outputs are concatenated. With a tuple, each block's rows of the Jacobian come
            from that block alone: k_b backward passes through block b only, Σ_b k_b·cost_b in all, instead of
            k·Σ_b cost_b for one pullback through the whole stack (which grows like the square of its size).
            A part with ``analytic = True`` and ``chunk_sums(theta, rows, w) -> (values, Σ w ∂ψ/∂θ)`` supplies its
            Jacobian in closed form instead (:class:`mestim.blocks.BlockPart` of a GLM block).
        theta: (p,) parameters the Jacobian is taken with respect to.
        rows: pytree of arrays with a leading row axis (one chunk).
        w: (c,) row weights (0 for padding rows).
        sampling: meat uses w² (sampling weights) instead of w (frequency weights).
        cluster: (c,) int cluster codes, or None; then ``n_clusters`` totals are returned instead of the meat.
    """
    values, jacobians = [], []
    for part in f if isinstance(f, tuple) else (f,):
        per_row = lambda t, part=part: jax.vmap(part, in_axes=(None, 0))(t, rows)  # noqa: E731
        if jac and getattr(part, "analytic", False):  # a closed-form Jacobian (GLM blocks)
            v, j = part.chunk_sums(theta, rows, w)
            jacobians.append(j)
        elif jac:
            v, pullback = jax.vjp(per_row, theta)
            # Row j of Σ w ∂ψ/∂θ is the pullback of the cotangent w ⊗ e_j: k backward passes, batched by vmap.
            jacobians.append(jax.vmap(lambda e, pb=pullback: pb(w[:, None] * e[None, :])[0])(
                jnp.eye(v.shape[1], dtype=v.dtype)))
        else:
            v = per_row(theta)
        values.append(v)
    values = values[0] if len(values) == 1 else jnp.concatenate(values, axis=1)
    jacobian = (jacobians[0] if len(jacobians) == 1 else jnp.concatenate(jacobians)) if jac else None
    weighted = values * w[:, None]
    outer = None
    totals = None
    if cluster is not None:
        totals = jnp.zeros((n_clusters, values.shape[1]), values.dtype).at[cluster].add(weighted)
    elif meat:
        outer = weighted.T @ (weighted if sampling else values)
    return Moments(weighted.sum(0), jacobian, outer, totals)


def moments(f: Callable, theta, data, w, *, chunk_size: int = DEFAULT_CHUNK, jac=True, meat=True,
            sampling=False, cluster=None, n_clusters=0, mesh=None, args=()) -> Moments:
    """:func:`chunk_moments` summed over all rows of in-memory ``data`` (traceable, jit-able).

    With a ``mesh`` (a :class:`jax.sharding.Mesh`), the rows are split over all its devices: each device sums
    its own rows chunk by chunk and the per-device sums are added with ``psum`` (the row count must be a
    multiple of the number of devices; :mod:`mestim.scale` pads with zero-weight rows). Traced values ψ needs
    besides θ (e.g. the fixed parameters of other blocks) must come through ``args`` (``f(theta, row, *args)``),
    not a closure: inside ``shard_map`` they are replicated inputs.
    """
    kw = dict(jac=jac, meat=meat, sampling=sampling, n_clusters=n_clusters)

    def local(theta, data, w, cluster, args):
        g = tuple(_Bound(part, args) for part in f) if isinstance(f, tuple) else _Bound(f, args)
        return sum_chunks(lambda c: chunk_moments(g, theta, c["rows"], c["w"], cluster=c["cluster"], **kw),
                          {"rows": data, "w": w, "cluster": cluster}, chunk_size)

    if mesh is None:
        return local(theta, data, w, cluster, args)
    from jax.sharding import PartitionSpec

    rows = PartitionSpec(mesh.axis_names)
    per_device = lambda *a: lax.psum(local(*a), mesh.axis_names)  # noqa: E731
    return jax.shard_map(per_device, mesh=mesh, in_specs=(PartitionSpec(), rows, rows, rows, PartitionSpec()),
                         out_specs=PartitionSpec(), check_vma=False)(theta, data, w, cluster, args)


class _Bound:
    """A part with the extra traced ``args`` bound (``part(t, row, *args)``), keeping its closed-form Jacobian."""

    def __init__(self, part, args):
        self.part, self.args = part, args
        self.analytic = getattr(part, "analytic", False)

    def chunk_sums(self, t, rows, w):
        return self.part.chunk_sums(t, rows, w, *self.args)

    def __call__(self, t, row):
        return self.part(t, row, *self.args)


def sum_chunks(g: Callable, data, chunk_size: int = DEFAULT_CHUNK):
    """Σ over chunks of ``g(chunk)`` for a pytree ``data`` with a leading row axis.

    Full chunks are visited with ``lax.fori_loop`` over dynamic slices (no padded copy of the data, the body
    compiled once); the last, shorter chunk is one more static-shape call.
    """
    n = jax.tree.leaves(data)[0].shape[0]
    chunk = min(chunk_size, n)
    n_full, rest = divmod(n, chunk)
    at = lambda start, size: g(jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), data))  # noqa: E731
    total = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(lambda s: at(s, chunk), 0))
    if n_full:
        total = lax.fori_loop(0, n_full, lambda i, acc: _add(acc, at(i * chunk, chunk)), total)
    if rest:
        total = _add(total, at(n_full * chunk, rest))
    return total


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def row_map(g: Callable, data, *, chunk_size: int = DEFAULT_CHUNK):
    """``g(rows) -> (c, …)`` applied chunk by chunk and concatenated: per-row outputs (influence functions)."""
    n = jax.tree.leaves(data)[0].shape[0]
    chunk = min(chunk_size, n)
    n_full, rest = divmod(n, chunk)
    cut = lambda start, size: jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), data)  # noqa: E731
    parts = []
    if n_full:
        parts.append(lax.map(lambda i: g(cut(i * chunk, chunk)), jnp.arange(n_full)).reshape(n_full * chunk, -1))
    if rest:
        parts.append(g(cut(n_full * chunk, rest)).reshape(rest, -1))
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]
