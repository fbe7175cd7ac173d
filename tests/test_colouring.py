"""Jacobians by colouring (mestim.colouring): supports read conservatively off the jaxpr, equations with disjoint
supports sharing a backward pass (inputs sharing a forward pass), the Jacobian equal to a dense one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mestim.colouring import colours, supports
from mestim.problem import prepare
from mestim.sources import InMemory
from mestim.sums import Kernel, Pattern, plan


def _support(psi, n, columns=("x", "y", "z")):
    row = {c: jax.ShapeDtypeStruct((), jnp.float64) for c in columns}
    return supports(jax.make_jaxpr(psi)(jax.ShapeDtypeStruct((n,), jnp.float64), row), n)


def _two_models(theta, row):  # a user's ψ of two regressions and an estimand, written as one block
    x = jnp.array([1.0, row["x"]])
    p = jax.nn.sigmoid(x @ theta[:2])
    mu = x @ theta[2:4]
    return jnp.concatenate([(row["y"] - p) * x, (row["z"] - mu) * x, jnp.atleast_1d(row["y"] / p - theta[4])])


def _trap(theta, row):
    """At any point with θ₀ > 0, ∂ψ₀/∂θ₂ = 0: a support read there would let ψ₀ and ψ₁ share a cotangent."""
    return jnp.stack([jnp.where(theta[0] > 0, theta[1], theta[2]) * row["x"] - row["y"], theta[2] - row["z"],
                      theta[0] - row["x"]])


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return {"x": x, "y": (rng.random(n) < 1 / (1 + np.exp(-x))).astype(float), "z": 2 * x + rng.normal(size=n)}


def _dense_jacobian(psi, data, theta):
    rows = {k: jnp.asarray(v) for k, v in data.items()}
    return np.asarray(jax.jacfwd(lambda t: jax.vmap(lambda r: psi(t, r))(rows).sum(0))(jnp.asarray(theta)))


def _kernel_jacobian(psi, data, theta, chunk=64):
    problem = prepare(psi, data, np.asarray(theta, float), over_identified=True)
    source = InMemory(Kernel(problem.spec, chunk), problem.used, problem.w)
    name = (problem.spec.blocks[0].name,)
    return source.sums(theta, plan(problem.spec, values=name, jacobian=name)).jac, source.kernel, problem


def test_supports_of_a_stacked_psi_are_its_blocks():
    s = _support(_two_models, 5)
    expected = np.zeros((5, 5), bool)
    expected[:2, :2] = expected[2:4, 2:4] = True
    expected[4, [0, 1, 4]] = True
    np.testing.assert_array_equal(s, expected)
    colour, n = colours(s)
    assert n == 3  # (ψ₀ with ψ₂ or ψ₃, ψ₁ with the other, the estimand): 3 backward passes instead of 5


def test_supports_are_read_from_the_program_not_at_a_point():
    s = _support(_trap, 3)
    assert s[0].tolist() == [True, True, True]  # θ₂ too, though its derivative is 0 wherever θ₀ > 0
    at_a_point = _dense_jacobian(_trap, _data(), [0.7, 0.3, -0.2]) != 0
    assert not at_a_point[0, 2]  # what a point would say
    colour, _ = colours(s)
    assert colour[0] != colour[1]
    # the coloured Jacobian equals the dense one on both sides of θ₀ = 0; one coloured from the point's supports
    # (ψ₀ and ψ₁ sharing a cotangent) would not be
    data = _data()
    for theta in ([0.7, 0.3, -0.2], [-0.7, 0.3, -0.2]):
        jac, kernel, problem = _kernel_jacobian(_trap, data, theta)
        np.testing.assert_allclose(jac, _dense_jacobian(_trap, data, theta), rtol=1e-12, atol=1e-12)
    wrong = Pattern(at_a_point, colours(at_a_point)[0], True)
    assert wrong.colour[0] == wrong.colour[1]
    compressed = wrong.basis @ _dense_jacobian(_trap, data, [-0.7, 0.3, -0.2])  # what the shared pass returns
    assert not np.allclose(wrong.recover(jnp.asarray(compressed)), _dense_jacobian(_trap, data, [-0.7, 0.3, -0.2]))


def test_layout_rules_are_exact_and_everything_else_a_superset():
    def layout(theta, row):  # slices, reshape, transpose, broadcast, reversal, stack, split, a reduction on one axis
        m = theta[:6].reshape(2, 3).T  # (3, 2)
        rows_sum = jnp.sum(m * row["x"], axis=1)  # (3,): element i reads θ_i and θ_{3+i}
        a, b = jnp.split(theta[6:], 2)
        return jnp.concatenate([rows_sum, theta[6:][::-1] * row["y"], jnp.broadcast_to(theta[7], (2,)),
                                jnp.stack([b[0], a[0] * 2.0], axis=-1)])

    s = _support(layout, 8)
    expected = np.zeros((9, 8), bool)
    for i in range(3):
        expected[i, [i, 3 + i]] = True
    expected[3, 7] = expected[4, 6] = expected[5, 7] = expected[6, 7] = expected[7, 7] = expected[8, 6] = True
    np.testing.assert_array_equal(s, expected)

    def control_flow(theta, row):  # lax.cond, a loop and a cumulative sum: conservative
        a = jax.lax.cond(row["x"] > 0, lambda t: t[0] * 2, lambda t: t[1], theta)
        b = jax.lax.fori_loop(0, 3, lambda i, c: c * theta[2] + row["y"], 1.0)
        return jnp.concatenate([jnp.stack([a, b]), jnp.cumsum(theta[3:5])])

    s = _support(control_flow, 5)
    point = _dense_jacobian(control_flow, _data(), np.linspace(0.3, 0.9, 5)) != 0
    assert np.all(s | ~point)  # every true dependence is in the support
    assert s[0].all()  # a conditional is not entered: it reads all of θ
    assert s[2:, 3:].all() and not s[2:, :3].any()


def test_a_coloured_jacobian_equals_the_dense_one_in_both_modes():
    data = _data(500, 1)
    theta = np.array([0.1, -0.4, 0.3, 1.2, 0.8])
    jac, kernel, problem = _kernel_jacobian(_two_models, data, theta)
    np.testing.assert_allclose(jac, _dense_jacobian(_two_models, data, theta), rtol=1e-12, atol=1e-12)

    def tall(theta, row):  # more equations than inputs: forward mode, inputs 0 and 1 share a tangent
        return jnp.stack([theta[0] * row["x"], theta[0] ** 2 - row["y"], theta[1] - row["z"], theta[1] * row["x"],
                          theta[2] * theta[1], theta[2] - 1.0])

    theta = np.array([0.5, -0.3, 0.2])
    jac, kernel, problem = _kernel_jacobian(tall, data, theta)
    rows = {k: jnp.asarray(v[:2]) for k, v in problem.used.items()}
    pattern = kernel.pattern(problem.spec.blocks[0], rows)
    assert not pattern.reverse and pattern.basis.shape[0] == 2
    np.testing.assert_allclose(jac, _dense_jacobian(tall, data, theta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_rows_of_one_colour_never_overlap(seed):
    rng = np.random.default_rng(seed)
    s = rng.random((30, 20)) < 0.15
    colour, n = colours(s)
    assert colour.min() == 0 and colour.max() == n - 1
    for c in range(n):
        assert s[colour == c].sum(axis=0).max() <= 1
