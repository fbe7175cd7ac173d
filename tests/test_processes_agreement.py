"""Fits across two real processes (``jax.distributed`` on localhost) that must agree on everything (issue 16).

One launch of two processes runs every case of :data:`CASES` in order (a fit whose processes stop with an error
is followed by the next case, as in a job that catches it); each case gives the numbers of one in-memory fit of
all rows (θ 1e-10, SE 1e-8) or the same clear ``MestimError`` on both processes, within seconds (the processes
wait up to ``$MESTIM_PROCESS_TIMEOUT`` = 8 s for each other, so an error that did not reach a process would show
as a wait of 8 s and a "lost" message). Then both processes leave normally, through JAX's shutdown.

- constants learnt from the data (``center``/``scale``/``standardize``/``poly`` in formulas, a robust
  regression's κ), agreed across processes in ``fit`` and learnt by a learning pass in ``fit_stream``; those that
  are not sums over rows (``bs`` knots, ``scale="mad"``, ``smooth="auto"``) refused on every process;
- the fingerprint: a different ψ under the same name, two different lambdas, each fit option, weights or
  clusters on one process only, ``fit`` against ``fit_stream``; and its positive control, the same ψ under two
  names, which agrees;
- errors that reach everyone: zero rows, an empty mask, a NaN, a bad option, a stream's NaN, a source that changes
  in the middle of the fit, all on one process; a process that forgot ``devices="all"`` or gave a bad one;
  ``devices="local"``.
"""

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
import pandas as pd
import pytest

import estimators as est
import mestim
from mestim.scale import fit_stream

HERE = os.path.dirname(os.path.abspath(__file__))
SPLIT = 1100  # process 0 holds rows [0, 1100), process 1 the rest
TIMEOUT = 8  # $MESTIM_PROCESS_TIMEOUT of the launch
PROMPT = 6.0  # an error reaches the other process well within the timeout

WORKER = textwrap.dedent("""
    import json, sys, time
    import jax
    rank, port = int(sys.argv[1]), sys.argv[2]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=rank,
                               heartbeat_timeout_seconds=10)
    sys.path.insert(0, TESTS_DIR)
    import mestim, MODULE as cases
    for name, case in cases.CASES.items():
        start = time.monotonic()
        try:
            res = case(rank)
            out = dict(theta=res.theta.tolist(), se=res.se.tolist(), n_rows=res.n_rows)
        except Exception as e:
            out = dict(error=[c.__name__ for c in type(e).__mro__], message=str(e))
        out["seconds"] = time.monotonic() - start
        print("RESULT " + json.dumps(dict(out, case=name)), flush=True)
    print(f"DONE {time.time()}", flush=True)  # then JAX's own shutdown, as any script ends
""")


def data(n=2000, seed=5):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(3.0, 1.0, n), rng.normal(size=n)
    y = 1.0 + 0.5 * x1 - x2 + 0.3 * x1**2 + rng.standard_t(3, n)
    a = (rng.random(n) < 0.5).astype(float)
    return {"x1": x1 + 2.0 * (np.arange(n) >= SPLIT), "x2": x2, "y": y, "a": a, "w": rng.uniform(0.5, 2.0, n),
            "g": rng.integers(0, 30, n)}  # process 1's x1 is shifted: its own mean differs from the fit's


def part(rank, d=None):
    d = data() if d is None else d
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    return {k: v[rows] for k, v in d.items()}


def make_ate(version):
    """Two different ψ with the same name (and qualified name)."""
    def ate(t, row):
        return jnp.atleast_1d(row["a"] * row["y"] - t[0] if version == 1 else (1 - row["a"]) * row["y"] - t[0])
    return ate


def mean_of_y(t, row):
    return jnp.atleast_1d(row["y"] - t[0])


def average_y(t, row):  # the same computation as mean_of_y under another name
    return jnp.atleast_1d(row["y"] - t[0])


SCALED = "~ center(x1) + scale(x2) + standardize(x1):x2"
ROBUST = dict(name="r", y="y", X=["x1", "x2"])


def _fit(blocks, rows, **kw):
    return mestim.fit(blocks, rows, devices="all", **kw)


def _stream(blocks, rows, **kw):
    return fit_stream(blocks, rows, devices="all", batch_rows=300, **kw)


def _with(rank, change, rows=None):
    """Process 1's rows changed by ``change``."""
    rows = part(rank) if rows is None else rows
    return change(rows) if rank == 1 else rows


def _nan(rows):
    rows = dict(rows)
    rows["x2"] = rows["x2"].copy()
    rows["x2"][7] = np.nan
    return rows


def _changing(rows):
    """A source whose outcome changes from its third read on (pass 2: the first batch was read once before)."""
    frame, opened = pd.DataFrame(rows), []

    def chunks():
        opened.append(1)
        changed = frame if len(opened) < 3 else frame.assign(y=frame.y + 1.0)
        return (changed.iloc[a:a + 300] for a in range(0, len(changed), 300))
    return chunks


