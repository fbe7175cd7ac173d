"""Sums of products evaluated as contractions: a program run with its products of broadcasts kept unmultiplied.

Reverse mode writes the transpose of "a number per row times a vector" as multiply-then-sum. In a coloured
Jacobian (:mod:`mestim.colouring`) the cotangent of Σ_r w_r ψ_r is an outer product of the colour basis B
(colours × equations) and the row weights, broadcast against the data, multiplied and summed over a short axis:
Σ_j B[c,j] w_r x_rj. XLA on a CPU builds the (colours × rows × equations) product and sums its minor axis
element by element: 16.8 ms on W2's 10⁵ rows, against 4.6 ms for the same sum as a matrix product, w_r (x Bᵀ)_rc.

:func:`evaluate` runs a jaxpr with such values kept as :class:`Lazy` products (a coefficient and factors, each
an array and the output axes it spans) through the operations that only move axes (broadcasts, transposes,
slices, splits, reshapes that add or drop unit axes) and through ``mul``, ``neg`` and outer products; a sum over
a product (``reduce_sum``, or a ``dot_general`` that contracts) becomes one ``einsum`` whose contraction order
opt_einsum chooses. Every other operation receives its operands multiplied out, by the program's own broadcasts
and products in the program's order, so a value that is not summed is computed exactly as written; a sum differs
from the program's by the rounding of its reordered terms.

The program's constants stay NumPy arrays through the rules, so that a contraction with a constant matrix whose rows
each hold at most one non-zero (the colour basis picks one equation of a block per colour) is a selection of the
other factor's slices, not a matrix product over zeros: Σ_j B[c,j] x_rj = x_r,j(c).
"""

from __future__ import annotations

import string

import jax.numpy as jnp
import numpy as np
from jax import lax

from . import internals

LETTERS = string.ascii_letters
MAX_FACTORS = 6  # a product of more factors is multiplied out (each consumer of a product multiplies it anew)


class Lazy:
    """The product coef · Π_f broadcast(array_f) of shape ``shape``: factor f's axis i spans output axis
    ``axes_f[i]``; an output axis no factor spans is a broadcast."""

    __slots__ = ("shape", "dtype", "coef", "factors", "_value")

    def __init__(self, shape, dtype, coef, factors):
        self.shape, self.dtype, self.coef, self.factors, self._value = tuple(shape), dtype, coef, tuple(factors), None

    @classmethod
    def of(cls, x):
        x = x if _constant(x) else jnp.asarray(x)
        return cls(x.shape, x.dtype, 1.0, [(x, tuple(range(x.ndim)))])

    def value(self):
        """The product multiplied out (once), factor by factor in the program's order."""
        if self._value is None:
            out = None
            for array, axes in self.factors:
                term = array if axes == tuple(range(len(self.shape))) and array.shape == self.shape else \
                    lax.broadcast_in_dim(array, self.shape, axes)
                out = term if out is None else lax.mul(out, term)
            out = jnp.ones(self.shape, self.dtype) if out is None else out
            self._value = _scaled(out, self.coef)
        return self._value


def _scaled(x, coef):
    return x if coef == 1.0 else lax.neg(x) if coef == -1.0 else x * np.asarray(coef, x.dtype)


def _lazy(x):
    return x if isinstance(x, Lazy) else Lazy.of(x)


def _floating(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.floating)


def _remap(p: Lazy, where, shape) -> Lazy:
    """``p`` with output axis a moved to ``where[a]`` (None: a unit axis dropped), in an output of ``shape``."""
    factors = []
    for array, axes in p.factors:
        drop = tuple(i for i, a in enumerate(axes) if where[a] is None)
        array = (np.squeeze(array, drop) if _constant(array) else lax.squeeze(array, drop)) if drop else array
        factors.append((array, tuple(where[a] for a in axes if where[a] is not None)))
    return Lazy(shape, p.dtype, p.coef, factors)


