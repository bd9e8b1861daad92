# The two commands (see README.md):
#   make serve   set up everything from a fresh clone and run the server on its default
#   make test    set up everything and run lint, types and the test suite
#
# Both create .venv with pinned packages. The tests also need Debian's redis-server,
# which `make test` installs with apt when it is missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SOURCES := pyproject.toml setup.py clients/python/pyproject.toml clients/python/setup.py \
	$(wildcard ext/*.pyx ext/*.pxd proto/optiserve/v1/*.proto)

.PHONY: serve test lint typecheck pytest setup system-deps node-deps clean

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The exact torch first, so nothing resolves a different (CUDA) build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# The client distribution first (it generates the protobuf stubs the server imports),
	# so the server's optiserve-client==0.1.0 is satisfied by this checkout's copy.
	$(BIN)/python -m pip install --quiet -e clients/python
	$(BIN)/python -m pip install --quiet -e '.[dev,quantize]'
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package) for the cache tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The Node.js client's test needs its npm packages (skipped where node is absent).
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
	  test -d clients/node/node_modules/@grpc/grpc-js || (cd clients/node && npm ci --silent --no-audit --no-fund); \
	fi

serve: $(STAMP)
	$(BIN)/optiserve serve $(if $(CONFIG),--config $(CONFIG),)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps node-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build server/optiserve/*.so \
	  clients/python/build clients/python/optiserve_client/v1/*_pb2*.py*
