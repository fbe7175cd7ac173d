"""Bad input and failed numerics raise errors that name the problem."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import estimators as est
import mestim
from mestim.errors import (ConvergenceError, DataError, SeparationError, SingularBreadError,
                           SpecificationError)


def _mean(theta, row):
    return jnp.atleast_1d(row["y"] - theta[0])


def test_nan_in_used_column_is_named_and_unused_nan_is_fine():
    d = {"y": np.array([1.0, np.nan, 3.0]), "z": np.array([np.nan] * 3)}
    with pytest.raises(DataError, match=r"column 'y' has 1 non-finite value\(s\) \(NaN first at row 1\)"):
        mestim.fit(_mean, d, init=[0.0])
    d["y"][1] = 2.0
    assert mestim.fit(_mean, d, init=[0.0]).theta[0] == pytest.approx(2.0)


def test_wrong_column_name_suggests_the_right_one():
    with pytest.raises(DataError, match=r"reads column 'yy', which is not in the data; did you mean \['y'\]"):
        mestim.fit(lambda t, r: jnp.atleast_1d(r["yy"] - t[0]), {"y": np.ones(3)}, init=[0.0])
    with pytest.raises(DataError, match="covariate 'x9' is not in the data"):
        mestim.fit([est.logistic("lg", "y", ["x9"])], {"y": np.array([0.0, 1.0])})


def test_psi_length_and_init_shape_mismatch():
    with pytest.raises(SpecificationError, match=r"returns shape \(2,\) but the block has 3 parameter"):
        mestim.fit(lambda t, r: jnp.array([r["y"] - t[0], t[1]]), {"y": np.ones(4)}, init=np.zeros(3))
    with pytest.raises(SpecificationError, match=r"init of block 'theta' has shape \(2, 2\)"):
        mestim.fit(_mean, {"y": np.ones(4)}, init=np.zeros((2, 2)))
    with pytest.raises(SpecificationError, match="init= is required"):
        mestim.fit(_mean, {"y": np.ones(4)})


def test_non_convergence_reports_status_iterations_and_residual(logit_df):
    with pytest.raises(ConvergenceError, match=r"reached the iteration limit after 1 iteration\(s\); final residual"):
        mestim.fit([est.logistic("lg", "y", ["x1", "x2"])], logit_df, max_iter=1)


def test_singular_bread_names_the_collinear_parameters(logit_df):
    df = logit_df.assign(x3=2 * logit_df.x1)
    with pytest.raises(SingularBreadError, match=r"x1.*x3|x3.*x1"):
        mestim.fit([est.linear("ols", "yc", ["x1", "x2", "x3"])], df)


def test_perfect_separation_is_reported():
    x = np.linspace(-1, 1, 40)
    d = {"x": x, "y": (x > 0).astype(float)}
    with pytest.raises(SeparationError, match="perfectly separated"):
        mestim.fit([est.logistic("lg", "y", ["x"])], d)


def test_quasi_complete_separation_is_reported():
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=200), (rng.random(200) < 0.1).astype(float)
    y = (rng.random(200) < 1 / (1 + np.exp(-x))).astype(float)
    y[g == 1] = 1.0  # the indicator g predicts y = 1 exactly
    with pytest.raises(SeparationError, match=r"quasi-complete separation: \d+ of 200 rows"):
        mestim.fit([est.logistic("lg", "y", ["x", "g"])], {"x": x, "g": g, "y": y})


def test_table_level_errors():
    with pytest.raises(DataError, match="duplicated column"):
        mestim.fit(_mean, pd.DataFrame(np.ones((3, 2)), columns=["y", "y"]), init=[0.0])
    with pytest.raises(DataError, match="different numbers of rows"):
        mestim.fit(_mean, {"y": np.ones(3), "x": np.ones(4)}, init=[0.0])
    with pytest.raises(DataError, match="not numeric"):
        mestim.fit(_mean, {"y": np.array(["a", "b"])}, init=[0.0])
    with pytest.raises(DataError, match="negative"):
        mestim.fit(_mean, {"y": np.ones(3)}, init=[0.0], weights=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(DataError, match="logistic model but 'y' takes values"):
        mestim.fit([est.logistic("lg", "y")], {"y": np.array([0.0, 1.0, 2.0])})
    with pytest.raises(DataError, match="mask selects none"):
        mestim.fit([est.mean("m", "y", mask="s")], {"y": np.ones(3), "s": np.zeros(3)})


def test_stack_specification_errors():
    blk = mestim.Block("a", _mean, init=[0.0], reads=("nope",))
    with pytest.raises(SpecificationError, match=r"reads \['nope'\]"):
        mestim.fit([blk], {"y": np.ones(3)})
    with pytest.raises(SpecificationError, match="unique"):
        mestim.fit([mestim.Block("a", _mean, init=[0.0])] * 2, {"y": np.ones(3)})
    with pytest.raises(SpecificationError, match="identifier"):
        mestim.Block("not a name", _mean)


def test_python_control_flow_in_psi_names_the_block_and_the_fix():
    def huber(t, r):  # written as geex examples are: Python branching on a traced value
        e = r["y"] - t[0]
        return jnp.atleast_1d(e if abs(e) <= 1.345 else 1.345 * jnp.sign(e))
    with pytest.raises(SpecificationError, match=r"block 'theta' uses Python control flow.*jnp.where"):
        mestim.fit(huber, {"y": np.arange(5.0)}, init=[0.0])


def test_psi_returning_a_list_says_so():
    with pytest.raises(SpecificationError, match="returns a Python list.*jnp.array"):
        mestim.fit(lambda t, r: [r["y"] - t[0]], {"y": np.arange(5.0)}, init=[0.0])


def test_nan_derivative_names_parameters_and_rows():
    dose = np.array([0.0, 1.0, 2.0, 4.0, 8.0] * 4)
    y = 2.0 * np.sqrt(dose) + np.random.default_rng(1).normal(0, 0.1, dose.size)

    def root(t, r):  # ψ is finite at dose 0, but d/dt1 of √(dose·t1) is dose / (2√(dose·t1)) = 0/0
        e = r["y"] - t[0] * jnp.sqrt(r["dose"] * t[1])
        return jnp.array([e, e * r["dose"]])
    with pytest.raises(ConvergenceError, match=r"derivative is non-finite with respect to \['1'\]; its derivative is "
                                               r"non-finite first at row\(s\) \[0, 5, 10, 15\]"):
        mestim.fit(root, {"dose": dose, "y": y}, init=[1.0, 1.0])


def test_case_only_typo_and_wrong_weight_column_list_the_users_columns():
    with pytest.raises(DataError, match=r"reads column 'Y'.*did you mean \['y'\]"):
        mestim.fit(lambda t, r: jnp.atleast_1d(r["Y"] - t[0]), {"y": np.ones(3), "x": np.ones(3)}, init=[0.0])
    with pytest.raises(DataError, match=r"weight column 'wt' is not in the data; available columns: \['x', 'y'\]"):
        mestim.fit([est.logistic("lg", "y", ["x"])], {"y": np.r_[0.0, 1, 0, 1], "x": np.arange(4.0)}, weights="wt")


def test_user_block_mask_ignores_nan_outside_it():
    rng = np.random.default_rng(3)
    y = rng.normal(2.0, 1.0, 200)
    trial = (rng.random(200) < 0.6).astype(float)
    y[trial == 0] = np.nan  # a target sample without outcomes
    mean_in_trial = mestim.Block("m", lambda t, r: jnp.atleast_1d(r["y"] - t[0]), init=[0.0], mask="trial")
    res = mestim.fit([mean_in_trial], {"y": y, "trial": trial})
    inside = y[trial == 1]
    assert res.theta[0] == pytest.approx(inside.mean(), rel=1e-12)
    assert res.se[0] == pytest.approx(inside.std() / np.sqrt(inside.size), rel=1e-10)


def test_one_extreme_weight_warns():
    rng = np.random.default_rng(5)
    d = {"y": rng.normal(size=300), "w": np.ones(300)}
    d["w"][17] = 1e12
    with pytest.warns(mestim.MestimWarning, match=r"extreme weight: row 17 has weight 1e\+12"):
        mestim.fit(_mean, d, init=[0.0], weights="w")


# ------------------------------------------------------------------ messages that say what is wrong (issue 15)
def _median(t, r):
    return jnp.atleast_1d(0.5 - jnp.where(r["y"] <= t[0], 1.0, 0.0))


@pytest.mark.parametrize("start", [5.5, 3.5])
def test_a_step_function_psi_says_it_does_not_vary_wherever_it_starts(start):
    """Started where Σψ = 0 (between the two middle values of 10), the fit 'converged' at once and the bread's
    check blamed 'a constant or collinear covariate'; from elsewhere the solver said ψ does not vary."""
    with pytest.raises(SingularBreadError, match=r"ψ does not vary with \['0'\].*smooth='auto'"):
        mestim.fit(_median, {"y": np.arange(1.0, 11.0)}, init=[start])


def test_a_finite_psi_with_a_non_finite_derivative_is_told_so():
    """ψ = √θ − ȳ is finite at θ = 0, its derivative is not: the advice said 'ψ is NaN or infinite'."""
    with pytest.raises(ConvergenceError) as info:
        mestim.fit(lambda t, r: jnp.atleast_1d(jnp.sqrt(t[0]) - r["y"]), {"y": np.arange(1.0, 6.0)}, init=[0.0])
    message = str(info.value)
    assert "; ψ is NaN or infinite" not in message
    assert "the derivative of ψ is NaN or infinite at the starting values" in message and "differentiable" in message


def _np_psi(t, r):
    return np.array([r["y"] - t[0]])


def _np_exp_psi(t, r):
    return jnp.atleast_1d(np.exp(t[0]) - r["y"])


def _math_psi(t, r):
    import math

    return jnp.atleast_1d(math.exp(t[0]) - r["y"])


def _float_psi(t, r):
    return jnp.atleast_1d(float(t[0]) - r["y"])


@pytest.mark.parametrize("psi, construct, fix", [
    (_np_psi, r"numpy \(np\.array\)", r"jnp\.array"),
    (_np_exp_psi, r"numpy \(np\.exp\)", r"jnp\.exp"),
    (_math_psi, r"the math module \(math\.exp\)", r"jnp\.exp"),
    (_float_psi, r"float\(\)", r"keep it an array"),
])
def test_an_untraceable_psi_names_the_construct_and_the_jnp_replacement(psi, construct, fix):
    """np.array raised a raw JAX TracerArrayConversionError; math.exp was blamed on 'Python control flow'."""
    with pytest.raises(SpecificationError, match=rf"block 'theta' .*{construct}.*{fix}") as info:
        mestim.fit(psi, {"y": np.arange(1.0, 6.0)}, init=[0.0])
    assert "test_engine_errors.py" in str(info.value)  # the line of ψ that did it
    assert "control flow" not in str(info.value)
