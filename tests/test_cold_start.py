"""What a cold `mestim meta` loads (issue 19: ≤ 2.5× `python -c "import jax"`): no program compiled, none of the
heavy libraries it does not use, and not the solver's modules (it checks its closed form in NumPy)."""

import json
import os
import subprocess
import sys

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
