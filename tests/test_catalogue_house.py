"""House rules the catalogue relies on: a Result pickles; importing mestim changes JAX's configuration only as
the README says; no module is shadowed by the function it defines; the catalogue's ψ run the same eagerly, under
jit (chex variants) and vmapped over data sets (mestim.pure)."""

import importlib
import json
import os
import pickle
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

import estimators as est
import mestim
from mestim.errors import SpecificationError
from mestim.pure import fit_function, prepare_columns, stack_columns

TIMES = np.array([1, 2, 3, 4, 5, 1, 1, 2, 2.5, 3, 4, 5])
EVENTS = np.array([1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0.])


def _stack(what=("survival", "rmst")):
    model = est.parametric_survival("wb", "t", "delta")
    return [model, est.survival_predictions("p", model, [2.0, 4.0], what=what)]


def test_a_result_pickles_without_its_data():
    res = mestim.fit(_stack(), {"t": TIMES, "delta": EVENTS})
    res.influence()  # available on the fitted result
    back = pickle.loads(pickle.dumps(res))
    np.testing.assert_array_equal(back.theta, res.theta)
    np.testing.assert_array_equal(back.vcov, res.vcov)
    assert back.labels == res.labels and back.status == res.status and back.blocks == res.blocks
    assert back.summary() == res.summary()
    with pytest.raises(SpecificationError, match="unpickled"):
        back.influence()


PROBE = """
import json, jax
keys = [k for k in jax.config.values if not k.startswith("jax_pmap")]
before = {k: repr(jax.config.values[k]) for k in keys}
import mestim, estimators
print(json.dumps(sorted(k for k in keys if repr(jax.config.values[k]) != before[k])))
"""


CACHE_SETTINGS = {"jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes"}


@pytest.mark.parametrize("cache", ["off", "on"])
def test_import_changes_only_x64_and_the_cache(tmp_path, cache):
    """x64 always (mestim computes in float64); the cache settings unless MESTIM_CACHE_DIR=off (README)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["MESTIM_CACHE_DIR"] = "off" if cache == "off" else str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    changed = set(json.loads(out.stdout.strip().splitlines()[-1]))
    if cache == "off":
        assert changed == {"jax_enable_x64"}
    else:
        assert "jax_enable_x64" in changed and "jax_compilation_cache_dir" in changed
        assert changed <= {"jax_enable_x64"} | CACHE_SETTINGS


@pytest.mark.parametrize("module", ["mestim.compilation_count", "estimators.generalized_linear",
                                    "estimators.instrumental", "estimators.survival", "estimators.dose_response",
                                    "estimators.measurement", "estimators.descriptive", "estimators.limited_outcome",
                                    "estimators.penalized", "estimators.quantile", "estimators.structural",
                                    "estimators.missing", "estimators.mixed_effects_meta", "estimators.options"])
def test_no_module_is_shadowed_by_a_function(module):
    parent, _, name = module.rpartition(".")
    imported = importlib.import_module(module)  # first: the packages import their modules lazily (on first use)
    assert getattr(importlib.import_module(parent), name) is imported


OURS = ("mestim", "estimators", "benchmarks")


def _private_uses(path):
    """(line, name) of each private name (``_x``, not dunder) a file imports from, or reads off, a module of ours."""
    import ast

    tree = ast.parse(open(path, encoding="utf-8").read())
    ours = lambda module, level: level > 0 or (module or "").split(".")[0] in OURS  # noqa: E731
    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {a.asname or a.name.split(".")[0] for n in imports if isinstance(n, ast.Import) for a in n.names
               if ours(a.name, 0)}
    modules |= {a.asname or a.name for n in imports if isinstance(n, ast.ImportFrom) and ours(n.module, n.level)
                for a in n.names}
    out = [(n.lineno, a.name) for n in imports if isinstance(n, ast.ImportFrom) and ours(n.module, n.level)
           for a in n.names if private(a.name)]
    out += [(n.lineno, f"{n.value.id}.{n.attr}") for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id in modules and private(n.attr)]
    return out


def test_no_private_name_is_used_across_files():
    """Issue 18: a name another file needs is public (no ``from x import _y``, no ``module._y``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = {}
    for package in OURS:
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    uses = _private_uses(path)
                    if uses:
                        found[os.path.relpath(path, root)] = uses
    assert not found, found


class TestPureUnderJitAndVmap(chex.TestCase):
    """mestim.pure's fit of a catalogue stack (a hazard model and predictions read from it) eagerly and under jit
    (chex variants), and vmapped over bootstrap weights, against mestim.fit."""

    STACK = staticmethod(lambda: _stack(("survival", "hazard")))

    @chex.variants(with_jit=True, without_jit=True)
    def test_pure_fit_matches_fit(self):
        data = {"t": TIMES, "delta": EVENTS}
        columns, f, _ = fit_function(self.STACK(), data)
        out = self.variant(f)(columns, np.ones(TIMES.size))
        res = mestim.fit(self.STACK(), data)
        assert bool(out.converged)
        np.testing.assert_allclose(out.theta, res.theta, rtol=1e-9)
        np.testing.assert_allclose(np.sqrt(np.diag(out.vcov)), res.se, rtol=1e-8)

    def test_vmap_over_bootstrap_weights_matches_weighted_fits(self):
        data = {"t": TIMES, "delta": EVENTS}
        columns, f, _ = fit_function(self.STACK(), data)
        weights = np.random.default_rng(0).poisson(1.0, (3, TIMES.size)) + 1.0
        batch = jax.vmap(f, in_axes=(None, 0))(columns, weights)
        for k, w in enumerate(weights):
            np.testing.assert_allclose(batch.theta[k], mestim.fit(self.STACK(), data, weights=w).theta, rtol=1e-8)
