"""One consistent look for the book's figures, and small helpers the chapters share.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig, ax = figure(title="t", xlabel="x", ylabel="y")
>>> ax.get_title()
't'
"""

from __future__ import annotations

import matplotlib.pyplot as plt

#: Colours by role, so the same method has the same colour in every chapter.
COLORS = {
    "laplace": "#1f77b4",
    "gaussian": "#d62728",
    "analytic": "#2ca02c",
    "classic": "#ff7f0e",
    "exponential": "#9467bd",
    "rr": "#8c564b",
    "baseline": "#7f7f7f",
}

STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "font.size": 10,
}


def use_style() -> None:
    """Apply the book's matplotlib style (call once at the top of a chapter)."""
    plt.rcParams.update(STYLE)


def figure(*, title: str, xlabel: str, ylabel: str, ncols: int = 1, figsize=None):
    """A figure with titled, labelled axes; returns ``(fig, ax)`` (``ax`` an array if ``ncols > 1``)."""
    fig, axes = plt.subplots(1, ncols, figsize=figsize, constrained_layout=True)
    for ax in [axes] if ncols == 1 else axes:
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    return fig, axes
