#!/usr/bin/env bash
# A throwaway local PostgreSQL cluster (Debian's `postgresql` package binaries) for the sink.
#
#   scripts/postgres.sh start    initdb if needed, start, create database `notifications`
#   scripts/postgres.sh stop     fast shutdown (immediate as a last resort)
#   scripts/postgres.sh status   exit 0 if running, 3 if not
#   scripts/postgres.sh url      print the SQLAlchemy URL (postgresql+psycopg://...)
#
# Env:
#   PG_PORT      TCP port on 127.0.0.1 (default 5433, so a system cluster on 5432 is untouched)
#   PG_DATA_DIR  cluster directory (default var/pg-$PG_PORT in the repo, see below)
#
# Listens on 127.0.0.1 only, unix socket inside the data dir, `trust` auth for the local socket
# and loopback (initdb -A trust); superuser `postgres`, no password. Never expose it.
#
# Running as root: Postgres refuses to run as root, so initdb/pg_ctl run as the `postgres`
# system user (runuser) and the data dir is owned by it (mode 0700). The postgres user must be
# able to traverse every parent directory of the data dir. Choice made here: the default
# var/pg-$PG_PORT is kept when it is reachable (it is for checkouts under /work, /srv, /tmp...);
# when it is not (e.g. a checkout under root's 0700 home) we do NOT chmod the user's
# directories but fall back to /tmp/notif-pg-$PG_PORT, and say so. An explicit PG_DATA_DIR
# that is unreachable is an error. Not root: everything runs as the current user.
#
# If no initdb is found under /usr/lib/postgresql/*/bin, the `postgresql` package is installed
# with apt-get (root only), without letting it create its default `main` cluster.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_PORT="${PG_PORT:-5433}"
DB_NAME=notifications

say() { echo "postgres: $*"; }
die() { echo "postgres: $*" >&2; exit 1; }

IS_ROOT=0
[[ "$(id -u)" == 0 ]] && IS_ROOT=1

url() { echo "postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/$DB_NAME"; }

# --- binaries -----------------------------------------------------------------------------

find_bindir() {  # the newest major version's bin dir
    local best
    best="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1)"
    [[ -n "$best" ]] || return 1
    dirname "$best"
}

ensure_binaries() {
    if BIN="$(find_bindir)"; then return 0; fi
    if [[ "$IS_ROOT" == 1 ]] && command -v apt-get >/dev/null 2>&1; then
        say "initdb not found under /usr/lib/postgresql/*/bin; installing postgresql with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        # We run our own clusters: keep the package from creating and starting `main` on 5432.
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/99-notif.conf
        { apt-get update -qq && apt-get install -y -qq postgresql; } >/dev/null 2>&1 \
            || die "apt-get install postgresql failed"
        BIN="$(find_bindir)" || die "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
        return 0
    fi
    die "initdb not found under /usr/lib/postgresql/*/bin (Debian/Ubuntu: sudo apt-get install postgresql)"
}

# --- user and data dir --------------------------------------------------------------------

as_pg() {
    if [[ "$IS_ROOT" == 1 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Can the postgres user reach (traverse into) directory $1?
pg_can_reach() {
    [[ "$IS_ROOT" == 1 ]] || return 0
    runuser -u postgres -- test -x "$1" 2>/dev/null
}

resolve_data_dir() {
    if [[ -n "${PG_DATA_DIR:-}" ]]; then
        DATA="$PG_DATA_DIR"
        case "$DATA" in /*) ;; *) DATA="$ROOT/$DATA" ;; esac
        EXPLICIT=1
    else
        DATA="$ROOT/var/pg-$PG_PORT"
        EXPLICIT=0
    fi
}

prepare_data_dir() {
    if [[ "$IS_ROOT" == 1 ]] && ! id postgres >/dev/null 2>&1; then
        die "running as root but there is no 'postgres' system user (install the postgresql package)"
    fi
    local parent
    parent="$(dirname "$DATA")"
    mkdir -p "$parent"
    if ! pg_can_reach "$parent"; then
        if [[ "$EXPLICIT" == 1 ]]; then
            die "the postgres user cannot traverse $parent; choose a PG_DATA_DIR it can reach (e.g. /tmp/notif-pg-$PG_PORT)"
        fi
        DATA="/tmp/notif-pg-$PG_PORT"
        say "the postgres user cannot reach $parent; using $DATA instead"
    fi
    mkdir -p "$DATA"
    if [[ "$IS_ROOT" == 1 ]]; then
        chown postgres:postgres "$DATA"
    fi
    chmod 0700 "$DATA"
}

# The data dir actually in use for stop/status (honours the /tmp fallback without creating anything).
existing_data_dir() {
    if [[ "$EXPLICIT" == 0 && ! -f "$DATA/PG_VERSION" && -f "/tmp/notif-pg-$PG_PORT/PG_VERSION" ]]; then
        DATA="/tmp/notif-pg-$PG_PORT"
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

is_running() { [[ -f "$DATA/PG_VERSION" ]] && as_pg "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

psql_q() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

# --- commands -----------------------------------------------------------------------------

start() {
    ensure_binaries
    prepare_data_dir
    if ! is_running; then
        if port_in_use "$PG_PORT"; then
            die "port $PG_PORT is already in use by another process; choose another PG_PORT"
        fi
        if [[ ! -f "$DATA/PG_VERSION" ]]; then
            as_pg "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-locale \
                >"$DATA.initdb.log" 2>&1 \
                || { cat "$DATA.initdb.log" >&2; die "initdb failed"; }
            rm -f "$DATA.initdb.log"
            echo "include_if_exists = 'notif.conf'" >>"$DATA/postgresql.conf"
        fi
        # Rewritten on every start so that a changed PG_PORT or path takes effect.
        cat >"$DATA/notif.conf" <<EOF
# Written by scripts/postgres.sh on every start.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$DATA'
# A throwaway cluster: durability traded for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
        if [[ "$IS_ROOT" == 1 ]]; then chown postgres:postgres "$DATA/notif.conf"; fi
        if ! as_pg "$BIN/pg_ctl" start -D "$DATA" -l "$DATA/postgres.log" -w -t 60 -s >/dev/null 2>&1; then
            echo "postgres: start failed; last lines of $DATA/postgres.log:" >&2
            tail -n 20 "$DATA/postgres.log" >&2 || true
            exit 1
        fi
        say "started on 127.0.0.1:$PG_PORT (data $DATA)"
    else
        say "already running on 127.0.0.1:$PG_PORT (data $DATA)"
    fi
    if [[ -z "$(psql_q -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" ]]; then
        psql_q -d postgres -c "CREATE DATABASE $DB_NAME" >/dev/null
    fi
    url
}

stop() {
    ensure_binaries
    existing_data_dir
    if ! is_running; then
        say "not running ($DATA)"
        return 0
    fi
    if ! as_pg "$BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 30 -s >/dev/null 2>&1; then
        echo "postgres: fast shutdown timed out; using immediate" >&2
        as_pg "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 30 -s >/dev/null 2>&1 || true
    fi
    if is_running; then die "could not stop the cluster in $DATA"; fi
    say "stopped ($DATA)"
}

status() {
    ensure_binaries
    existing_data_dir
    if is_running; then
        say "running on 127.0.0.1:$PG_PORT (data $DATA); $(url)"
        return 0
    fi
    say "not running ($DATA)"
    return 3
}

resolve_data_dir
case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    url) url ;;
    *) echo "usage: $0 {start|stop|status|url}" >&2; exit 2 ;;
esac
