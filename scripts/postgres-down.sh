#!/usr/bin/env bash
# Stop the PostgreSQL started by scripts/postgres-up.sh (fast shutdown of its recorded PID).
#   scripts/postgres-down.sh [--purge]    --purge also removes its data dir.
set -euo pipefail
. "$(dirname "$0")/daemon-lib.sh"
BASE="$GM_SCRATCH/postgres"; RUN_DIR="$BASE/run"; LOG_DIR="$BASE/log"
stop_daemon postgres INT
if [ "${1:-}" = "--purge" ]; then rm -rf "$BASE"; log "purged $BASE"; fi
