#!/usr/bin/env bash
# Stop the local SLURM cluster started by scripts/slurm-up.sh (by recorded PIDs only).
#   scripts/slurm-down.sh [--purge]    --purge also removes its scratch dir and the /etc/slurm symlinks.
set -euo pipefail
. "$(dirname "$0")/daemon-lib.sh"
BASE="$GM_SCRATCH/slurm"; RUN_DIR="$BASE/run"; LOG_DIR="$BASE/log"
stop_daemon slurmd
stop_daemon slurmctld
stop_daemon munged
if [ "${1:-}" = "--purge" ]; then
    for f in slurm.conf gres.conf; do
        [ -L "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" = "$BASE/etc/$f" ] && rm -f "/etc/slurm/$f"
    done
    rm -rf "$BASE"
    log "purged $BASE"
fi
