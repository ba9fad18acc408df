#!/usr/bin/env bash
# Idempotent set-up shared by scripts/test.sh and scripts/demo.sh: a virtualenv in .venv with
# sluice and its test dependencies installed, and a MariaDB server binary (from apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

find_mariadbd() {
    command -v mariadbd 2>/dev/null || { [ -x /usr/sbin/mariadbd ] && echo /usr/sbin/mariadbd; } || true
}

if [ -z "$(find_mariadbd)" ]; then
    echo "bootstrap: mariadbd not found; installing mariadb-server with apt" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q mariadb-server mariadb-client
fi

if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
    # The fleet's consensus store (fleet.etcd); tests start their own on free ports.
    echo "bootstrap: etcd not found; installing etcd-server with apt" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q etcd-server
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "bootstrap: Python >= 3.11 is required (found $("$PY" --version 2>&1)); set PYTHON=…" >&2
        exit 1
    }
    "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.sluice-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
