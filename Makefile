# Nightjar developer entry points. Everything a fresh Debian/Ubuntu machine needs is set up
# from here: `make test` installs missing system packages (Java, Maven, Go), creates .venv,
# lints, runs the unit tests, starts Kafka + FerretDB natively and runs the integration and
# end-to-end tests against them, and always stops the services again.
#
#   make venv         .venv with the project, dev tools and the model converter
#   make lint         ruff check, ruff format --check, mypy
#   make unit         tests that need no services (a short decode fuzzing run included)
#   make fuzz         fuzz the decode path longer (FUZZ_SECONDS=600, FUZZ_RUNS=-1: no run cap)
#   make test         lint + unit + rules-test + integration/e2e against real services (CI)
#   make rules-test   promtool checks and unit-tests the Prometheus alert rules
#   make services-up / services-down     Kafka + FerretDB on 127.0.0.1 (no Docker)
#   make demo | bench | models           nightjar demo / bench / models fetch
#   make bench-scale                     the scale-out part of make bench alone: scaling, 40k burst, long history, plan
#   make helm         Helm (built from the Go module proxy once, cached in ~/.cache/nightjar/helm)
#   make chart        lint and render the Kubernetes chart (deploy/kubernetes/nightjar)
#   make chart-dashboards   copy deploy/grafana/dashboards/*.json into the chart
#   make images       every image built offline (debootstrap base, host wheelhouse)
#   make mongo-tools  mongodump + mongorestore from the Go module proxy (cached) for compose-test
#   make check-env    says which secret .env is missing (cp .env.example .env)
#   make up / down    the docker compose deployment (Compose v2; volumes survive down)
#   make compose-test the deployment end to end on a Docker engine (what CI runs after test)

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NIGHTJAR := $(VENV)/bin/nightjar
STAMP := $(VENV)/.nightjar-installed
EXTRAS ?= dev,tools,convert
UNIT ?= tests/unit
INTEGRATION ?= tests/integration tests/e2e
PYTEST_ARGS ?=
MODELS_MIRROR ?= ../shared/reference/models
COMPOSE ?= docker compose
# Rubin's released alert schemas, from its own package (see the file for why --no-deps).
RUBIN_SCHEMAS := schemas/rubin-requirements.txt

# The tests reach the services where `nightjar services up` puts them (ports movable with
# NIGHTJAR_SERVICES_KAFKA_PORT / NIGHTJAR_SERVICES_FERRETDB_PORT).
KAFKA_ADDRESS := 127.0.0.1:$(or $(NIGHTJAR_SERVICES_KAFKA_PORT),9092)
MONGO_ADDRESS := mongodb://127.0.0.1:$(or $(NIGHTJAR_SERVICES_FERRETDB_PORT),27017)

# Debian's Prometheus (promtool for the rule tests, prometheus for the dashboard test),
# unpacked from its .deb: installing the package would start a system-wide daemon.
PROMETHEUS_HOME ?= $(HOME)/.cache/nightjar/prometheus
PROMTOOL := $(PROMETHEUS_HOME)/usr/bin/promtool
RULES := deploy/prometheus/rules

# Helm renders deploy/kubernetes/nightjar in the unit tests. Built with Go from the module
# proxy (no other download path; a few minutes on 2 cores, once) into the cache.
HELM_VERSION := v3.19.5
# What Helm's own release build stamps in: its version, and the Kubernetes version of its
# client-go (v0.34 here) that `helm template` and `helm lint` assume without --kube-version
# (a plain `go install` leaves 1.20, older than the chart's kubeVersion).
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach pkg,pkg/chartutil pkg/lint/rules,-X helm.sh/helm/v3/$(pkg).k8sVersionMajor=1 \
	-X helm.sh/helm/v3/$(pkg).k8sVersionMinor=34)
HELM_DIR := $(or $(NIGHTJAR_CACHE),$(HOME)/.cache/nightjar)/helm/$(HELM_VERSION)
HELM := $(HELM_DIR)/helm
GO ?= $(or $(shell command -v go),$(wildcard /usr/local/go/bin/go),go)
CHART := deploy/kubernetes/nightjar
DASHBOARDS := deploy/grafana/dashboards

