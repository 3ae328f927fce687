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
    """Apply the book's matplotlib style (call once at the top of a chapter).

    Inside IPython it also describes every figure (:func:`describe_figure`): as its plain-text
    form, and as the ``alt`` entry of its PNG output's metadata, which myst-nb turns into the
    ``<img>``'s alt text (the metadata travels with the output, so a cached build keeps it too).
    """
    plt.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the book, not the package
        return
    shell = get_ipython()
    if shell is not None:
        import matplotlib
        from matplotlib.figure import Figure

        # Load the backend now: loading Jupyter's inline backend drops every figure formatter
        # (IPython's select_figure_formats), which would drop this one at the first figure.
        plt.switch_backend(matplotlib.get_backend())

        formatters = shell.display_formatter.formatters
        formatters["text/plain"].for_type(
            Figure, lambda fig, printer, cycle: printer.text(describe_figure(fig)))
        png = formatters["image/png"]
        try:
            to_png = png.lookup_by_type(Figure)
        except KeyError:  # figures are not shown as PNG in this shell
            return
        if not getattr(to_png, "privlab_alt", False):
            png.for_type(Figure, _with_alt(to_png))


def _with_alt(to_png):
    """Wrap IPython's PNG formatter: ``(png, {"alt": description})`` (IPython's data + metadata)."""

    def formatter(fig):
        data = to_png(fig)
        if data is None or isinstance(data, tuple):
            return data
        return data, {"alt": describe_figure(fig)}

    formatter.privlab_alt = True
    return formatter


def _clean(text: str) -> str:
    return " ".join(text.replace("$", "").replace("\\", "").split())


def describe_figure(fig) -> str:
    """A plain-language description of a figure from its own texts: the alt text of its image.

    Names the title, each panel's title, axis labels (with log scales) and legend entries, so a
    reader who cannot see the image learns what is plotted against what.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig, ax = figure(title="Error against epsilon", xlabel="epsilon", ylabel="error")
    >>> _ = ax.plot([1, 2], [3, 4], label="Laplace"); ax.set_xscale("log"); _ = ax.legend()
    >>> describe_figure(fig)
    'Figure: Error against epsilon. x axis: epsilon (log scale); y axis: error; series: Laplace.'
    """
    panels = [ax for ax in fig.get_axes() if ax.get_visible() and ax.get_label() != "<colorbar>"]
    parts = []
    suptitle = fig.get_suptitle()
    if suptitle.strip():
        parts.append(_clean(suptitle) + ".")
    for i, ax in enumerate(panels):
        bits = []
        for name, label, scale in (("x", ax.get_xlabel(), ax.get_xscale()), ("y", ax.get_ylabel(), ax.get_yscale())):
            if label.strip():
                bits.append(f"{name} axis: {_clean(label)}" + (f" ({scale} scale)" if scale != "linear" else ""))
        legend = ax.get_legend()
        labels = [_clean(t.get_text()) for t in legend.get_texts()] if legend is not None else []
        if labels:
            bits.append("series: " + ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else ""))
        if ax.images:
            bits.append("a heat map")
        title = _clean(ax.get_title())
        head = (f"Panel {i + 1}" + (f", {title}" if title else "")) if len(panels) > 1 else title
        text = "; ".join(bits)
        parts.append(f"{head}. {text}." if head and text else f"{head or text}.")
    body = " ".join(p for p in parts if p.strip(". "))
    return "Figure: " + (body or f"{len(panels)} panel(s), no labels.")


def figure(*, title: str, xlabel: str, ylabel: str, ncols: int = 1, figsize=None):
    """A figure with titled, labelled axes; returns ``(fig, ax)`` (``ax`` an array if ``ncols > 1``)."""
    fig, axes = plt.subplots(1, ncols, figsize=figsize, constrained_layout=True)
    for ax in [axes] if ncols == 1 else axes:
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    return fig, axes
