"""Every public callable has a runnable example in its own docstring, and the examples run and print what they say.

The public API: ``mestim.__all__``, ``estimators.__all__``, ``estimators.transport.__all__`` and the engine entry
points the README documents (streaming, the bootstrap, the pure fit, federated fits). Exception classes need no
example. The examples of callables defined in the modules that test_catalogue_docstrings.py and
test_regression_docstrings.py run with ``doctest.testmod`` (module and functions) are run there, not again here.
"""

import doctest
import importlib
import inspect

import pytest

import estimators
import estimators.transport
import mestim
from test_catalogue_docstrings import MODULES as CATALOGUE_MODULES
from test_regression_docstrings import MODULES as REGRESSION_MODULES

README_ENTRY_POINTS = ["mestim.scale.fit_stream", "mestim.bootstrap.bootstrap", "mestim.pure.fit_function",
                       "mestim.federated.simulate", "mestim.federated.fit", "mestim.federated.Estimator",
                       "estimators.transport.federated.transport_estimator"]
RUN_ELSEWHERE = set(CATALOGUE_MODULES) | set(REGRESSION_MODULES)


def _resolve(qualified: str):
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def public_callables() -> dict:
    """qualified name → object, for every public callable but the exception classes (and constants)."""
    found = {}
    for package in (mestim, estimators, estimators.transport):
        for name in package.__all__:
            obj = getattr(package, name)
            if callable(obj) and not (inspect.isclass(obj) and issubclass(obj, BaseException)):
                found[f"{package.__name__}.{name}"] = obj
    found.update({name: _resolve(name) for name in README_ENTRY_POINTS})
    return found


PUBLIC = public_callables()


def test_the_public_api_is_enumerated():
    assert len(PUBLIC) >= 65 and "mestim.fit" in PUBLIC and "estimators.transport.transport" in PUBLIC
    assert "mestim.MestimError" not in PUBLIC and "estimators.transport.ESTIMATORS" not in PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_has_an_example(name):
    assert ">>>" in (PUBLIC[name].__doc__ or ""), f"{name}: give its docstring a runnable example (>>>)"


def test_examples_run():
    """All the examples in one process (they share compiled programs); each in fresh globals."""
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    ran = 0
    for name, obj in sorted(PUBLIC.items()):
        if obj.__module__ in RUN_ELSEWHERE:
            continue
        for test in finder.find(obj, name, globs={}):
            ran += runner.run(test).attempted
    result = runner.summarize(verbose=False)
    assert ran > 0 and result.failed == 0, f"{result.failed} of {result.attempted} examples failed (output above)"
