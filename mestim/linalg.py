"""Small dense linear algebra for traced (vmapped) solves, written in jax.numpy without LAPACK.

Why not ``jnp.linalg``: on a CPU, jaxlib 0.10's LAPACK kernels split a *batched* factorisation (what
``jax.vmap`` of ``jnp.linalg.solve`` becomes) over XLA's intra-op thread pool and block the calling pool thread
until the parts are done; two such kernels at once on a 2-thread pool leave no thread free and the process hangs
at 0% CPU (seen in vmapped transport fits, found with gdb). The systems here are p × p with p the parameters of
one dependency level (tens to a hundred): Gauss–Jordan elimination with partial pivoting in plain array
operations costs nothing next to a pass over the rows, vmaps into ordinary batched arithmetic, and never enters
LAPACK. The host driver keeps numpy's LAPACK (:mod:`mestim.solve`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def solve(a, b):
    """a⁻¹b by Gauss–Jordan elimination with partial pivoting; inf/NaN where ``a`` is singular (traceable)."""
    n = a.shape[0]
    rhs = b.reshape(n, -1)
    m = jnp.concatenate([a, rhs.astype(a.dtype)], axis=1)
    rows = jnp.arange(n)

    def eliminate(k, m):
        pivot_row = jnp.argmax(jnp.where(rows >= k, jnp.abs(m[:, k]), -1.0))
        m = m.at[jnp.array([k, pivot_row])].set(m[jnp.array([pivot_row, k])])  # swap rows k and the pivot's
        m = m.at[k].set(m[k] / m[k, k])
        factors = jnp.where(rows == k, 0.0, m[:, k])
        return m - factors[:, None] * m[k][None, :]

    m = lax.fori_loop(0, n, eliminate, m)
    return m[:, n:].reshape(b.shape)


def inv(a):
    """a⁻¹ (:func:`solve` against the identity)."""
    return solve(a, jnp.eye(a.shape[0], dtype=a.dtype))


def condition(a, inverse=None):
    """The 1-norm condition number ‖a‖₁‖a⁻¹‖₁ (within a factor n of the 2-norm one); inf where singular."""
    inverse = inv(a) if inverse is None else inverse
    value = jnp.max(jnp.sum(jnp.abs(a), axis=0)) * jnp.max(jnp.sum(jnp.abs(inverse), axis=0))
    return jnp.where(jnp.isfinite(value), value, jnp.inf)
