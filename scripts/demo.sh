#!/usr/bin/env bash
# Runs `sluice demo`: a sandbox MariaDB cluster, sluice tiers and a crowd of clients, then a report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/sluice demo "$@"
