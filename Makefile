# nexus_green: everything a newcomer needs, from python3 and make alone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUFF_OPTS := --line-length 120 --target-version py310

.PHONY: install test lint demo bench bench-long chaos serve clean browser redis

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(RUFF_OPTS) --select E,F,W,I,B,UP --ignore E501,UP007,UP045 nexus_green tests chaos_tests bench
	$(VENV)/bin/ruff format $(RUFF_OPTS) --check nexus_green tests chaos_tests bench
	$(VENV)/bin/mypy nexus_green
	$(VENV)/bin/lint-imports

# The dashboard's browser test drives Debian's headless chromium (CI runs as root on Debian).
# Without root or apt-get the install is reported and the browser test skips, saying why.
browser:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) || \
		echo "make browser: could not install chromium and chromium-driver (needs root and apt-get); the dashboard's browser test will skip"

# The shared-state tests (issue 20) run a real redis-server from Debian's package, started by the tests
# on a free loopback port. Without root or apt-get the install is reported and those tests skip, saying why.
redis:
	command -v redis-server >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) || \
		echo "make redis: could not install redis-server (needs root and apt-get); the shared-state tests will skip"

test: $(STAMP) lint browser redis
	rm -f .coverage .coverage.*
	$(PY) -m coverage run -m pytest tests nexus_green
	$(PY) -m coverage combine -q
	$(PY) -m coverage report
	$(PY) tests/coverage_gate.py --min 90

demo: $(STAMP)
	$(PY) -m nexus_green.cli demo

# The report (issue 15): under 10 minutes, docs/benchmarks.md and docs/bench/*.png regenerated; ARGS=--quick: under a minute.
bench: $(STAMP)
	$(PY) bench/run_all.py $(ARGS)

# The long statistical runs (monitoring overhead to ~1,100 cycles, ...) and the area benchmarks: about 35 minutes.
bench-long: $(STAMP)
	$(PY) bench/run_all.py --long $(ARGS)

chaos: $(STAMP)
	$(PY) -m pytest chaos_tests -o addopts="" -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make chaos: chaos_tests/ holds no tests yet (the chaos issue adds them)"; exit 0; fi; exit $$rc

serve: $(STAMP)
	$(PY) -m nexus_green.cli serve --port 7600

format: $(STAMP)
	$(VENV)/bin/ruff format $(RUFF_OPTS) nexus_green tests chaos_tests bench
	$(VENV)/bin/ruff check $(RUFF_OPTS) --select I --fix nexus_green tests chaos_tests bench

clean:
	rm -rf $(VENV) .coverage .coverage.* build dist *.egg-info
