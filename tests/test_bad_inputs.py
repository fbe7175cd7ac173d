"""Table-driven bad inputs: each gets a clear error (or warning) naming the problem; the CLI never shows a traceback.

Library cases call ``mestim.fit`` and check the error type and message. Command-line cases run ``estimators.cli.main``
in-process on a small broken file and check: exit code ≠ 0, one line on stderr naming the problem, no traceback.
"""

import re
import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import estimators as est
import mestim
from estimators.cli import main as cli
from mestim.errors import (ConvergenceError, DataError, MestimWarning, SeparationError, SingularBreadError,
                           SpecificationError)

RNG = np.random.default_rng(11)
X = RNG.normal(size=120)
Y01 = (RNG.random(120) < 1 / (1 + np.exp(-X))).astype(float)


def _mean(t, r):
    return jnp.atleast_1d(r["y"] - t[0])


def _logit(**cols):
    return [est.logistic("lg", "y", list(cols.get("X", ["x"])))]


def _with_missing():
    """A table with a NaN age at row 5 and a missing text level at row 7 ('stage' contains 'age': not confused)."""
    frame = pd.DataFrame({"y": Y01, "x": X, "age": 40 + 10 * RNG.random(120), "stage": RNG.normal(size=120),
                          "sex": RNG.choice(["f", "m"], 120).astype(object)})
    frame.loc[5, "age"] = np.nan
    frame.loc[7, "sex"] = None
    return frame


LIBRARY = [
    # (id, call, expected error, message pattern)
    ("missing column", lambda: mestim.fit(lambda t, r: jnp.atleast_1d(r["z"] - t[0]), {"y": X}, init=[0.0]),
     DataError, "reads column 'z', which is not in the data"),
    ("NaN in used column", lambda: mestim.fit(_mean, {"y": np.r_[X[:5], np.nan]}, init=[0.0]),
     DataError, r"column 'y' has 1 non-finite value\(s\) \(NaN"),
    ("inf in used column", lambda: mestim.fit(_mean, {"y": np.r_[X[:5], np.inf]}, init=[0.0]),
     DataError, r"\(inf first at row 5\)"),
    ("duplicated column names", lambda: mestim.fit(_mean, pd.DataFrame(np.ones((3, 2)), columns=["y", "y"]),
                                                   init=[0.0]), DataError, "duplicated column name"),
    ("non-numeric values", lambda: mestim.fit(_mean, {"y": np.array(["1", "x"], dtype=object)}, init=[0.0]),
     DataError, "not numeric"),
    ("columns of different lengths", lambda: mestim.fit(_mean, {"y": X, "x": X[:3]}, init=[0.0]),
     DataError, "different numbers of rows"),
    ("ψ of the wrong length", lambda: mestim.fit(_mean, {"y": X}, init=[0.0, 0.0]),
     SpecificationError, r"returns shape \(1,\) but the block has 2"),
    ("init of the wrong shape", lambda: mestim.fit(_mean, {"y": X}, init=[[0.0]]),
     SpecificationError, "expected a 1-D array"),
    ("ψ returning NaN", lambda: mestim.fit(lambda t, r: jnp.atleast_1d(jnp.log(t[0] - 10.0) - r["y"]), {"y": X},
                                           init=[0.0]), ConvergenceError, "non-finite ψ or Jacobian"),
    ("non-convergence", lambda: mestim.fit(_logit(), {"x": X, "y": Y01}, max_iter=1),
     ConvergenceError, r"after 1 iteration\(s\); final residual"),
    ("collinear design", lambda: mestim.fit([est.linear("ols", "y", ["x", "x2"])], {"x": X, "x2": 3 * X, "y": X},),
     SingularBreadError, "not identified"),
    ("constant covariate", lambda: mestim.fit([est.linear("ols", "y", ["c"])], {"c": np.ones(120), "y": X}),
     SingularBreadError, r"Intercept|'c'|ols:c"),
    ("perfect separation", lambda: mestim.fit(_logit(), {"x": X, "y": (X > 0).astype(float)}),
     SeparationError, "perfectly separated"),
    ("quasi-complete separation", lambda: mestim.fit(_logit(X=["x", "g"]), {
        "x": X, "g": (X > 1.2).astype(float), "y": np.where(X > 1.2, 1.0, Y01)}), SeparationError, "quasi-complete"),
    ("non-binary outcome for a logistic block", lambda: mestim.fit(_logit(), {"x": X, "y": np.round(X)}),
     DataError, "logistic model but 'y' takes values"),
    ("negative weights", lambda: mestim.fit(_mean, {"y": X}, init=[0.0], weights=-np.ones(120)),
     DataError, "negative"),
    ("weight column missing", lambda: mestim.fit(_mean, {"y": X}, init=[0.0], weights="w"),
     DataError, "weight column 'w' is not in the data"),
    ("single cluster", lambda: mestim.fit(_mean, {"y": X, "g": np.ones(120)}, init=[0.0], cluster="g"),
     DataError, "single cluster"),
    ("empty masked block", lambda: mestim.fit([est.mean("m", "y", mask="s")], {"y": X, "s": np.zeros(120)}),
     DataError, "mask selects none"),
    ("NaN inside a block's mask", lambda: mestim.fit([est.mean("m", "y", mask="s")],
                                                      {"y": np.r_[np.nan, X[1:]], "s": np.ones(120)}),
     DataError, "column 'y' has 1 non-finite"),
    # a NaN in a registered block's covariate names the user's column, not the block's internal design matrix
    ("NaN covariate of a registered block", lambda: mestim.fit(_logit(X=["stage", "age"]), _with_missing()),
     DataError, r"column 'age' has 1 non-finite value\(s\) \(NaN first at row 5\)"),
    ("NaN inside a formula's function", lambda: mestim.fit([est.logistic("lg", "y", formula="~ stage + np.log(age)")],
                                                            _with_missing()),
     DataError, r"column 'age' has 1 non-finite value\(s\) \(NaN first at row 5\)"),
    ("missing level of a text covariate", lambda: mestim.fit([est.logistic("lg", "y", formula="~ stage + C(sex)")],
                                                              _with_missing().assign(age=1.0)),
     DataError, r"column 'sex' has 1 non-finite value\(s\) \(NaN first at row 7\)"),
    ("NaN instrument", lambda: mestim.fit([est.iv("iv", "y", ["x"], ["age"], ["stage"])],
                                          _with_missing()),
     DataError, r"column 'age' has 1 non-finite"),
    ("unknown block read", lambda: mestim.fit([mestim.Block("a", _mean, init=[0.0], reads=("b",))], {"y": X}),
     SpecificationError, r"reads \['b'\]"),
]


