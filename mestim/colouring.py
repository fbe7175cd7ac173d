"""Which equations of a block share a cotangent: Jacobians by colouring, from supports read off the jaxpr.

A block's Jacobian on a chunk, Σ w ∂ψ/∂u (k equations × n inputs), takes k backward passes in reverse mode (one
per equation) or n forward passes. Many stacked ψ are block-sparse: in a user's ψ of two regressions and an
estimand, the first model's equations never touch the second model's parameters. Equations whose *supports* (the
inputs they depend on) are disjoint can share one backward pass: the vjp with cotangent e_i + e_j returns row i
on i's support and row j on j's (Curtis, Powell & Reid 1974; Griewank & Walther, *Evaluating Derivatives*, ch. 8).
Forward mode likewise shares a tangent among inputs no equation reads together. The rows are recovered exactly:
within a colour each input column receives the contribution of one equation only.

The supports must hold for every row and every θ, so they are read *conservatively* from the program, never
evaluated at a point: ``jnp.where(θ₀ > 0, θ₁, θ₂)`` has a zero derivative in θ₂ wherever θ₀ > 0, and a support
read there would merge that equation with one that reads θ₂, giving a wrong Jacobian at θ₀ < 0.
:func:`supports` propagates, element by element, which inputs each value of the jaxpr may depend on: exactly
through elementwise and layout operations (slices, concatenation, broadcasts, reshapes), per axis through
reductions, and through every other operation as "each output depends on every input element" (a superset).
Calls (``jit``, ``custom_jvp``/``custom_vjp``) are entered.
"""

from __future__ import annotations

import numpy as np

from . import internals

# Elementwise operations: output element i depends on element i of each operand (scalars broadcast).
ELEMENTWISE = frozenset("""
abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type copy copy_p cos cosh
digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite le lgamma log log1p logistic
lt max min mul ne neg nextafter not or pow real reduce_precision rem round rsqrt select_n sign sin sinh sqrt square
stop_gradient sub tan tanh xor
""".split())
REDUCTIONS = frozenset(["reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
                        "argmax", "argmin"])


def supports(closed, n_inputs: int) -> np.ndarray:
    """(k, n_inputs) bool: which of the first input's ``n_inputs`` elements each element of the (flattened)
    outputs of ``closed`` (a ClosedJaxpr whose first input is the vector u; the others, rows, are constants in u)
    may depend on, for every value of every input (conservative: a superset of the true supports)."""
    jaxpr = closed.jaxpr
    first = np.eye(n_inputs, dtype=bool).reshape(tuple(jaxpr.invars[0].aval.shape) + (n_inputs,))
    ins = [first] + [_none(v.aval.shape, n_inputs) for v in jaxpr.invars[1:]]
    outs = _propagate(jaxpr, [_none(np.shape(c), n_inputs) for c in closed.consts], ins, n_inputs)
    return np.concatenate([o.reshape(-1, n_inputs) for o in outs]) if outs else np.zeros((0, n_inputs), bool)


def _none(shape, n):
    return np.zeros(tuple(shape) + (n,), bool)


def _propagate(jaxpr, const_deps, in_deps, n):
    env = {}

    def read(v):  # a literal (a constant written into the program) holds its value; a variable does not
        return _none(np.shape(v.val), n) if hasattr(v, "val") else env[v]

    for var, dep in list(zip(jaxpr.constvars, const_deps)) + list(zip(jaxpr.invars, in_deps)):
        env[var] = dep
    for eqn in jaxpr.eqns:
        deps = [read(v) for v in eqn.invars]
        outs = _equation(eqn, deps, n)
        for var, dep in zip(eqn.outvars, outs):
            env[var] = dep
    return [read(v) for v in jaxpr.outvars]


def _equation(eqn, deps, n):
    """The dependence of each output of ``eqn`` (arrays of shape out_shape + (n,))."""
    name, p = eqn.primitive.name, eqn.params
    shapes = [tuple(v.aval.shape) for v in eqn.outvars]
    if not any(d.any() for d in deps):
        return [_none(s, n) for s in shapes]
    try:
        if name in ELEMENTWISE:
            return [np.broadcast_to(np.logical_or.reduce(np.broadcast_arrays(*deps)) if len(deps) > 1 else deps[0],
                                    shapes[0] + (n,))]
        sub = internals.called(eqn)
        if sub is not None:
            inner, consts = sub
            return _propagate(inner, [_none(np.shape(c), n) for c in consts], deps, n)
        if name == "split":
            return np.split(deps[0], np.cumsum(p["sizes"])[:-1], axis=p["axis"])
        out = _layout(name, p, deps, shapes[0], n)
        if out is not None:
            return [out]
    except (ValueError, IndexError, TypeError):  # a shape this rule does not cover: the superset below
        pass
    every = np.logical_or.reduce([d.reshape(-1, n).any(axis=0) for d in deps])
    return [np.broadcast_to(every, s + (n,)) for s in shapes]


def _layout(name, p, deps, shape, n):
    """Layout operations and reductions, element by element; None for any other operation."""
    d = deps[0]
    if name == "slice":
        strides = p["strides"] or (1,) * len(p["start_indices"])
        return d[tuple(slice(a, z, s) for a, z, s in zip(p["start_indices"], p["limit_indices"], strides))]
    if name == "squeeze":
        return np.squeeze(d, axis=tuple(p["dimensions"]))
    if name == "reshape" and p.get("dimensions") is None:
        return d.reshape(shape + (n,))
    if name == "broadcast_in_dim":
        expanded = np.ones(len(shape), int)
        expanded[list(p["broadcast_dimensions"])] = d.shape[:-1]
        return np.broadcast_to(d.reshape(tuple(expanded) + (n,)), shape + (n,))
    if name == "concatenate":
        return np.concatenate(deps, axis=p["dimension"])
    if name == "stack":
        return np.stack(deps, axis=p["axis"] % (d.ndim))
    if name == "transpose":
        return d.transpose(tuple(p["permutation"]) + (d.ndim - 1,))
    if name == "rev":
        return np.flip(d, axis=tuple(p["dimensions"]))
    if name in REDUCTIONS:
        return d.any(axis=tuple(p["axes"]))
    return None


def colours(support: np.ndarray) -> tuple[np.ndarray, int]:
    """A colour per row of ``support`` (rows × columns, bool) such that rows of one colour have disjoint supports,
    and the number of colours (greedy, rows with the largest supports first: Welsh–Powell)."""
    k = support.shape[0]
    colour = np.full(k, -1)
    used: list[np.ndarray] = []  # the union of the supports of each colour's rows
    for row in sorted(range(k), key=lambda i: -int(support[i].sum())):
        c = next((c for c, cols in enumerate(used) if not (cols & support[row]).any()), len(used))
        if c == len(used):
            used.append(np.zeros(support.shape[1], bool))
        used[c] |= support[row]
        colour[row] = c
    return colour, len(used)
