# `make demo` and `make test` set up .venv on first use (torch pins in constraints.txt).
# The demo installs hpatk alone; tests add the test extra and the example plugin in
# tests/plugin_pkg (test-only: it must not land in a user's environment).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -n 2

.PHONY: install install-test demo test test-fast lint bench docs clean

$(BIN)/hpatk: setup.py constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e .
	touch $(BIN)/hpatk

$(VENV)/.test-installed: $(BIN)/hpatk tests/plugin_pkg/pyproject.toml
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]' -e tests/plugin_pkg
	touch $@

$(VENV)/.docs-installed: $(BIN)/hpatk
	$(BIN)/python -m pip install -c constraints.txt -e '.[docs]'
	touch $@

install: $(BIN)/hpatk

install-test: $(VENV)/.test-installed

demo: install
	$(BIN)/hpatk demo --out demo-run

# test: everything (what CI runs), with the 25 slowest listed; test-fast: the inner loop,
# without the tests marked slow (end-to-end trainings, subprocess pipelines).
test: install-test
	$(BIN)/python -m pytest -c tests/pytest.ini $(PYTEST_ARGS) --durations=25 tests

test-fast: install-test
	$(BIN)/python -m pytest -c tests/pytest.ini $(PYTEST_ARGS) -m "not slow" tests

lint: install-test
	$(BIN)/ruff check --line-length 100 --select E,F,W,I,B,UP --target-version py310 core plugins cli export tests

bench: install-test
	for f in tests/benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

# The reference site into build/docs-site (offline; --strict: a broken link or reference
# fails). Built-in plugins only, so a locally installed plugin does not enter the pages.
docs: $(VENV)/.docs-installed
	HPATK_DISABLE_PLUGIN_AUTOLOAD=1 NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -f docs/mkdocs.yml

clean:
	rm -rf $(VENV) build *.egg-info demo-data demo-run
