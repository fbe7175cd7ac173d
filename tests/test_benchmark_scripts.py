"""Every benchmark script runs end to end on tiny inputs, so that none can rot (issue 9): a smoke test, not a timing.

Each runs in a fresh process with its results written to a temporary folder (``MESTIM_BENCH_RESULTS``), never over
the recorded results in ``benchmarks/results``.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {
    # n = 20,000: W2 compiled optimised, so hoisted, and solved in one program (see bench_engine_took_the_fast_paths)
    "bench_engine": ["--repeats", "1", "--n-cold", "300", "--ns", "20000", "--delicatessen-max", "1000",
                     "--chord-n", "20000", "--meta-k", "2728", "--meta-engine-k", "12"],
    "bench_logistic": ["--ns", "300", "--budget", "5", "--repeats", "1", "--interleaved", "1", "--host-n", "50000"],
    "bench_scale": ["--ns", "300", "--budget", "5", "--repeats", "1", "--no-float32"],
    "bench_scale --gpu": ["--gpu", "--gpu-ns", "2000", "--workloads", "W1", "W3", "--bandwidth-gib", "0.01"],
    "bench_meta_batch": ["--m", "20", "--repeats", "1"],
    "coverage": ["--replicates", "8", "--only", "ratio"],
    "meta_synthetic": ["--reps", "3"],
    "transport_coverage": ["--reps", "3", "--scenarios", "correct"],
    "gmm_coverage": ["--replicates", "4", "--n", "300"],
    "bench_stream": ["--ns", "20000", "--batch", "4096", "--other-batches", "--no-dask"],  # two processes included
    "bench_federated": ["--ns", "2000", "--repeats", "1", "--no-transport"],
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_benchmark_script_runs(name, tmp_path):
    module = "benchmarks." + name.split()[0]
    env = dict(os.environ, PYTHONPATH=ROOT, MESTIM_BENCH_RESULTS=str(tmp_path), MESTIM_BENCH_DATA=str(tmp_path),
               MESTIM_CACHE_DIR="off")
    out = subprocess.run([sys.executable, "-m", module, *SCRIPTS[name]], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    written = [p.name for p in tmp_path.iterdir()]
    assert written, f"{name} wrote no results"
    if name == "bench_engine":
        bench_engine_took_the_fast_paths(json.loads((tmp_path / "bench_engine.json").read_text())["rows"])
    if name == "bench_logistic":
        registered_block_did_little_host_work(json.loads((tmp_path / "bench_logistic.json").read_text())["rows"])


def registered_block_did_little_host_work(rows):
    """The host work of a registered logistic fit stays cut (issue 19): preparing 50,000 rows allocates about the
    prepared columns it keeps (design 88 B a row + outcome, mask, offset, weights: ≈ 130 B; copies of the user's
    columns and of the design took 426 B), the post-fit checks one η (≈ 20 B; the separation screen's copies took
    95 B), the user's float64 columns are not copied, and θ̂ and SEs equal statsmodels'."""
    row = next(r for r in rows if r.get("interleaved"))
    assert row["prepare_bytes_per_row"] < 160
    assert row["checks_bytes_per_row"] < 40
    assert not row["user_columns_copied"]
    assert row["max_dtheta_vs_statsmodels"] < 1e-8 and row["max_rel_dse_vs_statsmodels"] < 1e-8


def bench_engine_took_the_fast_paths(rows):
    """A regression to a slow path fails here: the programs each run compiled (empty cache), the coloured and
    hoisted Jacobian passes of the W2 user ψ and its solve in one program (host-driven hoisted passes for more rows:
    tests/test_hoist.py), the chord comparison and the pass written by hand, the closed-form meta-analysis at
    k = 2,728."""
    cases = {r.get("case", r.get("n")): r for r in rows}
    assert cases["mestim, user logistic ψ, n=300, empty cache"]["programs"] == 1
    assert cases["mestim meta (bundled BCG), empty cache"]["programs"] == 0  # its check of the closed form: NumPy
    transport = cases["mestim transport (bundled), empty cache"]
    # the stack's program and the read-out (contrasts and weights), each once: no hoisting, no eager calls
    assert transport["programs"] == 2 and sorted(transport["names"]) == ["jit(_read_fit)", "jit(_slab_sums)"]
    assert transport["heavy_modules"] == []  # the command line needs neither scipy, statsmodels nor matplotlib
    warm = cases[20000]
    assert warm["jacobian_passes"] == 16  # of 27 equations: colouring
    assert warm["hoisted"]
    assert warm["build_contracted"]  # the hoisting build's sums of products as contractions (mestim.contractions)
    assert warm["solved_in_one_program"] and warm["host_passes"] == 0
    assert warm["programs_first_fit"] == 1  # residuals, Newton loop and values + meat at θ̂ in one program
    assert warm["max_dtheta_vs_one_jit"] < 1e-10 and warm["max_rel_dse_vs_one_jit"] < 1e-10
    chord = [r for r in rows if r.get("passes") in ("plain", "hoisted")]
    assert [r["passes"] for r in chord] == ["plain", "hoisted"] and all(r["max_dtheta"] < 1e-8 for r in chord)
    assert cases["hoisted Jacobian pass, n=20,000"]["max_rel_djac"] < 1e-12  # the hand-written pass: the same J
    meta = cases["meta_analysis, k=2,728 (closed form)"]
    assert meta["median_s"] < 10 and meta["peak_rss_mb"] < 1024
