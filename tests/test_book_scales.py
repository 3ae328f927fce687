"""Each scale builds its own book: a smoke build followed by `make book` shows the book scale.

The bug this guards against (issue 22): `make test` built the book at smoke scale, then `make book`
reused Sphinx's pickled environment and served the smoke-scale pages as the book-scale book. The
test runs the real Makefile target on a tiny book (one chapter that prints the scale it ran at),
first at smoke scale, then at book scale, into a temporary folder, and reads both results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
URL = "https://github.com/example/tiny-privlab"

pytest.importorskip("jupyter_book")
pytest.importorskip("jupytext")

CONFIG = f"""\
title: tiny
author: tests
only_build_toc_files: true
execute:
  execute_notebooks: cache
  stderr_output: remove
  timeout: 120
repository:
  url: {URL}
html:
  use_repository_button: true
sphinx:
  extra_extensions: [privlab.book]
"""
TOC = "format: jb-book\nroot: intro\nchapters:\n  - file: chapters/99_scale\n"
INTRO = "# Tiny book\n\nA page that runs no code.\n"
CHAPTER = """\
---
jupytext:
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

# Scale

```{code-cell} ipython3
:tags: [remove-cell]

%s
```

```{code-cell} ipython3
from privlab.config import get_scale

print(f"scale: {get_scale().name}")
```

