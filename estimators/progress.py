"""Signs of life on stderr for work that can take more than a few seconds: a tqdm bar over an analysis's stages.

``progress``: True (always), False (never) or None (only when stderr is a terminal: never in a pipe, a log
file or a test). The command line passes None, or False with ``--quiet``; Python functions default to False,
as :func:`mestim.scale.fit_stream` does.
"""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def stages(desc: str, names, progress: bool | None = False):
    """A bar over ``names`` (the stages, in order); yields ``step(name)``, called as each stage starts: the bar
    shows that stage's name and counts the stages finished. Removed from the terminal when the work ends."""
    from tqdm import tqdm

    names = list(names)
    bar = tqdm(total=len(names), desc=desc, file=sys.stderr, leave=False,
               disable=None if progress is None else not progress,  # None: tqdm's "only on a terminal"
               bar_format="{desc}: {n_fmt}/{total_fmt} stages [{elapsed}]{postfix}")
    started = []

    def step(name: str) -> None:
        if started:
            bar.update(1)
        started.append(name)
        bar.set_postfix_str(name)

    try:
        yield step
        bar.update(len(names) - bar.n)
    finally:
        bar.close()
