# Reservoir's everyday commands. `make test` is the whole gate CI runs.

CARGO ?= cargo
SHELL := /bin/bash
# buf comes from npm (@bufbuild/buf ships the binary); kept under target/ so a
# clean clone needs nothing but Rust and Node.js.
BUF_VERSION := 1.75.0
TOOLS := target/tools
BUF := $(TOOLS)/node_modules/.bin/buf
# kubernetes-validate from PyPI, in a virtualenv under target/, validates the
# rendered manifests offline against the bundled Kubernetes API schemas.
KUBERNETES_VALIDATE_VERSION := 1.37.0
KUBERNETES_VALIDATE := $(TOOLS)/k8s/bin/kubernetes-validate
# The Python client: grpcio-tools from PyPI in a virtualenv under target/.
GRPCIO_VERSION := 1.85.1
# The console's browser test: Debian's Chromium driven by playwright-core
# from npm (never a downloaded browser build), kept under target/.
PLAYWRIGHT_VERSION := 1.64.1
PLAYWRIGHT := $(TOOLS)/browser/node_modules/playwright-core/package.json
# The Standard Webhooks library a receiver verifies deliveries with (the smoke test does).
STANDARDWEBHOOKS_VERSION := 1.3.0
# Fault cycles of `make faults` (`make test` runs 22 of them).
FAULT_CYCLES ?= 500
PYTHON_ENV := $(TOOLS)/python
PYTHON_LOWEST := $(TOOLS)/python-lowest
PYTHON_CLIENT := target/clients/python
# The wire contract of the last release, as a buf image; proto-breaking
# compares the protos against it, proto-release writes a new one.
PROTO_RELEASE := $(lastword $(sort $(wildcard proto/releases/v*.binpb)))
# The workspace's version: the tag the production overlays pin the image to.
RELEASE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

.PHONY: browser-tools screenshots clients client-smoke client-lowest run test lint fmt-check clippy proto-lint proto-breaking proto-release k8s-validate unit-tests release bench faults clean-data help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

run: ## run the whole suite on SQLite under ./data, no setup
	$(CARGO) run -p reservoir -- up

test: lint unit-tests client-smoke client-lowest ## everything CI checks: formatting, lints, proto lint, every test on SQLite and PostgreSQL

lint: fmt-check clippy proto-lint proto-breaking k8s-validate ## formatting, clippy, buf lint and breaking, the Kubernetes manifests

fmt-check: ## rustfmt, checked
	$(CARGO) fmt --all -- --check

clippy: ## clippy on every target, warnings as errors
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

$(BUF):
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error @bufbuild/buf@$(BUF_VERSION)

proto-lint: $(BUF) ## buf lint of proto/
	cd proto && ../$(BUF) lint

proto-breaking: $(BUF) ## buf breaking: proto/ against the last release's wire contract
	cd proto && ../$(BUF) breaking --against ../$(PROTO_RELEASE)
	@echo "proto/: wire compatible with $(PROTO_RELEASE)"

proto-release: $(BUF) ## snapshot proto/ as the wire contract of release VERSION (make proto-release VERSION=0.2.0)
	@test -n "$(VERSION)" || (echo "set VERSION, such as make proto-release VERSION=0.2.0" && exit 2)
	cd proto && ../$(BUF) build -o releases/v$(VERSION).binpb

$(KUBERNETES_VALIDATE):
	python3 -m venv $(TOOLS)/k8s
	$(TOOLS)/k8s/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)

k8s-validate: $(KUBERNETES_VALIDATE) ## render every overlay in k8s/ and validate it strictly against the Kubernetes schemas
	@set -e; for overlay in k8s/overlays/*/; do \
		name=$$(basename $$overlay); \
		kubectl kustomize $$overlay > target/k8s-$$name.yaml; \
		$(KUBERNETES_VALIDATE) --strict --quiet target/k8s-$$name.yaml; \
		$(TOOLS)/k8s/bin/python k8s/check-rendered.py target/k8s-$$name.yaml; \
		images=$$(sed -n 's/^ *image: *//p' target/k8s-$$name.yaml | sort -u); \
		for image in $$images; do case "$$image" in \
			*:latest|reservoir) echo "k8s/overlays/$$name: $$image is not pinned"; exit 1;; \
			ghcr.io/reservoir/reservoir:$(RELEASE_VERSION)|reservoir:dev) ;; \
			otel/opentelemetry-collector:[0-9]*) ;; \
			*) echo "k8s/overlays/$$name: $$image is not this release's image ($(RELEASE_VERSION))"; exit 1;; \
		esac; done; \
		echo "k8s/overlays/$$name: $$(grep -c '^kind:' target/k8s-$$name.yaml) resources valid"; \
	done

