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
    # n = 20,000: W2 compiled optimised, so hoisted, in one slab: solved in one program; 70,000: two slabs, host-driven
    # hoisted passes (see bench_engine_took_the_fast_paths)
    "bench_engine": ["--repeats", "1", "--n-cold", "300", "--ns", "20000", "70000", "--delicatessen-max", "1000",
                     "--meta-k", "2728", "--meta-engine-k", "12"],
    "bench_logistic": ["--ns", "300", "--budget", "5", "--repeats", "1"],
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


def bench_engine_took_the_fast_paths(rows):
    """A regression to a slow path fails here: the programs each run compiled (empty cache), the coloured and
    hoisted Jacobian passes of the W2 user ψ, its solve in one program for rows in one slab (host-driven hoisted
    passes for more), the closed-form meta-analysis at k = 2,728."""
    cases = {r.get("case", r.get("n")): r for r in rows}
    assert cases["mestim, user logistic ψ, n=300, empty cache"]["programs"] == 1
    assert cases["mestim meta (bundled BCG), empty cache"]["programs"] == 1  # the engine's check of the closed form
    assert cases["mestim transport (bundled), empty cache"]["programs"] == 2
    for n in (20000, 70000):
        warm = cases[n]
        assert warm["jacobian_passes"] == 16  # of 27 equations: colouring
        assert warm["hoisted"]
        assert warm["max_dtheta_vs_one_jit"] < 1e-10 and warm["max_rel_dse_vs_one_jit"] < 1e-10
    one_slab, two_slabs = cases[20000], cases[70000]
    assert one_slab["solved_in_one_program"] and one_slab["host_passes"] == 0
    assert one_slab["programs_first_fit"] == 1  # residuals, Newton loop and values + meat at θ̂ in one program
    assert not two_slabs["solved_in_one_program"] and two_slabs["host_passes"] == 6  # 5 Newton + values and meat
    assert two_slabs["programs_first_fit"] == 3  # residuals, Newton pass, values + meat at θ̂
    meta = cases["meta_analysis, k=2,728 (closed form)"]
    assert meta["median_s"] < 10 and meta["peak_rss_mb"] < 1024
