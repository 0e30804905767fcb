# The two front-door commands: `make quickstart` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1

.PHONY: setup quickstart test test-fast lint bench docs clean

$(BIN)/searchprune: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

setup: $(BIN)/searchprune

quickstart: setup
	rm -rf runs/quickstart
	$(BIN)/searchprune run configs/quickstart.yaml --out runs/quickstart

# Two workers (one per core); the Ray tests share one of them (xdist_group "ray"), in
# turn, so that no two Ray clusters run at once, and are collected first, so that the
# other worker runs the rest meanwhile.
RAY_TESTS := tests/test_ray.py tests/test_ray_cluster.py tests/test_ray_searchers.py

test: setup
	$(BIN)/ruff check searchprune envs tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2 --dist loadgroup --durations=15 $(RAY_TESTS) tests

# The suite without the end-to-end tests marked slow (Ray clusters, killed runs, AMC on
# Ray, large zoo models): about a minute once the built-in models are cached.
test-fast: setup
	$(BIN)/ruff check searchprune envs tests benchmarks
	$(BIN)/pytest -q -n 2 --dist loadgroup -m "not slow" $(RAY_TESTS) tests

bench: setup
	$(BIN)/python benchmarks/eval_throughput.py

# docs/config.md from the config's pydantic field descriptions (tests/test_docs.py checks it).
docs: setup
	$(BIN)/python -m searchprune.docgen

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
