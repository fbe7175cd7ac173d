"""The conformance matrix (issue 15): every entry point × weight type × clusters × correction × float32, each cell
against the independent numpy reference of tests/conformance.py (geex's formulas, with frequency weights as the
expanded table and sampling weights as w written inside ψ), or refused with a clear error.

Entry points: ``fit``; ``sandwich`` at the reference θ̂; ``fit_stream`` in batches smaller than the table; a Dask
frame (Dask's own scheduler, three partitions); ``fit(devices=4)`` on four forced host devices (in a process of
its own, as tests/test_scale.py does), and ``fit_stream(devices=4)``; the pure (jitted, vmapped) fit;
``fit(gmm="two-step")`` (exactly identified: the M-estimator); the bootstrap (its sandwich fit to the reference,
its replicate SE to the sandwich SE statistically); ``fit`` on the hoisted paths (the solve in one program, and
host-driven hoisted passes over slabs). 11 entry points × 36 cells = 396 cells; 12 of them (GMM with Fay) are
refusals; 30 bootstrap cells run with the slow tests (see test_cell_bootstrap).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import conformance as C
import mestim
from mestim.errors import SpecificationError


def cell_id(cell):
    w, g, corr, dtype = cell
    return f"w={w or 'none'}-cluster={g or 'none'}-corr={corr or 'none'}-{dtype or 'float64'}"


@pytest.fixture(scope="module")
def df():
    return C.data()


@pytest.fixture(scope="module")
def references(df):
    return {cell[:3]: C.reference(df, *cell[:3]) for cell in C.CELLS}


def check(theta, se, reference, dtype, what=""):
    ref_theta, ref_v = reference
    tol = C.SE_RTOL_FLOAT32 if dtype == "float32" else C.SE_RTOL
    np.testing.assert_allclose(theta, ref_theta, rtol=tol, atol=tol * 1e-2, err_msg=f"θ̂ {what}")
    np.testing.assert_allclose(se, np.sqrt(np.diag(ref_v)), rtol=tol, err_msg=f"SE {what}")


@pytest.mark.parametrize("entry", ["fit", "sandwich", "stream", "dask", "pure", "gmm"])
@pytest.mark.parametrize("cell", C.CELLS, ids=cell_id)
def test_cell(entry, cell, df, references):
    if entry == "dask":
        pytest.importorskip("dask.dataframe")
    message = C.refused(entry, *cell)
    if message is not None:
        with pytest.raises(SpecificationError, match=message):
            C.run(entry, df, *cell)
        return
    theta, se = C.run(entry, df, *cell)
    check(theta, se, references[cell[:3]], cell[3], f"{entry} {cell_id(cell)}")


# ``fit`` on the engine's hoisted paths (mestim.hoist): data this small are otherwise compiled quick and not hoisted.
# "one program": the rows in one slab, the whole solve and the sums at θ̂ in one compiled program; "hoisted slabs":
# chunks of 2 rows, host-driven hoisted passes over two slabs of 64 chunks. Each cell checks that its path ran.
@pytest.mark.parametrize("path", ["one program", "hoisted slabs"])
@pytest.mark.parametrize("cell", C.CELLS, ids=cell_id)
def test_cell_hoisted(path, cell, df, references, monkeypatch):
    from mestim import hoist, sums

    monkeypatch.setattr(sums, "QUICK_WORK", 0)
    ran = []
    for name in ("solve_program", "residuals_program"):
        program = getattr(hoist, name)
        monkeypatch.setattr(hoist, name, lambda *a, _p=program, _n=name: ran.append(_n) or _p(*a))
    if path == "hoisted slabs":  # chunks of 2 rows: 120 chunks, over 64 a slab
        monkeypatch.setattr(hoist, "ONE_PROGRAM_CHUNKS", 64)
    kw = C.options(*cell) | ({"chunk_size": 2} if path == "hoisted slabs" else {})
    res = mestim.fit(C.psi, df, init=C.INIT, **kw)
    assert set(ran) == {"solve_program" if path == "one program" else "residuals_program"}, ran
    check(res.theta, res.se, references[cell[:3]], cell[3], f"{path} {cell_id(cell)}")


_DEVICES = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np, mestim
    import conformance as C
    assert len(jax.devices()) == 4, jax.devices()
    from mestim.scale import fit_stream
    df, out = C.data(), {{}}
    for cell in C.CELLS:
        res = mestim.fit(C.psi, df, init=C.INIT, devices=4, **C.options(*cell))
        streamed = fit_stream(C.psi, df, init=C.INIT, devices=4, batch_rows=C.BATCH, **C.options(*cell))
        out[repr(cell)] = [[r.theta.tolist(), r.se.tolist()] for r in (res, streamed)]
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def sharded():
    """Every cell fitted, and streamed, with the rows sharded over 4 forced host devices, in a process of its own."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    code = _DEVICES.format(tests=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("entry", ["devices", "stream-devices"])
