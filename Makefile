# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.diffes-installed

.PHONY: demo test lint install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffes search --config configs/demo.toml --name demo-$$(date +%Y%m%d-%H%M%S)

lint: $(STAMP)
	$(BIN)/ruff check diffes tests benchmarks scripts
	$(BIN)/ruff format --check diffes tests benchmarks scripts
	$(BIN)/mypy diffes

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build *.egg-info runs out