def _broadcast(p: Lazy, shape) -> Lazy:
    """``p`` broadcast (numpy rules, equal ranks or a scalar) to ``shape``: unit axes that grow are dropped."""
    if len(p.shape) == 0:
        return Lazy(shape, p.dtype, p.coef, p.factors)
    where = [None if s == 1 and t != 1 else a for a, (s, t) in enumerate(zip(p.shape, shape))]
    return _remap(p, where, shape)


def _slice(p: Lazy, axis, start, stop) -> Lazy:
    def cut(array, at):
        if _constant(array):  # kept a constant, so that a contraction with it can see its zeros
            return array[(slice(None),) * at + (slice(start, stop),)]
        return lax.slice_in_dim(array, start, stop, axis=at)

    factors = [(cut(array, axes.index(axis)) if axis in axes else array, axes) for array, axes in p.factors]
    return Lazy(p.shape[:axis] + (stop - start,) + p.shape[axis + 1:], p.dtype, p.coef, factors)


def contract(coef, factors, sizes, out_labels, dtype):
    """Σ over the labels not in ``out_labels`` of coef · Π factors (each (array, labels)), laid out along
    ``out_labels`` (labels no factor spans are broadcast, or counted when summed).

    The order is fixed, not searched (a search by operation count, opt_einsum's, tied a matrix product with a
    batched outer product 10× slower on a CPU): a factor whose labels another's include is multiplied into it
    (broadcast, elementwise); then the two factors whose product is smallest are contracted (one dot_general,
    summing the labels no other factor or the output holds), until one factor is left, summed over the rest."""
    spanned = {label for _, labels in factors for label in labels}
    for label in set(range(len(sizes))) - spanned - set(out_labels):
        coef *= sizes[label]  # a sum over an axis no factor spans: that many equal terms
    terms = [(a, tuple(labels)) for a, labels in factors]
    while len(terms) > 1:
        pair = _absorbed(terms)
        if pair is None:
            i, j = min(((i, j) for i in range(len(terms)) for j in range(i + 1, len(terms))),
                       key=lambda ij: _size(set(terms[ij[0]][1]) | set(terms[ij[1]][1]), sizes))
            rest = {label for k, (_, labels) in enumerate(terms) if k not in (i, j) for label in labels}
            joined = [label for label in dict.fromkeys(terms[i][1] + terms[j][1])
                      if label in rest or label in out_labels]
            merged = (_pair(terms[i], terms[j], joined, dtype), tuple(joined))
        else:
            i, j = pair  # terms[i]'s labels are within terms[j]'s
            small, big = terms[i], terms[j]
            merged = (lax.mul(lax.broadcast_in_dim(small[0], big[0].shape, tuple(big[1].index(label)
                                                                                   for label in small[1])), big[0]),
                      big[1])
        terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [merged]
    kept = [label for label in out_labels if label in spanned]
    out = _einsum(terms, kept, dtype) if terms else jnp.ones((), dtype)
    shape = tuple(sizes[label] for label in out_labels)
    if len(kept) < len(out_labels):
        out = lax.broadcast_in_dim(out, shape, tuple(out_labels.index(label) for label in kept))
    return _scaled(out.astype(dtype), coef)


def _absorbed(terms):
    """(i, j): a term whose labels lie within another's (the smallest such other), or None."""
    best = None
    for i, (_, small) in enumerate(terms):
        for j, (big_array, big) in enumerate(terms):
            if i != j and set(small) <= set(big) and (best is None or big_array.size < terms[best[1]][0].size):
                best = (i, j)
        if best is not None:
            return best
    return None


def _size(labels, sizes) -> int:
    return int(np.prod([sizes[label] for label in labels]))


def _constant(array) -> bool:
    """A value known when the program is traced (the program's constants: a colour basis)."""
    return isinstance(array, np.ndarray)


