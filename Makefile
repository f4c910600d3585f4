# The README's two commands: `make demo` and `make test`. Both create .venv
# from nothing but python3 (3.11+) and what pyproject.toml declares.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := pip --disable-pip-version-check

# `make dist` and `make install` (docs/deployment.md §1). BINDIR must be on the init
# script's PATH (contrib/init.d: /usr/local/sbin:/usr/local/bin:...) and systemd's.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
DIST    ?= dist
WHEEL   := $(DIST)/stemd-$(VERSION)-py3-none-any.whl
PREFIX  ?= /opt/stemd
BINDIR  ?= /usr/local/bin

.PHONY: venv demo test test-fast lint bench generated clean dist install

venv: $(STAMP)

# The editable install is a plain .pth path entry, not an import hook that costs every
# stemctl run ~14 ms at start-up: pyproject.toml's package-dir makes setuptools choose it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) install --quiet --upgrade pip
	$(BIN)/$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/python examples/demo.py

# The whole suite: unit, integration, slow stress tests and (where the machine
# can boot a container) the real-systemd tests.
test: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: venv
	$(BIN)/python -m pytest -q -x -m 'not slow and not systemd'

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: venv
	$(BIN)/python -m compileall -q stem_core stemd  # stemctl must not compile at each run
	$(BIN)/python bench/run.py --nodes 10,100,1000 --out docs/performance.md --json bench/results.json

# A wheel and an sdist of this checkout; the wheel is built from the sdist, which
# proves the sdist complete. Older stemd builds are removed so the wheel is the only one.
dist: venv
	rm -f $(DIST)/stemd-*.whl $(DIST)/stemd-*.tar.gz
	$(BIN)/python -m build --outdir $(DIST) .
	@ls $(DIST)/stemd-$(VERSION)*

# The install docs/deployment.md §1 describes: a venv of its own in PREFIX (its
# dependencies from PyPI), stemd and stemctl linked into BINDIR. Re-runnable: a
# rebuilt wheel of the same version replaces the installed one.
install: dist
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/$(PIP) install --quiet --force-reinstall $(WHEEL)
	install -d $(BINDIR)
	ln -sf $(abspath $(PREFIX))/bin/stemd $(abspath $(PREFIX))/bin/stemctl $(BINDIR)/

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info

generated: venv
	$(BIN)/python tools/generate.py
