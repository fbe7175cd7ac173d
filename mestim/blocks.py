"""Blocks of estimating functions and how a stack of them is ordered for solving.

A :class:`Block` owns a parameter vector θ_b (length ``dim``) and an estimating function

    ψ_b(θ_b, row, **upstream) -> array of shape (dim,)

where ``upstream`` holds the current values of the blocks it ``reads`` (keyword = block name). Stacking blocks
gives ψ(θ) = (ψ_1, …, ψ_B); the joint bread is block lower-triangular when every block reads only earlier ones,
so the stack can be solved one group at a time in dependency order. Blocks that read each other (a cycle) are
solved jointly as one group (Tarjan's strongly connected components).

Groups that do not depend on each other (say, the outcome models of different trials) are solved together, one
dependency level at a time (:func:`solve_levels`): their joint Jacobian is block-diagonal, so one Newton on the
level gives each group's own solution, while one pass over the rows serves them all and one program is compiled
per level instead of per group.

``prepare(columns) -> Prepared`` lets a registered block add its own columns (a design matrix, a cleaned outcome
with NaN replaced where the mask excludes the row) and pick a starting value from the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import SpecificationError


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What a block adds before fitting: extra columns (names namespaced by the block), init, labels."""

    columns: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    init: np.ndarray | None = None
    labels: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()  # what the block chose (reported in summaries: model, rows used, …)
    psi: Callable[..., Any] | None = None  # replaces the block's ψ when its form depends on the data (classes)


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
    """

    name: str
    psi: Callable[..., Any] | None
    init: Any = None
    reads: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None
    prepare: Callable[[dict], Prepared] | None = None
    check: Callable[..., list] | None = None

    def __post_init__(self):
        if not self.name.isidentifier():
            raise SpecificationError(f"block name {self.name!r} must be a Python identifier (it is a keyword of ψ)")
        object.__setattr__(self, "reads", tuple(self.reads))


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """The hashable part of a prepared block: what the compiled functions depend on."""

    name: str
    psi: Callable[..., Any]
    reads: tuple[str, ...]
    dim: int


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

    def psi(self, theta, row, names: Sequence[str] | None = None):
        """Concatenated ψ of the named blocks (all by default) at flat θ for one row."""
        import jax.numpy as jnp

        params = self.unflatten(theta)
        wanted = self.blocks if names is None else [b for b in self.blocks if b.name in names]
        return jnp.concatenate([
            jnp.atleast_1d(b.psi(params[b.name], row, **{r: params[r] for r in b.reads})) for b in wanted
        ])


    def block_parts(self, names: Sequence[str] | None = None, positions=None) -> tuple:
        """One :class:`BlockPart` per named block (all by default), for :func:`mestim.sums.chunk_moments`'
        block-by-block Jacobian; ``positions``: where the differentiated vector sits in θ (None: all of θ)."""
        wanted = [b.name for b in self.blocks if names is None or b.name in names]
        return tuple(BlockPart(self, name, None if positions is None else tuple(int(i) for i in positions))
                     for name in wanted)


@dataclasses.dataclass(frozen=True)
class BlockPart:
    """ψ of one block as a function of the vector t its Jacobian is taken against: all of θ (``positions`` None),
    or θ's entries at ``positions`` with the rest of θ passed as ``full``.

    ``chunk_sums`` is offered when the block's ψ has a closed-form chunk Jacobian (``psi.chunk_sums(own, rows, w)
    -> (values, Σ w ∂ψ/∂own)``, e.g. GLM scores: one matrix product instead of k backward passes) and reads no
    other block (so its Jacobian is zero outside its own columns).
    """

    spec: StackSpec
    name: str
    positions: tuple[int, ...] | None = None

    def _theta(self, t, full):
        import jax.numpy as jnp

        return t if self.positions is None else full.at[jnp.asarray(self.positions)].set(t)

    def __call__(self, t, row, full=None):
        return self.spec.psi(self._theta(t, full), row, (self.name,))

    @property
    def analytic(self) -> bool:
        block = next(b for b in self.spec.blocks if b.name == self.name)
        return not block.reads and callable(getattr(block.psi, "chunk_sums", None))

    def chunk_sums(self, t, rows, w, full=None):
        import jax.numpy as jnp

        block = next(b for b in self.spec.blocks if b.name == self.name)
        own = self.spec.offsets()[self.name]
        values, jac_own = block.psi.chunk_sums(self._theta(t, full)[own], rows, w)
        own_positions = np.arange(own.start, own.stop)
        cols = own_positions if self.positions is None else np.searchsorted(np.asarray(self.positions), own_positions)
        return values, jnp.zeros((jac_own.shape[0], t.shape[0]), jac_own.dtype).at[:, cols].set(jac_own)


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
