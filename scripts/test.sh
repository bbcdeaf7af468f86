#!/usr/bin/env bash
# `make test`: the whole test suite against a real broker and a real Postgres.
#
#   scripts/test.sh [pytest args...]      e.g. scripts/test.sh -k provision -x
#
# 1. bootstraps .venv, 2. checks docker-compose.yml (`docker-compose config -q`),
# 3. starts a fresh Kafka on 127.0.0.1:29092, Postgres on 127.0.0.1:55432 and a schema registry
#    on 127.0.0.1:28081 (test-only ports
#    and data dirs, so a running `make run` / `make infra-up` is not disturbed),
# 4. runs pytest with TEST_KAFKA_BOOTSTRAP and TEST_DATABASE_URL exported,
# 5. stops both on exit, whatever happened, and exits with pytest's code
#    ("no tests collected", pytest's 5, counts as a failure).
#
# Modules run in TEST_WORKERS pytest-xdist processes (default 2; 0 runs them in this process),
# one module per process at a time (--dist loadfile): each module has its own uuid-prefixed
# topics, database and pipeline processes, so two share the broker and Postgres without
# touching each other. Most of a module's time is spent waiting (delivery windows, restarts),
# so two at once halve the suite's wall time on 2 cores (18 -> 10 min for tests/integration).
#
# Env: TEST_KAFKA_PORT (29092), TEST_PG_PORT (55432), TEST_REGISTRY_PORT (28081),
# TEST_WITHOUT_REGISTRY=1 (no registry: for quick targeted runs only), TEST_KEEP_DATA=1 to keep the previous run's
# broker and database contents instead of starting from empty ones.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive

TEST_KAFKA_PORT="${TEST_KAFKA_PORT:-29092}"
TEST_PG_PORT="${TEST_PG_PORT:-55432}"
# Test data dirs are set explicitly, so a KAFKA_DATA_DIR / PG_DATA_DIR exported for `make run`
# can never point the tests at the development data.
KAFKA_ENV=(env KAFKA_PORT="$TEST_KAFKA_PORT" KAFKA_CONTROLLER_PORT="$((TEST_KAFKA_PORT + 1))"
           KAFKA_DATA_DIR="$ROOT/var/test-kafka-$TEST_KAFKA_PORT")
PG_ENV=(env -u PG_DATA_DIR PG_PORT="$TEST_PG_PORT")
TEST_REGISTRY_PORT="${TEST_REGISTRY_PORT:-28081}"
REGISTRY_ENV=(env REGISTRY_PORT="$TEST_REGISTRY_PORT"
              REGISTRY_DATA_DIR="$ROOT/var/test-registry-$TEST_REGISTRY_PORT")

step() { echo "==> $*"; }

# --- 1. virtualenv ----------------------------------------------------------------------------
step "bootstrap .venv"
scripts/bootstrap.sh

# --- 2. docker-compose.yml --------------------------------------------------------------------
step "docker-compose config -q"
if ! command -v docker-compose >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "docker-compose not found; installing it with apt-get"
        { apt-get update -qq && apt-get install -y -qq docker-compose; } >/dev/null 2>&1 || true
    fi
fi
if command -v docker-compose >/dev/null 2>&1; then
    # The file requires POSTGRES_PASSWORD from the environment; any value validates it.
    POSTGRES_PASSWORD=validate-only docker-compose -f docker-compose.yml config -q || {
        echo "FAIL: docker-compose.yml is not valid (docker-compose config -q)" >&2
        exit 1
    }
else
    echo "WARNING: docker-compose is not installed and could not be installed; skipping the docker-compose.yml check" >&2
fi

# --- 3. infrastructure ------------------------------------------------------------------------
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    echo "==> stopping test Kafka and Postgres"
    "${KAFKA_ENV[@]}" scripts/kafka.sh stop || true
    "${PG_ENV[@]}" scripts/postgres.sh stop || true
    "${REGISTRY_ENV[@]}" scripts/registry.sh stop >/dev/null 2>&1 || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A previous run that was killed may have left these running; stop them, then start from empty
# data dirs unless asked to keep them.
"${KAFKA_ENV[@]}" scripts/kafka.sh stop >/dev/null
"${PG_ENV[@]}" scripts/postgres.sh stop >/dev/null
if [[ "${TEST_KEEP_DATA:-0}" != 1 ]]; then
    rm -rf "$ROOT/var/test-kafka-$TEST_KAFKA_PORT" "$ROOT/var/pg-$TEST_PG_PORT" "/tmp/notif-pg-$TEST_PG_PORT"
fi

step "start Kafka on 127.0.0.1:$TEST_KAFKA_PORT"
"${KAFKA_ENV[@]}" scripts/kafka.sh start
step "start Postgres on 127.0.0.1:$TEST_PG_PORT"
"${PG_ENV[@]}" scripts/postgres.sh start >/dev/null

# The Confluent-framing tests run against a real Confluent-compatible registry (Apicurio).
# TEST_WITHOUT_REGISTRY=1 skips it for a quick targeted run (those tests then fail or skip).
if [[ "${TEST_WITHOUT_REGISTRY:-0}" != 1 ]]; then
    step "start the schema registry on 127.0.0.1:$TEST_REGISTRY_PORT"
    "${REGISTRY_ENV[@]}" scripts/registry.sh start
    TEST_SCHEMA_REGISTRY_URL="$("${REGISTRY_ENV[@]}" scripts/registry.sh url)"
    export TEST_SCHEMA_REGISTRY_URL
fi

export TEST_KAFKA_BOOTSTRAP="127.0.0.1:$TEST_KAFKA_PORT"
TEST_DATABASE_URL="$("${PG_ENV[@]}" scripts/postgres.sh url)"
export TEST_DATABASE_URL
echo "TEST_KAFKA_BOOTSTRAP=$TEST_KAFKA_BOOTSTRAP"
echo "TEST_DATABASE_URL=$TEST_DATABASE_URL"

# --- 4. pytest --------------------------------------------------------------------------------
TEST_WORKERS="${TEST_WORKERS:-2}"
PARALLEL=()
if [[ "$TEST_WORKERS" != 0 ]]; then
    PARALLEL=(-n "$TEST_WORKERS" --dist loadfile)
fi
step "pytest ${PARALLEL[*]} $*"
set +e
.venv/bin/python -m pytest --durations=12 "${PARALLEL[@]}" "$@"
rc=$?
set -e
if [[ "$rc" == 5 ]]; then
    echo "FAIL: pytest collected no tests (exit 5)" >&2
fi
exit "$rc"