# apt-get needs root: use sudo when not root (CI runs as root, without a terminal).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: help venv system-deps lint format unit fuzz test services-up services-down \
	services-status demo bench bench-scale models images compose-cli compose-deps mongo-tools \
	check-env up down compose-test clean rules-test prometheus helm chart chart-dashboards

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

# Java runs Kafka, Maven gathers its jars, Go builds FerretDB (1.24+: see
# broker/services/ferretdb.py when the distribution's golang-go is older), and headless
# Chromium screenshots the Fritz-like candidates page in the e2e tests.
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v go >/dev/null || missing="$$missing golang-go"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	$(PYTHON_BOOTSTRAP) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "make: installing Debian packages:$$missing"; \
		command -v apt-get >/dev/null || { echo "make: no apt-get here; install$$missing yourself" >&2; exit 1; }; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml services/fritz/pyproject.toml $(RUBIN_SCHEMAS) | system-deps
	@[ -x $(PY) ] || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --progress-bar off -e '.[$(EXTRAS)]' -e services/fritz
	$(PY) -m pip install --quiet --progress-bar off --no-deps -r $(RUBIN_SCHEMAS)
	@touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

unit: $(STAMP)
	NIGHTJAR_HELM=$(HELM) $(PY) -m pytest $(UNIT) $(PYTEST_ARGS)

# `apt-get download` needs no root; the package lists only on a machine that never had them.
$(PROMTOOL):
	@command -v apt-get >/dev/null || { echo "make: no apt-get here; put promtool and prometheus (2.x) in $(PROMETHEUS_HOME)/usr/bin" >&2; exit 1; }
	@mkdir -p $(PROMETHEUS_HOME)/deb
	cd $(PROMETHEUS_HOME)/deb && { apt-get download -q prometheus 2>/dev/null || \
		{ $(SUDO) apt-get update -q && apt-get download -q prometheus; }; }
	dpkg -x "$$(ls -t $(PROMETHEUS_HOME)/deb/prometheus_*.deb | head -n 1)" $(PROMETHEUS_HOME)
	@touch $@

prometheus: $(PROMTOOL)