def _no_treated(rows):
    return dict(rows, a=np.zeros_like(rows["a"]))


# name → case(rank) -> Result; REFERENCE gives the in-memory fit a case must equal, ERRORS the error it must raise
CASES = {
    # 1. constants learnt from all rows
    "formula scaling (fit)": lambda r: _fit([est.linear("m", "y", formula=SCALED)], part(r), weights="w"),
    "formula scaling (stream)": lambda r: _stream([est.linear("m", "y", formula=SCALED)], part(r), weights="w"),
    "robust huber (fit)": lambda r: _fit([est.robust_regression(**ROBUST)], part(r)),
    "robust huber (stream)": lambda r: _stream([est.robust_regression(**ROBUST)], part(r)),
    "poly (fit)": lambda r: _fit([est.linear("m", "y", formula="~ poly(x1, 3) + x2")], part(r)),
    "bs refused": lambda r: _fit([est.linear("m", "y", formula="~ bs(x1, df=4)")], part(r)),
    "mad refused": lambda r: _fit([est.robust_regression(**ROBUST, scale="mad")], part(r)),
    "smooth auto refused": lambda r: _fit([mestim.Block("q", lambda t, row: 0.5 - 1.0 * (row["y"] <= t[0]),
                                                        init=[1.0], smooth="auto")], part(r)),
    # 2. the fingerprint
    "same name, other ψ": lambda r: _fit([mestim.Block("ate", make_ate(1 + r), init=[0.0])], part(r)),
    "two lambdas": lambda r: _fit([mestim.Block("m", (lambda t, row: row["y"] - t) if r == 0
                                                else (lambda t, row: 2 * row["y"] - t), init=[0.0])], part(r)),
    "same ψ, other name": lambda r: _fit([mestim.Block("m", mean_of_y if r == 0 else average_y, init=[0.0])],
                                         part(r), weights="w"),
    "weight_type on one": lambda r: _fit([mestim.Block("m", mean_of_y, init=[0.0])], part(r), weights="w",
                                         weight_type="sampling" if r else "frequency"),
    "weights on one": lambda r: _fit([mestim.Block("m", mean_of_y, init=[0.0])], part(r),
                                     weights="w" if r else None),
    "cluster on one": lambda r: _fit([mestim.Block("m", mean_of_y, init=[0.0])], part(r),
                                     cluster="g" if r else None),
    "solve on one": lambda r: _fit([est.linear("m", "y", ["x1"])], part(r), solve="joint" if r else "blockwise"),
    "xtol on one": lambda r: _fit([est.linear("m", "y", ["x1"])], part(r), xtol=1e-8 if r else 1e-10),
    "fit and fit_stream": lambda r: (_stream if r else _fit)([est.linear("m", "y", ["x1"])], part(r)),
    "a constant on one": lambda r: _fit([est.linear("m", "y", formula="~ x1" if r else "~ center(x1)")], part(r)),
    # 3. errors that reach everyone
    "zero rows on one": lambda r: _fit([est.linear("m", "y", ["x1"])],
                                       _with(r, lambda d: {k: v[:0] for k, v in d.items()})),
    "empty mask on one": lambda r: _fit([est.linear("m", "y", ["x1"], mask="a")], _with(r, _no_treated)),
    "NaN on one": lambda r: _fit([est.linear("m", "y", ["x1", "x2"])], _with(r, _nan)),
    "NaN in a stream on one": lambda r: _stream([est.linear("m", "y", ["x1", "x2"])], _with(r, _nan)),
    "source changes mid-fit on one": lambda r: _stream([est.linear("m", "y", ["x1"])],
                                                       _changing(part(r)) if r else part(r)),
    "bad option on one": lambda r: _fit([est.linear("m", "y", ["x1"])], part(r), max_iter=0 if r else 100),
    "forgot devices on one": lambda r: (mestim.fit if r else _fit)([est.linear("m", "y", ["x1"])], part(r)),
    "bad devices on one": lambda r: mestim.fit([est.linear("m", "y", ["x1"])], part(r),
                                               devices="everything" if r else "all"),
    "devices local": lambda r: mestim.fit([est.linear("m", "y", ["x1"])], part(r), devices="local"),
    "after the faults": lambda r: _fit([est.linear("m", "y", ["x1"])], part(r)),
}

REFERENCE = {  # case → the in-memory fit of all rows it must equal
    "formula scaling (fit)": lambda d: mestim.fit([est.linear("m", "y", formula=SCALED)], d, weights="w"),
    "formula scaling (stream)": lambda d: mestim.fit([est.linear("m", "y", formula=SCALED)], d, weights="w"),
    "robust huber (fit)": lambda d: mestim.fit([est.robust_regression(**ROBUST)], d),
    "poly (fit)": lambda d: mestim.fit([est.linear("m", "y", formula="~ poly(x1, 3) + x2")], d),
    "robust huber (stream)": lambda d: mestim.fit([est.robust_regression(**ROBUST)], d),
    "same ψ, other name": lambda d: mestim.fit([mestim.Block("m", mean_of_y, init=[0.0])], d, weights="w"),
    "after the faults": lambda d: mestim.fit([est.linear("m", "y", ["x1"])], d),
}

