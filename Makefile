# privlab: two commands do all the set-up.
#   make book   install everything into .venv and build the HTML book (book scale)
#   make test   install everything into .venv and run every test (smoke scale)
#   make lab    JupyterLab with jupytext: the .md chapters open as notebooks

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NBDIR  := build/notebooks
SCALE  ?= book

export PYTHONHASHSEED := 0

.PHONY: book test lab notebooks venv clean help

help:
	@echo "make book   install into $(VENV) and build the HTML book (PRIVLAB_SCALE=$(SCALE))"
	@echo "make test   install into $(VENV) and run unit tests, doctests and nbval (smoke scale)"
	@echo "make lab    JupyterLab with jupytext"
	@echo "make clean  remove build outputs (keeps $(VENV) and cached data)"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[book,dev]'
	touch $(STAMP)

book: $(STAMP)
	@# jupyter-cache keys on notebook content only: drop it when the scale changes
	@mkdir -p book/_build
	@if [ "$$(cat book/_build/.scale 2>/dev/null)" != "$(SCALE)" ]; then rm -rf book/_build/.jupyter_cache; fi
	@echo $(SCALE) > book/_build/.scale
	PRIVLAB_SCALE=$(SCALE) $(BIN)/jupyter-book build . --path-output book -W --keep-going --builder html
	@echo "The book is at: $(CURDIR)/book/_build/html/index.html"

# jupytext turns every chapter listed in _toc.yml into a notebook under build/ (never committed);
# one pytest run then executes unit tests, doctests and every notebook (nbval) at smoke scale.
notebooks: $(STAMP)
	$(BIN)/python -m privlab.book --notebooks $(NBDIR)

test: notebooks
	PRIVLAB_SCALE=smoke $(BIN)/python -m pytest tests src/privlab $(NBDIR) \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -q

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.contents_manager_class=jupytext.TextFileContentsManager

clean:
	rm -rf _build book/_build build
