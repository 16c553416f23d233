# The two commands of the README, and their helpers. Each installs what it needs.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: setup quickstart down test lint clean

$(STAMP): pyproject.toml scripts/install-system-packages
	scripts/install-system-packages
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(VENV)/bin/frostpoint quickstart

down: setup
	$(VENV)/bin/frostpoint quickstart --down

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/python scripts/check-type-ignores

test: setup lint
	$(VENV)/bin/pytest -q -p no:cacheprovider -rs --durations=30

# The service's rules on the in-memory platform, with every capability dropped: they
# need no root (docs/machines.md "The seam"); seconds.
.PHONY: test-memory
test-memory: setup
	setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all --no-new-privs \
		$(VENV)/bin/pytest -q -p no:cacheprovider tests/test_memory_platform.py tests/test_clock.py tests/test_policies.py tests/test_notify_rpo.py

clean:
	rm -rf $(VENV) build src/*.egg-info

# Benchmark against borg and restic (installs them with apt-get if missing); as root.
# Figures and how to read them: docs/benchmarks.md. Results JSON: bench/results/.
.PHONY: bench
bench: setup  # the long history (issue 14); BENCH_QUICK=1: one dataset, 4 backups
	$(VENV)/bin/python bench/history.py $(if $(BENCH_QUICK),--quick)

.PHONY: bench-pair
bench-pair: setup  # one full and one incremental, 3 tools (bench/run.py)
	$(VENV)/bin/python bench/run.py
