"""Engine behaviour: inference API, stacking and solving order, chunking, compilation reuse."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import estimators as est
import mestim
from mestim.blocks import BlockSpec, solve_groups


def _ratio(theta, row):
    mu_y, mu_x, r = theta
    return jnp.array([row["y"] - mu_y, row["x"] - mu_x, mu_y - r * mu_x])


@pytest.fixture(scope="module")
def ratio_data():
    rng = np.random.default_rng(5)
    x = rng.normal(2, 1, 500)
    return {"y": 3 * x + rng.normal(0, 1, 500), "x": x}


def test_minimal_form_accepts_dataframe_and_dict(ratio_data):
    a = mestim.fit(_ratio, ratio_data, init=jnp.zeros(3))
    b = mestim.fit(_ratio, pd.DataFrame(ratio_data), init=np.zeros(3))
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.summary().count("\n") > 3 and "converged" in a.summary()
    assert a.ci().shape == (3, 2) and a.se.shape == (3,)


def test_sandwich_at_given_theta_and_influence(ratio_data):
    res = mestim.fit(_ratio, ratio_data, init=jnp.zeros(3))
    at = mestim.sandwich(_ratio, ratio_data, res.theta)
    np.testing.assert_allclose(at.vcov, res.vcov, rtol=1e-12)
    assert not at.converged and "not solved" in at.status
    phi = res.influence()
    n = phi.shape[0]
    np.testing.assert_allclose(phi.T @ phi / n**2, res.vcov, rtol=1e-10)
    np.testing.assert_allclose(phi.mean(0), 0, atol=1e-10)


def test_delta_method_and_wald_tests(ratio_data):
    res = mestim.fit(_ratio, ratio_data, init=jnp.zeros(3))
    log_r = res.delta(lambda t: jnp.log(t[2]), labels=["log r"])
    assert log_r.theta[0] == pytest.approx(np.log(res.theta[2]), rel=1e-14)
    assert log_r.se[0] == pytest.approx(res.se[2] / res.theta[2], rel=1e-12)
    test = res.wald_test(np.array([[0.0, 0.0, 1.0]]), rhs=[3.0])
    z = (res.theta[2] - 3.0) / res.se[2]
    assert test.statistic == pytest.approx(z**2, rel=1e-12) and test.df == 1
    assert test.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    nonlinear = res.wald_test(lambda t: t[0] / t[1] - 3.0)  # g(θ) = μ_y/μ_x − 3 equals the linear test of r = 3
    assert nonlinear.statistic == pytest.approx(test.statistic, rel=1e-8)
    both = res.test_equal([0, 1])
    d = res.delta(lambda t: t[0] - t[1])
    assert both.statistic == pytest.approx((d.theta[0] / d.se[0]) ** 2, rel=1e-10)


def test_stack_labels_params_and_block_delta(logit_df):
    def mean_prob(theta, row, lg):
        p = 1 / (1 + jnp.exp(-(lg[0] + lg[1] * row["x1"] + lg[2] * row["x2"])))
        return jnp.atleast_1d(p - theta[0])

    res = mestim.fit([est.logistic("lg", "y", ["x1", "x2"]),
                      mestim.Block("risk", mean_prob, init=[0.5], reads=("lg",), labels=("mean",))], logit_df)
    assert res.labels == ("lg:(Intercept)", "lg:x1", "lg:x2", "risk:mean")
    assert set(res.params) == {"lg", "risk"}
    np.testing.assert_array_equal(res["lg"], res.theta[:3])
    odds = res.delta(lambda p: p["risk"] / (1 - p["risk"]), labels=["odds"])
    assert odds.theta[0] == pytest.approx(res.theta[3] / (1 - res.theta[3]), rel=1e-14)
    # mean of fitted probabilities equals the sample mean of y (score equation of the intercept)
    assert res.theta[3] == pytest.approx(logit_df.y.mean(), rel=1e-10)


def test_blockwise_and_joint_solves_agree(logit_df):
    def ate(theta, row, ps):
        e = 1 / (1 + jnp.exp(-(ps[0] + ps[1] * row["x1"])))
        return jnp.atleast_1d(row["y"] * row["yc"] / e - (1 - row["y"]) * row["yc"] / (1 - e) - theta[0])

    stack = [est.logistic("ps", "y", ["x1"]), mestim.Block("ate", ate, init=[0.0], reads=("ps",))]
    a = mestim.fit(stack, logit_df, solve="blockwise")
    b = mestim.fit(stack, logit_df, solve="joint")
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-9)
    np.testing.assert_allclose(a.vcov, b.vcov, rtol=1e-8)


def test_dependency_groups_order_and_cycles():
    spec = lambda name, reads=(): BlockSpec(name, None, tuple(reads), 1)  # noqa: E731
    assert solve_groups([spec("c", ["b"]), spec("a"), spec("b", ["a"])]) == [("a",), ("b",), ("c",)]
    assert solve_groups([spec("a", ["b"]), spec("b", ["a"]), spec("c", ["a"])]) == [("a", "b"), ("c",)]


def test_mutually_dependent_blocks_are_solved_jointly():
    """Two blocks that read each other: μ_y = mean(y) + 0·μ_x style coupling solved as one group."""
    rng = np.random.default_rng(6)
    d = {"y": rng.normal(1, 1, 200), "x": rng.normal(2, 1, 200)}
    a = mestim.Block("a", lambda t, r, b: jnp.atleast_1d(r["y"] - t[0] + 0.1 * (b[0] - t[0])), init=[0.0],
                     reads=("b",))
    b = mestim.Block("b", lambda t, r, a: jnp.atleast_1d(r["x"] - t[0] + 0.1 * (a[0] - t[0])), init=[0.0],
                     reads=("a",))
    res = mestim.fit([a, b], d)
    ybar, xbar = d["y"].mean(), d["x"].mean()
    # solve the 2×2 linear system by hand
    sol = np.linalg.solve([[1.1, -0.1], [-0.1, 1.1]], [ybar, xbar])
    np.testing.assert_allclose(res.theta, sol, rtol=1e-12)


def test_chunk_size_does_not_change_results(logit_df):
    block = est.logistic("lg", "y", ["x1", "x2"])
    a = mestim.fit([block], logit_df, cluster="g")
    b = mestim.fit([block], logit_df, cluster="g", chunk_size=97)  # 15 full chunks and a remainder
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12)
    np.testing.assert_allclose(a.vcov, b.vcov, rtol=1e-11)


def test_refit_of_same_shapes_does_not_recompile(logit_df):
    block = est.logistic("lg", "y", ["x1", "x2"])
    mestim.fit([block], logit_df)
    other = logit_df.assign(y=1.0 - logit_df.y)
    with mestim.compilations() as count:
        mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], other)  # a new but equal block, new data values
    assert count.programs == 0


def _user_logistic(theta, row):  # module level: the same ψ object in every fit
    x = jnp.array([1.0, row["x1"], row["x2"]])
    return (row["y"] - 1 / (1 + jnp.exp(-x @ theta))) * x


def test_first_fit_of_a_new_psi_compiles_one_program_and_other_sizes_reuse_it():
    rng = np.random.default_rng(8)

    def data(n):
        x1, x2 = rng.normal(size=n), rng.normal(size=n)
        return {"x1": x1, "x2": x2, "y": (rng.random(n) < 1 / (1 + np.exp(-x1))).astype(float)}
    with mestim.compilations() as first:
        mestim.fit(_user_logistic, data(200_000), init=np.zeros(3))
    assert first.programs <= 3, first
    with mestim.compilations() as other_sizes:  # the same size bucket (2¹⁷ < n ≤ 2¹⁸ rows): nothing new
        for n in (140_000, 180_000, 250_000):
            mestim.fit(_user_logistic, data(n), init=np.zeros(3))
    assert other_sizes.programs == 0, other_sizes


def test_bad_option_fails_before_any_work(logit_df, monkeypatch):
    """A bad option is refused before the problem is prepared: ψ is never traced, nothing is compiled. (Counting
    compilations alone cannot fail for a stack that an earlier test compiled: its program is cached.)"""
    import mestim.estimate

    traced = []

    def fresh_psi(theta, row):  # a new ψ object: any work on it would trace it and compile a program
        traced.append(1)
        return _user_logistic(theta, row)

    def no_preparation(*args, **kwargs):
        raise AssertionError("the problem was prepared before the options were checked")

    with mestim.compilations() as count:
        with pytest.raises(mestim.SpecificationError, match="weight_type='frequncy'.*did you mean 'frequency'"):
            mestim.fit(fresh_psi, logit_df, init=np.zeros(3), weight_type="frequncy")
        with pytest.raises(mestim.SpecificationError, match="max_iter=0"):
            mestim.fit(fresh_psi, logit_df, init=np.zeros(3), max_iter=0)
        with pytest.raises(mestim.SpecificationError, match=r"correction='HC1': use one of \[None, 'df', 'fay'\]"):
            mestim.fit(fresh_psi, logit_df, init=np.zeros(3), correction="HC1")
        monkeypatch.setattr(mestim.estimate, "prepare", no_preparation)
        with pytest.raises(mestim.SpecificationError, match=r"correction='HC1': use one of \[None, 'df', 'fay'\]"):
            mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], logit_df, correction="HC1")
    assert count.programs == 0 and not traced


def test_same_inputs_give_bitwise_identical_results(logit_df):
    a = mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], logit_df, cluster="g")
    b = mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], logit_df, cluster="g")
    assert a.theta.tobytes() == b.theta.tobytes() and a.vcov.tobytes() == b.vcov.tobytes()


def test_masked_block_ignores_nan_outside_mask(logit_df):
    df = logit_df.copy()
    df["in_sample"] = (df.x2 > 0).astype(float)
    df.loc[df.in_sample == 0, "yc"] = np.nan
    res = mestim.fit([est.linear("ols", "yc", ["x1"], mask="in_sample")], df)
    sub = df[df.in_sample == 1]
    X = np.column_stack([np.ones(len(sub)), sub.x1])
    np.testing.assert_allclose(res.theta, np.linalg.lstsq(X, sub.yc.values, rcond=None)[0], rtol=1e-10)
    assert np.all(np.isfinite(res.vcov))


@pytest.mark.parametrize("family", ["gaussian", "binomial", "poisson"])
def test_closed_form_glm_jacobian_equals_autodiff(logit_df, family):
    """GLM blocks supply Σw∂ψ/∂β in closed form; it must equal reverse-mode autodiff of the same ψ."""
    from helpers import closed_form_and_autodiff

    y = {"gaussian": "yc", "binomial": "y", "poisson": "w"}[family]
    df = logit_df.assign(m=(logit_df.x2 > -0.5).astype(float))
    stack = [est.glm("g", y, ["x1", "x2"], family=family, mask="m"),
             mestim.Block("d", lambda t, r, g: jnp.atleast_1d(r["x1"] * g[1] - t[0]), init=[0.0], reads=("g",))]
    problem, closed, auto = closed_form_and_autodiff(stack, df)
    assert callable(problem.spec.blocks[0].psi.chunk_sums)
    np.testing.assert_allclose(closed.jac, auto.jac, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(closed.psi, auto.psi, rtol=1e-12, atol=1e-10)


def test_ratio_by_exponentiated_delta_method(logit_df):
    """An odds ratio: exp(β) with its CI from the log scale and a test of OR = 1 (the Wald test of β = 0)."""
    res = mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], logit_df)
    odds = res.delta(lambda t: t[1], labels=["OR x1"], exponentiate=True)  # one block: a flat θ
    lo, hi = res.ci()[1]
    np.testing.assert_allclose(odds.ci()[0], np.exp([lo, hi]), rtol=1e-12)
    table = odds.table()
    assert table.loc["OR x1", "estimate"] == pytest.approx(np.exp(res.theta[1]), rel=1e-14)
    assert table.loc["OR x1", "se(log)"] == pytest.approx(res.se[1], rel=1e-12)
    assert table.loc["OR x1", "p"] == pytest.approx(res.p_values[1], rel=1e-12)
    assert "test ratio = 1" in odds.summary()


def test_intervals_and_covariance_come_labelled(logit_df):
    res = mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], logit_df)
    ci, cov = res.conf_int(0.9), res.cov_params()
    assert list(ci.index) == list(res.labels) == list(cov.columns)
    np.testing.assert_array_equal(ci.to_numpy(), res.ci(0.9))
    assert cov.loc["x1", "x2"] == res.vcov[1, 2]  # one block: labels without the block's name
    assert res.table().loc["x2", "se"] == res.se[2]
