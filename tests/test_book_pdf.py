"""The PDF check of `make pdf` (privlab.book.check_pdf): page count, blank pages, raw TeX.

`make pdf` builds and checks the real PDF; here the check itself is tested on small PDFs drawn
with matplotlib, so it can be trusted to fail. Skipped without poppler-utils (`make pdf-deps`).
"""

import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.backends.backend_pdf import PdfPages

from privlab.book import check_pdf

pytestmark = pytest.mark.skipif(shutil.which("pdftoppm") is None or shutil.which("pdfinfo") is None,
                                reason="poppler-utils not installed (make pdf-deps)")


def _pdf(path, pages):
    """A PDF with one A4 page per entry: None is a blank page, a string is text on the page."""
    with PdfPages(path) as pdf:
        for text in pages:
            fig = plt.figure(figsize=(8.27, 11.69))
            if text is not None:
                fig.text(0.1, 0.5, text, fontsize=40)
                fig.gca().plot([0, 1], [0, 1], linewidth=8)
            pdf.savefig(fig)
            plt.close(fig)
    return path


def test_a_good_pdf_passes(tmp_path):
    pdf = _pdf(tmp_path / "good.pdf", ["one", "two", "three", "four"])
    facts = check_pdf(pdf, min_pages=2, max_pages=10)
    assert facts["pages"] == 4 and {1, 4} <= set(facts["ink"])  # first, middle and last pages
    assert all((tmp_path / "pdf-pages" / f"page-{p:04d}.png").is_file() for p in facts["ink"])


def test_a_blank_page_fails(tmp_path):
    pdf = _pdf(tmp_path / "blank.pdf", ["one", "two", "three", None])
    with pytest.raises(AssertionError, match="page 4 is blank"):
        check_pdf(pdf, min_pages=2)


def test_an_implausible_page_count_fails(tmp_path):
    pdf = _pdf(tmp_path / "short.pdf", ["one"])
    with pytest.raises(AssertionError, match="1 pages, expected 12"):
        check_pdf(pdf, min_pages=12)


def test_raw_tex_fails(tmp_path):
    pdf = _pdf(tmp_path / "tex.pdf", ["ok", r"\varepsilon-DP"])
    with pytest.raises(AssertionError, match="raw TeX"):
        check_pdf(pdf, min_pages=1)
