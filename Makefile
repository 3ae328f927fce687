# privlab: two commands do all the set-up.
#   make book   install everything into .venv and build the HTML book (book scale)
#   make test   install everything into .venv and run every test (smoke scale), then check-book
#   make lab    JupyterLab with jupytext: the .md chapters open as notebooks
#   make check-book  build the book at smoke scale and check every page in headless Chromium
#   make pdf    the whole book as one PDF (book scale; SCALE=smoke for a quick one)
# Each scale builds into book/_build/<scale>/ (html/, singlehtml/, privlab.pdf).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NBDIR  := build/notebooks
SCALE  ?= book

export PYTHONHASHSEED := 0

.PHONY: book test lab notebooks venv clean help browser-deps pdf-deps check-book mathjax pdf

help:
	@echo "make book   install into $(VENV) and build the HTML book (PRIVLAB_SCALE=$(SCALE))"
	@echo "make test   install into $(VENV); unit tests, doctests, nbval, assignments (smoke scale), then check-book"
	@echo "make lab    JupyterLab with jupytext"
	@echo "make check-book  build the book (smoke scale) and check every page in headless Chromium"
	@echo "make pdf    the whole book as one checked PDF, book/_build/$(SCALE)/privlab.pdf (SCALE=$(SCALE))"
	@echo "make browser-deps  apt-get install Debian's chromium and chromium-driver (for check-book)"
	@echo "make mathjax  re-vendor MathJax $(MATHJAX_VERSION) into $(MATHJAX_DIR) from the npm registry"
	@echo "make clean  remove build outputs (keeps $(VENV) and cached data)"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[book,dev]'
	touch $(STAMP)

# Each scale builds into its own folder, book/_build/<scale>/ (html/, singlehtml/, its own
# jupyter-cache, executed notebooks, doctrees and provenance ledger): a smoke build is never
# served as the book-scale one. BOOK_ROOT/BOOK_OUT let tests/test_book_scales.py build a tiny book.
BOOK_ROOT ?= .
BOOK_OUT  ?= book/_build
BOOK_HTML  = $(BOOK_OUT)/$(SCALE)/html

book: $(STAMP)
	$(BIN)/python -m privlab.book --build html --scale $(SCALE) --root $(BOOK_ROOT) --out $(BOOK_OUT)

# jupytext turns every chapter listed in _toc.yml into a notebook under build/ (never committed);
# one pytest run then executes unit tests, doctests and every notebook (nbval) at smoke scale.
notebooks: $(STAMP)
	$(BIN)/python -m privlab.book --notebooks $(NBDIR)

# `make test` = the pytest suite, then the rendered book in a real browser (check-book). pdf-deps:
# poppler-utils, so tests/test_book_pdf.py checks the PDF checker. Each chapter runs once: the
# privlab.nbcache plugin stores every chapter whose cells all passed under nbval in the smoke
# book's jupyter-cache, and check-book's build renders those outputs (a chapter that failed, or
# whose code changed since, is executed by the build itself).
# TEST_WORKERS: pytest-xdist processes (one per core, at most 4); each test file (each chapter)
# runs whole in one worker (--dist loadfile), so a chapter's cells keep their order and kernel.
# One thread per process (OMP_NUM_THREADS, inherited by nbval kernels, Flower's processes and
# Otter's kernels; chapters read it through privlab.config.set_torch_threads): one worker per
# core already fills the cores, and two chapters at two OpenMP threads each on two cores slow
# each other several-fold. xdist hands out files in collection order (--no-loadscope-reorder; its
# default sorts files by number of tests), and tests/conftest.py puts the slowest files first, so
# a long one started last does not leave the other worker idle at the end.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
test: notebooks pdf-deps
	PRIVLAB_SCALE=smoke PRIVLAB_NBVAL_CACHE=$(abspath $(BOOK_OUT))/smoke OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	    $(BIN)/python -m pytest $(NBDIR) tests src/privlab --ignore=tests/browser \
	    -p privlab.nbcache --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -q \
	    -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
	$(MAKE) check-book

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.contents_manager_class=jupytext.TextFileContentsManager

