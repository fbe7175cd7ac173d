"""Hoisting (mestim.hoist): the θ-free work of a full Jacobian pass done once per in-memory source gives the same
sums as the whole chunk program, and a hoisted program serves only passes that ask for no more than it computes."""

import jax.numpy as jnp
import numpy as np
import pytest

import estimators as est
from mestim import Block
from mestim.problem import prepare
from mestim.sources import InMemory
from mestim.sums import Kernel, plan


def _ratio(tau, row, lg):  # reads the logistic block: a stack with two levels and a user's ψ
    p = 1 / (1 + jnp.exp(-(row["lg.X"] @ lg)))
    return jnp.atleast_1d(row["y"] / p - tau[0])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 2))
    y = (rng.random(700) < 1 / (1 + np.exp(-x[:, 0]))).astype(float)
    data = {"x1": x[:, 0], "x2": x[:, 1], "y": y, "w": rng.integers(1, 4, 700).astype(float)}
    return prepare([est.logistic("lg", "y", ["x1", "x2"]), Block("r", _ratio, init=[1.0], reads=("lg",))], data,
                   weights="w")


def _sources(problem):
    hoisted = InMemory(Kernel(problem.spec, 256, hoist=True), problem.used, problem.w)
    whole = InMemory(Kernel(problem.spec, 256), problem.used, problem.w)
    return hoisted, whole


def _same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(y).max())))


def test_hoisted_sums_equal_the_whole_program(problem):
    every = ("lg", "r")
    theta = problem.init + 0.05
    hoisted, whole = _sources(problem)
    for p in (plan(problem.spec, values=every, jacobian=every, meat=True),  # makes the residuals
              plan(problem.spec, values=every),  # residual-only: served by the hoisted program
              plan(problem.spec, values=("lg",), jacobian=("lg",))):
        _same(hoisted.sums(theta, p), whole.sums(theta, p))
    assert any(r is not None for r in hoisted._hoisted.values())  # the hoisted path ran


def test_a_hoisted_plan_without_the_meat_does_not_serve_a_pass_that_asks_for_it(problem):
    """Hoisted without the meat (or with other weights in it), a program would return a zero or w²-weighted meat."""
    every = ("lg", "r")
    theta = problem.init + 0.05
    hoisted, whole = _sources(problem)
    hoisted.sums(theta, plan(problem.spec, values=every, jacobian=every))  # hoisted: no meat
    for sampling in (False, True):
        asked = plan(problem.spec, values=every, jacobian=every, meat=True, sampling=sampling)
        got = hoisted.sums(theta, asked)
        assert np.abs(got.meat).max() > 0
        _same(got, whole.sums(theta, asked))
