"""transport() and `mestim transport`: row weights (frequency/sampling), clusters, the reference arm, and the
command line's reading options — each checked against an identity or an independent NumPy computation."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

import mestim
from estimators.cli import main
from estimators.transport import simulate_trials, transport
from estimators.transport.api import transport_stack

KW = dict(covariates=["X1", "X2"], estimators=["weighting", "dr"], per_trial=False, diagnostics=False)


@pytest.fixture(scope="module")
def small():
    """Two trials of 150 and a target of 200, with integer weights 1–3 and 12 sites per trial."""
    df = simulate_trials(n_trials=2, n_per_trial=150, n_target=200, seed=3).data.copy()
    rng = np.random.default_rng(11)
    df["w"] = rng.integers(1, 4, len(df)).astype(float)
    df["site"] = np.where(df.S == 0, 1000 + np.arange(len(df)), df.S * 100 + rng.integers(0, 12, len(df)))
    return df


# ------------------------------------------------------------------------------ 1. weights and clusters
def test_frequency_weights_equal_expanded_rows(small):
    """Integer frequency weights give the same estimates and SEs as the table with each row repeated w times."""
    weighted = transport(small, **KW, weights="w", weight_type="frequency")
    expanded = small.loc[small.index.repeat(small.w.astype(int))].reset_index(drop=True)
    plain = transport(expanded, **KW)
    np.testing.assert_allclose(weighted.table.estimate, plain.table.estimate, rtol=1e-8)
    np.testing.assert_allclose(weighted.table.se, plain.table.se, rtol=1e-6)
    assert weighted.settings["weights"] == "w" and weighted.settings["weight_type"] == "frequency"


def test_sampling_weights_are_weights_written_into_the_estimating_equations(small):
    """weight_type='sampling' equals the unweighted fit of the stack whose every ψ is multiplied by w (what
    delicatessen's weights do): bread Σ w ∂ψ, meat Σ w² ψψᵀ. Its SEs differ from the frequency reading."""
    res = transport(small, **KW, weights="w", weight_type="sampling")
    stack = transport_stack(small, **{k: v for k, v in KW.items() if k != "diagnostics"}, weights="w",
                            weight_type="sampling")

    def times_w(psi):
        return psi and (lambda theta, row, **up: row["w"] * psi(theta, row, **up))

    def weighted(block):  # a registered block's ψ comes from its prepare (a multinomial's form depends on the data)
        prepare = block.prepare and (lambda cols, _prep=block.prepare: (
            lambda p: dataclasses.replace(p, psi=times_w(p.psi)))(_prep(cols)))
        return dataclasses.replace(block, psi=times_w(block.psi), prepare=prepare)

    ref = mestim.fit([weighted(b) for b in stack.blocks], stack.data_for_fit)
    np.testing.assert_allclose(res.fit.theta, ref.theta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.fit.vcov, ref.vcov, rtol=1e-6, atol=1e-12)
    freq = transport(small, **KW, weights="w")
    np.testing.assert_allclose(res.table.estimate, freq.table.estimate, rtol=1e-8)
    assert np.all(res.table.se > 1.2 * freq.table.se)  # Σw rows (frequency) vs n rows (sampling)
    assert "sampling" in res.summary() and "'w'" in res.summary()


def test_cluster_robust_se_equals_numpy_cluster_sandwich(small):
    """With cluster=, V = (1/n²) Σ_g U_g U_gᵀ over cluster totals U_g = Σ_{i∈g} φ_i of the per-row influence
    functions φ of the unclustered fit (NumPy), and the summary names the clusters."""
    plain = transport(small, **KW)
    clustered = transport(small, **KW, cluster="site")
    phi = plain.fit.influence()
    n = phi.shape[0]
    np.testing.assert_allclose(phi.T @ phi / n**2, plain.fit.vcov, rtol=1e-6, atol=1e-12)  # the reading of φ
    codes = pd.factorize(small.site)[0]
    U = np.zeros((codes.max() + 1, phi.shape[1]))
    np.add.at(U, codes, phi)
    np.testing.assert_allclose(clustered.fit.vcov, U.T @ U / n**2, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(clustered.table.estimate, plain.table.estimate, rtol=1e-10)
    G = small.site.nunique()
    assert clustered.settings["cluster"] == "site" and clustered.settings["n_clusters"] == G
    assert f"cluster-robust by 'site' ({G} clusters)" in clustered.summary()


def test_weight_options_are_checked(small):
    with pytest.raises(mestim.errors.SpecificationError, match="weight_type"):
        transport(small, **KW, weights="w", weight_type="survey")
    with pytest.raises(mestim.errors.DataError, match="did you mean 'site'"):
        transport(small, **KW, cluster="sites")


def test_cli_weights_weight_type_cluster(small, tmp_path, capsys):
    path = tmp_path / "d.csv"
    small.to_csv(path, index=False)
    out = tmp_path / "o.json"
    rc = main(["transport", str(path), "--covariates", "X1,X2", "--estimators", "weighting,dr", "--pooled-only",
               "--weights", "w", "--weight-type", "sampling", "--cluster", "site", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "sampling weights 'w'" in text and "cluster-robust by 'site'" in text
    d = json.loads(out.read_text())
    assert d["settings"]["weights"] == "w" and d["settings"]["weight_type"] == "sampling"
    assert d["settings"]["cluster"] == "site"
    ref = transport(small, covariates=["X1", "X2"], estimators=["weighting", "dr"], per_trial=False,
                    weights="w", weight_type="sampling", cluster="site")
    got = {(r["estimator"], r["contrast"]): r["se"] for r in d["estimates"]}
    for r in ref.table.itertuples():
        assert got[(r.estimator, r.contrast)] == pytest.approx(r.se, rel=1e-8)


# ------------------------------------------------------------------------------ 2. the reference arm
def _relabel(df, names):
    out = df.copy()
    out["Z"] = out.Z.map(names)
    return out


def _trial_difference(df, treated, control):
    """The unadjusted mean difference in trial 1 (NumPy): its sign is the sign of the reported contrast."""
    t1 = df[df.S == 1]
    return t1.Y[t1.Z == treated].mean() - t1.Y[t1.Z == control].mean()


@pytest.mark.parametrize("names, treated, control, why", [
    ({1: "active", 0: "placebo"}, "active", "placebo", "control-like"),
    ({1: "treated", 0: "control"}, "treated", "control", "control-like"),
])
def test_control_like_label_is_the_default_reference(small, names, treated, control, why):
    """'active'/'placebo' sorts placebo second: the default was 'placebo vs active' (the sign flipped)."""
    df = _relabel(small, names)
    res = transport(df, covariates=["X1", "X2"], estimators=["unadjusted"], pooled=False, diagnostics=False)
    assert res.settings["contrasts"] == [f"{treated} vs {control}"]
    assert res.settings["reference"] == control and why in res.settings["reference_reason"]
    row = res.estimate("unadjusted", 1)
    assert row.estimate == pytest.approx(_trial_difference(df, treated, control), rel=1e-8)
    assert row.estimate > 0
    assert res.summary().splitlines()[0].startswith(f"Reference arm: Z = {control}")


def test_reference_keyword_and_default_stated(small):
    df = _relabel(small, {1: "B", 0: "A"})
    res = transport(df, covariates=["X1", "X2"], estimators=["unadjusted"], pooled=False, diagnostics=False)
    assert res.settings["contrasts"] == ["B vs A"] and "first in sorted order" in res.settings["reference_reason"]
    flipped = transport(df, covariates=["X1", "X2"], estimators=["unadjusted"], pooled=False, diagnostics=False,
                        reference="B")
    assert flipped.settings["contrasts"] == ["A vs B"] and flipped.settings["reference_reason"] == "given"
    assert flipped.estimate("unadjusted", 1).estimate == pytest.approx(-res.estimate("unadjusted", 1).estimate)
    numeric = transport(small, covariates=["X1", "X2"], estimators=["unadjusted"], pooled=False, diagnostics=False)
    assert numeric.settings["contrasts"] == ["1 vs 0"] and numeric.settings["reference"] == "0"
    with pytest.raises(mestim.errors.DataError, match="not one of the arms"):
        transport(df, covariates=["X1", "X2"], reference="C")
    with pytest.raises(mestim.errors.SpecificationError, match="reference"):
        transport(df, covariates=["X1", "X2"], reference="A", contrasts=[("B", "A")])


def test_cli_reference_first_line_and_json(small, tmp_path, capsys):
    path = tmp_path / "d.csv"
    _relabel(small, {1: "active", 0: "placebo"}).to_csv(path, index=False)
    out = tmp_path / "o.json"
    args = ["transport", str(path), "--covariates", "X1,X2", "--estimators", "unadjusted", "--per-trial-only"]
    assert main(args + ["--json", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("Reference arm: Z = placebo (a control-like label") and "--reference" in first
    d = json.loads(out.read_text())
    assert d["settings"]["reference"] == "placebo" and d["estimates"][0]["contrast"] == "active vs placebo"
    assert main(args + ["--reference", "active", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["estimates"][0]["contrast"] == "placebo vs active"
