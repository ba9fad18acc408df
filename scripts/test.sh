#!/usr/bin/env bash
# Runs the whole test suite against real sandbox MariaDB servers. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check proxy tests bench
exec .venv/bin/python -m pytest -q "$@"
