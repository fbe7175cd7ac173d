"""What every plot of the library shares: readable log axes and a forest plot's column of numbers."""

from __future__ import annotations

import math
import os


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed: every plot of the library is a file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | None) -> None:
    """Write ``fig`` to ``path`` (its folder made if missing; 120 dpi) and release it; nothing when ``path`` is None
    (the caller keeps the figure)."""
    if path is None:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def number(x: float) -> str:
    """Three significant digits, trailing zeros kept (2.80, not 2.8; 100, not 100.)."""
    return f"{x:#.3g}".rstrip(".").replace(".e", "e")


def interval(estimate: float, low: float, high: float) -> str:
    """'2.80 (2.51, 3.08)'."""
    return f"{number(estimate)} ({number(low)}, {number(high)})"


def readable_log_axis(axis, lo: float, hi: float) -> None:
    """Ticks of a log axis spanning [lo, hi] as plain numbers (0.5, 1, 2 — not 10^k) at a density that keeps
    the labels apart: 1-2-5 per decade over up to two decades, finer within one, decades only beyond four."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = ((1.0,) if decades > 4 else (1.0, 3.0) if decades > 2 else (1.0, 2.0, 5.0) if decades > 0.7
            else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
    axis.set_major_locator(LogLocator(base=10.0, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
    axis.set_minor_formatter(NullFormatter())


def numbers_column(ax, ys, texts, header: str, colors=None, fontsize: float = 8) -> None:
    """A column of numbers right of the axes (as metafor's forest plot): ``texts[i]`` at data height ``ys[i]``,
    under ``header``; the figure's right margin must leave room (``fig.subplots_adjust(right=…)``)."""
    from matplotlib.transforms import blended_transform_factory

    where = blended_transform_factory(ax.transAxes, ax.transData)
    for i, (y, text) in enumerate(zip(ys, texts)):
        ax.text(1.03, y, text, transform=where, va="center", ha="left", fontsize=fontsize, family="monospace",
                color=None if colors is None else colors[i])
    ax.text(1.03, 1.0, header, transform=ax.transAxes, va="bottom", ha="left", fontsize=fontsize, weight="bold")
