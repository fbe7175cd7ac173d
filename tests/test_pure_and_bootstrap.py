"""The pure (vmappable) fit equals fit(); the bootstrap agrees with the sandwich and is reproducible."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import estimators as est
import mestim
from mestim.bootstrap import bootstrap
from mestim.pure import coverage, fit_function, prepare_columns, stack_columns


def _data(seed, n=400):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "y": (rng.random(n) < 1 / (1 + np.exp(-(0.2 + x)))).astype(float)})


def test_vmapped_pure_fit_equals_fit_per_data_set():
    stack = [est.logistic("lg", "y", ["x"])]
    _, f, problem = fit_function(stack, _data(0))
    frames = [_data(s) for s in range(5)]
    batch = stack_columns([prepare_columns(problem, d) for d in frames])
    out = jax.jit(jax.vmap(lambda c: f(c, jnp.ones(400))))(batch)
    assert bool(out.converged.all())
    for i, d in enumerate(frames):
        ref = mestim.fit(stack, d)
        np.testing.assert_allclose(out.theta[i], ref.theta, rtol=1e-10)
        np.testing.assert_allclose(out.vcov[i], ref.vcov, rtol=1e-8)


def test_coverage_helper_counts_intervals():
    est_ = np.array([[0.0], [3.0]])
    vc = np.ones((2, 1, 1))
    np.testing.assert_allclose(coverage(est_, vc, np.array([0.5])), [0.5])


def test_bootstrap_agrees_with_sandwich_and_is_reproducible():
    d = _data(1, 1500)
    a = bootstrap([est.logistic("lg", "y", ["x"])], d, replicates=400, seed=3)
    b = bootstrap([est.logistic("lg", "y", ["x"])], d, replicates=400, seed=3)
    assert a.failed == 0 and a.replicates.shape == (400, 2)
    np.testing.assert_array_equal(a.replicates, b.replicates)
    ratio = a.se / a.fit.se
    assert np.all((ratio > 0.85) & (ratio < 1.15)), ratio
    lo, hi = a.ci().T
    assert np.all(lo < a.fit.theta) and np.all(a.fit.theta < hi)


def test_cluster_and_weighted_bootstrap_run():
    d = _data(2, 600).assign(g=np.repeat(np.arange(60), 10), w=np.tile([1.0, 2.0], 300))
    c = bootstrap([est.logistic("lg", "y", ["x"])], d, replicates=200, cluster="g", seed=1)
    w = bootstrap([est.logistic("lg", "y", ["x"])], d, replicates=200, weights="w", seed=1)
    for r in (c, w):
        assert r.failed == 0 and 0.75 < float(np.mean(r.se / r.fit.se)) < 1.25
