#!/usr/bin/env bash
# A local Confluent-compatible schema registry: Apicurio Registry (in-memory storage), from the
# Quarkus application tarball Apicurio publishes to Maven Central
# (io.apicurio:apicurio-registry-app:<version>:tar.gz:all).
#
#   scripts/registry.sh fetch    download and unpack the registry into the cache
#   scripts/registry.sh start    start it in the background; wait until the ccompat API answers
#   scripts/registry.sh stop     SIGTERM, wait, SIGKILL as a last resort
#   scripts/registry.sh status   exit 0 if our registry is running, 3 if not
#   scripts/registry.sh url      print the Confluent-compatible URL (for SCHEMA_REGISTRY_URL,
#                                TEST_SCHEMA_REGISTRY_URL)
#
# Env:
#   REGISTRY_PORT             HTTP port on 127.0.0.1 (default 8081)
#   REGISTRY_MANAGEMENT_PORT  Quarkus management (health) port (default REGISTRY_PORT+1000)
#   REGISTRY_DATA_DIR         pid file and registry.log (default var/registry-$REGISTRY_PORT)
#   APICURIO_VERSION          default 2.6.13.Final (see below)
#   NOTIF_CACHE               download cache, outside git (default $HOME/.cache/notifications)
#   REGISTRY_JAVA             a java >= 21 binary (default: java on PATH or under /usr/lib/jvm)
#   REGISTRY_HEAP_OPTS        default -Xmx384m -Xms64m
#   REGISTRY_START_TIMEOUT    seconds to wait for the API (default 90)
#
# Schemas live in memory: a restart forgets them (and the ids).
#
# Why 2.6.x and not 3.x: Apicurio 3.3.3's ccompat API answers 422 "Failed to discover artifact
# type from content" for any Avro schema with a string field defaulting to "{}" (our data_json
# fields), even with schemaType AVRO; 2.6.13 registers them. 2.x also runs on Java 17, 3.x needs
# Java 21. The tarball layouts differ (2.x: *-runner.jar + lib/, 3.x: quarkus-run.jar); both work.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
REGISTRY_MANAGEMENT_PORT="${REGISTRY_MANAGEMENT_PORT:-$((REGISTRY_PORT + 1000))}"
REGISTRY_DATA_DIR="${REGISTRY_DATA_DIR:-$ROOT/var/registry-$REGISTRY_PORT}"
case "$REGISTRY_DATA_DIR" in /*) ;; *) REGISTRY_DATA_DIR="$ROOT/$REGISTRY_DATA_DIR" ;; esac
APICURIO_VERSION="${APICURIO_VERSION:-2.6.13.Final}"
case "$APICURIO_VERSION" in 2.*) JAVA_MIN=17 ;; *) JAVA_MIN=21 ;; esac
REGISTRY_HEAP_OPTS="${REGISTRY_HEAP_OPTS:--Xmx384m -Xms64m}"
REGISTRY_START_TIMEOUT="${REGISTRY_START_TIMEOUT:-90}"
CACHE="${NOTIF_CACHE:-$HOME/.cache/notifications}"
APP_DIR="$CACHE/apicurio-registry-$APICURIO_VERSION"
ARTIFACT="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all"

PIDFILE="$REGISTRY_DATA_DIR/registry.pid"
LOGFILE="$REGISTRY_DATA_DIR/registry.log"
URL="http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"

say() { echo "registry: $*"; }
die() { echo "registry: $*" >&2; exit 1; }

# --- java >= JAVA_MIN -----------------------------------------------------------------------------

java_major() {  # java_major <java binary> -> prints the feature version, e.g. 21
    "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1
}

find_java() {
    local candidates=() j major
    [[ -n "${REGISTRY_JAVA:-}" ]] && candidates+=("$REGISTRY_JAVA")
    [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME/bin/java")
    command -v java >/dev/null 2>&1 && candidates+=("$(command -v java)")
    for j in /usr/lib/jvm/*/bin/java; do [[ -x "$j" ]] && candidates+=("$j"); done
    for j in "${candidates[@]}"; do
        major="$(java_major "$j" || true)"
        if [[ "$major" =~ ^[0-9]+$ ]] && (( major >= JAVA_MIN )); then
            echo "$j"
            return 0
        fi
    done
    die "Apicurio Registry $APICURIO_VERSION needs Java >= $JAVA_MIN (found none; set REGISTRY_JAVA)"
}

# --- fetch ----------------------------------------------------------------------------------

