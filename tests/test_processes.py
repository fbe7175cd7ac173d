"""Fits across two real processes on localhost (``jax.distributed``, CPU) equal one process on all rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

import estimators as est
import mestim

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = textwrap.dedent("""
    import json, os, sys, time
    import jax
    rank, port, case = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=rank,
                               heartbeat_timeout_seconds=10)
    import numpy as np, mestim
    import jax.experimental.multihost_utils
    sys.path.insert(0, TESTS_DIR)
    from test_processes import categorical_stack, data, iv_stack, stack
    d = data()
    half = slice(0, 1100) if rank == 0 else slice(1100, None)  # unequal parts
    mine = {k: v[half] for k, v in d.items()}
    if case == "died" and rank == 1:
        os._exit(0)  # this process dies before the fit
    covariates = ["x1", "x2"] if case != "mismatch" or rank == 0 else ["x1"]
    blocks = categorical_stack() if case == "levels" else stack(covariates)
    start = time.monotonic()
    try:
        if case == "stream":  # each process streams its own rows in batches
            from mestim.scale import fit_stream
            res = fit_stream(blocks, mine, devices="all", weights="w", batch_rows=300)
        elif case == "gmm":  # the 2SLS first step sums Σ w z zᵀ over the processes
            res = mestim.fit(iv_stack(), mine, devices="all", weights="w", gmm="two-step")
        else:
            res = mestim.fit(blocks, mine, devices="all", weights="w", cluster="g" if case == "cluster" else None)
        out = dict(theta=res.theta.tolist(), vcov=res.vcov.tolist(), n_rows=res.n_rows, n=res.n,
                   n_clusters=res.n_clusters)
    except mestim.MestimError as e:
        out = dict(error=type(e).__name__, message=str(e), seconds=time.monotonic() - start)
    print("RESULT " + json.dumps(out), flush=True)
    if case != "died":  # everyone has printed before process 0 (the coordinator) leaves
        jax.experimental.multihost_utils.sync_global_devices("printed")
    os._exit(0)  # skip JAX's shutdown barrier (it waits out the heartbeat when a peer is gone)
