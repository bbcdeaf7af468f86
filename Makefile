# Developer entry points. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help run demo test bench bench-shim soak lint typecheck infra-up infra-down clean

help: ## list the targets
	@echo "usage: make <target>"
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  %-11s %s\n", $$1, $$2}'

run: ## local Kafka (127.0.0.1:9092), workers, sink, shim; sends samples, prints statuses; Ctrl-C stops
	scripts/bootstrap.sh && scripts/kafka.sh start && $(PY) scripts/run_local.py

demo: ## like run, but exits once the samples reached a final state
	scripts/bootstrap.sh && scripts/kafka.sh start && $(PY) scripts/run_local.py --demo

test: ## whole suite on a throwaway Kafka (29092), Postgres (55432), registry (28081); ARGS=...
	scripts/test.sh $(ARGS)

bench: ## end-to-end benchmark on the local Kafka (127.0.0.1:9092); COUNT=... notifications
	scripts/bootstrap.sh && scripts/kafka.sh start && $(PY) bench/e2e.py --count $(or $(COUNT),2000) --workers 1 2

bench-shim: ## HTTP shim benchmark on the local Kafka: POSTs vs. the bare producer; COUNT= RATE= SHIM_WORKERS=
	scripts/bootstrap.sh && scripts/kafka.sh start && $(PY) bench/shim.py --count $(or $(COUNT),6000) \
		--concurrency 96 --shim-workers $(or $(SHIM_WORKERS),1 2) $(if $(RATE),--rate $(RATE))

soak: ## crash-and-rebalance soak on the local Kafka and Postgres, exact counts; COUNT=... KILLS=...
	scripts/bootstrap.sh && scripts/kafka.sh start && scripts/postgres.sh start
	$(PY) bench/soak.py --count $(or $(COUNT),100000) --kills $(or $(KILLS),5) \
		--database-url "$$(scripts/postgres.sh url)"

lint: ## ruff check, ruff format --check, docker-compose config -q
	scripts/bootstrap.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	POSTGRES_PASSWORD=validate-only docker-compose -f docker-compose.yml config -q

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
