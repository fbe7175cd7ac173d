"""Subcommands of the ``mestim`` command line (see :mod:`estimators.cli`)."""
