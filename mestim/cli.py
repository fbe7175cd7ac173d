"""The ``mestim`` command line: one subcommand per analysis, each in ``estimators/commands/<name>.py``.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. Errors a user can fix
(:class:`~mestim.errors.MestimError`, a missing or unreadable file) print one readable line and exit 2; no
traceback. Compiled code is cached on disk (``$MESTIM_CACHE_DIR``, default ``~/.cache/mestim/jax``), so a
second run of the same analysis does not recompile.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "transport": "transport effects from a collection of trials to a target population (Dahabreh et al.)",
    "meta": "causal and classical meta-analysis of 2×2 tables (Berenfeld et al.)",
}


def enable_compilation_cache() -> None:
    import jax

    path = os.environ.get("MESTIM_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "mestim", "jax"))
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except OSError:  # a read-only home: run without the cache
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mestim", description="M-estimation with sandwich variances, in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"estimators.commands.{name}")
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None) -> int:
    from .errors import MestimError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    enable_compilation_cache()
    module = importlib.import_module(f"estimators.commands.{args.command}")
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (MestimError, OSError) as e:
        print(f"mestim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
