#!/usr/bin/env bash
# A local single-node Kafka (KRaft, broker+controller in one JVM) assembled from Maven Central jars.
#
#   scripts/kafka.sh fetch    download the broker jars (mvn, infra/kafka/pom.xml) into the cache
#   scripts/kafka.sh start    start the broker in the background; wait until it answers
#   scripts/kafka.sh stop     SIGTERM, wait, SIGKILL as a last resort
#   scripts/kafka.sh status   exit 0 if our broker is running, 3 if not
#
# Env:
#   KAFKA_PORT             client port on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT+1)
#   KAFKA_DATA_DIR         server.properties, logs, pid file, kafka.log (default var/kafka-$KAFKA_PORT)
#   NOTIF_CACHE            jar cache, outside git (default $HOME/.cache/notifications)
#   KAFKA_HEAP_OPTS        JVM heap options (default -Xmx512m -Xms128m)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 60)
#
# Every command is idempotent. Readiness is a real Kafka Metadata request made by a small
# dependency-free python3 snippet (no venv, no Kafka CLI needed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$ROOT/infra/kafka/pom.xml"
LOG4J="$ROOT/infra/kafka/log4j.properties"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-$ROOT/var/kafka-$KAFKA_PORT}"
case "$KAFKA_DATA_DIR" in /*) ;; *) KAFKA_DATA_DIR="$ROOT/$KAFKA_DATA_DIR" ;; esac
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m}"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"
[[ -n "$KAFKA_VERSION" ]] || { echo "kafka: cannot read <kafka.version> from $POM" >&2; exit 1; }
CACHE="${NOTIF_CACHE:-$HOME/.cache/notifications}"
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"

PIDFILE="$KAFKA_DATA_DIR/kafka.pid"
LOGFILE="$KAFKA_DATA_DIR/kafka.log"
PROPS="$KAFKA_DATA_DIR/server.properties"
LOGDIRS="$KAFKA_DATA_DIR/data"

say() { echo "kafka: $*"; }
die() { echo "kafka: $*" >&2; exit 1; }

# --- tools --------------------------------------------------------------------------------

need_tool() {  # need_tool <command> <debian package>
    command -v "$1" >/dev/null 2>&1 && return 0
    # On CI (root, apt available) install it; anywhere else say exactly what is missing.
    if [[ -n "${CI:-}" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "kafka: '$1' not found; installing $2 with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq "$2"; } >/dev/null 2>&1 || true
        command -v "$1" >/dev/null 2>&1 && return 0
    fi
    die "'$1' is required but not found on PATH (Debian/Ubuntu: apt-get install $2)"
}

# --- fetch --------------------------------------------------------------------------------

have_jars() { [[ -f "$LIBS/.complete" ]]; }

fetch() {
    have_jars && return 0
    need_tool java openjdk-17-jre-headless
    need_tool mvn maven
    say "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
    mkdir -p "$(dirname "$LIBS")"
    local tmp
    tmp="$(mktemp -d "$(dirname "$LIBS")/libs.tmp.XXXXXX")"
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" \
            >"$tmp.log" 2>&1; then
        tail -n 30 "$tmp.log" >&2
        rm -rf "$tmp" "$tmp.log"
        die "mvn dependency:copy-dependencies failed"
    fi
    rm -f "$tmp.log"
    touch "$tmp/.complete"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"   # atomic: a half-fetched cache never looks complete
}

# --- process helpers ----------------------------------------------------------------------

# The pid from the pid file, if that process is alive and is our broker (guards against pid reuse).
our_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $PROPS" || return 1
    echo "$pid"
}

# Exit 0 when a Kafka broker on 127.0.0.1:$1 answers a Metadata request with itself listed.
probe() {
    python3 - "$1" <<'PY'
import socket, struct, sys

port = int(sys.argv[1])
client = b"notif-kafka-sh"
# Metadata v1 request: header (api_key=3, version=1, correlation id, client id), no topics.
body = struct.pack(">hhih", 3, 1, 42, len(client)) + client + struct.pack(">i", 0)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(3)
        s.sendall(struct.pack(">i", len(body)) + body)

        def read(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise EOFError
                buf += chunk
            return buf

        (size,) = struct.unpack(">i", read(4))
        data = read(size)
    corr, nbrokers = struct.unpack_from(">ii", data, 0)
    off, ports = 8, []
    for _ in range(nbrokers):
        _node, hlen = struct.unpack_from(">ih", data, off)
        off += 6 + hlen
        (bport,) = struct.unpack_from(">i", data, off)
        off += 4
        (rlen,) = struct.unpack_from(">h", data, off)
        off += 2 + max(rlen, 0)
        ports.append(bport)
    (controller,) = struct.unpack_from(">i", data, off)
    sys.exit(0 if corr == 42 and port in ports and controller >= 0 else 1)
except Exception:
    sys.exit(1)
PY
}

port_in_use() {  # something accepts TCP connections on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# --- commands -----------------------------------------------------------------------------

write_properties() {
    cat >"$PROPS" <<EOF
# Written by scripts/kafka.sh on every start; edits here are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$LOGDIRS
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
EOF
}

start() {
    if pid="$(our_pid)"; then
        say "already running (pid $pid), bootstrap $BOOTSTRAP"
        return 0
    fi
    if probe "$KAFKA_PORT"; then
        say "a Kafka broker is already answering on $BOOTSTRAP (not started from $KAFKA_DATA_DIR); using it"
        return 0
    fi
    local p
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_in_use "$p"; then
            die "port $p is in use by something that is not a Kafka broker; choose another KAFKA_PORT"
        fi
    done
    need_tool python3 python3
    fetch
    need_tool java openjdk-17-jre-headless

    mkdir -p "$KAFKA_DATA_DIR" "$LOGDIRS"
    rm -f "$PIDFILE"
    write_properties
    local java_opts=(-Dlog4j.configuration="file:$LOG4J" -Dkafka.logs.dir="$KAFKA_DATA_DIR")
    if [[ ! -f "$LOGDIRS/meta.properties" ]]; then
        local cluster_id
        cluster_id="$(java "${java_opts[@]}" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>>"$LOGFILE")" \
            || die "StorageTool random-uuid failed (see $LOGFILE)"
        java "${java_opts[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format \
                -t "$cluster_id" -c "$PROPS" >>"$LOGFILE" 2>&1 \
            || { tail -n 20 "$LOGFILE" >&2; die "formatting $LOGDIRS failed"; }
    fi

    # setsid: the broker outlives the shell that started it (and Ctrl-C in `make run`).
    # setsid may fork, so the JVM writes its own pid (the shell execs into java).
    # shellcheck disable=SC2016,SC2086
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
        java $KAFKA_HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true "${java_opts[@]}" \
        -cp "$LIBS/*" kafka.Kafka "$PROPS" >>"$LOGFILE" 2>&1 </dev/null &
    local pid="" i
    for i in $(seq 50); do
        pid="$(cat "$PIDFILE" 2>/dev/null || true)"
        [[ -n "$pid" ]] && break
        sleep 0.1
    done
    [[ -n "$pid" ]] || die "the broker did not start (no pid file); see $LOGFILE"

    local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    until probe "$KAFKA_PORT"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            echo "kafka: the broker exited during start-up; last lines of $LOGFILE:" >&2
            tail -n 30 "$LOGFILE" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "kafka: no answer on $BOOTSTRAP after ${KAFKA_START_TIMEOUT}s; stopping it. Last lines of $LOGFILE:" >&2
            tail -n 30 "$LOGFILE" >&2
            stop >/dev/null 2>&1 || true
            exit 1
        fi
        sleep 0.5
    done
    say "started (pid $pid), bootstrap $BOOTSTRAP, log $LOGFILE"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$PIDFILE"
        say "not running ($KAFKA_DATA_DIR)"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-30}))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "kafka: pid $pid did not exit after SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE"
    say "stopped (pid $pid)"
}

status() {
    local pid
    if pid="$(our_pid)"; then
        if probe "$KAFKA_PORT"; then
            say "running (pid $pid), bootstrap $BOOTSTRAP"
        else
            say "process running (pid $pid) but not answering on $BOOTSTRAP yet"
        fi
        return 0
    fi
    if probe "$KAFKA_PORT"; then
        say "not started from $KAFKA_DATA_DIR, but a broker answers on $BOOTSTRAP"
    else
        say "not running ($BOOTSTRAP)"
    fi
    return 3
}

case "${1:-}" in
    fetch) fetch; say "jars in $LIBS" ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 {fetch|start|stop|status}" >&2; exit 2 ;;
esac
