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