```{code-cell} ipython3
from privlab.plotting import figure, use_style

use_style()
fig, ax = figure(title="Tiny figure", xlabel="epsilon", ylabel="error")
ax.plot([1, 2], [2, 1], label="Laplace")
ax.legend();
```
"""
ALT = "Figure: Tiny figure. x axis: epsilon; y axis: error; series: Laplace."


def tiny_book(folder: Path) -> Path:
    """A book with one front page and one chapter printing its scale; returns its folder."""
    from privlab.book import INSTALL_CELL

    src = folder / "src"
    (src / "chapters").mkdir(parents=True)
    (src / "_config.yml").write_text(CONFIG)
    (src / "_toc.yml").write_text(TOC)
    (src / "intro.md").write_text(INTRO)
    (src / "chapters" / "99_scale.md").write_text(CHAPTER % INSTALL_CELL)
    return src


def make_book(src: Path, out: Path, scale: str) -> None:
    """`make book SCALE=scale` on the tiny book, with this interpreter, without reinstalling."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    drop = {"PRIVLAB_SCALE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}  # run under `make test` too
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PRIVLAB_SCALE"] = "smoke" if scale == "book" else "book"  # Make's SCALE must win
    cmd = ["make", "-C", str(ROOT), "-o", ".venv/.installed", "book", f"SCALE={scale}",
           f"BOOK_ROOT={src}", f"BOOK_OUT={out}", f"BIN={Path(sys.executable).parent}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def test_smoke_then_book_build_shows_the_book_scale(tmp_path):
    src = tiny_book(tmp_path)
    out = tmp_path / "out"
    make_book(src, out, "smoke")
    make_book(src, out, "book")
    for scale in ("smoke", "book"):
        page = (out / scale / "html" / "chapters" / "99_scale.html").read_text(encoding="utf-8")
        other = "book" if scale == "smoke" else "smoke"
        assert f"scale: {scale}" in page, f"the {scale} build does not show scale {scale}"
        assert f"scale: {other}" not in page, f"the {scale} build shows scale {other}"
        # the provenance note names the scale of the run that computed the numbers
        assert "privlab-provenance" in page and f"Scale: {scale}. Computed on" in page
        # the figure's alt text is its description (privlab.plotting.describe_figure)
        assert f'alt="{ALT}"' in page, "the figure has no alt text"
        assert (out / scale / ".jupyter_cache").is_dir() and (out / scale / ".doctrees").is_dir()
        assert len([p for p in (out / scale / ".jupyter_cache").iterdir() if p.is_dir()]) == 1  # per fingerprint
        ledger = json.loads((out / scale / "provenance.json").read_text())
        [record] = ledger["chapters/99_scale"].values()
        assert record["scale"] == scale
        front = (out / scale / "html" / "intro.html").read_text(encoding="utf-8")
        assert f"Scale: {scale}. This page runs no code" in front and "privlab-build" in front
        # the install cell of the downloadable notebook installs from the configured repository
        nb = (out / scale / "jupyter_execute" / "chapters" / "99_scale.ipynb").read_text()
        assert f"git+{URL}" in nb and "{{ repository_url }}" not in nb

    # Sphinx's doctrees gone, the outputs come from the jupyter-cache: the note still names the
    # run that computed them (from the provenance ledger), not this build.
    before = (out / "book" / "html" / "chapters" / "99_scale.html").read_text(encoding="utf-8")
    shutil.rmtree(out / "book" / ".doctrees")
    make_book(src, out, "book")
    after = (out / "book" / "html" / "chapters" / "99_scale.html").read_text(encoding="utf-8")
    note = before[before.index("privlab-provenance"):].split("</div>")[0]
    assert "Computed on" in note and note in after
    # the alt text travels with the cached output (the first real build lost it on cache hits)
    assert f'alt="{ALT}"' in after, "a figure rendered from the cache has no alt text"


# the tiny chapter with its scale cell replaced by one printing an environment variable
TOKEN_CHAPTER = CHAPTER.replace("# Scale", "# Token").replace(
    'from privlab.config import get_scale\n\nprint(f"scale: {get_scale().name}")',
    'import os\n\nprint("token:", os.environ.get("PRIVLAB_TOKEN"))',
)
assert "PRIVLAB_TOKEN" in TOKEN_CHAPTER


def test_nbval_outputs_serve_the_smoke_build_and_an_edit_misses(tmp_path, monkeypatch):
    """nbval's run fills the smoke book's jupyter-cache (privlab.nbcache): each chapter runs once in
    `make test`. The page shows the token of the nbval run, not of the build, with a provenance
    record; after an edit of the chapter's code the cache misses and the build executes it."""
    from privlab.book import INSTALL_CELL, to_notebooks

    src = tiny_book(tmp_path)
    chapter = src / "chapters" / "99_scale.md"
    chapter.write_text(TOKEN_CHAPTER % INSTALL_CELL)
    out = tmp_path / "out"
    monkeypatch.setenv("PRIVLAB_DATA", str(tmp_path / "data"))  # its results/ is part of the cache's key
    [notebook] = to_notebooks(tmp_path / "nb", root=src)
    env = {**os.environ, "PRIVLAB_SCALE": "smoke", "PRIVLAB_TOKEN": "from-nbval",
           "PRIVLAB_NBVAL_CACHE": str(out / "smoke"), "PRIVLAB_NBVAL_ROOT": str(src),
           "PYTHONHASHSEED": "0"}  # as the Makefile exports it to the build: part of the cache's key  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "privlab.nbcache", "-p", "no:cacheprovider",
                          "--nbval-lax", "--nbval-current-env", "-q", str(notebook)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "privlab.nbcache: 1 of 1 notebooks stored" in run.stdout

    monkeypatch.setenv("PRIVLAB_TOKEN", "from-build")
    make_book(src, out, "smoke")
    page = (out / "smoke" / "html" / "chapters" / "99_scale.html").read_text(encoding="utf-8")
    assert "token: from-nbval" in page and "token: from-build" not in page
    assert "Scale: smoke. Computed on" in page and "were not recorded" not in page
    [record] = json.loads((out / "smoke" / "provenance.json").read_text())["chapters/99_scale"].values()
    assert record["scale"] == "smoke" and record["runtime"] > 0

    # an input outside the chapter's code changes (here a recorded run the chapters could read; the
    # package's code and the thread count count alike): the old outputs are not shown again
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "data" / "results" / "run.json").write_text("{}")
    make_book(src, out, "smoke")
    page = (out / "smoke" / "html" / "chapters" / "99_scale.html").read_text(encoding="utf-8")
    assert "token: from-build" in page and "token: from-nbval" not in page

    monkeypatch.setenv("PRIVLAB_TOKEN", "from-a-later-build")
    chapter.write_text(chapter.read_text() + '\n```{code-cell} ipython3\nprint("edited")\n```\n')
    make_book(src, out, "smoke")
    page = (out / "smoke" / "html" / "chapters" / "99_scale.html").read_text(encoding="utf-8")
    assert "token: from-a-later-build" in page and "edited" in page


