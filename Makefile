# The two commands a new machine needs: `make demo` and `make test`.
# Both create .venv first (scripts/bootstrap.sh); `make check` adds lint and types.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test lint check demo proto clean

setup:
	@scripts/bootstrap.sh

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: test lint

demo: setup
	$(BIN)/python scripts/demo.py

proto: setup
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
