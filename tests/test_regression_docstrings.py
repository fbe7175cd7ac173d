"""The runnable examples in the docstrings of the registered estimators run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["estimators.generalized_linear", "estimators.causal", "estimators.instrumental", "estimators.robust",
           "estimators.fitted_model"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
