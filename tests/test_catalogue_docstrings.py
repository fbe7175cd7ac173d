"""The runnable examples in the catalogue's docstrings (module and functions) run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["estimators.survival", "estimators.dose_response", "estimators.measurement", "estimators.descriptive",
           "estimators.limited_outcome", "estimators.penalized", "estimators.quantile",
           "estimators.structural", "estimators.missing",
           "estimators.mixed_effects_meta"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
