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


def test_bootstrap_progress_bar_counts_replicates_and_changes_nothing(capsys):
    d = _data(4, 120)
    quiet = bootstrap([est.logistic("lg", "y", ["x"])], d, replicates=6, batch=4, seed=2)
    assert capsys.readouterr().err == ""  # progress=False (the default) prints nothing
    shown = bootstrap([est.logistic("lg", "y", ["x"])], d, replicates=6, batch=4, seed=2, progress=True)
    err = capsys.readouterr().err
    assert "bootstrap" in err and "0/6" in err and "4/6" in err, err  # the bar counts replicates, batch by batch
    np.testing.assert_array_equal(quiet.replicates, shown.replicates)


def test_cluster_and_weighted_bootstrap_run():
    d = _data(2, 600).assign(g=np.repeat(np.arange(60), 10), w=np.tile([1.0, 2.0], 300))
    c = bootstrap([est.logistic("lg", "y", ["x"])], d, replicates=200, cluster="g", seed=1)
    w = bootstrap([est.logistic("lg", "y", ["x"])], d, replicates=200, weights="w", seed=1)
    for r in (c, w):
        assert r.failed == 0 and 0.75 < float(np.mean(r.se / r.fit.se)) < 1.25


def test_pure_fit_equilibrates_a_bread_with_zeros_on_its_diagonal_as_fit_does():
    """ψ = (θ₁ − y, θ₀ − x): a regular bread with a zero diagonal (the pure fit called it singular)."""
    d = _data(3).assign(y=lambda t: t.y + t.x)

    def psi(t, r):
        return jnp.stack([t[1] - r["y"], t[0] - r["x"]])
    ref = mestim.fit(psi, d, init=[0.0, 0.0])
    columns, f, _ = fit_function(psi, d, init=[0.0, 0.0])
    out = jax.jit(f)(columns, jnp.ones(len(d)))
    assert bool(out.converged)
    np.testing.assert_allclose(out.vcov, ref.vcov, rtol=1e-10)


def test_weighted_bootstrap_draws_units_in_memory_linear_in_the_units():
    """Σw units are drawn by inverting the cumulative weights: no (Σw × n) array anywhere (the categorical draw
    made one), and any integer seed works."""
    from mestim.bootstrap import _unit_draw

    w = np.arange(1.0, 301.0)  # Σw = 45,150 units over 300 rows
    jaxpr = jax.make_jaxpr(lambda k, c: _unit_draw(k, c, total=45150))(jax.random.key(0), np.cumsum(w))
    sizes = [int(np.prod(v.aval.shape)) for e in jaxpr.eqns for v in e.outvars]
    assert max(sizes) <= 45150
    counts = np.asarray(_unit_draw(jax.random.key(1), np.cumsum(w), total=45150))
    assert counts.sum() == 45150 and np.corrcoef(counts, w)[0, 1] > 0.9
    d = _data(4, 300).assign(w=np.tile([1.0, 2.0, 3.0], 100))
    assert bootstrap([est.logistic("lg", "y", ["x"])], d, replicates=10, weights="w", seed=-1).failed == 0
