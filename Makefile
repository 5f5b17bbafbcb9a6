# ood-companion: `make book` builds the book (default CPU profile), `make test` runs the tests.
# Both create/refresh the project's virtual environment .venv from requirements.txt first.
# `make lab` opens the chapters in JupyterLab; `make screenshots` photographs the built book.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= cpu
# extra options for tools/build_book.py, e.g. BOOK_ARGS="--force" or BOOK_ARGS="--only 02 11"
BOOK_ARGS ?=
# extra options for JupyterLab, e.g. LAB_ARGS="--no-browser --port 8899"
LAB_ARGS ?=
STAMP  := $(VENV)/.installed

.PHONY: book test bench venv clean-book gpu-bundle lab screenshots

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (or run make PYTHON=python3)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

book: $(STAMP)
	$(PY) tools/build_book.py --profile $(PROFILE) $(BOOK_ARGS)

# JupyterLab on notebooks/: a double click opens a chapter (jupytext percent file) as a notebook.
# The default-viewer setting goes into this environment's own JupyterLab settings, not ~/.jupyter.
lab: $(STAMP)
	$(PY) -m jupytext_config --settings-file $(VENV)/share/jupyter/lab/settings/overrides.json set-default-viewer python
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks $(LAB_ARGS)

# Headless Chromium screenshots of the first pages a reader sees (skips with a message without Chromium).
screenshots: $(STAMP)
	$(PY) tools/screenshots.py

test: $(STAMP)
	$(PY) -m pytest -ra

bench: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m ood_core bench

# Removes the HTML, the stored chapter executions and their timings (artifacts/ stays).
clean-book:
	rm -rf book/_build book/chapters book/execution_stats.md
