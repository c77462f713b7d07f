# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench chaos failover screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per install flavour, so `make run` does not wait for the test tools.
$(VENV)/.installed-run: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

$(VENV)/.installed-bench: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/wjp dev

# Two pytest-xdist processes, each with a database and a private PostgreSQL cluster of its own: most tests wait on
# servers and subprocesses, so two overlap well even on two cores. `loadgroup` keeps each `xdist_group` on one process.
TEST_PROCESSES ?= 2
test: $(VENV)/.installed-test
	$(BIN)/ruff check ledger actors service tests
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup

# Intake, delivery, end-to-end latency, maintenance at 1 M / 5 M rows and memory, next to baselines and peers:
# writes bench/results/latest.json (see bench/README.md). BENCH_QUICK=1 for the reduced version (about 8 minutes).
# Needs PostgreSQL and Redis as for `make test`, and the load generator wrk, which it installs with apt-get when
# run as root on Debian or Ubuntu (otherwise it says what to install).
bench: $(VENV)/.installed-bench
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make bench: installing wrk, the HTTP load generator (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq wrk >/dev/null \
	      || { echo "make bench: apt-get could not install wrk; install it and run make bench again" >&2; exit 1; }; \
	  else \
	    echo "make bench needs wrk, the HTTP load generator: install it (Debian/Ubuntu: sudo apt-get install -y wrk)" >&2; \
	    exit 1; \
	  fi; }
	$(BIN)/python -m bench.run

# Fault injection on real components: its own PostgreSQL (initdb) and redis-server, `wjp serve`, two workers and the
# reconciler loop; 2,000 notifications through worker kills, FLUSHALL and restarts. Prints the figures as JSON.
# CHAOS_JOBS=N for another size; `make test` runs a reduced version (300).
CHAOS_JOBS ?= 2000
chaos: $(VENV)/.installed-test
	$(BIN)/python -m tests.chaos --jobs $(CHAOS_JOBS)

# A failover drill on real replicated servers: PostgreSQL primary and synchronous standby, Redis master, replica and
# three Sentinels, `wjp serve`, two workers, the reconciler loop, 100 POST/s; kill -9 the Redis master, then the
# PostgreSQL primary (its standby promoted). Prints the figures as JSON; fails if anything accepted is lost.
# FAILOVER_SECONDS=N for another length; `make test` runs a reduced version (25 s).
FAILOVER_SECONDS ?= 60
failover: $(VENV)/.installed-test
	$(BIN)/python -m tests.failover --seconds $(FAILOVER_SECONDS)

# The dashboard's pages as PNGs in docs/ (README.md, Operations): headless Chromium (Debian: apt-get install -y chromium
# chromium-driver) on the app serving an hour of made-up traffic from a temporary SQLite ledger and an embedded Redis.
screenshots: $(VENV)/.installed-test
	$(BIN)/python -m tests.screenshots --out docs

lint: $(VENV)/.installed-test
	$(BIN)/ruff check ledger actors service tests bench

clean:
	rm -rf $(VENV) var .pytest_cache
