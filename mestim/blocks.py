"""Blocks of estimating functions and how a stack of them is ordered for solving.

A :class:`Block` owns a parameter vector θ_b (length ``dim``) and an estimating function

    ψ_b(θ_b, row, **upstream) -> array of shape (dim,)

where ``upstream`` holds the current values of the blocks it ``reads`` (keyword = block name). Stacking blocks
gives ψ(θ) = (ψ_1, …, ψ_B); the joint bread is block lower-triangular when every block reads only earlier ones,
so the stack can be solved one group at a time in dependency order. Blocks that read each other (a cycle) are
solved jointly as one group (Tarjan's strongly connected components).

Groups that do not depend on each other (say, the outcome models of different trials) are solved together, one
dependency level at a time (:func:`solve_levels`): their joint Jacobian is block-diagonal, so one Newton on the
level gives each group's own solution, while one pass over the rows serves them all (and one compiled program
serves every level, :mod:`mestim.sums`).

``prepare(columns) -> Prepared`` lets a registered block add its own columns (a design matrix, a cleaned outcome
with NaN replaced where the mask excludes the row) and pick a starting value from the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .errors import SpecificationError


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What a block adds before fitting: extra columns (names namespaced by the block), init, labels.

    Example (a block whose ``prepare`` adds a centred column and starts at the sample mean)::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> y = np.random.default_rng(0).normal(3.0, 1.0, 100)
        >>> prep = lambda cols: mestim.Prepared({"c.y": cols["y"] - 3.0}, init=np.array([0.0]), labels=("mean - 3",))
        >>> block = mestim.Block("c", lambda t, row: jnp.atleast_1d(row["c.y"] - t[0]), prepare=prep)
        >>> res = mestim.fit(block, {"y": y})
        >>> res.labels, bool(np.isclose(res.theta[0], y.mean() - 3.0))
        (('mean - 3',), True)
    """

    columns: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    init: np.ndarray | None = None
    labels: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()  # what the block chose (reported in summaries: model, rows used, …)
    psi: Callable[..., Any] | None = None  # replaces the block's ψ when its form depends on the data (classes)
    rows: np.ndarray | None = None  # the rows the block uses, when ψ applies its mask itself (m·ψ): for the rows check
    # GMM: the column holding the block's instruments z (ψ = z·e(θ)): its first step is 2SLS, W = (Σ w z zᵀ)⁻¹
    instruments: str | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Block:
    """One estimating function and the parameters it owns.

    Args:
        name: identifier of the block (used as keyword for blocks that read it, and in labels).
        psi: ``psi(theta, row, **upstream) -> (dim,)``; pure and traceable by JAX (no Python branching on data);
            None if ``prepare`` supplies it.
        init: starting values (length ``dim``); a registered block may compute them in ``prepare``.
        reads: names of blocks whose parameters ψ reads.
        labels: one name per parameter (default ``0..dim-1``).
        prepare: optional ``prepare(columns) -> Prepared`` run once on the host before fitting.
        check: optional ``check(theta, columns) -> list[str]`` run after solving; returns warnings, or raises.
        mask: rows the block uses (a column name, non-zero = used, or a boolean array): elsewhere ψ counts as 0
            and the columns it reads may hold NaN (a target sample without outcomes).
        smooth: for a non-smooth ψ (quantiles ``q - (y <= θ)``, ``jnp.where(y <= θ, 1.0, 0.0)``, ``jnp.sign``):
            every indicator and sign in ψ whose sides depend on θ is replaced by its Gaussian smoothing,
            1{a ≤ b} → Φ((b − a)/h), sign(x) → 2Φ(x/h) − 1, so Newton and autodiff see a smooth ψ
            (:mod:`mestim.smooth`). A bandwidth h > 0 in the units of the compared quantities, a tuple of them
            (one per smoothed comparison), or ``"auto"`` (h = min(sd, IQR/1.34)·n^(−1/3) of each compared difference
            at the starting values). None (default): ψ as written.

    Example (a block of its own parameters, stacked with a block that reads them)::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> y = np.random.default_rng(0).exponential(2.0, 500)
        >>> mu = mestim.Block("mu", lambda t, row: jnp.atleast_1d(row["y"] - t[0]), init=[1.0], labels=("mean",))
        >>> log_mu = mestim.Block("log", lambda t, row, mu: jnp.log(mu) - t, init=[0.0], reads=("mu",))
        >>> res = mestim.fit([mu, log_mu], {"y": y})
        >>> res.labels, bool(np.isclose(res.theta[1], np.log(y.mean())))
        (('mu:mean', 'log:0'), True)
    """

    name: str
    psi: Callable[..., Any] | None
    init: Any = None
    reads: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None
    prepare: Callable[[dict], Prepared] | None = None
    check: Callable[..., list] | None = None
    mask: Any = None
    smooth: Any = None

    def __post_init__(self):
        if not self.name.isidentifier():
            raise SpecificationError(f"block name {self.name!r} must be a Python identifier (it is a keyword of ψ)")
        object.__setattr__(self, "reads", tuple(self.reads))


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """The hashable part of a prepared block: what the compiled programs depend on.

    ``dim`` parameters, ``equations`` estimating equations (equal for an M-estimator); ``mask``: the data column
    of the block's row mask (None: every row).
    """

    name: str
    psi: Callable[..., Any]
    reads: tuple[str, ...]
    dim: int
    equations: int | None = None
    mask: str | None = None

    def __post_init__(self):
        if self.equations is None:
            object.__setattr__(self, "equations", self.dim)

    def __call__(self, own, row, upstream):
        """ψ of one row, its mask applied: ψ counts as 0 outside the mask (where NaN in the columns it reads
        were replaced by 0 on the host, :mod:`mestim.problem`)."""
        value = jnp.atleast_1d(self.psi(own, row, **upstream)).astype(own.dtype)
        return value if self.mask is None else jnp.where(row[self.mask] > 0, value, 0.0)


