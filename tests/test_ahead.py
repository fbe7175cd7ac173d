"""Compiling ahead (:mod:`mestim.ahead`): work a library gives the engine runs while the stack's program compiles,
and a program compiled in a worker thread is not compiled again."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mestim
from mestim.ahead import Ahead, while_compiling


def _data(n, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return {"x": x, "y": (rng.random(n) < 1 / (1 + np.exp(-0.3 - x))).astype(float)}


def test_work_runs_once_while_the_fit_compiles_and_changes_nothing():
    def psi(theta, row):  # a new ψ: its program is compiled inside the block below
        x = jnp.array([1.0, row["x"]])
        return (row["y"] - jax.nn.sigmoid(x @ theta)) * x

    data, seen = _data(700), []

    def work(blocks):
        compiling = any(t.name == "mestim-compile" and t.is_alive() for t in threading.enumerate())
        seen.append((dict(blocks), compiling))

    with while_compiling(work), mestim.compilations() as count:
        res = mestim.fit(psi, data, init=np.zeros(2))
    assert len(seen) == 1 and seen[0][1], seen  # once, while the stack's program compiled (the fit made passes)
    assert list(seen[0][0]) == list(res.blocks) and seen[0][0] == res.blocks
    assert count.programs == 1 and res.iterations > 1
    plain = mestim.fit(psi, data, init=np.zeros(2))
    np.testing.assert_array_equal(res.theta, plain.theta)
    np.testing.assert_array_equal(res.vcov, plain.vcov)


def test_work_that_fails_fails_the_fit_after_the_compilation_ends():
    def psi(theta, row):
        return jnp.atleast_1d(row["x"] - theta[0])

    def work(blocks):
        raise ValueError("the work failed")

    with pytest.raises(ValueError, match="the work failed"), while_compiling(work):
        mestim.fit(psi, _data(50), init=np.zeros(1))
    assert not any(t.name == "mestim-compile" for t in threading.enumerate())


def test_a_program_compiled_ahead_is_not_compiled_again():
    f = jax.jit(lambda v, k: jnp.sin(v) * k + jnp.cumsum(v), static_argnums=1)
    v = np.linspace(0.0, 1.0, 33)
    with mestim.compilations() as ahead:
        Ahead(f, v, 3).wait()
    with mestim.compilations() as call:
        out = f(v, 3)
    assert ahead.programs == 1 and call.programs == 0
    np.testing.assert_allclose(out, np.sin(v) * 3 + np.cumsum(v), rtol=1e-15)