rules-test: $(PROMTOOL)
	$(PROMTOOL) check rules $(RULES)/nightjar.yml
	$(PROMTOOL) test rules $(RULES)/tests/*.yml

# libFuzzer over broker.decode; a finding is written to fuzz-findings/ as crash-<sha1>.
# FUZZ_CORPUS keeps the grown corpus between runs (default: a fresh temporary folder).
FUZZ_SECONDS ?= 600
FUZZ_RUNS ?= -1
fuzz: $(STAMP)
	@mkdir -p fuzz-findings
	ulimit -v 4194304; $(PY) tests/fuzz/fuzz_decode.py -max_total_time=$(FUZZ_SECONDS) \
		-runs=$(FUZZ_RUNS) -max_len=200000 -rss_limit_mb=2048 -artifact_prefix=fuzz-findings/

# Services are stopped on every way out (success, test failure, Ctrl-C) and the tests'
# exit status is kept. Exit status 5 (nothing collected) only means no such tests yet.
test: lint helm unit rules-test system-deps
	@trap '$(NIGHTJAR) services down' EXIT; trap 'exit 130' INT TERM; \
	$(NIGHTJAR) services up || exit $$?; \
	paths="$(wildcard $(INTEGRATION))"; \
	if [ -z "$$paths" ]; then echo "make: none of $(INTEGRATION) exists yet"; exit 0; fi; \
	status=0; \
	NIGHTJAR_REQUIRE_SERVICES=1 NIGHTJAR_TEST_KAFKA=$(KAFKA_ADDRESS) \
	NIGHTJAR_TEST_MONGO=$(MONGO_ADDRESS) NIGHTJAR_KAFKA__BOOTSTRAP_SERVERS=$(KAFKA_ADDRESS) \
	NIGHTJAR_MONGO__URI=$(MONGO_ADDRESS) \
		$(PY) -m pytest $$paths $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: no integration or e2e tests collected"; status=0; fi; \
	exit $$status

services-up: $(STAMP) system-deps
	$(NIGHTJAR) services up

services-down: $(STAMP)
	$(NIGHTJAR) services down

services-status: $(STAMP)
	$(NIGHTJAR) services status

demo: $(STAMP)
	$(NIGHTJAR) demo

# The full model set installed and the local services up first: a fresh machine measures
# what the README quotes. The JSONs land in artifacts/. About 18 minutes on 2 cores: the
# single-process scenarios and the poster first, then the scale-out below (16 minutes).
bench: models services-up
	$(NIGHTJAR) bench --out artifacts/bench.json
	$(MAKE) --no-print-directory bench-scale

# Scale-out alone: brokers and dask workers as processes, a 40,000-alert visit, long light
# curves, and the capacity plan from the scaling run (with a configured GPU rate too).
bench-scale: models services-up
	$(NIGHTJAR) bench --scenario scaling --n 1000 --out artifacts/bench-scaling.json
	$(NIGHTJAR) bench --scenario burst --n 40000 --out artifacts/bench-burst.json
	$(NIGHTJAR) bench --scenario long-history --n 1000 --out artifacts/bench-long-history.json
	$(NIGHTJAR) bench --plan --from artifacts/bench-scaling.json --out artifacts/plan.json
	$(NIGHTJAR) bench --plan --from artifacts/bench-scaling.json --gpu-rate 1500 \
		--out artifacts/plan-gpu.json

models: $(STAMP)
	@if [ -d $(MODELS_MIRROR) ]; then \
		$(NIGHTJAR) models fetch --mirror $(MODELS_MIRROR); \
	else \
		echo "make: $(MODELS_MIRROR) is absent; downloading from the published URLs"; \
		$(NIGHTJAR) models fetch; \
	fi

$(HELM): | system-deps
	@echo "make: building Helm $(HELM_VERSION) into $(HELM_DIR) (once; a few minutes)"
	mkdir -p $(HELM_DIR)
	CGO_ENABLED=0 GOBIN=$(abspath $(HELM_DIR)) $(GO) install -trimpath \
		-ldflags '$(HELM_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

helm: $(HELM)

# Helm reads only files inside the chart: the Grafana dashboards are copied in (and
# tests/unit/test_helm_chart.py fails while the copies differ from the originals).
chart-dashboards:
	@mkdir -p $(CHART)/dashboards
	rm -f $(CHART)/dashboards/*.json
	@if compgen -G '$(DASHBOARDS)/*.json' >/dev/null; then cp $(DASHBOARDS)/*.json $(CHART)/dashboards/; fi

chart: $(HELM) chart-dashboards
	$(HELM) lint $(CHART)
	$(HELM) lint $(CHART) -f $(CHART)/values-gpu.yaml
	$(HELM) template nightjar $(CHART) -f $(CHART)/values-gpu.yaml > /dev/null

# The deployment (README "Deployment"). Compose v2 as a docker CLI plugin, built from the Go
# module proxy when missing (deploy/compose-cli.sh); Debian's docker-compose 1.29 ignores
# deploy.replicas.
compose-cli:
	@deploy/compose-cli.sh

# What the offline image build and the compose test need on a Debian host, and mongodump and
# mongorestore for the test's FerretDB stand-in (Go module proxy, once; cached).
compose-deps: mongo-tools
	@missing=""; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "make: installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

mongo-tools: | system-deps
	@services/mongo-tools/build.sh >/dev/null

images:
	deploy/images/build.sh

check-env:
	@deploy/check-env.sh

up: compose-cli check-env
	$(COMPOSE) up -d --wait --wait-timeout 900

# Every profile's containers (fritz, gpu), whichever profiles are set now.
down: compose-cli
	$(COMPOSE) --profile '*' down

# Starts dockerd when none answers (and stops only that one), builds the images offline,
# then tests/compose: the stack up, alerts in, checks from outside, down -v.
compose-test: $(STAMP) compose-deps
	PY=$(PY) tests/compose/run.sh

# Build outputs in ~/.cache/nightjar are kept: they take minutes to make again.
clean:
	-@[ ! -x $(NIGHTJAR) ] || $(NIGHTJAR) services down
	rm -rf $(VENV) .nightjar/services .pytest_cache .mypy_cache .ruff_cache