@dataclasses.dataclass(frozen=True)
class StackSpec:
    """Hashable description of a prepared stack: blocks in order and their offsets in the flat θ."""

    blocks: tuple[BlockSpec, ...]

    @property
    def dim(self) -> int:
        return sum(b.dim for b in self.blocks)

    def offsets(self) -> dict[str, slice]:
        out, start = {}, 0
        for b in self.blocks:
            out[b.name] = slice(start, start + b.dim)
            start += b.dim
        return out

    def unflatten(self, theta) -> dict:
        return {name: theta[sl] for name, sl in self.offsets().items()}

    @property
    def equations(self) -> int:
        return sum(b.equations for b in self.blocks)

    def equation_offsets(self) -> dict[str, slice]:
        out, start = {}, 0
        for b in self.blocks:
            out[b.name] = slice(start, start + b.equations)
            start += b.equations
        return out


def solve_groups(blocks: Sequence[BlockSpec]) -> list[tuple[str, ...]]:
    """Groups of blocks to solve together, in an order where every group reads only earlier groups.

    Tarjan's algorithm on the 'reads' graph: each strongly connected component is a group; components come out
    in reverse topological order of the dependency edges, i.e. dependencies first.
    """
    names = [b.name for b in blocks]
    reads = {b.name: b.reads for b in blocks}
    for b in blocks:
        missing = [r for r in b.reads if r not in reads]
        if missing:
            raise SpecificationError(f"block '{b.name}' reads {missing}, which are not blocks of this stack {names}")
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in reads[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            groups.append(tuple(n for n in names if n in group))

    for v in names:
        if v not in index:
            visit(v)
    return groups


def solve_levels(blocks: Sequence[BlockSpec]) -> list[tuple[str, ...]]:
    """The groups of :func:`solve_groups` merged by dependency level: level 0 reads no other group, level k reads
    groups of levels < k only. Each level is one Newton solve."""
    groups = solve_groups(blocks)
    reads = {b.name: b.reads for b in blocks}
    group_of = {name: i for i, g in enumerate(groups) for name in g}
    level: dict[int, int] = {}
    for i, g in enumerate(groups):  # dependencies come first in this order
        deps = {group_of[r] for name in g for r in reads[name]} - {i}
        level[i] = 1 + max((level[d] for d in deps), default=-1)
    names = [b.name for b in blocks]
    return [tuple(n for n in names if level[group_of[n]] == lev) for lev in sorted(set(level.values()))]
