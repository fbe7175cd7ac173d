"""Subcommands of the ``mestim`` command line (see :mod:`mestim.cli`)."""
