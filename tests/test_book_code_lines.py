"""Code in the chapters fits the book's text column: every line of a code cell is at most 88
characters (the column holds about 93 at 1280 pixels with book/_static/privlab.css; black's
default is 88). Cells tagged ``remove-cell`` or ``remove-input`` are not shown and not checked."""

import re

import pytest

from privlab.book import chapter_files

MAX = 88
CHAPTERS = chapter_files()
CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.M | re.S)


def long_lines(text: str) -> list[tuple[int, int, str]]:
    """``(line number, length, line)`` of every shown code-cell line longer than MAX."""
    found = []
    for match in CELL.finditer(text):
        body = match.group(1)
        head = re.match(r"(?::[a-z_]+:[^\n]*\n)+", body)
        if head and re.search(r"remove-(cell|input)", head.group(0)):
            continue
        first = text.count("\n", 0, match.start(1)) + 1
        for offset, line in enumerate(body.split("\n")):
            if len(line) > MAX:
                found.append((first + offset, len(line), line))
    return found


def test_long_lines_are_found():
    text = "```{code-cell} ipython3\nx = 1\n" + "y" * 89 + "\n```\n"
    assert long_lines(text) == [(3, 89, "y" * 89)]
    hidden = "```{code-cell} ipython3\n:tags: [remove-cell]\n\n" + "y" * 89 + "\n```\n"
    assert long_lines(hidden) == []


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_code_lines_fit_the_column(path):
    found = long_lines(path.read_text(encoding="utf-8"))
    report = f"{path.name}: {len(found)} code lines over {MAX} characters:\n" + "\n".join(
        f"  line {n} ({length} chars): {line.strip()[:90]}" for n, length, line in found)
    assert not found, report
