"""Non-smooth estimating functions, smoothed: indicators and signs in ψ replaced by Gaussian CDFs.

A quantile's ψ = q − 1{y ≤ θ} (or Hodges–Lehmann's sign form, or the median part of a mean deviation) is a step
function of θ: its derivative is zero almost everywhere, so Newton's method has no slope and autodiff gives a zero
bread. With ``Block(..., smooth=h)`` mestim evaluates the block's ψ with every step in θ replaced by its Gaussian
smoothing, the expectation of the step when the compared difference d = a − b is blurred by N(0, h²) noise:

    1{a < b}, 1{a ≤ b}  →  Φ((b − a)/h)        1{a > b}, 1{a ≥ b}  →  Φ((a − b)/h)
    sign(x)             →  2Φ(x/h) − 1          where(cond, u, v)   →  Φ_cond·u + (1 − Φ_cond)·v

Smoothed ψ is smooth in θ: Newton converges to the root θ̂_h of the smoothed equation and autodiff gives its
bread. For a quantile, −Σ∂ψ/∂θ = Σ φ((θ − y_i)/h)/h = n·f̂_h(θ), the Gaussian kernel density estimate of
bandwidth h, so the SE rests on f̂_h (docs/nonsmooth.md: bias, variance and how to choose h).

**What is smoothed.** ψ is traced to a jaxpr (:func:`jax.make_jaxpr`) and evaluated by a small interpreter that
replaces these equations, and only these, when at least one compared side depends on the parameters (the block's
own θ or those of the blocks it reads; a comparison of data alone is left exact):

- ``lt``/``le``/``gt``/``ge`` whose boolean becomes a number: through ``convert_element_type`` to a float (or to
  an integer that is then converted to a float: ``jnp.mean`` of booleans), or as the predicate of ``select_n``
  (``jnp.where``) — the select becomes a blend of its branches with weight Φ; ``not`` flips the comparison;
- ``sign`` of a float.

Comparisons of the same difference share one blur, so ``jnp.heaviside(t − y, c)``, written as nested
``jnp.where(d < 0, 0, jnp.where(d > 0, 1, c))``, smooths to Φ(d/h) like ``t ≥ y`` does. The interpreter enters
``jit``/``closed_call``/``checkpoint`` and, when they hold something to smooth, ``custom_jvp_call``/
``custom_vjp_call`` (their custom derivative rule is then not used: the smoothed function is differentiated).
Equality tests (``eq``/``ne``) are left as they are (a set of measure zero). Anything else that would consume a
θ-dependent comparison (``and``/``or``, an integer sum of booleans, ``lax.cond`` on it), and any smoothable
comparison inside a loop or conditional (``while``/``scan``/``cond``: left as they are, not entered) whose inputs
depend on θ, is a :class:`~mestim.errors.SpecificationError` naming the fix, never a silent zero derivative.

**Bandwidths.** One bandwidth per smoothed difference ("site", in the order ψ first compares it), in the units of
that difference. ``smooth=h`` uses h for every site, a tuple gives one per site, ``smooth="auto"`` takes, per
site, h = min(sd, IQR/1.34)·n^(−1/3) of the differences over the rows the block uses at the starting values
(n: those rows), rounded to two significant digits (so refits on similar data share compiled programs).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from . import internals
from .constants import require_all_rows
from .errors import SpecificationError

AUTO = "auto"
RATE = 1 / 3  # smooth="auto": h = min(sd, IQR/1.34) · n^(−RATE)
AUTO_VALUES = 1 << 22  # differences pooled per site by the automatic rule at most (rows evenly spaced)
FLAT = 8  # Φ'(8) ≈ 5e-15: a smoothed ψ whose differences are all beyond FLAT·h has no usable slope

COMPARISONS = {"lt": -1, "le": -1, "gt": 1, "ge": 1}  # a OP b is the event s·(a − b) > 0
THETA, ROW = 1, 2  # what a value depends on (bit flags)


@dataclasses.dataclass(frozen=True)
class Smoothed:
    """ψ of block ``block`` with its θ-dependent indicators and signs smoothed (hashable: equal options, equal
    object). ``bandwidth``: one h for every site, or a tuple with one h per site.

    Example (the indicator 1{y ≤ θ} of a median's ψ smoothed with bandwidth h: at y = θ it is ½, so ψ = 0)::

        >>> import jax.numpy as jnp, numpy as np, mestim
        >>> psi = mestim.Smoothed(lambda t, row: (row["y"] <= t) - 0.5, bandwidth=0.1, block="median")
        >>> np.round(np.asarray(psi(jnp.array([0.0]), {"y": jnp.array(0.0)})), 6)
        array([0.])
    """

    psi: Callable[..., Any]
    bandwidth: float | tuple[float, ...]
    block: str

    def __call__(self, theta, row, **upstream):
        leaves, tree = jax.tree.flatten((theta, upstream))
        closed, shape = _trace(self.psi, tree, row, leaves)
        ctx = _Context(self.block, self.bandwidth)
        outs, _ = _evaluate(ctx, closed.jaxpr, closed.consts, [0] * len(closed.consts), leaves,
                            [THETA] * len(leaves))
        outs = [ctx.plain(v, "the value ψ returns") for v in outs]
        ctx.check_sites()
        return jax.tree.unflatten(jax.tree.structure(shape), outs)


def _trace(psi, tree, row, leaves):
    """ψ as a closed jaxpr in the flat (θ, upstream) leaves; the row's values (and anything ψ closes over) are
    its constants."""
    def flat(*leaves):
        theta, upstream = jax.tree.unflatten(tree, leaves)
        return psi(theta, row, **upstream)

    return jax.make_jaxpr(flat, return_shape=True)(*leaves)


# ---------------------------------------------------------------------------------------------- the interpreter
@dataclasses.dataclass(frozen=True)
class _Event:
    """The boolean of a comparison s·(x − y) > 0 whose sides depend on θ, kept symbolic until it becomes a
    number; ``site``: which difference x − y it compares."""

    x: Any
    y: Any
    s: int
    site: int
    aval: Any

    def negated(self):
        return dataclasses.replace(self, s=-self.s)


@dataclasses.dataclass(frozen=True)
class _Blend:
    """``select_n(event, when_false, when_true)`` (or an event turned into an integer 0/1), kept symbolic: as a
    number it is (1 − Φ)·when_false + Φ·when_true, a branch that is itself a blend of the same site taking the
    side the outer event fixes."""

    event: _Event
    cases: tuple
    aval: Any


class _Context:
    """One evaluation of ψ: the sites met so far and their bandwidths (``bandwidth=None``: record mode, which
    collects each site's difference for the automatic bandwidth)."""

    def __init__(self, block: str, bandwidth):
        self.block, self.bandwidth = block, bandwidth
        self.sites: list[tuple] = []  # (key of x, key of y) per site
        self.differences: list[tuple] = []  # (x − y, flags) per site, in record mode
        self.literals: dict[int, tuple] = {}  # id of a value broadcast from a literal → its key
        self.keep: list = []  # the values whose ids are keys stay alive for the whole evaluation

    # -------------------------------------------------------------------------------------------- sites
    def key(self, value) -> tuple:
        if isinstance(value, (numbers.Number, np.generic)) or (isinstance(value, np.ndarray) and value.size == 1):
            return ("literal", float(np.asarray(value).item()))
        self.keep.append(value)
        return self.literals.get(id(value), ("value", id(value)))

    def site(self, x, y, flags) -> tuple[int, int]:
        """(site of the difference x − y, +1 or −1 if the site was first met as y − x)."""
        kx, ky = self.key(x), self.key(y)
        for i, known in enumerate(self.sites):
            if known == (kx, ky):
                return i, 1
            if known == (ky, kx):
                return i, -1
        self.sites.append((kx, ky))
        if self.bandwidth is None:
            self.differences.append((x - y, flags))
        return len(self.sites) - 1, 1

    def h(self, site: int):
        if self.bandwidth is None:
            return 1.0
        if not isinstance(self.bandwidth, tuple):
            return self.bandwidth
        if site >= len(self.bandwidth):
            raise SpecificationError(
                f"block '{self.block}': smooth= gives {len(self.bandwidth)} bandwidth(s) but ψ smooths more "
                "comparisons; give one bandwidth per smoothed comparison, or one number for all")
        return self.bandwidth[site]

    def check_sites(self) -> None:
        if not self.sites:
            raise _nothing_to_smooth(self.block)
        if isinstance(self.bandwidth, tuple) and len(self.bandwidth) != len(self.sites):
            raise SpecificationError(
                f"block '{self.block}': smooth= gives {len(self.bandwidth)} bandwidths but ψ smooths "
                f"{len(self.sites)} comparison(s); give one per smoothed comparison, or one number for all")

    # ------------------------------------------------------------------------------------------ numbers
    def probability(self, event: _Event):
        """Φ(s·(x − y)/h): the smoothed indicator of the event."""
        return ndtr(event.s * (event.x - event.y) / self.h(event.site))

    def number(self, value, dtype):
        """A blend or event as a number of float type ``dtype``."""
        if isinstance(value, _Event):
            value = _Blend(value, (0.0, 1.0), value.aval)
        p = self.probability(value.event)
        when_false, when_true = (self._branch(c, value.event, side) for side, c in enumerate(value.cases))
        return jnp.broadcast_to((1 - p) * when_false + p * when_true, value.aval.shape).astype(dtype)

    def _branch(self, case, event: _Event, side: int):
        """A case of a blend on the side ``side`` (0: event false, 1: true) of ``event``."""
        if isinstance(case, _Blend) and case.event.site == event.site:  # same difference, same side of it
            inner = side if case.event.s == event.s else 1 - side
            return self._branch(case.cases[inner], case.event, inner)
        if isinstance(case, _Blend):
            return self.number(case, case.aval.dtype)
        if isinstance(case, _Event):
            raise self.unsupported("select between booleans", case)
        return case

    def plain(self, value, where: str):
        """An operand for an equation that is not smoothed: a float blend becomes its number."""
        if isinstance(value, _Blend) and jnp.issubdtype(value.aval.dtype, jnp.floating):
            return self.number(value, value.aval.dtype)
        if isinstance(value, (_Blend, _Event)):
            raise self.unsupported(where, value)
        return value

    def unsupported(self, where: str, value) -> SpecificationError:
        what = "a comparison" if isinstance(value, _Event) else "an indicator (as an integer)"
        return SpecificationError(
            f"block '{self.block}' has smooth=, and its ψ uses {what} that depends on θ in {where}, which "
            "smoothing cannot replace: it smooths a comparison only when it becomes a float ((a <= b) * 1.0, "
            ".astype(float), jnp.mean of booleans) or chooses between numbers in jnp.where; write 1{a < y ≤ b} as "
            "(y <= b) * 1.0 - (y <= a) * 1.0, and count with jnp.mean or jnp.sum(... * 1.0)")


def _nothing_to_smooth(block: str) -> SpecificationError:
    return SpecificationError(
        f"block '{block}' has smooth= but its ψ has no indicator or sign that depends on θ (a comparison a ≤ b "
        "turned into a number, jnp.where(a ≤ b, u, v), jnp.sign): nothing to smooth; remove smooth= from this block")


def _evaluate(ctx: _Context, jaxpr, consts, const_flags, args, arg_flags):
    """Evaluate ``jaxpr`` on ``args`` with the smoothing substitutions; (outputs, their flags)."""
    from jax.extend import core as jcore  # lazy: jax.extend costs 60–110 ms of every import
    env, flags = {}, {}

    def read(v):
        return (v.val, 0) if isinstance(v, jcore.Literal) else (env[v], flags[v])

    for var, value, flag in list(zip(jaxpr.constvars, consts, const_flags)) + list(zip(jaxpr.invars, args,
                                                                                           arg_flags)):
        env[var], flags[var] = value, flag
    for eqn in jaxpr.eqns:
        values, in_flags = zip(*map(read, eqn.invars)) if eqn.invars else ((), ())
        outs, out_flags = _equation(ctx, eqn, list(values), list(in_flags))
        for var, value, flag in zip(eqn.outvars, outs, out_flags):
            if not isinstance(var, jcore.DropVar):
                env[var], flags[var] = value, flag
    return tuple(zip(*map(read, jaxpr.outvars))) if jaxpr.outvars else ((), ())


def _equation(ctx: _Context, eqn, values, in_flags):
    from jax.extend import core as jcore
    name = eqn.primitive.name
    flag = functools.reduce(lambda a, b: a | b, in_flags, 0)
    lazy = any(isinstance(v, (_Event, _Blend)) for v in values)
    out = eqn.outvars[0].aval if eqn.outvars else None
    if name in COMPARISONS and flag & THETA and jnp.issubdtype(eqn.invars[0].aval.dtype, jnp.floating):
        x, y = (ctx.plain(v, f"jax's {name}") for v in values)
        site, orientation = ctx.site(x, y, flag)
        if orientation < 0:  # the site was first met as y − x: every event of a site compares it one way round
            x, y = y, x
        return [_Event(x, y, COMPARISONS[name] * orientation, site, out)], [flag]
    if name == "sign" and flag & THETA and jnp.issubdtype(out.dtype, jnp.floating):
        x = ctx.plain(values[0], "jax's sign")
        site, _ = ctx.site(x, 0.0, flag)
        return [(2 * ndtr(x / ctx.h(site)) - 1).astype(out.dtype)], [flag]
    if name == "not" and isinstance(values[0], _Event):
        return [values[0].negated()], [flag]
    if name == "convert_element_type" and lazy:
        new = eqn.params["new_dtype"]
        if jnp.issubdtype(new, jnp.floating):
            return [ctx.number(values[0], new)], [flag]
        if isinstance(values[0], _Event) and jnp.issubdtype(new, jnp.integer):
            return [_Blend(values[0], (0, 1), out)], [flag]
    if name == "select_n" and isinstance(values[0], _Event) and len(values) == 3:
        return [_Blend(values[0], tuple(values[1:]), out)], [flag]
    sub = internals.called(eqn)  # structure is entered always, a custom_jvp/vjp function when it holds a site
    if sub is not None and (name in internals.CALLS or lazy or (flag & THETA and _has_sites(sub[0]))):
        return _evaluate(ctx, sub[0], sub[1], [0] * len(sub[1]), values, in_flags)
    if flag & THETA and any(_has_sites(j) for j in jcore.jaxprs_in_params(eqn.params)):
        raise SpecificationError(
            f"block '{ctx.block}' has smooth=, and its ψ compares values that depend on θ inside lax.{name} (a "
            "loop or conditional), which smoothing does not enter: compute the indicator outside the loop, or "
            "write ψ without lax control flow")
    plain = [ctx.plain(v, f"jax's {name}") for v in values]
    result = internals.bind(eqn, *plain)
    if name in ("broadcast_in_dim", "convert_element_type", "reshape") and isinstance(eqn.invars[0], jcore.Literal):
        ctx.keep.append(result[0])
        ctx.literals[id(result[0])] = ctx.key(eqn.invars[0].val)
    return result, [flag] * len(result)


def _has_sites(jaxpr) -> bool:
    """Does ``jaxpr`` (or one inside it) hold a sign, or a comparison that becomes a number or enters a call?"""
    from jax.extend import core as jcore
    compared = set()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        reads_comparison = any(isinstance(v, jcore.Var) and v in compared for v in eqn.invars)
        if name == "sign":
            return True
        if name in COMPARISONS or (name == "not" and reads_comparison):
            compared.update(eqn.outvars)
        elif reads_comparison:
            return True
        if any(_has_sites(j) for j in jcore.jaxprs_in_params(eqn.params)):
            return True
    return False


# ---------------------------------------------------------------------------------------------- preparing a block
def smoothed(block, psi, own_init, upstream_inits: dict, columns, rows: np.ndarray | None):
    """(ψ of ``block`` smoothed as its ``smooth=`` option asks, the note reporting it).

    ``upstream_inits``: starting values of the blocks prepared so far (the automatic rule evaluates the compared
    differences at the starting values); ``rows``: the rows the block uses (None: all)."""
    option = block.smooth
    if isinstance(option, str):
        if option != AUTO:
            raise SpecificationError(f"block '{block.name}': smooth={option!r}; use 'auto', a positive bandwidth h "
                                     "(in the units of the compared quantities) or a tuple of them")
        require_all_rows(columns, f"block '{block.name}': smooth='auto' (a bandwidth from the sd and IQR of the "
                         "compared differences)", "give smooth=h (a number), e.g. the bandwidth fit() notes on a "
                         "sample")
        bandwidth, used = _auto_bandwidths(block, psi, own_init, upstream_inits, columns, rows)
        rule = f"smooth='auto': h = min(sd, IQR/1.34)·n^(−1/3) of the compared differences, n = {used}"
    else:
        bandwidth = _checked_bandwidth(block.name, option)
        rule = "smooth=h"
    shown = ", ".join(f"{h:.3g}" for h in np.atleast_1d(bandwidth))
    note = (f"ψ smoothed, 1{{a ≤ b}} → Φ((b − a)/h) and sign(x) → 2Φ(x/h) − 1, with h = {shown} ({rule}); θ̂ "
            "solves the smoothed equation and its SE rests on a Gaussian kernel density estimate of bandwidth h "
            "(docs/nonsmooth.md)")
    return Smoothed(psi, bandwidth, block.name), note


def _checked_bandwidth(name: str, option) -> float | tuple[float, ...]:
    values = option if isinstance(option, (tuple, list)) else (option,)
    good = values and all(isinstance(h, numbers.Real) and not isinstance(h, bool) and np.isfinite(h) and h > 0
                          for h in values)
    if not good:
        raise SpecificationError(
            f"block '{name}': smooth={option!r} is not a bandwidth; give a positive number h in the units of the "
            "compared quantities (1{y ≤ θ} becomes Φ((θ − y)/h)), a tuple of them (one per smoothed comparison), "
            "or 'auto'")
    return tuple(float(h) for h in values) if isinstance(option, (tuple, list)) else float(option)


def _auto_bandwidths(block, psi, own_init, upstream_inits, columns, rows):
    """Per site, h = min(sd, IQR/1.34)·n^(−1/3) of the compared differences at the starting values: Silverman's
    robust scale at the n^(−1/3) rate of kernel quantile estimation (docs/nonsmooth.md)."""
    missing = [r for r in block.reads if r not in upstream_inits]
    if missing:
        raise SpecificationError(
            f"block '{block.name}': smooth='auto' evaluates ψ at the starting values of the blocks it reads, but "
            f"{missing} come after it in the stack; list them before '{block.name}', or give smooth=h")
    n = next(iter(columns.values())).shape[0]
    rows = np.arange(n) if rows is None else np.flatnonzero(rows)
    own = np.asarray(own_init, float)
    upstream = {r: np.asarray(upstream_inits[r], float) for r in block.reads}
    names = _read_columns(block, psi, own, upstream, columns)
    layout = tuple((k, columns[k].shape[1:]) for k in names)
    batched = _site_layout(psi, block.name, own, upstream, layout)
    if not batched:
        raise _nothing_to_smooth(block.name)
    per_row = max([int(np.prod(shape)) for shape, b in batched if b] or [1])
    take = rows[np.linspace(0, rows.size - 1, min(rows.size, max(AUTO_VALUES // per_row, 1))).astype(int)]
    padded = 1 << max(int(take.size) - 1, 0).bit_length()  # power-of-two rows: one program per size class
    data = {k: np.concatenate([np.asarray(columns[k][take], float), np.full((padded - take.size,) + shape, np.nan)])
            for k, shape in layout}
    per_site, once = _site_differences(psi, block.name, tuple(b for _, b in batched), own, data, upstream)
    per_site, once = iter(per_site), iter(once)
    out = []
    for number, (_, b) in enumerate(batched):
        d = np.asarray(next(per_site if b else once), float).ravel()
        d = d[np.isfinite(d)]
        out.append(_silverman(block.name, number, d, rows.size))
        if not np.any(np.abs(d) < FLAT * out[-1]):
            raise SpecificationError(
                f"block '{block.name}': at the starting values every compared difference of smoothed comparison "
                f"{number + 1} is more than {FLAT}·h = {FLAT * out[-1]:.3g} from 0, where the smoothed ψ is flat "
                "(its derivative underflows) and Newton cannot move: start θ inside the data (a quantile at the "
                "sample quantile, a median at the median)")
    return tuple(out), rows.size


def _silverman(name: str, site: int, d: np.ndarray, n: int) -> float:
    sd = np.std(d, ddof=1) if d.size > 1 else 0.0
    iqr = np.subtract(*np.percentile(d, [75, 25])) if d.size else 0.0
    scale = min(sd, iqr / 1.34) if iqr > 0 else sd
    h = scale * n ** -RATE
    if not (np.isfinite(h) and h > 0):
        raise SpecificationError(
            f"block '{name}': smooth='auto' cannot choose a bandwidth for smoothed comparison {site + 1}: its "
            "compared difference does not vary over the rows at the starting values; give smooth=h (a positive "
            "number in the units of the compared quantities)")
    return float(f"{h:.2g}")


def _read_columns(block, psi, own, upstream, columns) -> tuple[str, ...]:
    """The columns ψ reads (:func:`mestim.problem.traced_columns`: a missing or text column, Python control flow
    or an output of the wrong shape is the same clear error as in any fit)."""
    from .blocks import BlockSpec, StackSpec
    from .problem import traced_columns

    read = tuple(BlockSpec(r, _own_parameters, (), upstream[r].size) for r in block.reads)
    spec = StackSpec((BlockSpec(block.name, psi, block.reads, own.size),) + read)
    return tuple(sorted(traced_columns(spec, columns)[0][0]))


def _own_parameters(theta, row):
    """ψ of a stand-in for a block read by the one being smoothed (only its parameters' shape matters)."""
    return theta


def _record(psi, name, own, row, upstream):
    """Each site's difference x − y and whether it varies over rows (record mode of the interpreter)."""
    leaves, tree = jax.tree.flatten((own, upstream))
    row_leaves, row_tree = jax.tree.flatten(row)

    def flat(*all_leaves):
        theta, up = jax.tree.unflatten(tree, all_leaves[:len(leaves)])
        return psi(theta, jax.tree.unflatten(row_tree, all_leaves[len(leaves):]), **up)

    closed = jax.make_jaxpr(flat)(*leaves, *row_leaves)
    ctx = _Context(name, None)
    _evaluate(ctx, closed.jaxpr, closed.consts, [0] * len(closed.consts), leaves + row_leaves,
              [THETA] * len(leaves) + [ROW] * len(row_leaves))
    return ctx.differences


def _site_layout(psi, name, own, upstream, layout) -> list[tuple[tuple, bool]]:
    """(shape of one row's difference, does it vary over rows) per site, from an abstract trace."""
    row = {k: jax.ShapeDtypeStruct(shape, jnp.float64) for k, shape in layout}
    found = []

    def shapes(own, row, upstream):
        differences = _record(psi, name, own, row, upstream)
        found.extend(bool(flags & ROW) for _, flags in differences)
        return [d for d, _ in differences]

    out = jax.eval_shape(shapes, own, row, upstream)
    return [(tuple(d.shape), b) for d, b in zip(out, found)]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _site_differences(psi, name, batched, own, data, upstream):
    """The sites' differences over the given rows: (those that vary over rows, stacked by row; the others)."""
    def one(row):
        differences = [d for d, _ in _record(psi, name, own, row, upstream)]
        return ([d for d, b in zip(differences, batched) if b], [d for d, b in zip(differences, batched) if not b])

    return jax.vmap(one, out_axes=(0, None))(data)