def _pair(a, b, out, dtype):
    """The contraction of two terms over the labels ``out`` lacks: as a selection (:func:`_selected`) where one is
    a constant matrix with at most one non-zero in each row along the one label summed, else one einsum."""
    for (const, const_labels), (other, other_labels) in ((a, b), (b, a)):
        if not (_constant(const) and const.ndim == 2) or _constant(other):
            continue
        for matrix, (free, summed) in ((const, const_labels), (const.T, const_labels[::-1])):
            if summed in other_labels and summed not in out and free in out and free not in other_labels \
                    and all(label in out for label in other_labels if label != summed) \
                    and np.count_nonzero(matrix, axis=1).max(initial=0) <= 1:
                return _selected(matrix, free, summed, other, other_labels, out, dtype)
    return _einsum([a, b], out, dtype)


def _selected(const, free, summed, other, other_labels, out, dtype):
    """Σ_s C[f, s] X[..., s, ...] where each row of C has at most one non-zero: X's slice at that s times it (0 for
    an empty row). A coloured Jacobian's basis picks one equation per colour: as a matrix product, W2's hoisting
    build spent 2 of its 10 ms at n = 1e5 multiplying by zeros."""
    axis = other_labels.index(summed)
    shape = list(other.shape)
    shape[axis] = 1
    pieces = []
    for row in const:
        (nonzero,) = np.flatnonzero(row)[:1] if row.any() else (None,)
        if nonzero is None:
            pieces.append(jnp.zeros(shape, dtype))
        else:
            piece = lax.slice_in_dim(other, int(nonzero), int(nonzero) + 1, axis=axis).astype(dtype)
            pieces.append(piece if row[nonzero] == 1 else piece * np.asarray(row[nonzero], dtype))
    labels = list(other_labels)
    labels[axis] = free  # the summed axis, one entry per row of C, is the free label now
    return jnp.transpose(lax.concatenate(pieces, axis), [labels.index(label) for label in out])


def _einsum(terms, out, dtype):
    spec = ",".join("".join(LETTERS[label] for label in labels) for _, labels in terms)
    return jnp.einsum(f"{spec}->{''.join(LETTERS[label] for label in out)}", *[a for a, _ in terms],
                      preferred_element_type=dtype)


# ------------------------------------------------------------------------------------------- the rules
def _mul(eqn, x, y):
    shape = tuple(eqn.outvars[0].aval.shape)
    x, y = _broadcast(_lazy(x), shape), _broadcast(_lazy(y), shape)
    if len(x.factors) + len(y.factors) > MAX_FACTORS:  # a long chain of products: multiply it out here
        return None
    return [Lazy(shape, x.dtype, x.coef * y.coef, x.factors + y.factors)]


def _neg(eqn, x):
    x = _lazy(x)
    return [Lazy(x.shape, x.dtype, -x.coef, x.factors)]


def _transpose(eqn, x):
    perm = eqn.params["permutation"]
    x = _lazy(x)
    return [_remap(x, [perm.index(a) for a in range(len(perm))], tuple(x.shape[a] for a in perm))]


def _broadcast_in_dim(eqn, x):
    x, shape, dims = _lazy(x), tuple(eqn.params["shape"]), eqn.params["broadcast_dimensions"]
    return [_remap(x, [None if x.shape[a] == 1 and shape[d] != 1 else d for a, d in enumerate(dims)], shape)]


def _unit_axes_only(old, new):
    """Where each axis of ``old`` goes in ``new`` when they differ by unit axes only (None: dropped), else None."""
    if [s for s in old if s != 1] != [s for s in new if s != 1]:
        return None
    targets = iter([i for i, s in enumerate(new) if s != 1])
    return [None if s == 1 else next(targets) for s in old]


def _reshape(eqn, x):
    new = tuple(eqn.outvars[0].aval.shape)
    where = _unit_axes_only(tuple(x.shape), new) if eqn.params.get("dimensions") is None else None
    return None if where is None else [_remap(_lazy(x), where, new)]


