# `make demo` and `make test` set up .venv on first use (torch pins in constraints.txt).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -n 2

.PHONY: install demo test lint bench clean

$(BIN)/hpatk: setup.py constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -c constraints.txt -e tests/plugin_pkg
	touch $(BIN)/hpatk

install: $(BIN)/hpatk

demo: install
	$(BIN)/hpatk demo --out demo-run

test: install
	$(BIN)/python -m pytest -c tests/pytest.ini $(PYTEST_ARGS) tests

lint: install
	$(BIN)/ruff check --line-length 100 --select E,F,W,I,B,UP --target-version py310 core plugins cli export tests

bench: install
	for f in tests/benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info demo-data demo-run
