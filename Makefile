# Nightjar developer entry points. Everything a fresh Debian/Ubuntu machine needs is set up
# from here: `make test` installs missing system packages (Java, Maven, Go), creates .venv,
# lints, runs the unit tests, starts Kafka + FerretDB natively and runs the integration and
# end-to-end tests against them, and always stops the services again.
#
#   make venv         .venv with the project, dev tools and the model converter
#   make lint         ruff check, ruff format --check, mypy
#   make unit         tests that need no services
#   make test         lint + unit + integration/e2e against real services (what CI runs)
#   make services-up / services-down     Kafka + FerretDB on 127.0.0.1 (no Docker)
#   make demo | bench | models           nightjar demo / bench / models fetch
#   make images       every image built offline (debootstrap base, host wheelhouse)
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

# apt-get needs root: use sudo when not root (CI runs as root, without a terminal).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: help venv system-deps lint format unit test services-up services-down services-status \
	demo bench models images compose-cli compose-deps check-env up down compose-test clean

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
	$(PY) -m pytest $(UNIT) $(PYTEST_ARGS)

# Services are stopped on every way out (success, test failure, Ctrl-C) and the tests'
# exit status is kept. Exit status 5 (nothing collected) only means no such tests yet.
test: lint unit system-deps
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
# what the README quotes. The JSON also lands in artifacts/bench.json.
bench: models services-up
	$(NIGHTJAR) bench --out artifacts/bench.json

models: $(STAMP)
	@if [ -d $(MODELS_MIRROR) ]; then \
		$(NIGHTJAR) models fetch --mirror $(MODELS_MIRROR); \
	else \
		echo "make: $(MODELS_MIRROR) is absent; downloading from the published URLs"; \
		$(NIGHTJAR) models fetch; \
	fi

# The deployment (README "Deployment"). Compose v2 as a docker CLI plugin, built from the Go
# module proxy when missing (deploy/compose-cli.sh); Debian's docker-compose 1.29 ignores
# deploy.replicas.
compose-cli:
	@deploy/compose-cli.sh

# What the offline image build and the compose test need on a Debian host.
compose-deps:
	@missing=""; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "make: installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

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