# Debian's chromium and its chromedriver, for the browser check and the PDF; poppler-utils
# (pdfinfo, pdftoppm, pdftotext) to check the PDF. apt-get only what is missing (sudo when not root).
BROWSER_PKGS := chromium chromium-driver
PDF_PKGS     := poppler-utils
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
define apt_install
	@if [ "$$(dpkg-query -W -f='$${db:Status-Status}\n' $(1) 2>/dev/null | grep -c '^installed$$')" = $(words $(1)) ]; then \
	    echo "$(1): already installed"; \
	else \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(1); \
	fi
endef

browser-deps:
	$(call apt_install,$(BROWSER_PKGS))

pdf-deps:
	$(call apt_install,$(PDF_PKGS))

# MathJax served with the book (no CDN: the book reads offline and CI reaches no CDN). The copy
# under book/_static/mathjax is committed; `make mathjax` re-vendors it from the npm registry.
MATHJAX_VERSION := 3.2.2
MATHJAX_DIR     := book/_static/mathjax
MATHJAX_TMP     := build/mathjax

mathjax:
	rm -rf $(MATHJAX_DIR) $(MATHJAX_TMP)
	$(MAKE) $(MATHJAX_DIR)/tex-mml-chtml.js

$(MATHJAX_DIR)/tex-mml-chtml.js:
	rm -rf $(MATHJAX_TMP) && mkdir -p $(MATHJAX_TMP) $(MATHJAX_DIR)/output/chtml/fonts $(MATHJAX_DIR)/input/tex
	cd $(MATHJAX_TMP) && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	tar -xzf $(MATHJAX_TMP)/mathjax-$(MATHJAX_VERSION).tgz -C $(MATHJAX_TMP)
	cp $(MATHJAX_TMP)/package/LICENSE $(MATHJAX_DIR)/LICENSE
	cp -r $(MATHJAX_TMP)/package/es5/output/chtml/fonts/woff-v2 $(MATHJAX_DIR)/output/chtml/fonts/
	cp -r $(MATHJAX_TMP)/package/es5/input/tex/extensions $(MATHJAX_DIR)/input/tex/
	cp $(MATHJAX_TMP)/package/es5/tex-mml-chtml.js $(MATHJAX_DIR)/tex-mml-chtml.js
	rm -rf $(MATHJAX_TMP)

# The rendered book in a real browser: build at smoke scale (same cache rules as `make book`),
# then open every page in headless Chromium (tests/browser). Screenshots: book/_build/smoke/screenshots/.
# One thread, as `make test` runs the chapters: the thread count is part of the jupyter-cache's key
# (privlab.book.inputs_fingerprint), so the smoke build renders the outputs nbval just checked.
check-book: browser-deps $(MATHJAX_DIR)/tex-mml-chtml.js
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(MAKE) book SCALE=smoke
	PRIVLAB_REQUIRE_BROWSER=1 PRIVLAB_BOOK_HTML=$(abspath $(BOOK_OUT))/smoke/html PRIVLAB_BOOK_SCALE=smoke \
	    $(BIN)/python -m pytest tests/browser -q -rfEs

# The whole book as one PDF, offline: the single-page HTML build (sharing the scale's jupyter-cache
# with `make book`, so chapters already executed are not run again), printed by headless Chromium
# once MathJax has typeset, then checked: page count, pages rendered to PNG by pdftoppm and not
# blank, no raw TeX. Output: book/_build/$(SCALE)/privlab.pdf and pdf-pages/*.png.
pdf: $(STAMP) browser-deps pdf-deps $(MATHJAX_DIR)/tex-mml-chtml.js
	$(BIN)/python -m privlab.book --pdf --scale $(SCALE) --root $(BOOK_ROOT) --out $(BOOK_OUT)

clean:
	rm -rf _build book/_build build
