"""Attributes of a package imported on first use (PEP 562): a command that needs a few of a package's modules does
not pay for importing all of them (``mestim meta`` imports 4 of the library's 20 modules and none of the solver's)."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, namespace: dict, where: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package`` whose attribute ``name`` is ``where[name]``'s attribute of that name
    (a module of the package), imported and kept in ``namespace`` (the package's globals) when first asked for."""

    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
