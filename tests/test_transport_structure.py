"""How the transport package is put together: the estimator registry, TransportOptions checked once, ratio
contrasts by the delta method with autodiff gradients (against closed-form ones), no import cycle; and the option checks
every estimator shares ("use one of …; did you mean …")."""

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import mestim
from estimators.transport import simulate_trials, transport
from estimators.transport.api import transport_stack
from estimators.transport.estimands import ESTIMATORS, MODELS, PER_TRIAL_UNITS, POOLED_UNITS
from estimators.transport.options import TransportOptions
from mestim.errors import SpecificationError

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "estimators" / "transport"
COVS = ["X1", "X2"]


@pytest.fixture(scope="module")
def sim():
    return simulate_trials(n_trials=3, n_per_trial=200, n_target=300, seed=21).data


# ------------------------------------------------------------------------------ no import cycle
def _imports(path: pathlib.Path) -> set[str]:
    """The package's modules that ``path`` imports anywhere (at the top or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("estimators.transport."):
            out.add(node.module.split(".")[2])
    return out


def test_the_package_imports_have_no_cycle():
    """Not api ↔ report, nor any other: the graph of imports inside estimators/transport (lazy ones included)
    is acyclic."""
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert "api" not in graph["report"] and "report" in graph["result"]
    done, active = set(), []

    def visit(module):
        assert module not in active, f"import cycle: {' -> '.join(active[active.index(module):] + [module])}"
        if module in done:
            return
        active.append(module)
        for child in graph.get(module, ()):
            visit(child)
        active.pop()
        done.add(module)

    for module in graph:
        visit(module)


@pytest.mark.parametrize("first", ["estimators.transport.report", "estimators.transport.api"])
def test_report_and_api_import_in_either_order(first):
    code = f"import {first}, estimators.transport.report, estimators.transport.api"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# ------------------------------------------------------------------------------ the registry
def test_every_estimator_is_one_registered_unit():
    units = [*PER_TRIAL_UNITS.values(), *POOLED_UNITS.values()]
    assert set(ESTIMATORS) == {u.name for u in units}
    assert all(set(u.reads) <= set(MODELS) and u.scope in ("per_trial", "pooled") for u in units)
    assert len({u.block for u in units}) == len(units)


@pytest.mark.parametrize("unit", [*PER_TRIAL_UNITS.values(), *POOLED_UNITS.values()], ids=lambda u: u.block)
def test_a_unit_alone_builds_the_working_models_it_reads_and_no_other(sim, unit):
    """The stack of one estimator holds its block and the working models its entry declares — read by its
    block (``Block.reads``) — and nothing else."""
    if unit.name == "target_only":
        pytest.skip("the simulated target sample has no outcome")
    stack = transport_stack(sim, covariates=COVS, estimators=[unit.name], per_trial=unit.scope == "per_trial",
                            pooled=unit.scope == "pooled")
    blocks = {b.name: b for b in stack.blocks}
    assert list(blocks)[-1] == unit.block
    assert set(blocks) - {unit.block} == set(blocks[unit.block].reads)
    kinds = {"participation": "participation", "treatment": "treatment", "outcome": "outcome"}
    read = {kind for name in blocks[unit.block].reads for kind in kinds if name.startswith(kind)}
    assert read == set(unit.reads)


def test_a_subset_of_estimators_gives_the_full_stack_numbers(sim):
    """Each estimator's block reads the same working models alone or with the others: the same estimates."""
    full = transport(sim, covariates=COVS, diagnostics=False).table
    for name in ("weighting", "pseudo_outcome"):
        alone = transport(sim, covariates=COVS, estimators=[name], diagnostics=False).table
        ref = full[full.estimator == name].reset_index(drop=True)
        np.testing.assert_allclose(alone.estimate, ref.estimate, rtol=1e-9)
        np.testing.assert_allclose(alone.se, ref.se, rtol=1e-7)


