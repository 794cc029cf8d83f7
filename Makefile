# `make run` starts the service with embedded defaults; `make test` runs the whole suite.
# Both create .venv and install what they need first. `make bench` runs the benchmark
# (bench/bench.py, needs wrk; BENCH_ARGS passes flags, e.g. BENCH_ARGS="--duration 5").

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000

NODE_TOOLS := tests/js/node_modules/.installed

.PHONY: run test test-lowest system-deps bench cluster lint format clean client-size

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	INNGEST_DEV=$${INNGEST_DEV:-1} $(BIN)/flask --app wsgi run --host $(HOST) --port $(PORT)

# The integration tests run real nginx, Chromium and PgBouncer from Debian's packages.
system-deps:
	@missing=""; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/sbin/pgbouncer ] || missing="$$missing pgbouncer"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing$$missing from Debian's packages for the integration tests"; \
	    apt-get update -qq; \
	    for package in $$missing; do \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$package || exit 1; \
	    done; \
	  else \
	    echo "NOTE:$$missing not installed, and this cannot install it (needs root and apt-get):"; \
	    echo "      the nginx, browser and PgBouncer tests will fail until it is (apt-get install$$missing)."; \
	  fi; \
	fi

# terser and TypeScript, for the browser client's size and types (tests/test_client_build.py),
# from the npm registry at the versions tests/js/package-lock.json pins.
$(NODE_TOOLS): tests/js/package.json tests/js/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed for the browser client's checks (apt-get install npm)"; exit 1; }
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

test: $(VENV)/.dev system-deps $(NODE_TOOLS)
	@if [ -z "$$TEST_DATABASE_URL" ]; then \
	  echo "NOTE: TEST_DATABASE_URL is not set: the PostgreSQL variants of the outbox and users tests will be skipped."; \
	  echo "      Set it (e.g. postgresql://postgres@127.0.0.1:5432/test) to run them."; \
	fi
	@if [ -z "$$TEST_REDIS_URL" ]; then \
	  echo "NOTE: TEST_REDIS_URL is not set: the Redis variants of the rate-limit tests will be skipped."; \
	  echo "      Set it (e.g. redis://127.0.0.1:6379/1) to run them."; \
	fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-lowest

# The extension's tests (tests/extension) once more, against the built wheel installed into
# .venv-lowest at the lowest supported versions (requirements-lowest.txt). The wheel is built
# from a copy, so that the checkout gets no build/ or egg-info; the checkout is on that
# environment's path after site-packages (a .pth file), for tests/ only.
LOWEST := .venv-lowest

$(LOWEST)/.installed: requirements-lowest.txt
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-lowest.txt
	echo "$(CURDIR)" > "$$($(LOWEST)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/zz-checkout-tests.pth"
	touch $@

test-lowest: $(VENV)/.dev $(LOWEST)/.installed
	rm -rf $(LOWEST)/src $(LOWEST)/dist
	mkdir -p $(LOWEST)/src
	cp -R setup.cfg pyproject.toml README.md inngest_gateway $(LOWEST)/src/
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation --no-index --wheel-dir $(LOWEST)/dist $(LOWEST)/src
	$(LOWEST)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall $(LOWEST)/dist/*.whl
	$(LOWEST)/bin/python -m pip check --disable-pip-version-check
	TEST_AGAINST_WHEEL=1 $(LOWEST)/bin/pytest -c tests/extension/lowest.ini tests/extension

# The browser client's size as README states it: minified by terser with the options of
# tests/test_client_build.py, then gzip -9.
client-size: $(VENV)/.dev $(NODE_TOOLS)
	@$(BIN)/python -c "from tests.test_client_build import client_size; print(client_size(), 'bytes minified and gzipped')"

bench: $(VENV)/.dev
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

# Several hosts on one PostgreSQL, faults injected under load (root; bench/cluster.py).
cluster: $(VENV)/.dev system-deps
	$(BIN)/python bench/cluster.py $(CLUSTER_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check inngest_gateway service tests bench wsgi.py gunicorn.conf.py
	$(BIN)/ruff format --check inngest_gateway service tests bench wsgi.py gunicorn.conf.py
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff check --fix inngest_gateway service tests bench wsgi.py gunicorn.conf.py
	$(BIN)/ruff format inngest_gateway service tests bench wsgi.py gunicorn.conf.py

clean:
	rm -rf $(VENV) .venv-lowest tests/js/node_modules .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
