"""What a cold `mestim meta` loads (issue 19: ≤ 2.5× `python -c "import jax"`): no program compiled, none of the
heavy libraries it does not use, and not the solver's modules (it checks its closed form in NumPy); what a cold
`mestim transport` compiles (≤ 4×): two programs, side by side."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import io, json, sys
from contextlib import redirect_stdout
import mestim
from estimators.cli import main
with mestim.compilations() as count, redirect_stdout(io.StringIO()):
    code = main(["meta", "--quiet"])
print(json.dumps({"exit": code, "programs": count.programs, "modules": sorted(sys.modules)}))
"""


def test_mestim_meta_compiles_nothing_and_imports_only_what_it_uses(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, MESTIM_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = json.loads(out.stdout.strip().splitlines()[-1])
    assert run["exit"] == 0 and run["programs"] == 0
    loaded = set(run["modules"])
    unused = {"statsmodels", "matplotlib", "flwr", "formulaic", "scipy.stats", "scipy.optimize", "mestim.estimate",
              "mestim.sums", "estimators.regression", "estimators.survival", "estimators.transport"}
    assert not unused & loaded, sorted(unused & loaded)


def test_the_chi2_tail_in_closed_form_equals_scipy():
    """Wald tests' p-values without scipy (0.15–0.18 s to import): equal to scipy.special.chdtrc to 1e-11 relative,
    from the centre to tails of 1e-200, for df up to 1,000; 1 at x ≤ 0, 0 at ∞."""
    from scipy.special import chdtrc

    from mestim.results import chi2_upper

    for df in [*range(1, 40), 99, 100, 1000]:
        for x in np.concatenate([np.geomspace(1e-10, 4000, 200), [df - 0.5, df]]):
            expected = chdtrc(df, x)
            if expected > 1e-200:
                assert chi2_upper(float(x), df) == pytest.approx(expected, rel=1e-11), (df, x)
    assert chi2_upper(0.0, 3) == 1.0 and chi2_upper(float("inf"), 2) == 0.0 and np.isnan(chi2_upper(float("nan"), 1))


FIT = """
import json, sys
import numpy as np
import mestim
from estimators import logistic
rng = np.random.default_rng(0)
x = rng.standard_normal(500)
res = mestim.fit([logistic("m", "y", ["x"])], {"x": x, "y": (rng.random(500) < 1 / (1 + np.exp(-x))).astype(float)})
print(json.dumps({"p": res.wald_test(np.array([[0.0, 1.0]])).p_value, "scipy": "scipy" in sys.modules}))
"""


def test_a_logistic_fit_and_its_wald_test_import_no_scipy(tmp_path):
    """A registered logistic block (its start and checks use the host logit and expit) and a Wald test need no
    scipy: `mestim transport` starts 0.15–0.18 s sooner."""
    env = dict(os.environ, PYTHONPATH=ROOT, MESTIM_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", FIT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = json.loads(out.stdout.strip().splitlines()[-1])
    assert not run["scipy"] and 0 <= run["p"] < 1e-6


TRANSPORT = """
import io, json, time
from contextlib import redirect_stdout
import jax.monitoring
import mestim
from estimators.cli import main
ends = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, fun_name="?", **_: ends.append((fun_name, time.perf_counter() - seconds, time.perf_counter()))
    if event == "/jax/core/compile/backend_compile_duration" else None)
with mestim.compilations() as count, redirect_stdout(io.StringIO()):
    code = main(["transport", "--quiet"])
print(json.dumps({"exit": code, "names": count.names, "compiled": ends}))
"""


def test_mestim_transport_compiles_its_read_out_beside_the_stack_program(tmp_path):
    """A cold `mestim transport` compiles two programs, the stack's and the read-out of the fit, and the read-out
    compiles while the stack's program does (mestim.ahead): it starts before the stack's compilation ends."""
    env = dict(os.environ, PYTHONPATH=ROOT, MESTIM_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", TRANSPORT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = json.loads(out.stdout.strip().splitlines()[-1])
    assert run["exit"] == 0 and sorted(run["names"]) == ["jit(_read_fit)", "jit(_slab_sums)"]
    spans = {name: (start, end) for name, start, end in run["compiled"]}
    assert spans["jit(_read_fit)"][0] < spans["jit(_slab_sums)"][1], spans
