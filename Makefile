# Fulcrum: `make demo`, `make test`, `make lint`, `make bench` (`make test-pure`: the suite without mypyc).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Compiled at install (setup.py: mypyc for these, a C compiler for the .c files): a change to one means building again.
COMPILED := $(shell sed -n 's/^ *"\(src\/fulcrum\/.*\.py\)",$$/\1/p' setup.py)
C_SOURCES := $(wildcard src/fulcrum/proxy/*.c)

.PHONY: demo test test-pure lint bench clean

$(STAMP): pyproject.toml setup.py $(COMPILED) $(C_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fulcrum demo

# The dashboard's browser test drives Debian's chromium, the state backend's tests a real redis-server, the hot
# path's cost check valgrind; all are installed here when missing (never failing the target: without them those
# tests are skipped with a message).
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium for the dashboard's browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
		|| echo "chromium could not be installed: the dashboard's browser test will be skipped"; }
	@command -v valgrind >/dev/null 2>&1 || { echo "installing valgrind for the hot path's instruction counts"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null 2>&1; } \
		|| echo "valgrind could not be installed: the hot path's cost check will be skipped"; }
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server for the state backend's tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1; } \
		|| echo "redis-server could not be installed: the state backend's tests will be skipped"; }
	$(PY) -m pytest -q

# The same suite on the modules as plain Python (what runs where mypyc could not build them).
test-pure: $(STAMP)
	rm -rf build/compiled-aside && mkdir -p build/compiled-aside
	find src -name '*.so' -exec cp --parents {} build/compiled-aside/ \; -delete
	FULCRUM_PURE=1 $(PY) -m pytest -q; status=$$?; cp -r build/compiled-aside/src . && rm -rf build/compiled-aside; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples setup.py
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	$(PY) benchmarks/run.py --gateway --conns 50 $(BENCH_ARGS)
	$(PY) benchmarks/run.py --https --conns 50 $(BENCH_ARGS)
	$(PY) benchmarks/bench_pick.py
	$(PY) benchmarks/bench_routes.py
	$(PY) benchmarks/bench_ws.py
	$(PY) benchmarks/bench_tcp.py
	$(PY) benchmarks/bench_h2.py
	$(PY) benchmarks/bench_traffic.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_clients.py
	@if command -v valgrind >/dev/null 2>&1; then $(PY) benchmarks/hotloop.py --browser --callgrind --requests 2000; \
	else echo "valgrind missing: hotloop --browser in wall-clock time only"; $(PY) benchmarks/hotloop.py --browser; fi
	$(PY) benchmarks/bench_workers.py
	$(PY) benchmarks/bench_shared_limit.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find src -name '*.so' -delete