@pytest.mark.parametrize("case", LIBRARY, ids=[c[0] for c in LIBRARY])
def test_library_bad_input(case):
    _, call, error, pattern = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MestimWarning)
        with pytest.raises(error, match=pattern):
            call()


def test_clusters_with_one_row_warn():
    with pytest.warns(MestimWarning, match="every cluster has one row"):
        mestim.fit(_mean, {"y": X, "g": np.arange(120.0)}, init=[0.0], cluster="g")


def test_nan_outside_a_mask_is_allowed():
    y = np.where(X > 0, X, np.nan)
    res = mestim.fit([est.mean("m", "y", mask=lambda c: np.isfinite(c["y"]))], {"y": y})
    assert res.theta[0] == pytest.approx(np.nanmean(y))


# ---------------------------------------------------------------------------------------------- command line
def _transport_frame():
    from estimators.transport.simulate import simulate_trials

    return simulate_trials(n_trials=3, n_target=300, n_per_trial=150, seed=3).data


def _write(tmp_path, frame, name="data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def _bcg():
    from estimators.meta_batch import load_bcg

    return load_bcg()


CLI = [
    # (id, argv builder (tmp_path -> argv), message pattern)
    ("missing file", lambda p: ["transport", str(p / "nope.csv")], r"nope\.csv"),
    ("unreadable CSV", lambda p: ["meta", _raw(p, b"\x00\x01\x02garbage\n\xff\xfe")], r"parse|read|column|empty"),
    ("empty CSV", lambda p: ["meta", _raw(p, b"")], "empty"),
    ("wrong study column", lambda p: _t(p, _transport_frame(), "--study", "site"), "site"),
    ("wrong covariate", lambda p: _t(p, _transport_frame(), "--covariates", "X1,X9"), "X9"),
    ("target label absent", lambda p: _t(p, _transport_frame(), "--target", "9"),
     r"target|'9'|9"),
    ("trial with one arm", lambda p: _t(p, _one_arm(_transport_frame())), r"arm|treatment"),
    ("treatment value not present", lambda p: _t(p, _transport_frame(), "--contrast", "1,7"),
     "7"),
    ("non-binary outcome for a logistic model",
     lambda p: _t(p, _transport_frame(), "--outcome-model", "logistic"), r"0/1|binary"),
    ("NaN covariate in trial rows", lambda p: _t(p, _nan_cov(_transport_frame())),
     r"X1|NaN|non-finite"),
    ("non-numeric covariate", lambda p: _t(p, _text_cov(_transport_frame())),
     r"X1.*numeric|numeric.*X1"),
    ("negative counts", lambda p: ["meta", _write(p, _bcg().assign(ai=lambda d: -d.ai))], "negative"),
    ("events exceed totals", lambda p: ["meta", _write(p, _events_gt_totals())], r"exceed|greater|more than|>"),
    ("meta table without count columns", lambda p: ["meta", _write(p, pd.DataFrame({"a": [1], "b": [2]}))],
     r"column"),
    ("non-numeric counts", lambda p: ["meta", _write(p, _bcg().astype({"ai": object}).assign(ai="many"))],
     r"numeric|ai"),
]


def _t(p, frame, *extra):
    """argv of `mestim transport` on ``frame`` written to a file, with the simulated data's covariates."""
    return ["transport", _write(p, frame), "--covariates", "X1,X2,X3", *extra]


def _raw(p, content):
    path = p / "raw.csv"
    path.write_bytes(content)
    return str(path)


def _one_arm(df):
    trial = df["S"] == 1
    return df.assign(Z=np.where(trial, 1.0, df["Z"]))


def _nan_cov(df):
    first_trial_row = df.index[df["S"] == 1][0]
    df = df.copy()
    df.loc[first_trial_row, "X1"] = np.nan
    return df


def _text_cov(df):
    return df.astype({"X1": object}).assign(X1=lambda d: ["high"] + list(d.X1[1:]))


def _events_gt_totals():
    df = pd.DataFrame({"event.e": [5, 3], "n.e": [4, 10], "event.c": [2, 2], "n.c": [10, 10]})
    return df


@pytest.mark.parametrize("case", CLI, ids=[c[0] for c in CLI])
def test_cli_bad_input(case, tmp_path, capsys):
    _, argv, pattern = case
    code = cli(argv(tmp_path))
    captured = capsys.readouterr()
    assert code != 0, captured.out
    assert "Traceback" not in captured.err + captured.out
    lines = [ln for ln in captured.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0], captured.err
    assert re.search(pattern, lines[0]), lines[0]


def test_cli_zero_event_arm_is_defined(tmp_path, capsys):
    df = _bcg()
    df.loc[0, "ai"] = 0
    assert cli(["meta", _write(tmp_path, df), "--json", str(tmp_path / "o.json")]) == 0
    import json

    rows = json.load(open(tmp_path / "o.json"))["results"]
    assert all(np.isfinite(r["estimate"]) for r in rows)


# ---------------------------------------------------------------------------------------- transport options (issue 11)
def _placeholder_target(df):
    """The target sample's treatment and outcome as placeholders (0), as in the transport paper's sample file."""
    target = df["S"] == 0
    return df.assign(Z=np.where(target, 0.0, df["Z"]), Y=np.where(target, 0.0, df["Y"]))


TRANSPORT_CLI = [
    ("known probabilities summing to 1.8",
     lambda p: _t(p, _transport_frame(), "--treatment-model", "known", "--treatment-probabilities", "0:0.9,1:0.9"),
     r"sum to 1\.8"),
    ("known probability 0", lambda p: _t(p, _transport_frame(), "--treatment-model", "known",
                                         "--treatment-probabilities", "0:0,1:1"), r"\(0, 1\)"),
    ("probability that is not a number", lambda p: _t(p, _transport_frame(), "--treatment-model", "known",
                                                      "--treatment-probabilities", "0:1/0,1:1"), "not a probability"),
    ("level as a percentage", lambda p: _t(p, _transport_frame(), "--level", "95"), r"did you mean 0\.95\?"),
    ("target-only on placeholders", lambda p: _t(p, _placeholder_target(_transport_frame()), "--estimators",
                                                 "target_only"), r"target_only.*no rows in arm\(s\) Z=\['1'\]"),
    ("covariate name in the wrong case", lambda p: ["transport", _write(p, _transport_frame()), "--covariates",
                                                    "x1,X2"], r"did you mean 'X1'\?"),
    ("received column absent", lambda p: _t(p, _transport_frame(), "--received", "AA"), r"'AA' is not in the data"),
    ("nothing left to estimate", lambda p: _t(p, _transport_frame(), "--estimators", "unadjusted", "--pooled-only"),
     "no estimator left"),
]


@pytest.mark.parametrize("case", TRANSPORT_CLI, ids=[c[0] for c in TRANSPORT_CLI])
def test_cli_bad_transport_option(case, tmp_path, capsys):
    test_cli_bad_input(case, tmp_path, capsys)


# ---------------------------------------------------------------------------------------------- meta command line
META_CLI = [
    # (id, argv builder (tmp_path -> argv), message pattern): one `error:` line, exit 2
    ("meta level as a percentage", lambda p: ["meta", "--level", "95"], r"--level 95: .*did you mean 0\.95\?"),
    ("meta level of 1", lambda p: ["meta", "--level", "1"], r"--level 1: .*between 0 and 1"),
    ("meta level not a number", lambda p: ["meta", "--level", "high"], r"--level high is not a number"),
    ("meta --by column absent", lambda p: ["meta", _write(p, _bcg()), "--by", "review,label2"], r"label2"),
    ("meta --by names a column twice", lambda p: ["meta", _write(p, _bcg()), "--by", "label,label"], r"twice"),
    ("meta ids all missing", lambda p: ["meta", _write(p, _bcg().assign(review=np.nan)), "--by", "review"],
     r"no usable study.*id missing"),
]


@pytest.mark.parametrize("case", META_CLI, ids=[c[0] for c in META_CLI])
def test_meta_cli_bad_input(case, tmp_path, capsys):
    test_cli_bad_input(case, tmp_path, capsys)