ERRORS = {  # case → (error class on both processes, words the message holds)
    "bs refused": ("SpecificationError", ["bs(x1, df=4)", "across processes", "knots=[…]"]),
    "mad refused": ("SpecificationError", ["scale='mad'", "give scale="]),
    "smooth auto refused": ("SpecificationError", ["smooth='auto'", "smooth=h"]),
    "same name, other ψ": ("DataError", ["ψ of block 'ate' (its traced computation)", "process(es) [1]"]),
    "two lambdas": ("DataError", ["ψ of block 'm' (its traced computation)"]),
    "weight_type on one": ("SpecificationError", ["option weight_type", '"sampling"']),
    "weights on one": ("SpecificationError", ["weights: process(es) [1] have \"column 'w'\""]),
    "cluster on one": ("SpecificationError", ["cluster: process(es) [1]"]),
    "solve on one": ("SpecificationError", ["option solve", "joint"]),
    "xtol on one": ("SpecificationError", ["option xtol"]),
    "fit and fit_stream": ("SpecificationError", ["entry point", "mestim.scale.fit_stream"]),
    "a constant on one": ("SpecificationError", ["not making the same fit", "the sums of the constant"]),
    "zero rows on one": ("DataError", ["no rows"]),
    "empty mask on one": ("DataError", ["block 'm' has no rows"]),
    "NaN in a stream on one": ("DataError", ["x2", "pass 1"]),
    "NaN on one": ("DataError", ["x2"]),
    "source changes mid-fit on one": ("DataError", ["pass 2", "the source changed since pass 1"]),
    "bad option on one": ("SpecificationError", ["max_iter=0"]),
    "forgot devices on one": ("SpecificationError", ["devices='all'", "devices='local'"]),
    "bad devices on one": ("SpecificationError", ["devices='everything'"]),
}
FAILING = {"zero rows on one", "source changes mid-fit on one", "empty mask on one", "NaN on one", "NaN in a stream on one", "bad option on one",
           "forgot devices on one", "bad devices on one"}  # process 1 fails; process 0 learns it from the posted error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(module: str, timeout=600) -> list[dict]:
    """Run ``module.CASES`` in two processes; per process: {case: result}, and the seconds from its last result
    to its exit."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", MESTIM_PROCESS_TIMEOUT=str(TIMEOUT), MESTIM_CACHE_DIR="off")
    code = WORKER.replace("TESTS_DIR", repr(HERE)).replace("MODULE", module)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", code, str(rank), port], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        ended = time.time()
        results = {}
        done = None
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                out = json.loads(line[7:])
                results[out.pop("case")] = out
            elif line.startswith("DONE "):
                done = float(line[5:])
        outs.append({"results": results, "exit_seconds": None if done is None else ended - done,
                     "returncode": p.returncode, "stderr": stderr[-3000:]})
    return outs


@pytest.fixture(scope="module")
def processes():
    return launch("test_processes_agreement")


def test_every_case_ran_on_both_processes(processes):
    for out in processes:
        assert set(out["results"]) == set(CASES), out["stderr"]


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_fits_equal_one_process_on_all_rows(processes, case):
    ref = REFERENCE[case](data())
    for out in processes:
        got = out["results"][case]
        assert "theta" in got, got
        np.testing.assert_allclose(got["theta"], ref.theta, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got["se"], ref.se, rtol=1e-8, atol=0)
        assert got["n_rows"] == 2000


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_faults_stop_every_process_promptly_with_the_reason(processes, case):
    kind, words = ERRORS[case]
    for rank, out in enumerate(processes):
        got = out["results"][case]
        assert kind in got.get("error", []), (rank, got)
        for word in words:
            assert word in got["message"], (rank, word, got["message"])
        assert got["seconds"] < PROMPT, (rank, got)  # not a wait for the timeout
        if case in FAILING and rank == 0:  # the error came from process 1
            assert "process 1 of 2 stopped the fit" in got["message"], got["message"]


def test_devices_local_fits_this_process_rows_alone(processes):
    for rank, out in enumerate(processes):
        ref = mestim.fit([est.linear("m", "y", ["x1"])], part(rank))
        got = out["results"]["devices local"]
        np.testing.assert_allclose(got["theta"], ref.theta, rtol=0, atol=1e-10)
        assert got["n_rows"] == ref.n_rows


def test_processes_leave_promptly_after_a_fault(processes):
    """No process waits in JAX's shutdown (a barrier of every process) for one still in a fit."""
    for out in processes:
        assert out["returncode"] == 0, out["stderr"]
        assert out["exit_seconds"] is not None and out["exit_seconds"] < 20, out