fetch() {
    [[ -f "$APP_DIR/.complete" ]] && return 0
    command -v mvn >/dev/null 2>&1 || die "'mvn' is required to fetch $ARTIFACT (apt-get install maven)"
    say "fetching $ARTIFACT from Maven Central into $APP_DIR"
    mkdir -p "$CACHE"
    local tmp
    tmp="$(mktemp -d "$CACHE/apicurio.tmp.XXXXXX")"
    # mvn verifies the checksum published with the artifact.
    if ! mvn -q -B dependency:copy -Dartifact="$ARTIFACT" -DoutputDirectory="$tmp" \
            -Dmdep.stripVersion=false >"$tmp.log" 2>&1; then
        tail -n 30 "$tmp.log" >&2
        rm -rf "$tmp" "$tmp.log"
        die "mvn dependency:copy $ARTIFACT failed"
    fi
    rm -f "$tmp.log"
    mkdir "$tmp/app"
    tar xzf "$tmp"/*.tar.gz -C "$tmp/app"
    local launcher="" candidate
    for candidate in "$tmp/app/quarkus-run.jar" "$tmp"/app/*-runner.jar; do
        [[ -f "$candidate" ]] && { launcher="$(basename "$candidate")"; break; }
    done
    [[ -n "$launcher" ]] || { rm -rf "$tmp"; die "no quarkus-run.jar or *-runner.jar in the tarball"; }
    echo "$launcher" >"$tmp/app/.complete"  # the jar to run; its presence marks a complete fetch
    rm -rf "$APP_DIR"
    mv "$tmp/app" "$APP_DIR"   # atomic: a half-fetched cache never looks complete
    rm -rf "$tmp"
}

# --- process helpers ------------------------------------------------------------------------

our_pid() {  # the pid from the pid file, if alive and running our registry (guards pid reuse)
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-jar $APP_DIR/" || return 1
    echo "$pid"
}

probe() {  # exit 0 when the ccompat API answers on $URL
    python3 - "$URL" <<'PY'
import json, sys, urllib.request

try:
    with urllib.request.urlopen(sys.argv[1] + "/subjects", timeout=2) as response:
        sys.exit(0 if isinstance(json.load(response), list) else 1)
except Exception:
    sys.exit(1)
PY
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- commands -------------------------------------------------------------------------------

start() {
    if pid="$(our_pid)"; then
        say "already running (pid $pid), $URL"
        return 0
    fi
    if probe; then
        say "a Confluent-compatible registry already answers on $URL; using it"
        return 0
    fi
    local p
    for p in "$REGISTRY_PORT" "$REGISTRY_MANAGEMENT_PORT"; do
        port_in_use "$p" && die "port $p is in use; choose another REGISTRY_PORT / REGISTRY_MANAGEMENT_PORT"
    done
    local java
    java="$(find_java)"
    fetch
    mkdir -p "$REGISTRY_DATA_DIR"
    rm -f "$PIDFILE"
    # shellcheck disable=SC2086  # heap options are a word list
    QUARKUS_HTTP_HOST=127.0.0.1 \
    QUARKUS_HTTP_PORT="$REGISTRY_PORT" \
    QUARKUS_MANAGEMENT_HOST=127.0.0.1 \
    QUARKUS_MANAGEMENT_PORT="$REGISTRY_MANAGEMENT_PORT" \
    QUARKUS_OTEL_SDK_DISABLED=true \
        nohup "$java" $REGISTRY_HEAP_OPTS -jar "$APP_DIR/$(cat "$APP_DIR/.complete")" >"$LOGFILE" 2>&1 &
    echo $! >"$PIDFILE"
    local waited=0
    until probe; do
        if ! our_pid >/dev/null; then
            tail -n 30 "$LOGFILE" >&2
            die "the registry exited during start-up (log: $LOGFILE)"
        fi
        (( waited >= REGISTRY_START_TIMEOUT )) && { stop; die "no answer on $URL after ${waited}s"; }
        sleep 1
        waited=$((waited + 1))
    done
    say "running (pid $(cat "$PIDFILE")), $URL"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$PIDFILE"
        say "not running"
        return 0
    fi
    kill "$pid"
    local i
    for i in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$PIDFILE"
    say "stopped"
}

case "${1:-}" in
    fetch) fetch ;;
    start) start ;;
    stop) stop ;;
    status) if pid="$(our_pid)"; then say "running (pid $pid), $URL"; else say "not running"; exit 3; fi ;;
    url) echo "$URL" ;;
    *) echo "usage: $0 {fetch|start|stop|status|url}" >&2; exit 2 ;;
esac