def test_nbcache_keeps_the_order_of_prints_and_displays_and_checks_the_scale(tmp_path, monkeypatch):
    """nbval merged every print of a cell into its first one (two labels above two tables, in the
    smoke book only); nbcache merges only neighbours. A cache folder of another scale than the one
    the chapters ran at is refused (its outputs would be rendered under the wrong scale)."""
    import nbformat

    from privlab import nbcache

    outs = [nbformat.v4.new_output("stream", name="stdout", text="blobs\n"),
            nbformat.v4.new_output("display_data", data={"text/plain": "t1"}),
            nbformat.v4.new_output("stream", name="stdout", text="CPS\n"),
            nbformat.v4.new_output("stream", name="stdout", text="x\rdone\n"),
            nbformat.v4.new_output("display_data", data={"text/plain": "t2"})]
    merged = nbcache.coalesce_adjacent_streams(outs)
    assert [o.get("text") or o["data"]["text/plain"] for o in merged] == ["blobs\n", "t1", "CPS\ndone\n", "t2"]

    monkeypatch.setenv("PRIVLAB_SCALE", "smoke")
    with pytest.raises(ValueError, match="is not the build folder of scale 'smoke'"):
        nbcache.store(tmp_path / "x.md", [], [], folder=tmp_path / "book", root=tmp_path, runtime=0.0)


CHANGING_CHAPTER = """---
jupytext:
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

# Results

```{code-cell} ipython3
from privlab.config import results_dir

print("recorded runs:", sorted(p.name for p in results_dir().iterdir()))
(results_dir() / "new_run.json").write_text("{}")  # an input changing while the chapters run
```
"""


def test_nbcache_stores_nothing_when_the_inputs_change_during_the_run(tmp_path, monkeypatch):
    """Outputs computed before a change to the package or the recorded runs would be stored under the
    new inputs' fingerprint (and served): the fingerprint is taken when the session starts."""
    from privlab.book import to_notebooks

    src = tiny_book(tmp_path)
    (src / "chapters" / "99_scale.md").write_text(CHANGING_CHAPTER)
    (tmp_path / "data" / "results").mkdir(parents=True)
    [notebook] = to_notebooks(tmp_path / "nb", root=src)
    env = {**os.environ, "PRIVLAB_SCALE": "smoke", "PRIVLAB_DATA": str(tmp_path / "data"),
           "PRIVLAB_NBVAL_CACHE": str(tmp_path / "out" / "smoke"), "PRIVLAB_NBVAL_ROOT": str(src)}  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "privlab.nbcache", "-p", "no:cacheprovider",
                          "--nbval-lax", "--nbval-current-env", "-q", str(notebook)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "nothing stored: the inputs changed during the run" in run.stdout


def test_the_book_cli_refuses_ignored_flags_and_stripped_assertions(monkeypatch, capsys):
    from privlab.book import main

    with pytest.raises(SystemExit):
        main(["--notebooks", "x", "--build", "html"])  # --notebooks was ignored silently
    assert "got --notebooks, --build" in capsys.readouterr().err
    monkeypatch.setenv("PYTHONOPTIMIZE", "1")
    with pytest.raises(SystemExit):
        main(["--build", "html"])
    assert "strip every assertion cell" in capsys.readouterr().err
