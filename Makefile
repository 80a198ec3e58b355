# The two commands a new machine needs: `make demo` and `make test`.
# Both create .venv first (scripts/bootstrap.sh); `make test` also builds the pinned Kubernetes
# control plane and SPIRE once (`make k8s-binaries`, `make spire`); `make check` adds lint and types.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup k8s-binaries spire test lint check demo controlplane proto clean

setup:
	@scripts/bootstrap.sh

# The pinned Kubernetes control plane, built from Go modules once (scripts/k8s_binaries.sh).
# Without Go (exit 3) the Kubernetes tests skip, except under CI=true, where this fails.
k8s-binaries:
	@scripts/k8s_binaries.sh >/dev/null || { rc=$$?; [ $$rc -eq 3 ] && [ "$${CI:-}" != true ] || exit $$rc; }

test: setup k8s-binaries spire
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: test lint

demo: setup
	$(BIN)/python scripts/demo.py

# A real control plane with herald's CRDs and RBAC, until Ctrl-C (docs/testing.md).
controlplane: setup k8s-binaries
	$(BIN)/python -m tests.k8s.controlplane up

proto: setup
	$(BIN)/python scripts/gen_proto.py

# spire-server and spire-agent for the interop tests and bench/vs_spire.py, built once into
# ${HERALD_SPIRE_CACHE:-~/.cache/herald/spire}/<version>/bin (about 5 min cold on 2 cores).
# Without Go (exit 3) the tests that need SPIRE skip, except under CI=true, where this fails.
spire:
	@scripts/build_spire.sh >/dev/null || { rc=$$?; [ $$rc -eq 3 ] && [ "$${CI:-}" != true ] || exit $$rc; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
