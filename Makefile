# ood-companion: `make book` builds the book (default CPU profile), `make test` runs the tests.
# Both create/refresh the project's virtual environment .venv from requirements.txt first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= cpu
STAMP  := $(VENV)/.installed

.PHONY: book test bench venv clean-book gpu-bundle

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (or run make PYTHON=python3)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

book: $(STAMP)
	$(PY) tools/build_book.py --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest -ra

bench: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m ood_core bench

clean-book:
	rm -rf book/_build book/chapters