@pytest.mark.parametrize("cell", C.CELLS, ids=cell_id)
def test_cell_devices(entry, cell, sharded, references):
    theta, se = sharded[repr(cell)][entry == "stream-devices"]
    check(np.array(theta), np.array(se), references[cell[:3]], cell[3], f"{entry} {cell_id(cell)}")


# The bootstrap: its sandwich fit must equal the reference (1e-8; float32 1e-6); its SE estimates the same
# sampling variance as the sandwich: the uncorrected one without clusters, and with clusters the one corrected by
# G/(G − p) ("df"), since with G = 30 clusters the clustered sandwich is biased down by O(p/G) (the cluster
# bootstrap at 2000 replicates was 1.10× the uncorrected SE of x1, 1.05× the corrected one). With B replicates the
# bootstrap SE has a relative Monte-Carlo error of about 1/√(2(B − 1)): 7% at B = 100, 1.6% at B = 2000. The
# default run allows ±30% (over 4 of those errors), the slow run ±10% with B = 2000. Sampling weights drawn as
# frequency counts gave 0.55 here (the defect this guards against).
def bootstrap_ratio(boot, cell, references):
    """The bootstrap SE over the sandwich SE it estimates (see above)."""
    return boot.se / np.sqrt(np.diag(references[cell[:2] + ("df" if cell[1] else None,)][1]))


# Only the resampling scheme (weights × clusters) changes the replicates: the cells with a correction or float32
# data differ only in the sandwich fit beside them, and run with the slow tests (each bootstrap compiles anew).
@pytest.mark.parametrize("cell", [c if c[2:] == (None, None) else pytest.param(c, marks=pytest.mark.slow)
                                  for c in C.CELLS], ids=cell_id)
def test_cell_bootstrap(cell, df, references):
    boot = C.run("bootstrap", df, *cell, replicates=100)
    check(boot.fit.theta, boot.fit.se, references[cell[:3]], cell[3], f"bootstrap {cell_id(cell)}")
    ratio = bootstrap_ratio(boot, cell, references)
    assert boot.failed == 0 and np.all(np.abs(ratio - 1) < 0.3), ratio


@pytest.mark.slow
@pytest.mark.parametrize("cell", [c for c in C.CELLS if c[2:] == (None, None)], ids=cell_id)
def test_bootstrap_se_equals_sandwich_se_with_many_replicates(cell, df, references):
    boot = C.run("bootstrap", df, *cell, replicates=2000)
    ratio = bootstrap_ratio(boot, cell, references)
    assert boot.failed == 0 and np.all(np.abs(ratio - 1) < 0.1), ratio


# ------------------------------------------------------------------------------ the reference, checked itself
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("cluster", [None, "g"])
def test_reference_equals_statsmodels(df, weighted, cluster):
    """The numpy reference's sandwich (correction None) is statsmodels' GLM robust covariance: HC0, or clustered
    with ``use_correction=False`` (no small-sample factor); frequency weights as statsmodels' ``freq_weights``."""
    sm = pytest.importorskip("statsmodels.api")
    X = sm.add_constant(df[["x1", "x2"]].to_numpy())
    kw = {"freq_weights": df.w.to_numpy()} if weighted else {}
    cov = ({"cov_type": "cluster", "cov_kwds": {"groups": df.g.to_numpy(), "use_correction": False}}
           if cluster else {"cov_type": "HC0"})
    if weighted and cluster is None:  # statsmodels' HC0 with freq_weights weighs ψψᵀ by w²: use the expanded table
        rows = np.repeat(np.arange(len(df)), df.w.to_numpy().astype(int))
        model, kw = sm.GLM(df.y.to_numpy()[rows], X[rows], family=sm.families.Binomial()), {}
    else:
        model = sm.GLM(df.y.to_numpy(), X, family=sm.families.Binomial(), **kw)
    res = model.fit(tol=1e-14, **cov)
    theta, v = C.reference(df, "frequency" if weighted else None, cluster, None)
    np.testing.assert_allclose(theta, res.params, rtol=1e-9)
    np.testing.assert_allclose(v, res.cov_params(), rtol=1e-8)


