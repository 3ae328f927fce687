"""Every chapter in _toc.yml has the parts the house style promises a reader and a teacher."""

import re
from pathlib import Path

import pytest

from privlab.book import chapter_files

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = chapter_files(ROOT)


def test_the_toc_lists_every_chapter_file():
    on_disk = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))
    assert sorted(CHAPTERS) == on_disk


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_label_exercises_solutions_and_install_cell(path):
    text = path.read_text(encoding="utf-8")
    assert re.search(r"^\(ch-[a-z-]+\)=\n\n# ", text, re.M), "a (ch-...)= label right above the title"
    tail = text[text.index("\n## Exercises"):]
    assert "{dropdown}" in tail, "solutions in a dropdown after the exercises"
    first_cell = text[text.index("```{code-cell}"):]
    assert first_cell.split("```", 2)[1].count("%pip install") == 1, "the first cell installs privlab on Colab"
