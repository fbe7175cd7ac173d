"""The engine's delta method compiles one program per (g, θ's shape): an equal g reused compiles nothing."""

import dataclasses
import gc
import weakref

import jax.numpy as jnp
import numpy as np
import pytest

import mestim
from mestim.results import value_and_jacobian


def log_ratio(theta):
    return jnp.log(theta[0]) - jnp.log(theta[1])


@dataclasses.dataclass(frozen=True)
class Power:
    k: float

    def __call__(self, theta):
        return theta ** self.k


@dataclasses.dataclass  # eq without frozen: unhashable, so it cannot key a program's cache
class Scaled:
    c: float

    def __call__(self, theta):
        return self.c * theta[:2]


def estimates(theta):
    theta = np.asarray(theta, float)
    vcov = np.diag(np.arange(1.0, theta.size + 1)) * 0.01 + 0.001
    return mestim.Estimates(theta, vcov, tuple(f"t{i}" for i in range(theta.size)))


def closed_form_delta(est, value, gradient):
    """g(θ̂) and G V Gᵀ with G written out by hand."""
    return np.atleast_1d(value), gradient @ est.vcov @ gradient.T


def test_an_equal_g_compiles_once():
    first, second = estimates([2.0, 0.5, 1.0]), estimates([3.0, 1.5, 4.0])
    with mestim.compilations() as cold:
        a = first.delta(log_ratio, labels=["log a/b"])
    with mestim.compilations() as warm:
        b = second.delta(log_ratio, labels=["log a/b"])
        c = second.delta(Power(2.0))
        d = second.delta(Power(2.0))  # an equal instance: the same program
    assert cold.programs >= 1 and warm.programs == 1  # Power(2.0)'s, once
    for est, res in ((first, a), (second, b)):
        t = est.theta
        value, cov = closed_form_delta(est, np.log(t[0] / t[1]), np.array([[1 / t[0], -1 / t[1], 0.0]]))
        np.testing.assert_allclose(res.theta, value, rtol=1e-14)
        np.testing.assert_allclose(res.vcov, cov, rtol=1e-13)
    value, cov = closed_form_delta(second, second.theta ** 2, np.diag(2 * second.theta))
    np.testing.assert_allclose(c.theta, value, rtol=1e-14)
    np.testing.assert_allclose(c.vcov, cov, rtol=1e-13)
    np.testing.assert_array_equal(d.vcov, c.vcov)


def test_a_stack_delta_of_blocks_compiles_once():
    def stack_result(theta):
        est = estimates(theta)
        return mestim.Result(est.theta, est.vcov, est.labels, blocks={"a": slice(0, 2), "b": slice(2, 3)},
                             flat_theta=False)

    first, second = stack_result([2.0, 0.5, 0.25]), stack_result([3.0, 1.5, 0.6])
    with mestim.compilations() as cold:
        first.delta(odds_of_b)
    with mestim.compilations() as warm:
        res = second.delta(odds_of_b)
    assert cold.programs >= 1 and warm.programs == 0
    p = second.theta[2]
    value, cov = closed_form_delta(second, p / (1 - p), np.array([[0.0, 0.0, 1 / (1 - p) ** 2]]))
    np.testing.assert_allclose(res.theta, value, rtol=1e-14)
    np.testing.assert_allclose(res.vcov, cov, rtol=1e-13)


def odds_of_b(params):
    return params["b"] / (1 - params["b"])


def test_lambdas_and_unhashable_g_still_work():
    est = estimates([2.0, 0.5, 1.0])
    g = lambda t: t[0] * t[1]  # noqa: E731
    res = est.delta(g, labels=["ab"])  # a new lambda: a program of its own, as before
    value, cov = closed_form_delta(est, 1.0, np.array([[0.5, 2.0, 0.0]]))
    np.testing.assert_allclose(res.theta, value, rtol=1e-14)
    np.testing.assert_allclose(res.vcov, cov, rtol=1e-13)
    made_anew = weakref.ref(g)
    del g
    gc.collect()
    assert made_anew() is None  # no cache keeps a lambda (nor its program): a loop of deltas does not pile them up
    scaled = est.delta(Scaled(3.0))
    np.testing.assert_allclose(scaled.vcov, 9 * est.vcov[:2, :2], rtol=1e-14)


def test_delta_from_a_callers_program_equals_delta():
    est = estimates([2.0, 0.5, 1.0])
    value, jacobian = value_and_jacobian(Power(0.5), jnp.asarray(est.theta))
    from_parts = est.delta_from(value, jacobian, exponentiate=True)
    direct = est.delta(Power(0.5), exponentiate=True)
    np.testing.assert_allclose(from_parts.vcov, direct.vcov, rtol=1e-14)
    assert from_parts.labels == direct.labels == ("g[0]", "g[1]", "g[2]") and from_parts.scale == "log"
    with pytest.raises(mestim.SpecificationError, match="2 labels given for 3"):
        est.delta_from(value, jacobian, labels=["a", "b"])