$(PYTHON_ENV)/bin/python:
	python3 -m venv $(PYTHON_ENV)
	$(PYTHON_ENV)/bin/pip install --quiet --disable-pip-version-check grpcio==$(GRPCIO_VERSION) grpcio-tools==$(GRPCIO_VERSION) setuptools==84.2.1 wheel==0.48.0 \
		standardwebhooks==$(STANDARDWEBHOOKS_VERSION)

clients: $(PYTHON_ENV)/bin/python ## generate the Python client package from proto/ into target/clients/python and install it
	rm -rf $(PYTHON_CLIENT) && mkdir -p $(PYTHON_CLIENT)
	$(PYTHON_ENV)/bin/python -m grpc_tools.protoc -I proto --python_out=$(PYTHON_CLIENT) --pyi_out=$(PYTHON_CLIENT) \
		--grpc_python_out=$(PYTHON_CLIENT) $$(cd proto && find reservoir -name '*.proto' | sort)
	cp clients/python/pyproject.toml $(PYTHON_CLIENT)/
	$(PYTHON_ENV)/bin/pip install --quiet --disable-pip-version-check --no-build-isolation $(PYTHON_CLIENT)

client-smoke: clients ## the Python client against a running suite: account, grant, debit, balance, ledger, webhooks
	$(CARGO) build --locked --workspace --bins
	$(PYTHON_ENV)/bin/python clients/python/smoke_test.py target/debug/reservoir

client-lowest: clients ## the smoke test again on the lowest grpcio and protobuf the client's pins allow
	$(CARGO) build --locked --workspace --bins
	rm -rf $(PYTHON_LOWEST) && python3 -m venv $(PYTHON_LOWEST)
	$(PYTHON_LOWEST)/bin/pip install --quiet --disable-pip-version-check setuptools==84.2.1 wheel==0.48.0 \
		standardwebhooks==$(STANDARDWEBHOOKS_VERSION) $$(python3 clients/python/lowest.py clients/python/pyproject.toml)
	$(PYTHON_LOWEST)/bin/pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps $(PYTHON_CLIENT)
	$(PYTHON_LOWEST)/bin/python clients/python/smoke_test.py target/debug/reservoir

$(PLAYWRIGHT):
	npm install --prefix $(TOOLS)/browser --no-audit --no-fund --loglevel=error playwright-core@$(PLAYWRIGHT_VERSION)

browser-tools: $(PLAYWRIGHT) ## Chromium (Debian's package) and playwright-core for the console's browser test
	@command -v chromium > /dev/null || (apt-get install -y --no-install-recommends chromium \
		|| (apt-get update && apt-get install -y --no-install-recommends chromium))

screenshots: browser-tools ## the console's main pages as pictures in docs/screenshots
	mkdir -p docs/screenshots
	RESERVOIR_SCREENSHOTS=docs/screenshots $(CARGO) test --locked -p reservoir --test suite -- console::the_console_works_in_a_real_browser

unit-tests: browser-tools ## every test: domain, property, black-box on SQLite and PostgreSQL, crash and restart, the console in Chromium
	set -o pipefail; $(CARGO) test --workspace --locked --all-targets 2>&1 | tee target/test.log
	@awk '/^test result:/ { passed += $$4; failed += $$6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' target/test.log

release: ## the optimized binary at target/release/reservoir
	$(CARGO) build --release --locked -p reservoir

faults: ## the fault harness for 500 cycles (about half an hour): kills, pauses, network cuts, then the books checked
	RESERVOIR_FAULT_CYCLES=$(FAULT_CYCLES) $(CARGO) test --locked -p reservoir --test suite -- faults --nocapture

bench: ## the load generator against PostgreSQL and SQLite; writes docs/PERFORMANCE.md
	$(CARGO) build --release --locked -p reservoir -p reservoir-bench
	target/release/reservoir-bench --reservoir target/release/reservoir --report docs/PERFORMANCE.md

clean-data: ## forget the local SQLite data of `make run`
	rm -rf ./data
