"""``privlab.book.glue`` writes exactly what ``myst_nb.glue`` writes (it only skips the imports)."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("myst_nb")


def _captured(monkeypatch, glue_call):
    import IPython.display

    import myst_nb.ext.glue as myst_glue

    calls = []

    def fake_display(*args, **kwargs):
        calls.append((args, kwargs))

    monkeypatch.setattr(IPython.display, "display", fake_display)
    monkeypatch.setattr(myst_glue, "ipy_display", fake_display)
    glue_call()
    return calls


@pytest.mark.parametrize("value", [3, 0.125, "1.5%", [1, 2], pd.DataFrame({"a": [1, 2]})])
@pytest.mark.parametrize("display", [True, False])
def test_glue_matches_myst_nb(monkeypatch, value, display):
    import myst_nb

    from privlab.book import glue

    ours = _captured(monkeypatch, lambda: glue("x", value, display=display))
    theirs = _captured(monkeypatch, lambda: myst_nb.glue("x", value, display=display))
    assert ours == theirs and len(ours) == 1
    (_, kwargs) = ours[0]
    assert kwargs["metadata"]["scrapbook"]["name"] == "x" and kwargs["raw"] is True


def test_importing_privlab_book_leaves_myst_nb_and_nbformat_out():
    """Every chapter's kernel imports privlab.book for ``glue``: myst-nb (about 0.5 s) and nbformat
    load only when the book's build asks for the renderer (entry point ``privlab.book:AltTextRenderer``)."""
    import subprocess
    import sys

    code = ("import sys, privlab.book as b; print(sorted({'myst_nb', 'nbformat', 'jsonschema'} & set(sys.modules)));"
            "r = b.AltTextRenderer; print(r.__module__, r.__qualname__, r.__mro__[1].__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "privlab.book AltTextRenderer myst_nb.core.render"]


def test_the_renderer_entry_point_loads_privlabs_renderer():
    from importlib.metadata import entry_points

    import privlab.book

    (entry,) = [e for e in entry_points(group="myst_nb.renderers") if e.name == "privlab"]
    assert entry.load() is privlab.book.AltTextRenderer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        privlab.book.nope  # noqa: B018