# ------------------------------------------------------------------------------ the identities, in mestim alone
@pytest.mark.parametrize("cluster", [None, "g"])
@pytest.mark.parametrize("correction", C.CORRECTIONS)
def test_sampling_weights_are_w_written_inside_psi(df, cluster, correction):
    """Fay with sampling weights and no clusters was 0.68–0.70× this (w left out of the leverage, w where w²
    belongs)."""
    weighted = mestim.fit(C.psi, df, init=C.INIT, weights="s", weight_type="sampling", cluster=cluster,
                          correction=correction)
    inside = mestim.fit(lambda t, r: r["s"] * C.psi(t, r), df, init=C.INIT, cluster=cluster, correction=correction)
    np.testing.assert_allclose(weighted.theta, inside.theta, rtol=1e-10)
    np.testing.assert_allclose(weighted.se, inside.se, rtol=1e-10)


@pytest.mark.parametrize("cluster", [None, "g"])
@pytest.mark.parametrize("correction", C.CORRECTIONS)
def test_integer_frequency_weights_are_the_expanded_table(df, cluster, correction):
    expanded = df.loc[df.index.repeat(df.w.astype(int))].reset_index(drop=True)
    weighted = mestim.fit(C.psi, df, init=C.INIT, weights="w", cluster=cluster, correction=correction)
    rows = mestim.fit(C.psi, expanded, init=C.INIT, cluster=cluster, correction=correction)
    np.testing.assert_allclose(weighted.theta, rows.theta, rtol=1e-10)
    np.testing.assert_allclose(weighted.se, rows.se, rtol=1e-10)


def test_pure_fit_reads_float32_columns(df):
    """The pure fit's float32 cells hold the columns rounded to float32 in float64 arrays; float32 arrays
    themselves are read in float64 alike."""
    from mestim.pure import fit_function
    from mestim.sums import QUICK_CPU_OPTIONS

    columns, f, _ = fit_function(C.psi, df, init=C.INIT, correction="fay", cluster="g")
    out = jax.jit(f, compiler_options=QUICK_CPU_OPTIONS)({k: v.astype(np.float32) for k, v in columns.items()},
                                                          np.ones(len(df)))
    check(out.theta, np.sqrt(np.diag(out.vcov)), C.reference(df, None, "g", "fay"), "float32")
    assert all(v.dtype == np.float64 for v in columns.values())


# ------------------------------------------------------------------------------ refusals
def test_bootstrap_refuses_frequency_weights_that_are_not_counts(df):
    """Weights normalised to sum to 1 made every replicate NaN (1 unit drawn) with only a warning."""
    from mestim.bootstrap import bootstrap

    normalised = df.assign(w=df.w / df.w.sum())
    with pytest.raises(SpecificationError, match="whole numbers .* weight_type='sampling'"):
        bootstrap(C.psi, normalised, init=C.INIT, weights="w", replicates=100)
    ok = bootstrap(C.psi, normalised, init=C.INIT, weights="w", weight_type="sampling", replicates=100)
    assert ok.failed == 0


def test_bootstrap_and_pure_fit_check_their_options_before_any_work(df):
    from mestim.bootstrap import bootstrap
    from mestim.pure import fit_function

    with pytest.raises(SpecificationError, match="gmm="):
        bootstrap(C.psi, df, init=C.INIT, gmm="two-step", replicates=10)
    with pytest.raises(SpecificationError, match="correction"):
        bootstrap(C.psi, df, init=C.INIT, correction="HC1", replicates=10)
    with pytest.raises(SpecificationError, match="weight_type"):
        fit_function(C.psi, df, init=C.INIT, weight_type="probability")
