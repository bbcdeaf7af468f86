# Developer entry points. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help run demo test lint typecheck infra-up infra-down clean

help: ## list the targets
	@echo "usage: make <target>"
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  %-11s %s\n", $$1, $$2}'

run: ## start local Kafka (127.0.0.1:9092) and run the workers, sink and shim
	scripts/bootstrap.sh && scripts/kafka.sh start && $(PY) scripts/run_local.py

demo: ## like run, and send demo notifications through the pipeline
	scripts/bootstrap.sh && scripts/kafka.sh start && $(PY) scripts/run_local.py --demo

test: ## the full test suite against a throwaway Kafka (29092) and Postgres (55432); ARGS=... for pytest
	scripts/test.sh $(ARGS)

lint: ## ruff check, ruff format --check, docker-compose config -q
	scripts/bootstrap.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	docker-compose -f docker-compose.yml config -q

typecheck: ## mypy (packages configured in pyproject.toml)
	scripts/bootstrap.sh
	$(VENV)/bin/mypy

infra-up: ## start Kafka (127.0.0.1:9092) and Postgres (127.0.0.1:5433) in the background
	scripts/kafka.sh start
	scripts/postgres.sh start

infra-down: ## stop the Kafka and Postgres started by infra-up
	scripts/kafka.sh stop
	scripts/postgres.sh stop

clean: infra-down ## stop local infrastructure and remove var/ (local data, logs)
	rm -rf var
