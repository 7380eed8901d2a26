# obpipe: two commands on a fresh machine -- `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
# torch first, pinned: 2.13.0 is the CPU build available on these machines; an unpinned
# torch would pull a multi-GB CUDA build (see README, "Pinned versions").
TORCH   = torch==2.13.0
STAMP   = $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[test,dashboard]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/obpipe demo --dir demo

# -rs: the summary lists every skipped test and why (tests that need ../shared/data);
# whole files to the two workers, in collection order: tests/conftest.py starts the
# longest files first (LONG_FILES), so that none of them ends the run alone
XDIST   = -n 2 --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(VENV)/bin/ruff check obpipe tests benchmarks
	$(PY) -m pytest $(XDIST) -rs tests

# the suite without the end-to-end tests marked slow
test-fast: $(STAMP)
	$(PY) -m pytest $(XDIST) -rs -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check obpipe tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/simulate.py

clean:
	rm -rf demo .pytest_cache
