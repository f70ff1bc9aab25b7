# Every target creates the virtualenv it needs, so each works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint test test-fast demo bench clean browser

# Everything: every extra (all), the suite (test), the linters (lint), the plots (bench).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,test,lint,bench]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

# The whole suite: lint first, then every test (real Redis, cluster, Celery, chaos in bounded form).
test: lint browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The console's browser test drives Debian's chromium through Debian's chromedriver: packages,
# never a browser downloaded at run time.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y chromium chromium-driver || { $$SUDO apt-get update && \
		$$SUDO apt-get install -y chromium chromium-driver; }; }

# Unit tests only (fakeredis), for a quick loop while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not redis and not cluster and not celery and not chaos and not slow and not packaging" $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/revoker demo

# wrk is the load generator of the HTTP benchmarks; a fresh Debian/Ubuntu machine lacks it.
# BENCH_ARGS: e.g. --quick, or --only middleware.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y wrk || { $$SUDO apt-get update && $$SUDO apt-get install -y wrk; }; }
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