# ------------------------------------------------------------------------------ ratios by the delta method
def test_ratio_contrasts_match_closed_form_gradients():
    """log RR and log OR of the arm means with SEs from the hand-derived gradients (1/μ, 1/(μ(1−μ))): G V Gᵀ."""
    df = simulate_trials(n_trials=2, n_per_trial=250, n_target=300, seed=4, binary=True).data
    res = transport(df, covariates=COVS, estimators=["outcome", "dr"], per_trial=False, diagnostics=False)
    theta, vcov = res.fit.theta, res.fit.vcov
    for name, block in (("outcome", "outcome_pooled_mean"), ("dr", "dr_pooled")):
        start = res.fit.blocks[block].start
        a, b = start + 1, start  # μ_1, μ_0
        for scale, f, df_ in (("risk ratio", np.log, lambda p: 1 / p),
                              ("odds ratio", lambda p: np.log(p / (1 - p)), lambda p: 1 / (p * (1 - p)))):
            g = np.zeros(theta.size)
            g[a], g[b] = df_(theta[a]), -df_(theta[b])
            log_ratio, se_log = f(theta[a]) - f(theta[b]), np.sqrt(g @ vcov @ g)
            row = res.estimate(name, "pooled", "1 vs 0", scale)
            assert row.estimate == pytest.approx(np.exp(log_ratio), rel=1e-12)
            assert row.se == pytest.approx(np.exp(log_ratio) * se_log, rel=1e-10)
            z = 1.959963984540054
            assert row.ci_low == pytest.approx(np.exp(log_ratio - z * se_log), rel=1e-10)


def test_contrasts_are_the_engines_delta_method():
    """The reported contrasts (differences, risk and odds ratios), read in transport's own program beside the
    weights, are the engine's ``fit.delta(g)``."""
    from estimators.transport.result import contrast_function

    df = simulate_trials(n_trials=2, n_per_trial=250, n_target=300, seed=4, binary=True).data
    res = transport(df, covariates=COVS, diagnostics=True)
    assert set(res.table.scale) == {"difference", "risk ratio", "odds ratio"} and res.diagnostics is not None
    stack = transport_stack(df, covariates=COVS)
    g, labels = contrast_function(stack, res.fit.blocks)
    flat = mestim.Estimates(res.fit.theta, res.fit.vcov, res.fit.labels)  # g reads the flat θ
    engine = flat.delta(g, labels)
    n = len(res.estimates.labels)
    assert engine.labels[:n] == res.estimates.labels
    np.testing.assert_allclose(res.estimates.theta, engine.theta[:n], rtol=1e-12)
    np.testing.assert_allclose(res.estimates.vcov, engine.vcov[:n, :n], rtol=1e-12, atol=1e-300)


def test_a_second_analysis_reuses_the_readout_program(sim):
    transport(sim, covariates=COVS, diagnostics=False)
    with mestim.compilations() as count:
        transport(sim, covariates=COVS, diagnostics=False)
    assert count.programs == 0