def _split(eqn, x):
    x, axis, at = _lazy(x), eqn.params["axis"], 0
    out = []
    for size in eqn.params["sizes"]:
        out.append(_slice(x, axis, at, at + size))
        at += size
    return out


def _slice_rule(eqn, x):
    if any(s != 1 for s in (eqn.params.get("strides") or ())):
        return None
    x = _lazy(x)
    for axis, (start, stop) in enumerate(zip(eqn.params["start_indices"], eqn.params["limit_indices"])):
        if (start, stop) != (0, x.shape[axis]):
            x = _slice(x, axis, start, stop)
    return [x]


def _reduce_sum(eqn, x):
    if not isinstance(x, Lazy) or len(x.factors) < 2:
        return None
    out = [a for a in range(len(x.shape)) if a not in eqn.params["axes"]]
    return [contract(x.coef, x.factors, x.shape, out, x.dtype)]


def _dot_general(eqn, x, y):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if not isinstance(x, Lazy) and not isinstance(y, Lazy) and (lc or lb):
        return None  # a matrix product of arrays: as written
    x, y = _lazy(x), _lazy(y)
    # labels: output axes first (batch, lhs free, rhs free: dot_general's order), then the contracted pairs
    lhs_free = [a for a in range(len(x.shape)) if a not in lc and a not in lb]
    rhs_free = [a for a in range(len(y.shape)) if a not in rc and a not in rb]
    n_out = len(lb) + len(lhs_free) + len(rhs_free)
    lhs_label = {a: i for i, a in enumerate(lb)} | {a: len(lb) + i for i, a in enumerate(lhs_free)} | {
        a: n_out + i for i, a in enumerate(lc)}
    rhs_label = {a: i for i, a in enumerate(rb)} | {a: len(lb) + len(lhs_free) + i for i, a in enumerate(rhs_free)} | {
        a: n_out + i for i, a in enumerate(rc)}
    factors = [(arr, tuple(lhs_label[a] for a in axes)) for arr, axes in x.factors] + [
        (arr, tuple(rhs_label[a] for a in axes)) for arr, axes in y.factors]
    sizes = [x.shape[a] for a in lb] + [x.shape[a] for a in lhs_free] + [y.shape[a] for a in rhs_free] + [
        x.shape[a] for a in lc]
    dtype = eqn.outvars[0].aval.dtype
    if not lc:  # an outer (or batched elementwise) product: still a product
        return [Lazy(tuple(sizes), dtype, x.coef * y.coef, factors)]
    return [contract(x.coef * y.coef, factors, sizes, list(range(n_out)), dtype)]


RULES = {"mul": _mul, "neg": _neg, "transpose": _transpose, "broadcast_in_dim": _broadcast_in_dim,
         "reshape": _reshape, "split": _split, "slice": _slice_rule, "reduce_sum": _reduce_sum,
         "dot_general": _dot_general}


def evaluate(closed, *args) -> list:
    """The outputs of a ClosedJaxpr on ``args`` (traceable), its sums of products as contractions."""
    return [v.value() if isinstance(v, Lazy) else v for v in _run(closed.jaxpr, closed.consts, args)]


def _run(jaxpr, consts, args):
    env = {}

    def read(v):
        return v.val if hasattr(v, "val") else env[v]  # a literal holds its value

    for var, value in list(zip(jaxpr.constvars, consts)) + list(zip(jaxpr.invars, args)):
        env[var] = value
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        outs = None
        called = internals.called(eqn)  # a jit, checkpoint or custom-derivative call: its program, entered
        if called is not None:
            outs = _run(*called, ins)
        elif name in RULES and all(_floating(v.aval) for v in eqn.outvars):
            outs = RULES[name](eqn, *ins)
        if outs is None:
            values = [v.value() if isinstance(v, Lazy) else v for v in ins]
            outs = internals.bind(eqn, *values)
        for var, value in zip(eqn.outvars, outs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]
