#!/usr/bin/env bash
# Create or refresh the project virtualenv in .venv (python3 -m venv; pip install -e '.[dev]').
#
# Idempotent and cheap to re-run: the install is skipped while .venv/.stamp holds the sha256 of
# pyproject.toml (plus the interpreter version), so `make run` / `make test` can call it every time.
# Quiet on success; on failure it prints the tail of the pip log and exits non-zero.
#
# Env: PYTHON (default python3), FORCE=1 to reinstall regardless of the stamp.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.stamp"
LOG="$VENV/bootstrap.log"

die() { echo "bootstrap: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python >= 3.11"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.11 is required"

want="$( { sha256sum pyproject.toml; "$PYTHON" -V; } 2>&1 | sha256sum | cut -d' ' -f1)"

current() {
    [[ -x "$VENV/bin/python" ]] && [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$want" ]] \
        && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

if [[ "${FORCE:-0}" != 1 ]] && current; then
    exit 0
fi

# Serialise concurrent bootstraps (e.g. `make test` and `make run` started together).
mkdir -p "$ROOT/var"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$ROOT/var/.bootstrap.lock"
    flock 9
    if [[ "${FORCE:-0}" != 1 ]] && current; then
        exit 0
    fi
fi

# Debian/Ubuntu ship venv's ensurepip separately (python3-venv); install it when we can.
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing python3-venv with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq python3-venv; } >/dev/null \
            || die "apt-get install python3-venv failed"
    else
        die "the Python venv module is missing (on Debian/Ubuntu: sudo apt-get install python3-venv)"
    fi
fi

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "python3 -m venv .venv failed"
fi

rm -f "$STAMP"
echo "bootstrap: installing dependencies into .venv (log: .venv/bootstrap.log)" >&2
if ! {
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip &&
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]'
} >"$LOG" 2>&1; then
    echo "bootstrap: pip install failed; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
fi
echo "$want" >"$STAMP"
