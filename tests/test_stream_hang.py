"""No hangs in vmapped fits: a batch of transport fits (``mestim.pure.fit_function`` under ``jax.vmap``) must end.

Cause (found with gdb on a 2-core machine, jaxlib 0.10.2): jaxlib's CPU LAPACK kernels (``lapack_dgetrf_ffi``,
``lapack_dtrsm_ffi``) split a batched factorisation over XLA's intra-op thread pool with ``ParallelBatchMap`` and
block the calling pool thread on a counter until the parts are done. Two such kernels running at once on a
two-thread pool leave no thread to run the parts: every XLA thread waits, 0% CPU, forever. Before the fix, the
slow case below hung in 3 of 3 runs and the short case in 1 of 3. Fix: the traced solver and the pure fit's
sandwich do their small linear algebra without LAPACK (:mod:`mestim.linalg`), so a vmapped fit calls no batched
LAPACK kernel. Each case runs in a subprocess with a timeout, so a hang fails the test instead of stalling the
suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BATCH = textwrap.dedent("""
    import os, sys, time
    import mestim
    import jax, jax.numpy as jnp, numpy as np
    from estimators.transport import simulate_trials
    from estimators.transport.api import transport_stack
    from mestim.pure import fit_function, prepare_columns, stack_columns
    n_trial, n_target, replicates, runs = (int(a) for a in sys.argv[1:5])
    estimators = sys.argv[5].split(",")
    kw = dict(covariates=["X1", "X2", "X3"], participation="multinomial", estimators=estimators)
    data = lambda seed: simulate_trials(n_trials=4, n_per_trial=n_trial, n_target=n_target, seed=seed).data
    stack = transport_stack(data(5000), **kw)
    _, f, problem = fit_function(stack.blocks, stack.data_for_fit)
    n = n_trial * 4 + n_target
    solve = jax.jit(jax.vmap(lambda c: f(c, jnp.ones(n))))
    cols = stack_columns([prepare_columns(problem, transport_stack(data(5000 + r), **kw).data_for_fit)
                          for r in range(replicates)])
    for _ in range(runs):
        out = jax.block_until_ready(solve(cols))
    print(int(np.sum(out.converged)), flush=True)
""")


def _run_batch(n_trial, n_target, replicates, runs, estimators, timeout):
    args = [str(a) for a in (n_trial, n_target, replicates, runs)] + [",".join(estimators)]
    env = {k: v for k, v in os.environ.items() if k != "NPROC"}
    env["PYTHONPATH"] = ROOT
    try:
        out = subprocess.run([sys.executable, "-c", _BATCH, *args], capture_output=True, text=True,
                             timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{replicates} vmapped transport fits did not end within {timeout} s: the XLA CPU runtime hung "
                    "(every thread waiting in jaxlib's batched LAPACK kernels); see this module's docstring")
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.split()[-1])


def test_vmapped_transport_batch_ends():
    """Small trials (4 × 60, target 240), 50 replicates, three runs of the compiled batch."""
    assert _run_batch(60, 240, 50, 3, ["weighting", "outcome", "dr"], timeout=240) >= 45


@pytest.mark.slow
def test_vmapped_transport_batch_of_100_ends():
    """The case that hung in 3 of 3 runs without the workaround: 4 trials × 500, target 2000, 100 replicates."""
    assert _run_batch(500, 2000, 100, 2, ["weighting", "outcome", "dr"], timeout=600) >= 95
