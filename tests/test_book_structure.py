"""Every chapter in _toc.yml has the parts the house style promises a reader and a teacher."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from privlab.book import INSTALL_CELL, REPOSITORY_TOKEN, chapter_files, repository_url

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = chapter_files(ROOT)


def test_the_toc_lists_every_chapter_file():
    on_disk = sorted((ROOT / "chapters").glob("[0-9][0-9]*_*.md"))
    assert sorted(CHAPTERS) == on_disk


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_label_exercises_solutions_and_install_cell(path):
    text = path.read_text(encoding="utf-8")
    assert re.search(r"^\(ch-[a-z-]+\)=\n\n# ", text, re.M), "a (ch-...)= label right above the title"
    tail = text[text.index("\n## Exercises"):]
    assert "{dropdown}" in tail, "solutions in a dropdown after the exercises"
    first_cell = text[text.index("```{code-cell}"):]
    assert first_cell.split("```", 2)[1].count("%pip install") == 1, "the first cell installs privlab on Colab"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_install_cell_is_the_common_one(path):
    """Every chapter's first code cell is privlab.book.INSTALL_CELL: it installs from the
    repository set in _config.yml (the build fills in the token), never from a typed URL."""
    text = path.read_text(encoding="utf-8")
    first_cell = text[text.index("```{code-cell}"):].split("```", 2)[1]
    body = first_cell.split("\n", 1)[1]  # after the ``{code-cell} ipython3`` line
    body = re.sub(r"\A:tags: \[[^\]]*\]\n\n", "", body)
    assert body.strip("\n") == INSTALL_CELL


def test_repository_url_is_set_once():
    """The repository URL is typed only in _config.yml; everything else reads it from there."""
    url = repository_url(ROOT)
    assert url.startswith("https://") and REPOSITORY_TOKEN not in url
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                           check=True).stdout.split()
    typed = []
    for name in files:
        path = ROOT / name
        if name == "_config.yml" or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            if url in path.read_text(encoding="utf-8"):
                typed.append(name)
        except UnicodeDecodeError:
            continue
    assert not typed, f"{url} is typed in {typed}: read it with privlab.book.repository_url()"


def test_fix_install_cell_rewrites_only_that_cell(tmp_path):
    from privlab.book import fix_install_cell

    old = ("```{code-cell} ipython3\n:tags: [remove-cell]\n\ntry:\n    import privlab\nexcept ImportError:\n"
           '    %pip install "privlab @ git+https://example.org/x"\n```\n')
    rest = "\nText.\n\n```{code-cell} ipython3\nx = 1\n```\n"
    path = tmp_path / "99_x.md"
    path.write_text("# Title\n\n" + old + rest)
    assert fix_install_cell(path)
    text = path.read_text()
    assert text == "# Title\n\n```{code-cell} ipython3\n:tags: [remove-cell]\n\n" + INSTALL_CELL + "\n```\n" + rest
    assert not fix_install_cell(path)
