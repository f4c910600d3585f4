# The README's two commands: `make demo` and `make test`. Both create .venv
# from nothing but python3 (3.11+) and what pyproject.toml declares.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench generated clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# compat mode: a .pth path entry, not an import hook that costs every
	# stemctl run ~14 ms at start-up
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: venv
	$(BIN)/python examples/demo.py

# The whole suite: unit, integration, slow stress tests and (where the machine
# can boot a container) the real-systemd tests.
test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: venv
	$(BIN)/python -m pytest -q -x -m 'not slow and not systemd'

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python -m compileall -q stem_core stemd  # stemctl must not compile at each run
	$(BIN)/python bench/run.py --nodes 10,100,1000 --out docs/performance.md --json bench/results.json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

generated: venv
	$(BIN)/python tools/generate.py