""")


def data(n=2000, seed=11):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    y = 1.0 + 0.5 * x1 - x2 + rng.normal(size=n)
    a = (rng.random(n) < 1 / (1 + np.exp(-(0.2 + x1)))).astype(float)
    site = np.where(np.arange(n) < 1100, rng.choice(["north", "south"], n), rng.choice(["east", "north"], n))
    grade = np.where(np.arange(n) < 1100, rng.integers(0, 2, n), rng.integers(1, 3, n)).astype(float)
    return {"x1": x1, "x2": x2, "y": y, "a": a, "w": rng.uniform(0.5, 2.0, n), "g": rng.integers(0, 40, n),
            "site": site, "grade": grade}  # each process lacks a site and a grade the other has


def categorical_stack():
    return [est.linear("out", "y", formula="~ x1 + C(site)"), est.multinomial("grade", "grade", ["x1"])]


def _effect(t, row, out, ps):
    """A user block reading two registered blocks (whose starting values come from each process's rows)."""
    e = 1 / (1 + jnp.exp(-(ps[0] + ps[1] * row["x1"])))
    return (row["a"] / e - (1 - row["a"]) / (1 - e)) * (row["y"] - out[0]) - t


def iv_stack():
    return [est.iv("iv", "y", "a", ["x1", "x2"])]


def stack(covariates):
    return [est.linear("out", "y", covariates), est.logistic("ps", "a", ["x1"]),
            mestim.Block("effect", _effect, init=[0.0], reads=("out", "ps"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(case: str, timeout=240) -> list[dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", MESTIM_PROCESS_TIMEOUT="8", MESTIM_CACHE_DIR="off")
    port, code = str(_free_port()), WORKER.replace("TESTS_DIR", repr(HERE))
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(rank), port, case], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
        outs.append(json.loads(line[7:]) if line else
                    {"crashed": stderr[-3000:], "returncode": p.returncode, "seconds": time.monotonic() - start})
    return outs


@pytest.fixture(scope="module")
def one_process():
    return mestim.fit(stack(["x1", "x2"]), data(), weights="w")


def test_two_processes_equal_one_process(one_process):
    for out in _two_processes("equal"):
        assert "theta" in out, out
        np.testing.assert_allclose(out["theta"], one_process.theta, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["vcov"], one_process.vcov, rtol=1e-8, atol=1e-8 * np.abs(one_process.vcov).max())
        assert out["n_rows"] == 2000 and out["n"] == pytest.approx(one_process.n, rel=1e-12)


def test_two_processes_streaming_their_own_rows_equal_one_process(one_process):
    for out in _two_processes("stream"):
        assert "theta" in out, out
        np.testing.assert_allclose(out["theta"], one_process.theta, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["vcov"], one_process.vcov, rtol=1e-8, atol=1e-8 * np.abs(one_process.vcov).max())
        assert out["n_rows"] == 2000 and out["n"] == pytest.approx(one_process.n, rel=1e-12)


def test_categories_and_classes_are_agreed_across_processes():
    ref = mestim.fit(categorical_stack(), data(), weights="w")
    for out in _two_processes("levels"):
        assert "theta" in out, out
        np.testing.assert_allclose(out["theta"], ref.theta, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["vcov"], ref.vcov, rtol=1e-8, atol=1e-8 * np.abs(ref.vcov).max())


def test_two_processes_two_step_gmm_equal_one_process():
    ref = mestim.fit(iv_stack(), data(), weights="w", gmm="two-step")
    for out in _two_processes("gmm"):
        assert "theta" in out, out
        np.testing.assert_allclose(out["theta"], ref.theta, rtol=0, atol=1e-9)
        np.testing.assert_allclose(out["vcov"], ref.vcov, rtol=1e-8, atol=1e-8 * np.abs(ref.vcov).max())


def test_two_processes_clustered_equal_one_process():
    ref = mestim.fit(stack(["x1", "x2"]), data(), weights="w", cluster="g")
    for out in _two_processes("cluster"):
        assert "theta" in out, out
        np.testing.assert_allclose(out["vcov"], ref.vcov, rtol=1e-8, atol=1e-8 * np.abs(ref.vcov).max())
        assert out["n_clusters"] == 40


def test_processes_fitting_different_stacks_stop_loudly():
    for out in _two_processes("mismatch"):
        assert out.get("error") == "DataError", out
        assert "prepared different stacks" in out["message"] and "labels" in out["message"]


def test_a_process_that_sends_nothing_ends_the_fit_with_a_clear_error(monkeypatch):
    """The exchange's own deadline (a process alive but stuck): a MestimError naming the silent process."""
    from mestim import processes

    class Silent:  # the runtime client of a job whose process 1 never sends its sums
        def key_value_set_bytes(self, key, value):
            pass

        def blocking_key_value_get_bytes(self, key, timeout_ms):
            raise RuntimeError(f"DEADLINE_EXCEEDED after {timeout_ms} ms")

    group = processes.Group.__new__(processes.Group)
    group.client, group.rank, group.size, group.prefix = Silent(), 0, 2, "mestim/test"
    group.timeout, group._step, group._mine = 0.5, 0, []
    with pytest.raises(mestim.MestimError, match=r"process 1 of 2 did not send its sums of pass 3 within 0.5 s"):
        group.allgather(b"x", "its sums of pass 3")


def test_a_dead_process_ends_the_others_promptly():
    """JAX's coordination service notices a dead process and stops the others with its own message."""
    survivor, _ = _two_processes("died")
    assert survivor.get("returncode") not in (None, 0), survivor
    assert "another task died" in survivor["crashed"] or "did not send" in survivor.get("message", "")
    assert survivor["seconds"] < 60


def test_agreed_levels_keep_values_as_designs_see_them():
    """pd.NA is missing, not a level '<NA>'; an object column of integers keeps 1, 2 (not '1', '2', which would
    match no row); the union over processes is taken."""
    import pandas as pd

    from mestim.processes import agree_levels

    class TwoProcesses:  # this process's levels and another's
        def allgather_json(self, local, what):
            return [local, {"site": ["c"], "mixed": [3]}]

    cols = {"site": pd.Series(["a", None, "b"], dtype="string").to_numpy(),
            "mixed": np.array([1, 2, 2], dtype=object)}
    assert agree_levels(TwoProcesses(), cols) == {"site": ["a", "b", "c"], "mixed": [1, 2, 3]}
