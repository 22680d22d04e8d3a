# keyrotor: `make run` serves it on this machine, `make test` checks everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages the tests need (installed only when running as root, e.g. on CI).
SYSTEM_PACKAGES := softhsm2 chromium chromium-driver

.PHONY: run test install system-deps lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/keyrotor dev

system-deps:
	@if [ -n "$(SYSTEM_PACKAGES)" ] && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# The suite, then the suite again with every test's store on PostgreSQL (when one is reachable
# on 127.0.0.1:5432, as on CI machines).
test: system-deps install lint typecheck
	$(BIN)/pytest
	@if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
	  echo "--- the suite again, on PostgreSQL (KEYROTOR_TEST_BACKEND=postgres)"; \
	  KEYROTOR_TEST_BACKEND=postgres $(BIN)/pytest -q; \
	else echo "--- no PostgreSQL on 127.0.0.1:5432: the PostgreSQL pass is skipped"; fi

bench: install
	$(BIN)/python bench/lifecycle.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
