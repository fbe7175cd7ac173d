"""The ``mestim`` command line: one subcommand per analysis, each in ``estimators/commands/<name>.py``.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. Errors a user can fix
(:class:`~mestim.errors.MestimError`, a missing or unreadable file) print one readable line and exit 2; no
traceback. The executable (:func:`console`) exits without the interpreter's teardown (:func:`exit_now`). Compiled
code is cached on disk (:mod:`mestim.compile_cache`: ``$MESTIM_CACHE_DIR``, default ``~/.cache/mestim/jax``), so a
second run of the same analysis does not recompile.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import re
import sys
import warnings

COMMANDS = {
    "transport": "transport effects from a collection of trials to a target population (Dahabreh et al.)",
    "meta": "causal and classical meta-analysis of 2×2 tables (Berenfeld et al.)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mestim", description="M-estimation with sandwich variances, in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"estimators.commands.{name}")
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def attach_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--bias-grid -0.5,0,0.5`` as ``--bias-grid=-0.5,0,0.5``: argparse reads a value that starts with '-' as
    an option unless it is a plain number, so a list of numbers whose first is negative needs attaching."""
    takes_value = {opt for sub in _subparsers(parser) for action in sub._actions if action.nargs != 0
                   for opt in action.option_strings}
    out = []
    for token in argv:
        if out and out[-1] in takes_value and re.match(r"-[\d.]", token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _subparsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()


def print_warnings(command: str, caught, first=(), skip=()) -> None:
    """On stderr, each warning once: the lines ``first``, then every caught :class:`~mestim.MestimWarning` not in
    ``skip`` (as "mestim COMMAND: warning: …"), then other libraries' warnings (NumPy's, say), each distinct
    (category, message) once however often it was raised."""
    from mestim.errors import MestimWarning

    ours = [str(w.message) for w in caught if issubclass(w.category, MestimWarning) and str(w.message) not in skip]
    for message in dict.fromkeys([*first, *ours]):
        print(f"mestim {command}: warning: {message}", file=sys.stderr)
    others = {(w.category, str(w.message)): w for w in caught if not issubclass(w.category, MestimWarning)}
    for w in others.values():
        print(warnings.formatwarning(w.message, w.category, w.filename, w.lineno), file=sys.stderr, end="")


def main(argv=None) -> int:
    from mestim.errors import MestimError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(attach_negative_values(parser, argv))
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"estimators.commands.{args.command}")
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (MemoryError, RuntimeError) as e:
        # the size check before reading a file is an estimate: an analysis may still run out (XLA's out of
        # memory is a RuntimeError "RESOURCE_EXHAUSTED: ...")
        if isinstance(e, RuntimeError) and "RESOURCE_EXHAUSTED" not in str(e):
            raise
        from estimators.io import out_of_memory

        path = getattr(args, "data", None) or getattr(args, "tables", None) or "the bundled data"
        print(f"mestim {args.command}: error: {out_of_memory(str(path))}", file=sys.stderr)
        return 2
    except (MestimError, OSError) as e:
        print(f"mestim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def console() -> None:
    """The ``mestim`` executable (and ``python -m estimators.cli``): :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown: the exit handlers run (JAX's, a distributed
    run's shutdown, logging's) and the output streams are flushed, but the objects of every module (JAX's compiled
    programs and traced jaxprs, pandas') are not freed one by one. That teardown took 0.30–0.34 s after a cold
    `mestim transport` (0.05–0.06 s with this exit; `python -c "import jax"` itself spends 0.16–0.20 s on it). The
    commands close the files they write (``with`` blocks) before they return."""
    atexit._run_exitfuncs()  # what a normal exit runs first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that closed the pipe (`| head`), a closed stream: nothing to write
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
