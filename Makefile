# rusm — the targets are the contract: run, test, lint, guests, bench.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXAMPLE ?= examples/hello
# A guest's stack lives in its linear memory: 64 KiB keeps a handler's whole
# memory (stack, data, heap start) inside the pages the instance pool keeps
# resident between requests, so a request takes no page faults. A 1 MiB
# stack cost 3-4 faults and about 50 µs a request (docs/benchmarks.md).
GUEST_STACK_BYTES := 65536
ZIGCC  := $(PY) -m ziglang cc --target=wasm32-wasi -O2 -s -Wl,-z,stack-size=$(GUEST_STACK_BYTES)

GUEST_SRC := $(wildcard examples/*/components/*.c)
GUEST_WASM := $(foreach src,$(GUEST_SRC),$(dir $(patsubst %/,%,$(dir $(src))))wasm/$(notdir $(src:.c=.wasm)))
# bench http's kv workload runs the kv-storm scenario's guest, whose one
# source ships in the package (the scenario app compiles it at run time).
KV_GUEST_SRC := rusmd/node/guests/kv_get.c
BENCH_GUEST_WASM := $(patsubst %.c,%.wasm,$(wildcard bench/guests/*.c)) bench/guests/http_kv.wasm

.PHONY: run test test-slow lint guests bench-guests bench bench-deps browser venv clean

venv: $(STAMP)

# Re-install whenever the package metadata changes, so `make test` always
# runs against the dependency ranges pyproject.toml declares.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Wizer pre-initialises reactor components when rusmd compiles them; the
# npm package is pinned in tools/package-lock.json, and rusmd finds its
# binary under tools/node_modules.
TOOLS_STAMP := tools/node_modules/.installed

guests: $(STAMP) $(TOOLS_STAMP) $(GUEST_WASM)

.PHONY: tools
tools: $(TOOLS_STAMP)

# npm ci installs exactly the lock file; Debian's nodejs and npm only when missing.
$(TOOLS_STAMP): tools/package.json tools/package-lock.json
	@command -v npm >/dev/null || apt-get install -y nodejs npm
	cd tools && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# A guest that defines neither main nor run (at the start of a line) has
# only actions: build it as a WASI reactor, so libc starts once, in the
# _initialize rusmd calls before an action, and not around every export.
ENTRY_RE   := ^[A-Za-z_].*\b(main|run) *[(]
exec_model = $(if $(shell grep -lE '$(ENTRY_RE)' $(1)),,-mexec-model=reactor)

# examples/<app>/components/<name>.c -> examples/<app>/wasm/<name>.wasm
.SECONDEXPANSION:
examples/%.wasm: examples/$$(subst /wasm/,/components/,$$*).c rusmd/sdk/c/rusm.h $(STAMP)
	@mkdir -p $(dir $@)
	$(ZIGCC) $(call exec_model,$<) -I rusmd/sdk/c -o $@ $<

# bench/guests/<name>.c -> bench/guests/<name>.wasm: the C guests of the
# benchmarks, with the examples' flags. No $(STAMP) prerequisite: the
# benchmark runs this from inside the venv, and a pyproject.toml newer than
# the stamp must not reinstall the venv under a running benchmark.
bench/guests/%.wasm: bench/guests/%.c rusmd/sdk/c/rusm.h
	$(ZIGCC) $(call exec_model,$<) -I rusmd/sdk/c -o $@ $<

bench/guests/http_kv.wasm: $(KV_GUEST_SRC) rusmd/sdk/c/rusm.h
	$(ZIGCC) $(call exec_model,$<) -I rusmd/sdk/c -o $@ $<

bench-guests: $(BENCH_GUEST_WASM)

run: guests
	$(VENV)/bin/rusmd --config $(EXAMPLE)/rusm.toml

test: $(STAMP) $(TOOLS_STAMP) browser
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP) $(TOOLS_STAMP) browser
	$(PY) -m pytest -m slow

# The dashboard test drives Debian's headless Chromium through its
# chromedriver (selenium comes with the dev extras); installed only when
# missing, never a browser download.
browser:
	@(command -v chromium && command -v chromedriver) >/dev/null || \
		apt-get install -y chromium chromium-driver

lint: $(STAMP)
	$(VENV)/bin/ruff check rusmd rusmctl tests bench
	$(VENV)/bin/ruff format --check rusmd rusmctl tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_layers.py

# The headline benchmarks beside their baselines (uvicorn, websockets,
# Erlang/OTP) and every node scenario; writes the generated section of
# docs/benchmarks.md. `python -m bench` runs every benchmark instead.
bench: $(STAMP) bench-deps
	$(PY) -m bench headline

# wrk drives the HTTP benchmark (bench/http.py); Erlang/OTP runs beside the
# actors benchmark (bench/actors_erlang.py: erl and erlc). Debian's packages,
# installed only when missing.
bench-deps:
	@command -v wrk >/dev/null || apt-get install -y wrk
	@command -v erl >/dev/null && command -v erlc >/dev/null || apt-get install -y erlang-base

clean:
	rm -rf $(VENV) $(EXAMPLE)/wasm tools/node_modules .pytest_cache .mypy_cache .ruff_cache
