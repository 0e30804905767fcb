# The two front-door commands: `make quickstart` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1

.PHONY: setup quickstart test lint bench clean

$(BIN)/searchprune: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

setup: $(BIN)/searchprune

quickstart: setup
	rm -rf runs/quickstart
	$(BIN)/searchprune run configs/quickstart.yaml --out runs/quickstart

test: setup
	$(BIN)/ruff check searchprune envs tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/eval_throughput.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