def test_the_readout_of_small_data_is_compiled_for_compile_speed(sim, monkeypatch):
    """Small data on a CPU compile the read-out (contrasts and weights) for compile speed, as the stack's program
    (a cold `mestim transport` compiled it in 0.13 s of CPU time instead of 0.40 s); more work than
    ``mestim.sums.QUICK_WORK`` compiles it optimised, to the same numbers."""
    from estimators.transport import readout

    ran, program = [], readout._program
    monkeypatch.setattr(readout, "_program", lambda weights, rows: ran.append(p := program(weights, rows)) or p)
    small = transport(sim, covariates=COVS, diagnostics=True)
    monkeypatch.setattr(readout, "little_work", lambda platform, n_rows, per_row: False)  # as for large data
    large = transport(sim, covariates=COVS, diagnostics=True)
    # each chosen twice: compiled ahead, while the stack's program compiles, then run
    assert ran == [readout._quick_read] * 2 + [readout._read] * 2 and small.diagnostics is not None
    np.testing.assert_allclose(small.estimates.theta, large.estimates.theta, rtol=1e-12)
    np.testing.assert_allclose(small.estimates.vcov, large.estimates.vcov, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(small.diagnostics.ess, large.diagnostics.ess, rtol=1e-12)


# ------------------------------------------------------------------------------ options checked once
@pytest.mark.parametrize("kw, message", [
    ({"weighting": "normalised"}, r"weighting='normalised': use one of \['normalized', 'unnormalized'\]; did you "
                                  r"mean 'normalized'\?"),
    ({"participation": "logistc"}, r"did you mean 'logistic'\?"),
    ({"treatment_model": "per-trial"}, r"did you mean 'per_trial'\?"),
    ({"outcome_model": "linea"}, r"did you mean 'linear'\?"),
    ({"weight_type": "frequncy"}, r"did you mean 'frequency'\?"),
    ({"solve": "joint_"}, r"did you mean 'joint'\?"),
    ({"estimators": ["dr", "weigthing"]}, r"unknown estimator\(s\) \['weigthing'\].*did you mean 'weighting'\?"),
    ({"level": 95}, r"did you mean 0.95"),
    ({"per_trial": False, "pooled": False}, "nothing to estimate"),
    ({"post_covariates": ["L"]}, "give received= too"),
    ({"reference": 0, "contrasts": [(1, 0)]}, "not both"),
    ({"treatment_probabilities": {0: 0.5, 1: 0.5}}, "only with treatment_model='known'"),
    ({"bias_grid": [0, np.inf]}, "finite multipliers"),
])
def test_options_are_checked_on_construction_before_any_data(kw, message):
    with pytest.raises(SpecificationError, match=message):
        TransportOptions(**kw)
    with pytest.raises(SpecificationError, match=message):  # the same check, before the table is looked at
        transport(pd.DataFrame({"unrelated": [1.0]}), covariates=COVS, **kw)


def test_options_are_frozen_and_normalised():
    opts = TransportOptions(estimators="dr", level="0.9", bias="X1")
    assert opts.estimators == ("dr",) and opts.level == 0.9 and list(opts.bias_grid) == [1.0]
    assert TransportOptions(estimators=["dr", "dr", "outcome"]).estimators == ("dr", "outcome")
    with pytest.raises(AttributeError):
        opts.level = 0.5


# ------------------------------------------------------------------------------ the shared option check
@pytest.mark.parametrize("call, message", [
    (lambda: __import__("estimators.meta_classical").meta_classical.effect_sizes(1, 2, 3, 4, "rr"),
     r"measure='rr': use one of \['RD', 'RR', 'OR'\]; did you mean 'RR'\?"),
    (lambda: __import__("estimators.meta_classical").meta_classical.effect_sizes(1, 2, 3, 4, "RR", to="only"),
     r"to='only': use one of .*did you mean 'only0'\?"),
    (lambda: __import__("estimators.causal_meta").causal_meta.contrast("SRR", 0.2, 0.1),
     r"measure='SRR': use one of .*did you mean"),
    (lambda: __import__("estimators.meta_batch").meta_batch.meta_analyses(
        pd.DataFrame({"ai": [1], "bi": [2], "ci": [3], "di": [4], "id": [1]}), "id", classical="REM"),
     r"classical='REM': use one of .*did you mean 'REML'\?"),
    (lambda: __import__("estimators.generalized_linear").generalized_linear.resolve("binomial", "logt"),
     r"link='logt' is not available for the binomial family: use one of .*did you mean 'logit'\?"),
])
def test_every_choice_says_what_is_allowed_and_the_closest(call, message):
    with pytest.raises(SpecificationError, match=message) as err:
        call()
    assert isinstance(err.value, ValueError)  # a MestimError is a ValueError: callers catching it still do


def test_json_values_are_what_json_has():
    from estimators.output import json_number, json_value

    assert json_value(np.int64(3)) == 3 and type(json_value(np.int64(3))) is int
    assert json_value(np.bool_(True)) is True and json_value(np.float64(np.nan)) is None
    assert json_value(pd.NA) is None and json_value(float("inf")) is None and json_value("x") == "x"
    assert json_number(2) == 2.0 and type(json_number(2)) is float and json_number(np.float32(-np.inf)) is None
