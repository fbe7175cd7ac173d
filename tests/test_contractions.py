"""mestim.contractions: a program run with its sums of products as contractions gives the program's values, and
the hoisting build of a coloured Jacobian no longer materialises the (colours × rows × equations) cotangent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mestim import contractions, hoist, internals
from mestim.problem import prepare
from mestim.sources import InMemory
from mestim.sums import Kernel, plan

rng = np.random.default_rng(0)
B = rng.normal(size=(5, 7))
X = rng.normal(size=(64, 7))
W = rng.random(64)
V = rng.normal(size=(64, 3))
# a constant that picks at most one term a row (a colour basis; one row empty, one entry scaled), and one that does not
PICK = np.zeros((5, 7))
PICK[[0, 1, 3, 4], [2, 0, 6, 2]] = [1.0, 1.0, -2.5, 1.0]
MIX = PICK + np.eye(5, 7)

PROGRAMS = {
    # the reverse-mode pattern: an outer product of a basis and weights, split, times data, summed over a short axis
    "outer, split, multiply, sum": lambda x, w, v: jnp.sum(
        jnp.split(jnp.transpose(jnp.einsum("cj,r->cjr", B, w), (0, 2, 1)), [4], axis=2)[0] * x[None, :, :4], axis=2),
    "broadcast times a row, summed over rows": lambda x, w, v: jnp.sum(w[:, None] * x, axis=0),
    "negated, sliced, reshaped": lambda x, w, v: jnp.sum(-(x[:, 1:5] * w[:, None]).reshape(64, 4, 1), axis=(1, 2)),
    "sum over a broadcast axis": lambda x, w, v: jnp.sum(jnp.broadcast_to(w[:, None], (64, 6)) * w[:, None], axis=1),
    "three factors, dot_general": lambda x, w, v: (x * w[:, None]).T @ (v * w[:, None]),
    "outer product materialised": lambda x, w, v: jnp.exp(jnp.einsum("r,j->rj", w, x[0]) * 1e-2),
    "inside a jit call": lambda x, w, v: jax.jit(lambda a, b: jnp.sum(a * b[:, None], axis=1))(x, w),
    "a chain of products": lambda x, w, v: jnp.sum(x * w[:, None] * x * w[:, None] * x * w[:, None] * x, axis=0),
    "a scalar": lambda x, w, v: jnp.sum(2.5 * (w * w)),
    "unchanged operations": lambda x, w, v: jnp.tanh(x).T @ jnp.cos(v),
    "custom derivatives and control flow": lambda x, w, v: jnp.sum(jax.nn.relu(x) * jax.nn.softplus(w)[:, None], 0)
    + jax.lax.cond(w[0] > 0.5, lambda: jnp.sum(x * w[:, None], 0), lambda: jnp.zeros(7)),
    "gradient of a product": lambda x, w, v: jax.grad(lambda u: jnp.sum(w * jnp.tanh(x @ u)))(x[0]),
    "a constant that picks one term a row": lambda x, w, v: jnp.einsum("cj,rj->cr", PICK, x * w[:, None]),
    "picked after a slice, summed over rows": lambda x, w, v: jnp.sum(
        jnp.split(jnp.einsum("cj,r->cjr", PICK, w), [4], axis=1)[0] * x[:, :4].T[None], axis=(1, 2)),
    "picked by a constant's columns": lambda x, w, v: jnp.einsum("jc,rj->rc", PICK.T, x * w[:, None]),
    "a constant that sums several terms a row": lambda x, w, v: jnp.einsum("cj,rj->cr", MIX, x * w[:, None]),
    "float32 operands": lambda x, w, v: jnp.sum(x.astype(jnp.float32) * w.astype(jnp.float32)[:, None], axis=0),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_contractions_give_the_programs_values(name):
    closed = jax.make_jaxpr(PROGRAMS[name])(X, W, V)
    ours = jax.jit(lambda *a: contractions.evaluate(closed, *a))(X, W, V)
    theirs = internals.evaluate(closed, X, W, V)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        tol = 1e-5 if a.dtype == np.float32 else 1e-13
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max()))


def _psi(theta, row):  # W2's shape: two regressions in one ψ, and an estimand that reads both
    x = jnp.array([1.0, row["x1"], row["x2"], row["x3"]])
    p, e = jax.nn.sigmoid(x @ theta[:4]), jax.nn.sigmoid(x[:3] @ theta[4:7])
    est = row["r"] * row["y"] / p - theta[7]
    return jnp.concatenate([(row["r"] - p) * x, (row["a"] - e) * x[:3], jnp.atleast_1d(est)])


def test_the_hoisting_build_holds_no_outer_product_of_the_colour_basis():
    n = 3000
    data = {f"x{j}": rng.normal(size=n) for j in (1, 2, 3)}
    data |= {"r": (rng.random(n) < 0.6).astype(float), "a": (rng.random(n) < 0.5).astype(float),
             "y": rng.normal(size=n)}
    problem = prepare(_psi, data, np.zeros(8))
    kernel = Kernel(problem.spec, 512, hoist=True)
    source = InMemory(kernel, problem.used, problem.w)
    every = (problem.spec.blocks[0].name,)
    key = hoist.hoisted_plan(tuple(int(m) for m in plan(problem.spec, values=every, jacobian=every)), 1)
    split = hoist.split(kernel, source._layout, key)
    colours = int(kernel.pattern(problem.spec.blocks[0], {k: v[:512] for k, v in problem.used.items()}).basis.shape[0])
    cotangent = colours * kernel.chunk * 8  # (colours, rows, equations): what reverse mode multiplies out
    chunk = [np.asarray(v[:512]) for v in jax.tree.leaves(problem.used)] + [problem.w[:512]]

    def largest(evaluate):
        program = jax.make_jaxpr(lambda *a: evaluate(split.known, *a))(*chunk)
        return max(int(np.prod(v.aval.shape)) for e in program.jaxpr.eqns for v in e.outvars)

    assert largest(internals.evaluate) >= cotangent  # the program as written holds it (the test can fail)
    assert largest(contractions.evaluate) < cotangent
    # the basis picks one equation of each block a colour: its products with the data are selections, no matrix
    # product multiplies by its zeros (only the outer product of the basis's estimand column and the weights is left)
    assert [shape for shape in _dot_operands(jax.make_jaxpr(lambda *a: contractions.evaluate(split.known, *a))(
        *chunk).jaxpr) if len(shape) > 1 and shape[0] == colours] == []
    ours = jax.jit(lambda *a: contractions.evaluate(split.known, *a))(*chunk)
    for a, b in zip(ours, internals.evaluate(split.known, *chunk)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * max(1.0, float(np.abs(b).max())) if b.size else 0)
    # and the hoisted sums equal the whole program's
    theta = np.linspace(-0.2, 0.3, 8)
    whole = InMemory(Kernel(problem.spec, 512), problem.used, problem.w)
    p = plan(problem.spec, values=every, jacobian=every, meat=True)
    for a, b in zip(source.sums(theta, p), whole.sums(theta, p)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(b).max())))
    assert source._hoisted[key] is not None


def _dot_operands(jaxpr) -> list:
    out = []
    for e in jaxpr.eqns:
        if e.primitive.name == "dot_general":
            out += [tuple(v.aval.shape) for v in e.invars]
        for sub in e.params.values():
            inner = sub if hasattr(sub, "eqns") else getattr(sub, "jaxpr", None)
            if hasattr(inner, "eqns"):
                out += _dot_operands(inner)
    return out


def test_a_failing_contraction_falls_back_visibly(monkeypatch, caplog):
    """Where the interpreter fails on a program, the build runs as written (same residuals), counted and logged."""
    import mestim
    from mestim import sums

    def broken(*args):
        raise NotImplementedError("a rule this JAX breaks")

    n = 3000
    data = {f"x{j}": rng.normal(size=n) for j in (1, 2, 3)} | {
        "r": (rng.random(n) < 0.6).astype(float), "a": (rng.random(n) < 0.5).astype(float), "y": rng.normal(size=n)}
    monkeypatch.setattr(sums, "QUICK_WORK", 0)  # compiled optimised, so hoisted on a CPU
    contracted = mestim.fit(_psi, data, init=np.zeros(8), chunk_size=128)
    monkeypatch.setattr(contractions, "evaluate", broken)
    monkeypatch.setattr(internals, "FALLBACKS", internals.FALLBACKS.__class__())
    with caplog.at_level("WARNING", logger="mestim"):
        as_written = mestim.fit(_psi, data, init=np.zeros(8), chunk_size=64)  # a new kernel: traced anew
    assert any("contractions failed" in reason for reason in internals.FALLBACKS), internals.FALLBACKS
    assert "the build runs as written" in caplog.text
    np.testing.assert_allclose(as_written.theta, contracted.theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(as_written.se, contracted.se, rtol=1e-10)
